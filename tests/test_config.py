"""The Hydra config tree: composition, the schema's type checks and the semantic checks, as (overrides, message) tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from bondexp.config import absolute_sqlite_url, collect_models, register_configs, validate_config
from bondexp.errors import ConfigError
from bondexp.graph import build_graph
from bondexp.pipeline import build_steps, resolve_features
from bondexp.planning import ready_order
from conftest import hide_package

register_configs()


def composed(*overrides: str):
    with initialize_config_module(config_module="bondexp.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_defaults_compose_to_the_full_suite():
    cfg = composed()
    models = collect_models(cfg)
    assert set(models) == {"basic", "enhanced", "advanced", "automl", "regime", "factor", "tail_risk", "bayesian"}
    assert cfg.data.source == "synthetic"
    assert cfg.workers >= 1 and cfg.early_stopping.enabled
    validate_config(cfg, models=models)
    names = [s.name for s in build_steps(cfg, models)]
    assert names[-3:] == ["evaluate", "drift", "tune"]


def test_a_first_run_starts_the_heads_of_the_critical_path_first():
    """No duration known yet: advanced (the long model tune waits for) goes before basic and enhanced, declared first,
    and the three that tune waits for before automl, which only evaluate and drift wait for."""
    cfg = composed()
    graph = build_graph(build_steps(cfg, collect_models(cfg)))
    ready = [name for name in graph.order if not graph[name].needs]
    assert ready[:2] == ["basic", "enhanced"]
    assert sorted(ready, key=ready_order(graph, dict.fromkeys(graph.order)))[:4] == ["advanced", "basic", "enhanced", "automl"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=enhanced"], {"enhanced"}),
        (["model=[basic,bayesian]"], {"basic", "bayesian"}),
        (["model=ml"], {"basic", "enhanced", "advanced", "automl"}),
        (["model=risk"], {"regime", "factor", "tail_risk", "bayesian"}),
    ],
)
def test_model_sets(overrides, expected):
    cfg = composed(*overrides)
    choice = cfg.hydra.runtime.choices.get("model")
    assert set(collect_models(cfg, choice=choice)) == expected


@pytest.mark.parametrize(
    "overrides, tune_needs, report_needs",
    [
        ([], {"basic"}, {"basic", "bayesian", "tune"}),  # tune.target null: every ml model with a search space
        (["tune.target=bayesian"], {"bayesian"}, {"basic", "bayesian", "tune"}),  # a named target only
        (["model=[factor,bayesian]"], set(), {"factor", "bayesian", "tune"}),  # no ml model: needs nothing, skips
        (["~steps.tune"], None, {"basic", "bayesian"}),  # evaluate and drift run as soon as the models finish
    ],
)
def test_report_steps_need_exactly_the_chosen_models_and_tune(overrides, tune_needs, report_needs):
    cfg = composed("model=[basic,bayesian]", "data=small", *overrides)
    steps = {s.name: s for s in build_steps(cfg, collect_models(cfg))}
    assert set(steps["evaluate"].needs) == set(steps["drift"].needs) == report_needs
    assert (set(steps["tune"].needs) if "tune" in steps else None) == tune_needs
    assert build_graph(list(steps.values())) is not None


@pytest.mark.parametrize(
    "overrides, tune_needs",
    [
        ([], {"basic", "enhanced", "advanced"}),  # automl has no space: tune never picks it, so never waits for it
        (["model=[basic,automl]", "+tune.search_space.automl.n_candidates={low: 2, high: 8, type: int}"], {"basic", "automl"}),
        (["model=[automl]"], {"automl"}),  # none has a space: tune waits for them and skips, naming them
        (["model=[basic,automl]", "tune.target=automl", "+tune.search_space.automl.n_candidates={low: 2, high: 8, type: int}"], {"automl"}),
    ],
)
def test_tune_waits_only_for_the_models_it_may_tune(overrides, tune_needs):
    cfg = composed(*overrides)
    steps = {s.name: s for s in build_steps(cfg, collect_models(cfg))}
    assert set(steps["tune"].needs) == tune_needs
    assert "automl" in steps["evaluate"].needs and "tune" in steps["evaluate"].needs


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("enhanced_tuned", [], "The model 'enhanced_tuned' has the name the tune step gives the tuned 'enhanced'"),
        ("enhanced_tuned", ["tune.target=basic"], None),  # the tune step's model is basic_tuned
        ("enhanced_tuned", ["~steps.tune"], None),
        ("oracle", [], "The model 'oracle' has the name of a leaderboard reference row"),
        ("dcf_baseline", [], "The model 'dcf_baseline' has the name of a leaderboard reference row"),
        ("oracle", ["~steps.evaluate"], None),
    ],
)
def test_a_model_named_like_a_row_another_step_adds_is_refused(name, overrides, message):
    """A user's `enhanced_tuned` beside enhanced lost its leaderboard row to the tuned model (exit 0); an `oracle`
    failed evaluate once every model had trained."""
    cfg = composed("model=[basic,enhanced]", "data=small", *overrides)
    models = {**collect_models(cfg), name: {"_target_": "sklearn.linear_model.Ridge"}}
    if message is None:
        assert name in {s.name for s in build_steps(cfg, models)}
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_steps(cfg, models)


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["workers=abc"], ValidationError),  # wrong type: Hydra's own message at compose time
        (["wrkers=2"], ConfigCompositionException),  # misspelled key
        (["eval.sampl_pct=5"], ConfigCompositionException),
        (["early_stopping.enabled=maybe"], ValidationError),
    ],
)
def test_schema_rejects_typos_and_wrong_types_at_compose_time(overrides, error):
    with pytest.raises((error, ConfigCompositionException, ConfigKeyError)):
        composed(*overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["workers=0"], "'workers' config key must be at least 1. Got 0"),
        (["eval.sample_pct=0"], "'eval.sample_pct' config key must be a percentage in (0, 100]. Got 0"),
        (["eval.sample_pct=150"], "Got 150"),
        (["early_stopping.validation_fraction=1.5"], "'early_stopping.validation_fraction'"),
        (["tune.target=enhancd"], "Did you mean 'enhanced'?"),
        (["model=basic", "tune.target=enhanced"], "'tune.target' config key must name a trained model"),
        (
            ["model=[basic,bayesian]", "tune.target=bayesian"],
            "'tune.search_space.bayesian' config key must map parameters of model 'bayesian' to ranges to tune it, since "
            "its class 'BayesianHeteroscedasticRegressor' has no default",
        ),
        (["tune.batch_size=0"], "'tune.batch_size' config key must be at least 1. Got 0"),
        (["data=csv", "data.path=/no/such/file.csv"], "'data.path' config key must be an existing file. Got '/no/such/file.csv'"),
        (["models.basic.features=nope"], "'models.basic.features' config key must name a feature set"),
        (  # a TypeError in resolve_features, exit 1
            ["models.basic.features=5"],
            "The 'models.basic.features' config key must name a feature set, one of ['all', 'bond', 'market'], or list features. "
            "Got 5 instead.",
        ),
        (  # was "... which the data does not have", once the data had loaded
            ["models.basic.features=[coupon_rate,5]"],
            "The 'models.basic.features' config key must be a list of feature names and feature-set names (text). "
            "Got ['coupon_rate', 5] instead.",
        ),
        (  # was refused once the data had loaded, with "Did you mean 'rating'?"
            ["models.basic.features=[coupon_rate,durration]"],
            "The 'models.basic.features' config key names ['durration'], which the data does not have (nor is it a feature set); "
            "its features are ['coupon_rate',",
        ),
        (["models.basic.features=[coupon_rate,durration]"], "Did you mean 'modified_duration'?"),
        (  # was blamed on models.enhanced.features (features: all), once the data had loaded
            ["model=enhanced", "feature_sets.bond=[coupon_rate,durration]"],
            "The 'feature_sets.bond' config key names ['durration'], which the data does not have (nor is it a feature set)",
        ),
        # a TypeError once every step had run (the summary table), or in build_steps for a list (unhashable), exit 1
        (["models.basic.group=5"], "The 'models.basic.group' config key must be a group name (text). Got 5 instead."),
        (["models.basic.group=null"], "The 'models.basic.group' config key must be a group name (text). Got None instead."),
        (["models.basic.group=[a,b]"], "The 'models.basic.group' config key must be a group name (text). Got ['a', 'b'] instead."),
        (["drift.correction=fdr"], "'drift.correction'"),
        (["tune.storage=tuning.db"], "'tune.storage' config key must be null (a journal file in the run folder) or a database URL"),
        (["seed=-1"], "'seed' config key must be 0 or more. Got -1"),  # was numpy's traceback, once the data loaded
        # was "'data.split.validation' ... Got -0.1", a key not given, once the synthetic market was generated
        (["data.split.train=0.9"], "'data.split' fractions must sum to 1. Got {'train': 0.9, 'validation': 0.2, 'test': 0.2} (sum 1.3)"),
        (["data=csv", "data.path=x.csv", "data.split.test=0"], "'data.split.test' config key must be a fraction > 0. Got 0"),
        # a key added with '+' to a section whose keys bondexp defines: ignored (16 trials ran, no backtest), or failed
        # its step once the models had trained (evaluate, drift: exit 1)
        (["+tune.n_trial=3"], "Got ['n_trial'] instead: 'tune.n_trial' is read by no step. Did you mean 'n_trials'?"),
        (["+backtest.orgins=3"], "'backtest.orgins' is read by no step. Did you mean 'origins'?"),
        (
            ["+eval.n_bootstap=10"],
            "The 'eval' config keys must be among ['sample_pct', 'n_bootstrap', 'confidence']. Got ['n_bootstap'] instead: "
            "'eval.n_bootstap' is read by no step. Did you mean 'n_bootstrap'?",
        ),
        (["+drift.treshold=0.1"], "The 'drift' config keys must be among ['psi_warn', 'psi_alert', 'ks_alpha', 'correction', 'n_bins',"),
        (["+early_stopping.patiance=3"], "'early_stopping.patiance' is read by no step. Did you mean 'patience'?"),
        (["+executor.adress=tcp://h:8786"], "'executor.adress' is read by no step. Did you mean 'address'?"),
        (["+tracking.urii=x"], "'tracking.urii' is read by no step. Did you mean 'uri'?"),
        (["+data.n_month=12"], "'data.n_month' is read by no step. Did you mean 'n_months'?"),
        (["+data.split.tran=0.6"], "'data.split.tran' is read by no step. Did you mean 'train'?"),
        (["data=csv", "+data.columns.isin=isin"], "'data.columns.isin' is read by no step."),
        (["+steps.evaluate.need=[basic]"], "'steps.evaluate.need' is read by no step. Did you mean 'needs'?"),
        (  # the graph's message listed the steps only, without a suggestion, and no word of `models` or the groups
            ["steps.evaluate.needs=[modles]"],
            "The 'steps.evaluate.needs' config key must list steps, 'models' (every model step) or model groups. Got 'modles' "
            "instead, which is none of the steps ['basic', 'enhanced', 'advanced', 'automl', 'regime', 'factor', 'tail_risk', "
            "'bayesian', 'evaluate', 'drift', 'tune'], nor 'models', nor a group ['ml', 'risk']. Did you mean 'models'?",
        ),
        (["steps.drift.needs=[rsk]"], "Did you mean 'risk'?"),
        (["steps.drift.needs=[evalute]"], "Did you mean 'evaluate'?"),
        (  # was ignored: enhanced was tuned over its class's default space
            ["model=[basic,enhanced]", "+tune.search_space.enhancd={learning_rate: {low: 0.01, high: 0.2}}"],
            "The 'tune.search_space.enhancd' config key must be named after a model: one of the chosen ['basic', 'enhanced'], "
            "or another model file. Got 'enhancd', the name of neither, instead. Did you mean 'enhanced'?",
        ),
    ],
)
def test_semantic_checks_name_the_key_and_the_value(overrides, message):
    cfg = composed(*overrides)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, models=collect_models(cfg, choice=cfg.hydra.runtime.choices.get("model")))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+tune.search_space.basic={max_depth: {low: 2, high: 8}}"],  # free keys: a model's own space
        ["+tune.class_search_space.Lasso={alpha: {low: 1e-4, high: 1.0, log: true}}"],
        ["+feature_sets.mine=[coupon_rate,rating]"],
        ["+models.basic.min_samples_split=4"],  # an estimator parameter its file does not list (preflight checks it)
        ["+experiment=backtest"],
        # a space for a model not chosen (a sweep over model=, an experiment file): advanced's is close to enhanced but
        # is a model file's name; my_lasso is close to no chosen model
        ["+tune.search_space.advanced={learning_rate: {low: 0.01, high: 0.2}}"],
        ["+tune.search_space.my_lasso={alpha: {low: 1e-4, high: 1.0}}"],
        ["+tune.search_space.enhancd={learning_rate: {low: 0.01, high: 0.2}}", "~steps.tune"],  # no tune step reads it
        ["steps.drift.needs=[ml,risk,evaluate]"],  # a group none of the chosen models is in stands for none
        ["backtest.origins=2", "steps.drift.needs=[models,backtest,basic@2019-01]"],  # backtest steps join the graph later
    ],
)
def test_keys_added_where_keys_are_free_pass(overrides):
    cfg = composed("data=small", "model=[basic,enhanced]", *overrides)
    validate_config(cfg, models=collect_models(cfg, choice="[basic,enhanced]"))


def test_an_unknown_key_of_a_model_files_early_stopping_block_gets_its_keys(tmp_path):
    """``early_stopping`` in a model file takes the top-level block's keys: '+' only for one the file does not set."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bondexp.hydra_startup import override_error_message

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "# @package models.mine\n_target_: sklearn.ensemble.HistGradientBoostingRegressor\nearly_stopping: {patience: 3}\n"
    )
    expected = {
        "models.mine.early_stopping.wait=3": "The 'models.mine.early_stopping.wait' config key does not exist: the "
        "'models.mine.early_stopping' keys are enabled, patience, validation_fraction, tol.",
        "models.mine.early_stopping.patiance=3": "The 'models.mine.early_stopping.patiance' config key does not exist. Did you mean "
        "'patience'?",
        "models.mine.early_stopping.enabled=false": "The 'models.mine.early_stopping.enabled' config key does not exist. To add a key "
        "the config does not have, prefix it with '+': +models.mine.early_stopping.enabled=false.",
    }
    with initialize_config_module(config_module="bondexp.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        for override, message in expected.items():
            overrides = ["model=mine", f"hydra.searchpath=[file://{tmp_path}]", override]
            with pytest.raises(Exception) as caught:
                hydra.config_loader.load_configuration(config_name="config", overrides=overrides, run_mode=RunMode.RUN)
            assert override_error_message(hydra, "config", overrides, caught.value) == message


@pytest.mark.parametrize(
    "block, message",
    [
        (  # was ignored: the model trained with the top-level patience
            "{patiance: 3}",
            "The 'models.mine.early_stopping' config keys must be among ['enabled', 'patience', 'validation_fraction', 'tol']. "
            "Got ['patiance'] instead: 'models.mine.early_stopping.patiance' is read by no step. Did you mean 'patience'?",
        ),
        # was a 59-line traceback from the preflight check (ValueError: invalid literal for int())
        ("{patience: abc}", "The 'models.mine.early_stopping.patience' config key must be a whole number, at least 1. Got 'abc' instead."),
        ("{patience: 0}", "The 'models.mine.early_stopping.patience' config key must be a whole number, at least 1. Got 0 instead."),
        ("{enabled: maybe}", "The 'models.mine.early_stopping.enabled' config key must be true or false. Got 'maybe' instead."),
        ("{validation_fraction: 1.5}", "The 'models.mine.early_stopping.validation_fraction' config key must be a number in (0, 1)."),
        ("{tol: -1}", "The 'models.mine.early_stopping.tol' config key must be a number, 0 or more. Got -1 instead."),
        ("false", "The 'models.mine.early_stopping' config key must be a mapping of early-stopping settings (enabled, patience,"),
        ("{patience: 3, enabled: false, tol: 0}", None),
    ],
)
def test_a_model_files_early_stopping_block_is_checked_by_its_key(tmp_path, block, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        f"# @package models.mine\n_target_: sklearn.ensemble.HistGradientBoostingRegressor\nearly_stopping: {block}\n"
    )
    cfg = composed("model=mine", "data=small", f"hydra.searchpath=[file://{tmp_path}]")
    if message is None:
        validate_config(cfg, models=collect_models(cfg, choice="mine"))
        return
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, models=collect_models(cfg, choice="mine"))
    assert message in str(err.value)


