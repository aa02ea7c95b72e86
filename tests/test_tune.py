"""Tests of the tuning package: target choice and skip, search spaces by name and by class, the
untuned trial, identical studies in-process, on trial processes and in a daemonic process, resume
after a kill, the timeout cap, storage."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.utils import all_estimators

import tune_helpers as helpers
from bondexp.artifacts import ModelArtifact
from bondexp.errors import BondexpError, ConfigError, StepSkipped
from bondexp.executors import kill_forkserver
from bondexp.models.stacking import StackedRegressor
from bondexp.tuning import study as studies
from bondexp.tuning.space import check_estimator_params, distribution, search_space, space_key
from bondexp.tuning.step import choose_target
from bondexp.tuning.study import UNTUNED_ATTR, trial_start_method

TESTS = Path(__file__).parent
tune = helpers.tune_flat
TREE = {"_target_": "sklearn.tree.DecisionTreeRegressor"}
RIDGE_CLASS = {"Ridge": {"alpha": {"low": 1e-3, "high": 1e3, "log": True}}}


def _artifact(group: str, val_rmse: float, estimator: dict | None = None) -> ModelArtifact:
    return ModelArtifact(
        name="m", group=group, config={"estimator": estimator or {}}, features=[], predictions={}, metrics={"val_rmse": val_rmse}
    )


def _study(run_dir: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "tuning" / "journal.log")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def _trials(artifact: dict) -> list:
    """What must be identical between two studies: each trial's parameters, state and value, in order."""
    return [(t["params"], t["state"], t["value"]) for t in artifact["trials"]]


@pytest.fixture(scope="module")
def shared():
    return helpers.use_toy_dataset()


@pytest.fixture(scope="module")
def inputs(shared):
    return {"ridge": helpers.model_artifact("ridge"), "tree": helpers.model_artifact("tree")}


# ----------------------------------------------------------------------------- choosing and checking


def test_target_defaults_to_best_tunable_ml_model_by_name_or_class():
    models = {
        "basic": _artifact("ml", 0.9),
        "mine": _artifact("ml", 0.7, {"_target_": "sklearn.linear_model.Ridge"}),
        "automl": _artifact("ml", 0.6, {"_target_": "bondexp.models.automl.AutoMLRegressor"}),
        "bayesian": _artifact("risk", 0.5),
    }
    by_name = {"basic": {"a": {}}, "bayesian": {"a": {}}}
    # the risk model is better but not ML; automl is the best ML model but has no space; mine has its class's
    assert choose_target(None, models, by_name=by_name, by_class=RIDGE_CLASS) == "mine"
    assert choose_target(None, models, by_name=by_name, by_class={}) == "basic"
    assert choose_target("bayesian", models, by_name=by_name, by_class={}) == "bayesian"


@pytest.mark.parametrize(
    ("target", "models", "error", "message"),
    [
        (None, {"bayesian": _artifact("risk", 0.5)}, StepSkipped, "tune.target is null and no model of group 'ml' was chosen$"),
        (None, {"automl": _artifact("ml", 0.5)}, StepSkipped, r"no chosen model of group 'ml' \(automl\) has a search space"),
        ("enhancd", {"enhanced": _artifact("ml", 0.5)}, ConfigError, r"must name a trained model, one of \['enhanced'\]"),
    ],
)
def test_target_errors_and_skips(target, models, error, message):
    with pytest.raises(error, match=message):
        choose_target(target, models, by_name={"bayesian": {"a": {}}}, by_class={})


def test_a_space_by_name_wins_over_the_class_default():
    by_name = {"mine": {"alpha": {"low": 1.0, "high": 2.0}}}
    ridge = {"_target_": "sklearn.linear_model.Ridge"}
    assert space_key("mine", ridge, by_name=by_name, by_class=RIDGE_CLASS) == "tune.search_space.mine"
    assert space_key("other", ridge, by_name=by_name, by_class=RIDGE_CLASS) == "tune.class_search_space.Ridge"
    assert space_key("other", TREE, by_name=by_name, by_class=RIDGE_CLASS) is None
    key, space = search_space("other", ridge, by_name=by_name, by_class=RIDGE_CLASS)
    assert key == "tune.class_search_space.Ridge" and space["alpha"].log
    with pytest.raises(ConfigError, match=r"'tune\.search_space\.t' .* its class 'DecisionTreeRegressor' has no default"):
        search_space("t", TREE, by_name=by_name, by_class=RIDGE_CLASS)


