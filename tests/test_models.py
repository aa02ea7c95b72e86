"""The model step and bondexp's estimators on the toy dataset: every model trains, scores sanely and stops early."""

from __future__ import annotations

import logging
import sys
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from bondexp import features as features_module
from bondexp.artifacts import ModelArtifact
from bondexp.errors import ConfigError
from bondexp.feature_names import BOND_FEATURES, FEATURES
from bondexp.models.base import final_estimator
from bondexp.models.quantile import conformal_quantile, kupiec_pof
from bondexp.steps.train import build_model, fit_model, fit_predict, predict_all

MODEL_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
MODELS = ("basic", "enhanced", "advanced", "automl", "regime", "factor", "tail_risk", "bayesian")
FEATURE_SETS = {"bond": list(BOND_FEATURES), "all": list(FEATURES)}
ES = {"enabled": True, "patience": 5, "validation_fraction": 0.1, "tol": 1e-4}
#: Budget cuts so each model trains in about a second on the toy panel.
FAST = {"automl": {"n_candidates": 4, "time_limit_s": 600}, "advanced": {"forest_n_estimators": 20}}


def step_config(name: str, *, estimator=None, early_stopping=None) -> dict:
    """The config slice the lead's pipeline builds from ``conf/model/<name>.yaml``."""
    spec = estimator or yaml.safe_load((MODEL_DIR / f"{name}.yaml").read_text())
    est = {k: v for k, v in spec.items() if k not in ("group", "features", "early_stopping")}
    est.update(FAST.get(name, {}))
    return {
        "name": name,
        "group": spec.get("group", "ml"),
        "estimator": est,
        "features": FEATURE_SETS[spec.get("features", "all")],
        "early_stopping": {**ES, **(early_stopping or {})},
        "seed": 0,
        "n_jobs": 1,
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS/OpenMP thread, as the runner gives a step on a shared machine (boosting oversubscribes otherwise)."""
    with threadpool_limits(1):
        yield


@pytest.fixture()
def ctx(toy_dataset, monkeypatch, tmp_path):
    """A step context whose dataset_for returns the toy panel."""
    monkeypatch.setattr("bondexp.steps.train.dataset_for", lambda shared: toy_dataset)
    return SimpleNamespace(name="m", run_dir=tmp_path, workers=1, threads=1, shared={}, log=logging.getLogger("t"))


@pytest.fixture(scope="module")
def artifacts(toy_dataset):
    """Every model of the suite trained once through the step."""
    import bondexp.steps.train as train

    original = train.dataset_for
    train.dataset_for = lambda shared: toy_dataset
    try:
        c = SimpleNamespace(name="m", run_dir=Path("."), workers=1, threads=1, shared={}, log=logging.getLogger("t"))
        return {name: fit_model(step_config(name), {}, c) for name in MODELS}
    finally:
        train.dataset_for = original


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_and_beats_predicting_zero(name, artifacts, toy_dataset):
    art = artifacts[name]
    assert isinstance(art, ModelArtifact) and art.name == name and art.pipeline is not None and art.features
    assert set(art.predictions) == {"validation", "test"}  # what the drift and evaluate steps read
    for split in ("validation", "test"):
        mean = art.predictions[split]["mean"]
        assert mean.shape == (len(toy_dataset.splits[split]),) and np.isfinite(mean).all()
    y = toy_dataset.target("test")
    rmse = np.sqrt(np.mean((y - art.predictions["test"]["mean"]) ** 2))
    assert rmse < np.sqrt(np.mean(y**2))
    m = art.metrics
    assert np.isfinite([m["val_rmse"], m["val_mae"], m["val_r2"]]).all() and m["val_r2"] > 0
    for value in m.values():
        assert isinstance(value, (int, float, str, bool))


@pytest.mark.parametrize("name, low, high", [("tail_risk", 0.75, 0.99), ("bayesian", 0.75, 0.99)])
def test_interval_models_cover_about_ninety_percent(name, low, high, artifacts, toy_dataset):
    pred = artifacts[name].predictions["test"]
    y = toy_dataset.target("test")
    assert pred["level"] == pytest.approx(0.9)
    assert np.all(pred["lower"] <= pred["upper"])
    assert low <= np.mean((y >= pred["lower"]) & (y <= pred["upper"])) <= high
    assert 0.8 <= artifacts[name].metrics["val_coverage"] <= 0.97


@pytest.mark.parametrize("name", ["tail_risk", "bayesian"])
def test_the_held_out_interval_scores_leave_the_shipped_calibration_alone(name, artifacts, toy_dataset):
    """The interval scores calibrate a copy on half the validation months; the model ships calibrated on every
    validation month, and predicts what it predicted before they were computed."""
    art = artifacts[name]
    again = predict_all(art.pipeline, toy_dataset.frame("test", art.features))
    for key in ("mean", "lower", "upper"):
        np.testing.assert_array_equal(again[key], art.predictions["test"][key])


def test_tail_risk_reports_var_es_and_kupiec(artifacts):
    art = artifacts["tail_risk"]
    pred = art.predictions["test"]
    assert np.all(pred["es"] >= pred["var"])
    np.testing.assert_allclose(pred["var"], -pred["lower"])
    assert 0 <= art.metrics["val_kupiec_pvalue"] <= 1 and np.isfinite(art.metrics["val_pinball"])


def test_bayesian_std_matches_its_band(artifacts):
    pred = artifacts["bayesian"].predictions["test"]
    half = (pred["upper"] - pred["lower"]) / 2
    np.testing.assert_allclose(half, 1.6448536 * pred["std"], rtol=1e-6)
    assert np.isfinite(artifacts["bayesian"].metrics["val_nll"])


def test_regime_records_bic_months_and_ari(artifacts, toy_dataset):
    art = artifacts["regime"]
    assert set(art.info["bic"]) == {"2", "3", "4"}
    months = np.unique(toy_dataset.meta["obs_date"].astype("datetime64[M]"))
    assert len(art.info["regime_by_month"]) == len(months)
    assert -1 <= art.metrics["train_regime_ari"] <= 1


def test_factor_and_automl_record_what_they_found(artifacts):
    var = artifacts["factor"].info["bond_explained_variance"]
    assert len(var) == 8 and all(a >= b for a, b in pairwise(var))
    info = artifacts["automl"].info
    assert {t["family"] for t in info["trials"]} == {"ridge", "boosting", "forest", "extra_trees"}
    best = min(t["score"] for t in info["trials"] if t["score"] is not None)
    assert info["best"]["score"] == best and info["best"]["family"] in info["why"]


def test_custom_lasso_runs_through_the_step_with_scaling(ctx, toy_dataset):
    config = step_config("lasso", estimator={"_target_": "sklearn.linear_model.Lasso", "alpha": 0.01, "features": "all"})
    art = fit_model(config, {}, ctx)
    y = toy_dataset.target("test")
    assert np.sqrt(np.mean((y - art.predictions["test"]["mean"]) ** 2)) < np.sqrt(np.mean(y**2))
    assert art.pipeline.named_steps["prep"] != "passthrough"  # linear models get standardisation and one-hot
    assert "n_iter" not in art.metrics


@pytest.mark.parametrize("name", ["enhanced", "advanced", "tail_risk"])
def test_early_stopping_is_visible_and_can_be_switched_off(name, toy_dataset, ctx):
    stop = fit_model(step_config(name), {}, ctx).metrics
    assert stop["early_stopped"] and stop["n_iter"] < stop["max_iter"]
    config = step_config(name, early_stopping={"enabled": False})
    if name == "advanced":
        config["estimator"].update(gb_max_iter=30, mlp_max_iter=20)
    else:
        config["estimator"]["max_iter"] = 30
    full = fit_model(config, {}, ctx).metrics
    assert not full["early_stopped"] and full["n_iter"] == full["max_iter"]


def test_build_model_injects_seed_jobs_and_params(toy_dataset):
    config = step_config("basic")
    model = build_model(config, dataset=toy_dataset, params={"n_estimators": 7})
    forest = final_estimator(model)
    assert (forest.n_estimators, forest.random_state, forest.n_jobs) == (7, 0, 1)
    assert model.named_steps["prep"] == "passthrough"
    clone(model)  # scikit-learn conventions: get_params/set_params round-trip


def test_unknown_target_and_feature_are_config_errors(toy_dataset):
    bad = step_config("x", estimator={"_target_": "sklearn.linear_model.NoSuchModel"})
    with pytest.raises(ConfigError, match="NoSuchModel"):
        build_model(bad, dataset=toy_dataset)
    config = step_config("basic")
    config["features"] = ["coupon_rate", "market_price"]
    with pytest.raises(ConfigError, match="market_price"):
        build_model(config, dataset=toy_dataset)


#: A user's module beside a model file: its ``_target_`` is ``<the module's name>.Model``.
USER_MODULES = {
    "user_syntax_error": "class Model:\n    def fit(self, X, y)\n        return self\n",
    "user_raises": "raise RuntimeError('no licence server')\n",
    "user_not_sklearn": "class Model:\n    def fit(self, X, y):\n        return self\n\n    def predict(self, X):\n        return X\n",
    # scikit-learn types it as no kind of estimator (None): a regressor for all it knows
    "user_base_estimator": "from sklearn.base import BaseEstimator\n\n\nclass Model(BaseEstimator):\n"
    "    def fit(self, X, y):\n        return self\n\n    def predict(self, X):\n        return X\n",
    # get_params and set_params without scikit-learn's tags: a Pipeline reads no type from it either
    "user_duck_typed": "class Model:\n    def get_params(self, deep=True):\n        return {}\n\n"
    "    def set_params(self, **params):\n        return self\n\n    def fit(self, X, y):\n        return self\n\n"
    "    def predict(self, X):\n        return X\n",
}


@pytest.mark.parametrize(
    "target, message",
    [
        # it trained (scored on its cluster labels) and could be chosen the best model
        ("sklearn.cluster.KMeans", "Got 'sklearn.cluster.KMeans', whose scikit-learn estimator type is 'clusterer'."),
        # it failed in fit once the data had loaded ("Unknown label type: continuous"), with a resume command
        ("sklearn.linear_model.LogisticRegression", "whose scikit-learn estimator type is 'classifier'."),
        ("sklearn.ensemble.IsolationForest", "whose scikit-learn estimator type is 'outlier_detector'."),
        ("sklearn.mixture.GaussianMixture", "whose scikit-learn estimator type is 'density_estimator'."),
        ("sklearn.preprocessing.StandardScaler", "Got 'sklearn.preprocessing.StandardScaler', a StandardScaler without predict."),
        # the next three: a worker's traceback, exit 1
        ("user_syntax_error.Model", "module 'user_syntax_error' fails: SyntaxError: expected ':' ({dir}/user_syntax_error.py, line 2)"),
        ("user_raises.Model", "The 'model._target_' config key names 'user_raises.Model', whose module 'user_raises' fails: RuntimeError:"),
        (
            "user_not_sklearn.Model",
            "The 'model._target_' config key must name a regressor: a scikit-learn estimator with fit and predict (a class "
            "inheriting sklearn.base.BaseEstimator and RegressorMixin). Got 'user_not_sklearn.Model', a Model without get_params.",
        ),
        ("user_base_estimator.Model", None),
        ("user_duck_typed.Model", None),
        ("sklearn.linear_model.Lasso", None),
    ],
)
def test_the_check_before_any_step_takes_only_a_regressor_that_imports(target, message, tmp_path, monkeypatch):
    """What :func:`bondexp.preflight.check_steps` (the run's check on a worker) refuses, with one message naming the key."""
    from bondexp.pipeline import MODEL_STEP_TARGET
    from bondexp.preflight import check_steps

    for module, text in USER_MODULES.items():
        (tmp_path / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(tmp_path)
    for module in USER_MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)  # each test imports them afresh from its own folder
    config = {**step_config("mine", estimator={"_target_": target}), "key": "model"}  # a header-less model file's
    if message is None:
        check_steps({"mine": (MODEL_STEP_TARGET, config)})
        return
    with pytest.raises(ConfigError) as err:
        check_steps({"mine": (MODEL_STEP_TARGET, config)})
    assert message.format(dir=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_fit_predict_trains_on_the_given_rows(toy_dataset):
    rows = toy_dataset.splits["train"][-300:]
    fitted, preds = fit_predict(step_config("enhanced"), toy_dataset, train_rows=rows, params={"max_iter": 20})
    assert set(preds) == {"validation", "test"}
    assert final_estimator(fitted).n_iter_ <= 20
    assert len(preds["test"]["mean"]) == len(toy_dataset.splits["test"])


def test_no_feature_leaks_the_market_price_or_an_oracle_column(toy_dataset):
    """Market price = fair value + residual, so a leak shows as a feature tracking the residual or an oracle column."""
    y, X = toy_dataset.y, toy_dataset.X
    # oracle_regime and oracle_noise_scale describe the month and the bond (market state and size
    # legitimately track them); these two carry the row's own residual.
    leaks = {"residual": y, **{k: toy_dataset.meta[k] for k in ("oracle_adjustment", "oracle_prediction")}}
    for j, name in enumerate(toy_dataset.feature_names):
        assert not np.allclose(X[:, j], toy_dataset.meta["market_price"]), f"feature {name} is the market price"
        for what, target in leaks.items():
            if np.std(X[:, j]) > 0 and np.std(target) > 0:
                corr = abs(np.corrcoef(X[:, j], np.asarray(target, dtype=float))[0, 1])
                assert corr < 0.95, f"feature {name} tracks {what} (|corr| = {corr:.3f})"


def test_build_and_fit_read_no_meta_but_the_dates(toy_dataset):
    """Fitting sees features only, plus each row's observation date to cut holdouts between months."""

    class Guarded(dict):
        def __getitem__(self, key):
            if key != "obs_date":
                raise AssertionError(f"meta[{key!r}] read while fitting")
            return super().__getitem__(key)

    guarded = features_module.Dataset(
        fingerprint="guarded",
        feature_names=toy_dataset.feature_names,
        X=toy_dataset.X,
        y=toy_dataset.y,
        splits=toy_dataset.splits,
        meta=Guarded(obs_date=toy_dataset.meta["obs_date"]),
    )
    for name in ("enhanced", "tail_risk", "bayesian", "regime"):
        fitted, preds = fit_predict(step_config(name), guarded)
        assert np.isfinite(preds["test"]["mean"]).all()


def test_conformal_quantile_and_kupiec():
    scores = np.arange(1.0, 100.0)
    assert conformal_quantile(scores, 0.9) == 90.0
    assert conformal_quantile(scores, 0.999) == 99.0
    exact = kupiec_pof(50, 1000, 0.05)
    assert exact["lr"] == pytest.approx(0.0, abs=1e-9) and exact["pvalue"] == pytest.approx(1.0)
    assert kupiec_pof(120, 1000, 0.05)["pvalue"] < 1e-6


def _panel(n_months=12, per_month=40, seed=0):
    """A small frame of two features, its target and each row's month-end date, in time order."""
    rng = np.random.default_rng(seed)
    n = n_months * per_month
    import pandas as pd

    X = pd.DataFrame({"a": rng.normal(size=n), "market_credit_spread": np.repeat(rng.normal(size=n_months), per_month)})
    y = X["a"].to_numpy() + 0.5 * X["market_credit_spread"].to_numpy() + rng.normal(scale=0.3, size=n)
    dates = np.repeat(np.datetime64("2020-01-31") + np.arange(n_months) * 30, per_month)
    return X, y, dates


def test_automl_budget_counts_candidates_and_a_binding_time_cap_is_reported():
    from bondexp.models.automl import AutoMLRegressor

    X, y, dates = _panel()
    kw = dict(families=["ridge", "boosting"], n_candidates=3, n_folds=2, random_state=0)
    full = AutoMLRegressor(**kw, time_limit_s=None).fit(X, y, groups=dates)
    again = AutoMLRegressor(**kw, time_limit_s=None).fit(X, y, groups=dates)
    assert full.metrics_ == again.metrics_ and full.metrics_["automl_trials"] == 3
    assert full.metrics_["automl_time_limited"] is False and "reproducible" not in full.metrics_
    capped = AutoMLRegressor(**kw, time_limit_s=1e-9).fit(X, y, groups=dates)
    assert capped.metrics_["automl_time_limited"] is True and capped.metrics_["reproducible"] is False


def test_automl_searches_a_sample_when_the_folds_months_hold_more_rows_than_its_budget():
    """A million-row market's month holds more than max_search_rows: the search still gets n_folds + 1 months."""
    from bondexp.models.automl import AutoMLRegressor

    X, y, dates = _panel()
    per_month = int(np.unique(dates, return_counts=True)[1].max())
    kw = dict(families=["ridge"], n_candidates=1, n_folds=3, max_search_rows=per_month // 2, random_state=0, time_limit_s=None)
    model = AutoMLRegressor(**kw).fit(X, y, groups=dates)
    assert model.trials_[0]["folds"] == 3 and model.trials_[0]["score"] is not None
    assert model.trials_ == AutoMLRegressor(**kw).fit(X, y, groups=dates).trials_  # the sample is seeded


def test_automl_prunes_poor_candidates_after_a_fold_and_records_them():
    from bondexp.models.automl import AutoMLRegressor

    X, y, dates = _panel(n_months=16)
    kw = dict(families=["ridge", "boosting"], n_candidates=8, n_folds=3, random_state=0, time_limit_s=None)
    model = AutoMLRegressor(**kw).fit(X, y, groups=dates)
    again = AutoMLRegressor(**kw).fit(X, y, groups=dates)
    assert model.trials_ == again.trials_  # trials run one after another: the same candidates stop on any machine
    pruned = [t for t in model.trials_ if t["state"] == "PRUNED"]
    assert pruned and model.metrics_["automl_pruned"] == len(pruned)
    assert all(t["score"] is None and t["folds"] < 3 and t["score_so_far"] > 0 for t in pruned)
    assert all(t["folds"] == 3 for t in model.trials_[:2])  # each family's first look runs every fold
    assert model.best_["score"] == min(t["score"] for t in model.trials_ if t["score"] is not None)


@pytest.mark.parametrize("name", ["advanced", "automl", "regime", "tail_risk", "bayesian"])
def test_bondexp_estimators_fit_with_months_and_without(name):
    """``groups`` (the rows' dates) is optional: plain ``fit(X, y)`` cuts at row counts instead."""
    X, y, dates = _panel(n_months=20, per_month=60)
    est = build_model(
        step_config(name, early_stopping={"patience": 2}) | {"features": list(X.columns)},
        dataset=SimpleNamespace(feature_names=tuple(X.columns), categorical=()),
    )[-1]
    if name == "regime":
        est.set_params(min_rows=100, max_iter=20)
    for groups in (dates, None):
        fitted = clone(est).fit(X, y, groups=groups) if groups is not None else clone(est).fit(X, y)
        assert np.isfinite(fitted.predict(X)).all()


@pytest.mark.parametrize("n, p", [(600, 12), (15, 40)])  # more rows than columns, and fewer
def test_bayesian_ridge_from_sums_is_bayesian_ridge_fit(n, p):
    """fit_bayesian_ridge on sums gathered block by block, or with a block's sums taken away, is scikit-learn's fit."""
    from sklearn.linear_model import BayesianRidge

    from bondexp.models.gram_ridge import GramSums, fit_bayesian_ridge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, p)) + 50.0  # far from 0, where raw sums would cancel
    X[:, 1] = 1.0 - X[:, 0]  # collinear with the intercept, as a spline basis's columns are
    y = X @ rng.normal(size=p) * 0.1 + rng.normal(size=n) + 7.0
    cut = n // 3
    first, rest = (GramSums.zeros(X[:5].mean(axis=0), float(y[:5].mean())) for _ in range(2))
    first.add(X[:cut], y[:cut])
    for start in range(cut, n, 7):
        rest.add(X[start : start + 7], y[start : start + 7])
    for sums, rows in ((first + rest, slice(None)), ((first + rest) - first, slice(cut, None))):
        reference = BayesianRidge().fit(X[rows], y[rows])
        fitted = fit_bayesian_ridge(sums)
        for attr in ("coef_", "intercept_", "alpha_", "lambda_", "sigma_", "X_offset_"):
            np.testing.assert_allclose(getattr(fitted, attr), getattr(reference, attr), rtol=1e-7, atol=1e-9, err_msg=attr)
        assert fitted.n_iter_ == reference.n_iter_
        for got, want in zip(fitted.predict(X[:9], return_std=True), reference.predict(X[:9], return_std=True), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-7)


def test_bayesian_mean_is_bayesian_ridge_on_its_design(toy_dataset):
    """The bayesian model's ridge, fitted from the design's sums, is the ridge fitted on the whole design."""
    from sklearn.linear_model import BayesianRidge

    from bondexp.models.bayesian import BayesianHeteroscedasticRegressor

    X, y = toy_dataset.frame("train"), toy_dataset.target("train")
    est = BayesianHeteroscedasticRegressor(n_knots=4, variance_max_iter=20, random_state=0).fit(X, y)
    reference = BayesianRidge().fit(est._design(est._frame(X)), y)
    np.testing.assert_allclose(est.mean_.coef_, reference.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(est.predict(X), reference.predict(est._design(est._frame(X))), rtol=1e-9, atol=1e-9)