def test_feature_sets_expand_names_of_other_sets():
    sets = {"a": ["x", "y"], "b": ["z"], "ab": ["a", "b", "x"]}
    assert resolve_features("ab", sets, key="k") == ["x", "y", "z"]
    assert resolve_features(["b", "w"], sets, key="k") == ["z", "w"]


def test_model_step_gets_early_stopping_and_features():
    cfg = composed("model=enhanced", "early_stopping.patience=3")
    (step,) = [s for s in build_steps(cfg, collect_models(cfg)) if s.name == "enhanced"]
    assert step.config["early_stopping"]["patience"] == 3
    assert "curve_level" in step.config["features"] and "prev_residual" in step.config["features"]
    assert "_target_" in step.config["estimator"] and "features" not in step.config["estimator"]


def test_user_model_files_from_the_search_path(tmp_path):
    """A header-less file is named after the choice; in a list only files with the header may be combined."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_lasso.yaml").write_text("_target_: sklearn.linear_model.Lasso\nalpha: 0.01\n")
    (tmp_path / "model" / "my_ridge.yaml").write_text("# @package models.my_ridge\n_target_: sklearn.linear_model.Ridge\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"

    cfg = composed("model=my_lasso", search)
    assert collect_models(cfg, choice="my_lasso") == {"my_lasso": {"_target_": "sklearn.linear_model.Lasso", "alpha": 0.01}}
    cfg = composed("model=[basic,my_ridge]", search)
    assert set(collect_models(cfg, choice="[basic,my_ridge]")) == {"basic", "my_ridge"}
    # it was "The 'model' config key holds keys without a '_target_': ['alpha']", naming neither the file nor the choice
    (tmp_path / "model" / "bad21.yaml").write_text("alpha: 1.0\n")
    cfg = composed("model=bad21", search)
    with pytest.raises(ConfigError, match=r"^The model file model/bad21.yaml \(model=bad21\) has no '_target_', the estimator"):
        collect_models(cfg, choice="bad21")
    cfg = composed("model=basic", "+model.alpha=1", search)  # a key set as model.<key> beside a file with its header
    with pytest.raises(ConfigError, match=r"^The 'model' config key holds keys without a '_target_': \['alpha'\]"):
        collect_models(cfg, choice="basic")
    cfg = composed("model=[basic,my_lasso]", search)
    with pytest.raises(ConfigError, match=r"lists a model file without a '# @package models.<name>' header \(model/my_lasso.yaml\);"):
        collect_models(cfg, choice="[basic,my_lasso]")
    # a set file: Hydra merged its header-less members into one model (Lasso's class, Ridge's alpha) with exit 0
    (tmp_path / "model" / "my_ridge_bare.yaml").write_text("_target_: sklearn.linear_model.Ridge\nalpha: 3.0\n")
    for members in (["my_ridge_bare", "my_lasso"], ["basic", "my_lasso"]):
        (tmp_path / "model" / "my_set.yaml").write_text("defaults:\n" + "".join(f"  - {m}\n" for m in members))
        cfg = composed("model=my_set", search)
        with pytest.raises(ConfigError, match=r"The 'model' choice my_set is a set of model files, and some have no '# @package"):
            collect_models(cfg, choice="my_set")


def test_a_chosen_model_file_another_config_folder_also_holds_is_refused(tmp_path):
    """Hydra reads the first of the search path's files, and bondexp's own conf/ comes before any
    hydra.searchpath folder: a user's model/basic.yaml (a Lasso) was ignored, and the run trained bondexp's forest."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "basic.yaml").write_text("_target_: sklearn.linear_model.Lasso\nalpha: 0.01\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    for choice in ("basic", "[basic,enhanced]", "ml"):  # chosen, listed, or a member of a set file
        cfg = composed(f"model={choice}", search)
        with pytest.raises(ConfigError) as err:
            collect_models(cfg, choice=choice)
        assert str(err.value) == (
            f"The 'model' option basic is a file in more than one config folder (pkg://bondexp.conf/model/basic.yaml and "
            f"file://{tmp_path}/model/basic.yaml), and Hydra reads only the first (bondexp's own conf/ comes before any "
            "hydra.searchpath folder); rename yours, e.g. to model/my_basic.yaml (with '# @package models.my_basic' if it "
            "has a header), and choose model=my_basic."
        )
    cfg = composed("model=enhanced", search)  # the other options are not in question
    assert set(collect_models(cfg, choice="enhanced")) == {"enhanced"}