def test_named_target_without_any_space_is_a_clear_error(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "tree", "search_space": {"ridge": helpers.BASE_TUNE["search_space"]["ridge"]}}
    with pytest.raises(ConfigError, match=r"'tune\.search_space\.tree' config key must map parameters"):
        tune(config, inputs, helpers.context(tmp_path, shared))
    assert not (tmp_path / "tuning").exists()  # failed before touching the study


def test_unknown_estimator_parameter_is_a_clear_error(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "tree", "search_space": {"tree": {"max_dept": {"low": 2, "high": 8}}}}
    with pytest.raises(ConfigError, match=r"'tune\.search_space\.tree\.max_dept' .* of DecisionTreeRegressor.*'max_depth'"):
        tune(config, inputs, helpers.context(tmp_path, shared))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"low": 1, "high": 1}, "numeric bounds with low < high"),
        ({"low": 0.0, "high": 1.0, "log": True}, "low > 0 when log is true"),
        ({"low": 1, "high": 5, "type": "integer"}, "'type' is 'int' or 'float'"),
        ({"low": 0.5, "high": 5, "type": "int"}, "integer bounds for type int"),
        ({"low": 1, "hihg": 5}, "with 'low' and 'high'"),
        ({"choices": []}, "non-empty list"),
        ({"choices": [[64, 32]]}, "choices of null, bool, int, float or str"),
        ("0.1..1", "a mapping"),
    ],
)
def test_search_space_errors_name_the_parameter(spec, message):
    with pytest.raises(ConfigError, match=rf"'tune\.search_space\.m\.p' config key must be .*{message}"):
        search_space("m", {}, by_name={"m": {"p": spec}}, by_class={})


def test_search_space_kinds():
    kinds = [
        distribution(spec, key="k")
        for spec in (
            {"low": 1, "high": 9},
            {"low": 1e-3, "high": 1.0, "log": True},
            {"low": 1, "high": 9, "type": "float"},
            {"choices": [None, 8, "x"]},
        )
    ]
    assert [type(d).__name__ for d in kinds] == ["IntDistribution", "FloatDistribution", "FloatDistribution", "CategoricalDistribution"]
    assert kinds[1].log and kinds[3].choices == (None, 8, "x")


def test_every_class_default_space_parses():
    from omegaconf import OmegaConf

    spaces = OmegaConf.to_container(OmegaConf.load(TESTS.parent / "conf" / "search_space" / "default.yaml"))
    wanted = {
        "RandomForestRegressor",
        "ExtraTreesRegressor",
        "HistGradientBoostingRegressor",
        "GradientBoostingRegressor",
        "Ridge",
        "Lasso",
        "ElasticNet",
        "KNeighborsRegressor",
        "SVR",
        "MLPRegressor",
    }
    assert wanted <= set(spaces)
    classes = {name: cls for name, cls in all_estimators(type_filter="regressor") if name in spaces}
    classes["StackedRegressor"] = StackedRegressor
    assert set(classes) == set(spaces)
    for cls, params in spaces.items():
        space = {name: distribution(spec, key=f"tune.class_search_space.{cls}.{name}") for name, spec in params.items()}
        check_estimator_params(space, classes[cls](), key=f"tune.class_search_space.{cls}")  # every bound one the class takes


def test_a_bound_the_estimator_rejects_is_a_config_error():
    space = {"learning_rate": distribution({"low": -1.0, "high": 0.1}, key="k")}
    with pytest.raises(ConfigError, match=r"'tune.search_space.m.learning_rate' config key reaches -1.0, which HistGradientBoosting"):
        check_estimator_params(space, HistGradientBoostingRegressor(), key="tune.search_space.m")


# ----------------------------------------------------------------------------- the study


def test_untuned_trial_comes_first_scores_the_untuned_model_and_outputs_are_written(tmp_path, shared, inputs, toy_dataset):
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 5}
    artifact = tune(config, inputs, helpers.context(tmp_path, shared))
    first = artifact["trials"][0]
    assert first["untuned"] and first["state"] == "COMPLETE"
    assert first["params"] == {"max_depth": 3, "min_samples_leaf": 1} == artifact["untuned_params"]
    assert first["value"] == artifact["untuned_value"]  # the objective is the untuned model's own validation RMSE
    assert sum(t["untuned"] for t in artifact["trials"]) == 1
    assert artifact["metrics"]["val_rmse"] == artifact["best_value"] <= artifact["untuned_value"]
    assert artifact["metrics"]["n_trials"] == 5 and len(artifact["trials"]) == 5
    assert artifact["metrics"]["reproducible"] and not artifact["metrics"]["timed_out"]
    assert set(artifact["predictions"]) == {"validation", "test"}
    assert artifact["predictions"]["test"]["mean"].shape == toy_dataset.splits["test"].shape
    assert artifact["name"] == "tree_tuned" and artifact["group"] == "ml"
    saved = json.loads(artifact["files"]["tuning.json"])
    assert saved["target"] == "tree" and saved["best_params"] == artifact["best_params"]
    assert [t["number"] for t in saved["trials"]] == list(range(5))
    assert artifact["files"]["plots/tuning_history.png"].startswith(b"\x89PNG")
    assert not (tmp_path / "tuning.json").exists()  # the step writes its study, never its report files
    assert artifact["n_failed"] == artifact["metrics"]["n_failed"] == 0 and artifact["failures"] is None and artifact["warnings"] == ()


def test_when_untuned_is_best_the_tuned_model_is_the_untuned_one(tmp_path, shared, inputs):
    narrow = {"tree": {"min_samples_leaf": {"low": 1, "high": 2}}}  # trial 0 (1) ties or beats every other
    artifact = tune(
        {**helpers.BASE_TUNE, "target": "tree", "n_trials": 2, "batch_size": 1, "search_space": narrow},
        inputs,
        helpers.context(tmp_path, shared),
    )
    if artifact["trials"][0]["value"] <= artifact["best_value"]:
        assert artifact["model"] is inputs["tree"].pipeline
        assert "untuned" in artifact["note"]


def test_a_space_without_the_untuned_values_keeps_the_untuned_model_when_no_trial_beats_it(tmp_path, shared, inputs):
    """max_leaf_nodes in [1, 3] for enhanced: the note said 'lowered the validation RMSE from 1.2271 to 1.4217' and
    enhanced_tuned was worse than enhanced on validation. No trial had the untuned depth; validation keeps it."""
    stumps = {"tree": {"max_depth": {"choices": [1]}}}  # the untuned depth, 3, lies outside
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 2, "search_space": stumps}
    artifact = tune(config, inputs, helpers.context(tmp_path, shared))
    assert [t["params"]["max_depth"] for t in artifact["trials"]] == [1, 1]
    assert artifact["best_value"] > artifact["untuned_value"]  # every trial is worse than the untuned model
    assert artifact["kept_untuned"] and not artifact["improved"] and artifact["model"] is inputs["tree"].pipeline
    assert artifact["metrics"]["val_rmse"] == artifact["untuned_value"] and artifact["config"]["estimator"]["max_depth"] == 3
    assert artifact["note"].startswith("No trial beat the untuned model of tree on validation") and "lowered" not in artifact["note"]