def test_two_chosen_model_files_writing_one_model_name_are_refused(tmp_path):
    """Hydra merged two files headed '# @package models.basic' into one model: with a Lasso, the run failed on
    'models.basic.n_estimators', a key its user never wrote; with an ExtraTrees it passed the checks and failed in its step."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_basic.yaml").write_text("# @package models.basic\n_target_: sklearn.linear_model.Lasso\n")
    (tmp_path / "model" / "my_et.yaml").write_text("# @package models.basic\n_target_: sklearn.ensemble.ExtraTreesRegressor\n")
    (tmp_path / "model" / "my_other.yaml").write_text("# @package models.other\n_target_: sklearn.linear_model.Lasso\n")
    (tmp_path / "model" / "my_lasso.yaml").write_text("_target_: sklearn.linear_model.Lasso\n")
    (tmp_path / "model" / "my_set.yaml").write_text("defaults:\n  - basic\n  - my_other\n")
    (tmp_path / "model" / "bad_set.yaml").write_text("defaults:\n  - basic\n  - my_et\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    ours = "pkg://bondexp.conf/model/basic.yaml"
    for choice, files, rename in [
        ("[basic,my_basic]", f"{ours} and file://{tmp_path}/model/my_basic.yaml", "my_basic"),
        ("[my_et,basic]", f"file://{tmp_path}/model/my_et.yaml and {ours}", "my_et"),
        ("bad_set", f"{ours} and file://{tmp_path}/model/my_et.yaml", "my_et"),
    ]:
        cfg = composed(f"model={choice}", search)
        with pytest.raises(ConfigError) as err:
            collect_models(cfg, choice=choice)
        assert str(err.value) == (
            f"The chosen model files {files} both write the model 'basic' ('# @package models.basic'), and Hydra would "
            f"merge them into one; rename the header of one of them, e.g. '# @package models.{rename}' in model/{rename}.yaml."
        )
    # what stays as it was: set files, a file named otherwise than its header chosen alone, header-less files, a repeat
    for choice, expected in [
        ("ml", {"basic", "enhanced", "advanced", "automl"}),
        ("all", {"basic", "enhanced", "advanced", "automl", "regime", "factor", "tail_risk", "bayesian"}),
        ("[ml,risk]", {"basic", "enhanced", "advanced", "automl", "regime", "factor", "tail_risk", "bayesian"}),
        ("my_set", {"basic", "other"}),
        ("[my_set,enhanced]", {"basic", "other", "enhanced"}),
        ("my_et", {"basic"}),
        ("my_other", {"other"}),
        ("my_lasso", {"my_lasso"}),
        ("[basic,basic]", {"basic"}),
    ]:
        cfg = composed(f"model={choice}", search)
        assert set(collect_models(cfg, choice=choice)) == expected, choice


@pytest.mark.parametrize("choice, hint", [("my_lasso.yaml", "model=my_lasso"), ("[basic,my_lasso.yaml]", "model=[basic,my_lasso]")])
def test_a_model_option_given_with_its_file_extension_is_refused(tmp_path, choice, hint):
    """Hydra found model/my_lasso.yaml for model=my_lasso.yaml, and the header-less file was named after the
    choice: a model 'my_lasso.yaml', tuned as 'my_lasso.yaml_tuned'."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_lasso.yaml").write_text("_target_: sklearn.linear_model.Lasso\n")
    cfg = composed(f"model={choice}", f"hydra.searchpath=[file://{tmp_path}]")
    with pytest.raises(ConfigError) as err:
        collect_models(cfg, choice=choice)
    assert str(err.value) == f"The 'model' choice my_lasso.yaml names a file with its extension; choose the option without it: {hint}."