#: Poisson trees refuse the toy panel's negative residuals: the untuned trial completes, a Poisson one fails.
POISSON = {"tree": {"criterion": {"choices": ["squared_error", "poisson"]}}}
POISSON_ERROR = "ValueError: Some value(s) of y are negative which is not allowed for Poisson regression."


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.tune" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_trial_is_logged_with_its_traceback_counted_and_handed_to_the_terminal(tmp_path, shared, inputs, caplog, workers):
    """15 of 16 trials failed and only tuning.json said so: tune.log, report.md and the terminal were silent.
    With two workers the failure comes back from a trial process, traceback included."""
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 4, "search_space": POISSON}
    with caplog.at_level(logging.INFO, logger="test.tune"):
        artifact = tune(config, inputs, helpers.context(tmp_path, shared, workers=workers))
    failed = [t for t in artifact["trials"] if t["state"] == "FAIL"]
    assert [t["params"] for t in failed] == [{"criterion": "poisson"}] and failed[0]["error"] == POISSON_ERROR
    first, *_, last = _warnings(caplog)
    assert first.startswith(f"trial {failed[0]['number']} failed with parameters {{'criterion': 'poisson'}}: {POISSON_ERROR}\nTraceback")
    summary = f"1 of 4 trials failed: {POISSON_ERROR}"
    assert last == artifact["failures"] == summary and artifact["n_failed"] == artifact["metrics"]["n_failed"] == 1
    assert json.loads(artifact["files"]["tuning.json"])["n_failed"] == 1
    assert artifact["warnings"] == (f"{summary} (every error in tuning.json, tracebacks in logs/tune.log)",)


def test_when_every_trial_fails_the_step_fails_with_the_first_error_and_one_traceback_per_error(tmp_path, shared, inputs, caplog):
    """The untuned criterion lies outside the space, so no trial has it and none completes: nothing to call tuned."""
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 4, "search_space": {"tree": {"criterion": {"choices": ["poisson"]}}}}
    with caplog.at_level(logging.INFO, logger="test.tune"), pytest.raises(BondexpError) as raised:
        tune(config, inputs, helpers.context(tmp_path, shared))
    assert str(raised.value).endswith(f"has no complete trial: 4 of 4 trials failed: {POISSON_ERROR}")
    logged = _warnings(caplog)
    assert [m.partition(" failed")[0] for m in logged] == ["trial 0", "trial 1", "trial 2", "trial 3"]
    assert ["Traceback" in m for m in logged] == [True, False, False, False] and logged[1].endswith("(traceback above)")


def _config(**changes) -> dict:
    return {**helpers.BASE_TUNE, "target": "tree", "n_trials": 6, "batch_size": 3, **changes}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_one_thread_step_fit_is_the_untuned_trial_and_is_not_fitted_again(tmp_path, shared, inputs, monkeypatch, workers):
    """A model step that fitted on one thread made the very fit the untuned trial would: the study tells it
    instead of fitting it, and every trial, value and proposal is what fitting it gave."""
    fitted = []
    fit_trial = studies.run_trial
    monkeypatch.setattr(
        studies, "run_trial", lambda config, dataset, params: fitted.append(dict(params)) or fit_trial(config, dataset, params)
    )
    fresh = tune(_config(), inputs, helpers.context(tmp_path / "fresh", shared, workers=workers))  # no thread count recorded
    assert fresh["trials"][0]["untuned"] and not fresh["trials"][0]["reused_step_fit"] and not fresh["info"]["untuned_fit_reused"]
    tree = inputs["tree"]
    stepped = {"tree": dataclasses.replace(tree, info={**tree.info, "threads": 1})}
    reused = tune(_config(), stepped, helpers.context(tmp_path / "reused", shared, workers=workers))
    assert _trials(reused) == _trials(fresh) and reused["best_params"] == fresh["best_params"]
    assert [t["reused_step_fit"] for t in reused["trials"]] == [True] + [False] * 5 and reused["info"]["untuned_fit_reused"]
    if workers == 1:  # every trial fits in this process: the untuned parameters were fitted once, for the fresh study
        assert [p == fresh["untuned_params"] for p in fitted].count(True) == 1 and len(fitted) == 6 + 5
    if reused["best_params"] == fresh["untuned_params"]:
        assert reused["model"] is tree.pipeline
    two = {"tree": dataclasses.replace(tree, info={**tree.info, "threads": 2})}  # other arithmetic: fitted again
    assert not tune(_config(), two, helpers.context(tmp_path / "two", shared, workers=workers))["trials"][0]["reused_step_fit"]


def test_same_study_in_process_on_trial_processes_and_from_a_pool_worker(tmp_path, shared, inputs):
    one = tune(_config(), inputs, helpers.context(tmp_path / "one", shared, workers=1))
    two = tune(_config(), inputs, helpers.context(tmp_path / "two", shared, workers=2))  # a forked trial process
    assert _trials(one) == _trials(two) and one["best_params"] == two["best_params"]
    assert len({t.user_attrs["worker"] for t in _study(tmp_path / "two").get_trials()}) == 2  # really parallel
    # steps on two BLAS/OpenMP threads: this process may have run OpenMP teams, so the trial process is spawned
    assert (trial_start_method(1), trial_start_method(2)) == ("fork", "spawn")
    spawned = tune(_config(), inputs, helpers.context(tmp_path / "spawned", shared, workers=2, threads=2))
    assert _trials(spawned) == _trials(one)
    # the runner's pool workers are forkserver processes; the step starts its own trial processes there (forked)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            pooled = pool.submit(helpers.tune_in_worker, str(tmp_path / "pool"), _config(target="ridge"), 2).result(timeout=300)
    finally:  # a server without bondexp's preload, which a later run in this process would use (seen as unfrozen workers)
        kill_forkserver()
    ridge = tune(_config(target="ridge"), {"ridge": helpers.model_artifact("ridge")}, helpers.context(tmp_path / "ridge", shared))
    assert [(t["params"], t["value"]) for t in pooled["trials"]] == [(t["params"], t["value"]) for t in ridge["trials"]]
    other_seed = tune(_config(seed=1), inputs, helpers.context(tmp_path / "seed1", shared))
    assert [t["params"] for t in other_seed["trials"]][1:] != [t["params"] for t in one["trials"]][1:]


def _tune_in_daemon(run_dir: str, config: dict, queue) -> None:
    queue.put(helpers.tune_in_worker(run_dir, config, 2))


def test_trial_processes_leave_ctrl_c_to_the_run():
    """A step lets Ctrl-C in while it runs, and its trial processes inherited that: an idle one answered a
    Ctrl-C with a KeyboardInterrupt traceback from its queue read. They end with the step's process instead."""
    from bondexp.tuning.study import _init_trial_process

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as the step's process has it while the step runs
    context = multiprocessing.get_context(trial_start_method(1))
    with ProcessPoolExecutor(1, mp_context=context, initializer=_init_trial_process, initargs=({}, None, os.getpid())) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN


def test_a_daemonic_process_runs_the_trials_itself_with_the_same_results(tmp_path, shared):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    daemon = context.Process(target=_tune_in_daemon, args=(str(tmp_path / "d"), _config(target="ridge"), queue), daemon=True)
    daemon.start()
    result = queue.get(timeout=300)
    daemon.join(timeout=60)
    ridge = tune(_config(target="ridge"), {"ridge": helpers.model_artifact("ridge")}, helpers.context(tmp_path / "ridge", shared))
    assert [(t["params"], t["value"]) for t in result["trials"]] == [(t["params"], t["value"]) for t in ridge["trials"]]
    assert len({t.user_attrs["worker"] for t in _study(tmp_path / "d").get_trials()}) == 1


def test_resume_continues_the_study_to_the_same_result(tmp_path, shared, inputs):
    whole = tune(_config(), inputs, helpers.context(tmp_path / "whole", shared))
    tune(_config(n_trials=3), inputs, helpers.context(tmp_path / "parts", shared))
    stale = _study(tmp_path / "parts").ask()  # a trial a killed process left RUNNING
    resumed = tune(_config(), inputs, helpers.context(tmp_path / "parts", shared))
    assert resumed["info"]["stale_trials_failed"] == 1
    stale_record = next(t for t in resumed["trials"] if t["number"] == stale.number)
    assert stale_record["state"] == "FAIL" and stale_record["error"].startswith("stale: a killed run left it running")
    finished = [(t["params"], t["value"]) for t in resumed["trials"] if t["state"] == "COMPLETE"]
    assert finished == [(t["params"], t["value"]) for t in whole["trials"]]
    assert resumed["best_params"] == whole["best_params"]
    again = tune(_config(), inputs, helpers.context(tmp_path / "parts", shared))
    assert again["trials"] == resumed["trials"]  # nothing left to run