def test_the_dask_executor_without_dask_installed_fails_before_any_work(monkeypatch):
    cfg = composed("executor=dask", "data=small")
    hide_package(monkeypatch, "distributed")
    with pytest.raises(ConfigError, match=r"'executor' config group is 'dask' but Dask's 'distributed' package is not installed: pip"):
        validate_config(cfg, models=collect_models(cfg, choice="all"))


def test_a_key_bondexp_does_not_read_fails_before_any_work():
    # Hydra's own message for `modle=enhanced` suggests `+modle=enhanced`, which it then accepts.
    cfg = composed("+modle=enhanced", "data=small")
    with pytest.raises(ConfigError, match=r"key\(s\) \['modle'\] that bondexp does not read.* Did you mean 'model'\?"):
        validate_config(cfg, models=collect_models(cfg, choice="all"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///tuning.db", "sqlite:////launch/tuning.db"),
        ("sqlite:///studies/t.db?timeout=30", "sqlite:////launch/studies/t.db?timeout=30"),
        ("sqlite+pysqlite:///t.db", "sqlite+pysqlite:////launch/t.db"),
        ("sqlite:////abs/t.db", "sqlite:////abs/t.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
        ("postgresql://u:pw@host/db", "postgresql://u:pw@host/db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        (None, None),
    ],
)
def test_a_relative_sqlite_file_is_read_from_the_launch_folder(url, expected):
    assert absolute_sqlite_url(url, Path("/launch")) == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modle=enhanced", "The 'modle' config key does not exist. Did you mean 'model'?"),
        ("models.enhanced.learnig_rate=0.1", "The 'models.enhanced.learnig_rate' config key does not exist. Did you mean 'learning_rate'?"),
        ("data.n_observation=100", "The 'data.n_observation' config key does not exist. Did you mean 'n_observations'?"),
        (  # a parameter its model file does not list: nothing close, so how to add it
            "models.enhanced.l2_regularization=1",
            "The 'models.enhanced.l2_regularization' config key does not exist. To add a key the config does not have, "
            "prefix it with '+': +models.enhanced.l2_regularization=1.",
        ),
        # a section whose keys the schema fixes, nothing close: it said to add the key with '+', which bondexp then refused
        (
            "drift.treshold=0.1",
            "The 'drift.treshold' config key does not exist: the 'drift' keys are psi_warn, psi_alert, ks_alpha, correction, n_bins, "
            "psi_floor.",
        ),
        ("data.split.first=0.5", "The 'data.split.first' config key does not exist: the 'data.split' keys are train, validation, test."),
        ("tune.n_trial=3", "The 'tune.n_trial' config key does not exist. Did you mean 'n_trials'?"),
        (
            "colour=red",
            "The 'colour' config key does not exist: bondexp's top-level keys are workers, seed, progress, dry_run, "
            "resume, cache_dir, data, model, models, feature_sets, early_stopping, eval, drift, tune, backtest, executor, tracking, steps.",
        ),
        (  # a model's parameter under `model` (a header-less file's key): '+model.max_iter=3' then failed as keys without a _target_
            "model.max_iter=3",
            "The 'model.max_iter' config key does not exist. A model's parameters are set under its name: models.<name>.max_iter=3, "
            "<name> one of basic, enhanced, advanced, automl, regime, factor, tail_risk, bayesian.",
        ),
        # a group option that does not exist: Hydra listed the options under its config search path (exit 1)
        (
            "model=[basic,enhancd]",
            "model=[basic,enhancd]: the 'model' config group has no option 'enhancd'. Did you mean 'enhanced'? "
            "Its options: advanced, all, automl, basic, bayesian, enhanced, factor, ml, regime, risk, tail_risk.",
        ),
        (
            "data=smal",
            "data=smal: the 'data' config group has no option 'smal'. Did you mean 'small'? Its options: csv, parquet, small, synthetic.",
        ),
        (  # a setting below a key the file lacks: Hydra named the parent, in seven lines (exit 1)
            "models.enhanced.early_stopping.patience=3",
            "The 'models.enhanced.early_stopping' config key does not exist. To add a key the config does not have, "
            "prefix it with '+': +models.enhanced.early_stopping.patience=3.",
        ),
        # a deletion of a key that does not exist: Hydra's "Could not delete from config" and its traceback hint (exit 1)
        ("~steps.tun", "~steps.tun: the 'steps.tun' config key does not exist, so there is nothing to delete. Did you mean 'tune'?"),
        (
            "~drift.nope",
            "~drift.nope: the 'drift.nope' config key does not exist, so there is nothing to delete. "
            "The 'drift' keys are psi_warn, psi_alert, ks_alpha, correction, n_bins, psi_floor.",
        ),
        # a wrong type: Hydra's four lines named OmegaConf's object_type
        ("workers=abc", "workers=abc: Value 'abc' of type 'str' could not be converted to Integer."),
        ("progress=maybe", "progress=maybe: Value 'maybe' is not a valid bool (type str)."),
        (  # a list for the models' mapping: Hydra said "Cannot merge DictConfig with ListConfig"
            "models=[enhanced]",
            "models=[enhanced]: 'models' holds a mapping of settings; set one with models.<name>=<value>. "
            "To choose the 'model' group's options: model=[enhanced].",
        ),
        ("tune=foo", "tune=foo: 'tune' holds a mapping of settings; set one with tune.<name>=<value>."),
        ("seed=range(3)", None),  # a sweep without --multirun: Hydra's own message, which says to add it
    ],
)
def test_an_override_hydra_cannot_apply_gets_one_line_naming_it(override, message):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bondexp.hydra_startup import override_error_message

    with initialize_config_module(config_module="bondexp.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        with pytest.raises(Exception) as caught:
            hydra.config_loader.load_configuration(config_name="config", overrides=[override], run_mode=RunMode.RUN)
        assert override_error_message(hydra, "config", [override], caught.value) == message