def test_a_study_holding_more_trials_than_n_trials_gives_what_n_trials_alone_gives(tmp_path, shared, inputs):
    """A folder (or storage) a run with a larger tune.n_trials had used made the same command's tuned model the best
    of all those trials, and tuning.json report the larger count."""
    whole = tune(_config(n_trials=3), inputs, helpers.context(tmp_path / "whole", shared))
    tune(_config(n_trials=5), inputs, helpers.context(tmp_path / "used", shared))
    again = tune(_config(n_trials=3), inputs, helpers.context(tmp_path / "used", shared))
    assert again["trials"] == whole["trials"] and again["metrics"]["n_trials"] == 3
    assert again["best_params"] == whole["best_params"] and again["val_rmse"] == whole["val_rmse"]


def test_a_ctrl_c_while_a_batch_is_told_back_lands_after_the_whole_batch(tmp_path, shared, inputs, monkeypatch):
    """A Ctrl-C among a batch's tells left its first trial finished and the others stale: the resume asked with
    one more finished trial, so other parameters, and the tuned model (and the backtest's tuned rows) changed.
    Optuna's journal lock left behind by such a Ctrl-C held the resume 30 s."""
    whole = tune(_config(), inputs, helpers.context(tmp_path / "whole", shared))
    tell, told = studies._tell, []

    def tell_then_ctrl_c(study, trial, *args, **kwargs):
        told.append(trial.number)
        best = tell(study, trial, *args, **kwargs)
        if len(told) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, as the first trial of the batch is told
        return best

    monkeypatch.setattr(studies, "_tell", tell_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        tune(_config(), inputs, helpers.context(tmp_path / "cut", shared))
    assert told == [0, 1, 2]  # the whole first batch, then the Ctrl-C
    assert [t.state for t in _study(tmp_path / "cut").get_trials()] == [TrialState.COMPLETE] * 3
    monkeypatch.setattr(studies, "_tell", tell)
    journal = tmp_path / "cut" / "tuning" / "journal.log"
    (tmp_path / "cut" / "tuning" / "journal.log.lock").symlink_to(journal)  # Optuna's lock, left by a Ctrl-C as it wrote
    started = time.monotonic()
    resumed = tune(_config(), inputs, helpers.context(tmp_path / "cut", shared))
    assert _trials(resumed) == _trials(whole) and resumed["best_params"] == whole["best_params"]
    assert time.monotonic() - started < 10  # Optuna waits 30 s on a lock before it breaks it


def test_a_database_study_whose_untuned_trial_a_kill_left_running_still_scores_it(tmp_path, shared, inputs):
    """A database study leaves a killed process's RUNNING trials alone (another process may be running them);
    one that was the untuned trial kept the resumed study from ever scoring the untuned parameters."""
    whole = tune(_config(n_trials=3), inputs, helpers.context(tmp_path / "whole", shared))
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    study = optuna.create_study(study_name=whole["info"]["study_name"], storage=storage, direction="minimize")
    studies.enqueue_untuned(study, whole["info"]["untuned_params"])
    stuck = study.ask()  # the untuned trial, asked by a process killed before it told it
    assert stuck.user_attrs[UNTUNED_ATTR]
    resumed = tune(_config(n_trials=3, storage=storage), inputs, helpers.context(tmp_path / "resumed", shared))
    assert next(t for t in resumed["trials"] if t["number"] == stuck.number)["state"] == "RUNNING"  # left alone
    finished = [t for t in resumed["trials"] if t["state"] == "COMPLETE"]
    assert len(finished) == 3 and finished[0]["untuned"] and finished[0]["value"] == whole["trials"][0]["value"]
    # the stuck trial looks like another run's, so the others are asked in another lane than the uninterrupted study's
    assert [t["params"] for t in finished[1:]] != [t["params"] for t in whole["trials"][1:]]
    assert resumed["val_rmse"] <= resumed["untuned_value"]


def test_runs_sharing_a_database_study_propose_different_parameters(tmp_path):
    """Two runs with one tune.storage share a study (its name hashes the seed), and asked the same parameters in
    lockstep: 10 trials in a 16-trial sqlite study held 5 pairs. A run alone asks what it always asked."""
    space = {"alpha": distribution({"low": 1e-3, "high": 1e3, "log": True}, key="k"), "depth": distribution({"low": 1, "high": 9}, key="k")}
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    one = optuna.create_study(study_name="s", storage=storage)
    other = optuna.load_study(study_name="s", storage=storage)
    mine = studies.ask_batch(one, space, seed=0, n_done=0, size=2)
    theirs = studies.ask_batch(other, space, seed=0, n_done=0, size=2)  # while the first run fits its batch
    assert [t.number for t in mine + theirs] == [0, 1, 2, 3]
    assert not {tuple(t.params.items()) for t in mine} & {tuple(t.params.items()) for t in theirs}
    alone = optuna.create_study()
    alone.sampler = studies.batch_sampler(0, 0)
    assert [t.params for t in mine] == [alone.ask(dict(space)).params for _ in range(2)]  # lane 0: the seed as before


def test_a_changed_search_space_starts_a_new_study(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "ridge", "n_trials": 2}
    tune(config, inputs, helpers.context(tmp_path, shared))
    narrower = {**config["search_space"], "ridge": {"alpha": {"low": 0.1, "high": 10.0, "log": True}}}
    artifact = tune({**config, "search_space": narrower}, inputs, helpers.context(tmp_path, shared))
    assert len(artifact["trials"]) == 2
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "tuning" / "journal.log")))
    assert len(optuna.get_all_study_names(storage)) == 2


@pytest.mark.parametrize("storage", ["tuning.db", "postgres"])
def test_storage_must_be_a_url(tmp_path, shared, inputs, storage):
    config = {**helpers.BASE_TUNE, "target": "ridge", "storage": storage}
    with pytest.raises(ConfigError, match="'tune.storage' config key must be null .* or a database URL"):
        tune(config, inputs, helpers.context(tmp_path, shared))


@pytest.mark.parametrize("kind", ["sqlite", "password"])
def test_a_storage_that_cannot_be_opened_says_why_on_one_line_without_a_password(tmp_path, shared, inputs, kind):
    """The terminal showed only SQLAlchemy's last line "(Background on this error at: https://sqlalche.me/...)", and the
    message (so results.json, report.md and the logs) held the password of ``postgresql://u:pw@host/db``."""
    storage = f"sqlite:///{tmp_path / 'missing' / 'x.db'}" if kind == "sqlite" else "postgresql://u:s3cretpw@127.0.0.1:9/db"
    config = {**helpers.BASE_TUNE, "target": "ridge", "storage": storage}
    with pytest.raises(ConfigError) as caught:
        tune(config, inputs, helpers.context(tmp_path, shared))
    message, shown = str(caught.value), "".join(traceback.format_exception(caught.value))
    assert len(message.splitlines()) == 1 and "sqlalche.me" not in shown and "s3cretpw" not in shown
    if kind == "sqlite":
        assert "unable to open database file" in message
    else:
        assert "'postgresql://u:***@127.0.0.1:9/db'" in message


def test_the_preflight_opens_the_storage_of_a_tune_step_that_will_run(tmp_path):
    """Before any step, where the steps run; not for a tune step reused from its checkpoint (its database may be gone)."""
    from bondexp.preflight import TUNE_STEP, config_error

    steps = {"tune": (TUNE_STEP, {**helpers.BASE_TUNE, "storage": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})}
    error = config_error(steps, ["tune"])
    assert isinstance(error, ConfigError) and "'tune.storage'" in str(error) and "unable to open database file" in str(error)
    assert config_error(steps, ["evaluate"]) is None
    steps = {"tune": (TUNE_STEP, {**helpers.BASE_TUNE, "storage": f"sqlite:///{tmp_path / 'x.db'}"})}
    assert config_error(steps, ["tune"]) is None and (tmp_path / "x.db").is_file()


def test_a_database_another_run_is_creating_at_that_moment_opens_after_it(tmp_path, monkeypatch):
    """Two runs started together on a new sqlite file: one failed with "names a database Optuna cannot open (...):
    UNIQUE constraint failed: alembic_version.version_num", the other run having created Optuna's tables first."""
    from sqlalchemy.exc import IntegrityError

    real, calls = optuna.storages.RDBStorage, []

    def racing(url):
        calls.append(url)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed: alembic_version.version_num"))
        return real(url)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'new.db'}")
    assert isinstance(storage, real) and len(calls) == 2


def test_sqlite_url_storage(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "ridge", "n_trials": 2, "storage": f"sqlite:///{tmp_path / 'study.db'}"}
    artifact = tune(config, inputs, helpers.context(tmp_path, shared))
    assert artifact["metrics"]["n_trials"] == 2 and (tmp_path / "study.db").exists()
    assert not (tmp_path / "tuning").exists()


def test_the_timeout_cap_stops_between_batches_and_says_so(tmp_path, shared):
    slow = helpers.model_artifact("slow", estimator={**helpers.ESTIMATORS["slow"], "delay": 0.3})
    config = {**helpers.BASE_TUNE, "target": "slow", "n_trials": 50, "batch_size": 2, "timeout": 0.2}
    artifact = tune(config, {"slow": slow}, helpers.context(tmp_path, shared))
    assert artifact["metrics"]["n_trials"] == 2  # the first batch finishes; no batch starts after the cap
    assert artifact["metrics"]["timed_out"] and not artifact["metrics"]["reproducible"]
    assert "tune.timeout stopped the study" in artifact["note"]
    # nor one that would end after it: batches of two 1 s sleeps (about 2 s), a cap of 5 s, so the second batch
    # ends at about 4 s and the third would end at about 6 s (the old check, before a batch only, ran it: 6 trials)
    slower = helpers.model_artifact("slow", estimator={**helpers.ESTIMATORS["slow"], "delay": 1.0})
    config = {**config, "timeout": 5.0}
    artifact = tune(config, {"slow": slower}, helpers.context(tmp_path / "later", shared))
    assert artifact["metrics"]["n_trials"] == 4 and artifact["metrics"]["timed_out"]


# ----------------------------------------------------------------------------- a killed run


def _complete_trials(run_dir: Path) -> list:
    try:
        return [t for t in _study(run_dir).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    except (ValueError, FileNotFoundError):  # the study is not created yet
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def test_killed_study_resumes_to_the_uninterrupted_result(tmp_path):
    n_trials, k = 6, 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    script = [sys.executable, str(TESTS / "tune_helpers.py")]
    process = subprocess.Popen(
        [*script, str(tmp_path / "killed"), str(n_trials), "0.2", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while len(_complete_trials(tmp_path / "killed")) < k:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the study never reached k complete trials"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    trials = _study(tmp_path / "killed").get_trials(deepcopy=False)
    before = {t.number: (t.params, t.value) for t in trials if t.state == TrialState.COMPLETE}
    assert k <= len(before) < n_trials
    pids = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials if "worker" in t.user_attrs}
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids - {process.pid}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "trial processes outlived the killed run"

    # the resumed study and an uninterrupted one (in another folder) run at once: each is one process
    resumed, whole = (
        subprocess.Popen(
            [*script, str(tmp_path / name), str(n_trials), "0.2", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in ("killed", "whole")
    )
    try:
        (resumed_out, resumed_err), (whole_out, whole_err) = (process.communicate(timeout=300) for process in (resumed, whole))
    finally:
        for process in (resumed, whole):
            if process.poll() is None:  # timed out
                process.kill()
                process.wait()
    assert resumed.returncode == 0 and whole.returncode == 0, resumed_err + whole_err
    assert resumed_out.split("done ")[1] == whole_out.split("done ")[1]  # count and best params
    trials = _study(tmp_path / "killed").get_trials(deepcopy=False)
    complete = {t.number: (t.params, t.value) for t in trials if t.state == TrialState.COMPLETE}
    assert {n: complete[n] for n in before} == before  # the finished trials were kept, not re-run
    assert sum(bool(t.user_attrs.get(UNTUNED_ATTR)) and t.state == TrialState.COMPLETE for t in trials) == 1
