"""Tests of the drift step: each feature kind's test and status, model drift, outputs (the statistics: test_stats.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import bondexp.conf
from bondexp.artifacts import ModelArtifact
from bondexp.errors import ConfigError
from bondexp.feature_names import FEATURES
from bondexp.steps import drift as drift_module
from bondexp.steps.drift import drift, drift_files, drift_report, rated, status_of
from bondexp.worker import StepContext
from conftest import make_toy_dataset
from series import ar1, ar1_with_turbulence

RULES = {"psi_warn": 0.1, "psi_alert": 0.25, "ks_alpha": 0.05}


def _with_column(dataset, name, values):
    """A copy of ``dataset`` whose feature ``name`` holds ``values``."""
    X = np.array(dataset.X, copy=True)
    X[:, FEATURES.index(name)] = values
    return dataclasses.replace(dataset, X=X)


def _month_of_rows(dataset):
    months = np.asarray(dataset.meta["obs_date"]).astype("datetime64[M]").astype(np.int64)
    return months - months.min()


def _models(dataset, *, test_noise, seed=0):
    """A model artifact whose errors have sd 0.3 on validation and ``test_noise`` on test."""
    rng = np.random.default_rng(seed)
    noise = {"train": 0.3, "validation": 0.3, "test": test_noise}
    predictions = {split: {"mean": dataset.target(split) + rng.normal(0, sd, len(dataset.splits[split]))} for split, sd in noise.items()}
    return ModelArtifact(name="m", group="ml", config={}, features=[], predictions=predictions, metrics={})


@pytest.mark.parametrize(
    "psi, pvalue, status, why",
    [
        (0.01, 0.5, "ok", ""),
        (0.01, 0.01, "warn", "KS p 0.01 < 0.05"),
        (0.15, 0.5, "warn", "PSI 0.15 >= 0.1"),
        (0.15, 0.01, "alert", "PSI 0.15 >= 0.1 and KS p 0.01 < 0.05"),
        (0.3, 0.9, "alert", "PSI 0.3 >= 0.25"),
        (np.nan, np.nan, "ok", ""),
    ],
)
def test_status_rule(psi, pvalue, status, why):
    """The report showed a status without the part of the rule that set it: an alert next to KS p 1.0."""
    assert status_of(psi, pvalue, **RULES) == status and rated(psi, pvalue, **RULES) == (status, why)


# --- features on the toy panel --------------------------------------------------------------------


def test_a_shifted_feature_is_flagged_and_a_stationary_one_is_not(toy_dataset):
    test_rows = toy_dataset.splits["test"]
    values = np.asarray(toy_dataset.X[:, FEATURES.index("log_issue_size")]).copy()
    values[test_rows] += 1.0  # one sd of the feature
    report = drift_report(_with_column(toy_dataset, "log_issue_size", values), {})
    assert report["features"]["log_issue_size"]["status"] == "alert"
    assert report["features"]["log_issue_size"]["psi"] > 0.25
    assert report["features"]["coupon_rate"]["status"] == "ok"
    assert report["features"]["coupon_rate"]["psi"] < 0.01
    assert "log_issue_size" in report["drifted"] and "coupon_rate" not in report["drifted"]
    assert report["metrics"]["drifted"] == ",".join(report["drifted"])
    assert report["metrics"]["n_alert"] == sum(f["status"] == "alert" for f in report["features"].values())


def test_each_feature_gets_the_test_of_its_kind(toy_dataset):
    features = drift_report(toy_dataset, {})["features"]
    kinds = {name: (entry["kind"], entry["test"]) for name, entry in features.items()}
    assert kinds["rating"] == ("categorical", "chi2")
    assert kinds["curve_level"] == ("market_state", "level_shift")
    assert kinds["age"] == ("observation", "ks")
    assert features["curve_level"]["psi"] is None  # PSI over a few monthly values would be noise
    assert all(bool(entry["why"]) == (entry["status"] != "ok") for entry in features.values())  # every flag says why


def test_categorical_shares_shift_is_flagged_and_a_new_category_stays_finite(toy_dataset):
    test_rows = toy_dataset.splits["test"]
    sector = np.asarray(toy_dataset.X[:, FEATURES.index("sector")]).copy()
    sector[test_rows[: len(test_rows) // 2]] = 7  # a sector never seen in training
    entry = drift_report(_with_column(toy_dataset, "sector", sector), {})["features"]["sector"]
    assert np.isfinite(entry["psi"]) and entry["psi"] > 0.25
    assert entry["ks_pvalue"] < 1e-3  # 60 bonds: the test counts bonds, not bond-months
    assert entry["status"] == "alert"


def test_holm_raises_each_pvalue_above_the_uncorrected_one(toy_dataset):
    holm = drift_report(toy_dataset, {}, correction="holm")["features"]
    none = drift_report(toy_dataset, {}, correction="none")["features"]
    for name in holm:
        assert holm[name]["pvalue_raw"] == pytest.approx(none[name]["ks_pvalue"])
        assert holm[name]["ks_pvalue"] >= none[name]["ks_pvalue"]
    assert any(holm[n]["ks_pvalue"] > none[n]["ks_pvalue"] for n in holm)


def test_monthly_entries_cover_every_test_month(toy_dataset):
    report = drift_report(toy_dataset, {})
    months = sorted({str(m) for m in toy_dataset.meta_of("test", "obs_date").astype("datetime64[M]")})
    assert report["months"] == months
    for entry in report["features"].values():
        assert sorted(entry["monthly"]) == months
    assert all(np.isfinite(report["features"]["age"]["monthly"][m]["psi"]) for m in months)
    assert all("z" in report["features"]["curve_level"]["monthly"][m] for m in months)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"n_bins": 1}, "'drift.n_bins' config key must be an integer of at least 2. Got 1"),
        ({"psi_floor": 0.0}, "'drift.psi_floor' config key must be in \\(0, 1\\). Got 0.0"),
        ({"ks_alpha": 1.5}, "'drift.ks_alpha' config key must be in \\(0, 1\\). Got 1.5"),
        ({"psi_warn": 0.5}, "'drift.psi_warn' config key must be between 0 and drift.psi_alert \\(0.25\\). Got 0.5"),
        ({"correction": "bh"}, "'drift.correction' config key must be one of"),
    ],
)
def test_bad_options_raise_config_error(toy_dataset, options, message):
    with pytest.raises(ConfigError, match=message):
        drift_report(toy_dataset, {}, **options)


def _panel_with_market(seed, *, shift=0.0, phi):
    """The toy panel over 60 months with AR(1) market-state factors; ``shift`` sd added to curve_level in test."""
    dataset = make_toy_dataset(n_bonds=15, n_months=60, seed=seed)
    month = _month_of_rows(dataset)
    rng = np.random.default_rng(100 + seed)
    test_month = month >= 48
    for name in ("curve_level", "curve_slope", "curve_curvature", "market_credit_spread"):
        series = 0.03 + 0.004 * ar1(rng, 60, phi)
        values = series[month] + (0.004 * shift * test_month if name == "curve_level" else 0.0)
        dataset = _with_column(dataset, name, values)
    return dataset


@pytest.mark.parametrize("seed", range(5))
def test_stationary_market_state_raises_no_alert(seed):
    features = drift_report(_panel_with_market(seed, phi=0.9), {})["features"]
    market = {n: f["status"] for n, f in features.items() if f["kind"] == "market_state"}
    assert "alert" not in market.values(), market


@pytest.mark.parametrize("seed", range(3))
def test_a_market_level_shift_is_flagged_in_the_report(seed):
    """Four sd: in a family of 19 Holm-corrected tests an alert needs a t statistic above about 4."""
    features = drift_report(_panel_with_market(seed, shift=4.0, phi=0.3), {})["features"]
    assert features["curve_level"]["status"] == "alert"
    assert features["curve_level"]["z"] > 4
    assert features["curve_slope"]["status"] != "alert"


def test_turbulent_market_state_is_flagged_in_the_report():
    dataset = make_toy_dataset(n_bonds=15, n_months=60, seed=0)
    month = _month_of_rows(dataset)
    series = 0.03 + 0.004 * ar1_with_turbulence(np.random.default_rng(1), 60, 0.95, start=48, factor=3.0)
    entry = drift_report(_with_column(dataset, "market_credit_spread", series[month]), {})["features"]["market_credit_spread"]
    assert entry["volatility_ratio"] > 2
    assert entry["status"] == "alert"


# --- models ---------------------------------------------------------------------------------------


def test_a_stale_model_shows_and_a_steady_one_does_not(toy_dataset):
    models = {
        "steady": _models(toy_dataset, test_noise=0.3),
        "stale": _models(toy_dataset, test_noise=0.9, seed=1),
        "better": _models(toy_dataset, test_noise=0.1, seed=2),
    }
    report = drift_report(toy_dataset, models)["models"]
    steady, stale = report["steady"], report["stale"]
    assert stale["status"] == "alert" and stale["ks_pvalue"] < 1e-6
    assert report["better"]["status"] != "alert" and report["better"]["ks_pvalue"] > 0.5  # one-sided: smaller errors are fine
    assert stale["rmse_ratio"] == pytest.approx(3.0, rel=0.15)
    assert steady["ks_pvalue"] > 0.05 and steady["rmse_ratio"] == pytest.approx(1.0, rel=0.15)
    months = list(stale["monthly"])
    assert all(stale["monthly"][m]["rmse"] > steady["monthly"][m]["rmse"] for m in months)
    assert set(stale["monthly"][months[0]]) == {"psi", "ks_pvalue", "rmse", "bias"}


# --- the step and its outputs ---------------------------------------------------------------------


def _ctx(tmp_path):
    return StepContext("drift", tmp_path, 1, 1, {}, logging.getLogger("test"))


def test_step_reads_the_run_dataset_and_returns_flat_metrics(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(drift_module, "dataset_for", lambda shared: toy_dataset)
    config = {"psi_warn": 0.1, "psi_alert": 0.25, "ks_alpha": 0.05, "correction": "holm", "n_bins": 10, "psi_floor": 1e-4, "seed": 0}
    output = drift(config, {"basic": _models(toy_dataset, test_noise=0.3)}, _ctx(tmp_path))
    artifact = output.artifact
    assert set(output.files) == {"drift.json", "plots/drift.png"}
    assert list(artifact["models"]) == ["m"]  # a model is named by its artifact (the tuned one is <target>_tuned)
    assert all(isinstance(v, (int, float, str, bool)) for v in artifact["metrics"].values())
    assert set(artifact["metrics"]) >= {"n_alert", "n_warn", "drifted"}
    assert list(tmp_path.iterdir()) == []  # the step writes nothing


def test_step_rejects_an_unknown_config_key(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(drift_module, "dataset_for", lambda shared: toy_dataset)
    with pytest.raises(ConfigError, match=r"Got \['psi_warning'\] instead"):
        drift({"psi_warning": 0.1}, {}, _ctx(tmp_path))


def test_drift_files_are_valid_json_and_the_plot(toy_dataset):
    artifact = drift_report(toy_dataset, {"m": _models(toy_dataset, test_noise=0.5)})
    files = drift_files(artifact)
    written = json.loads(files["drift.json"])
    for name in FEATURES:
        assert {"psi", "ks_pvalue", "status", "kind", "monthly"} <= set(written["features"][name])
    assert written["features"]["curve_level"]["psi"] is None
    assert written["drifted"] == artifact["drifted"]
    assert set(written["models"]["m"]) >= {"psi", "ks_pvalue", "status", "rmse_test", "monthly"}
    assert len(files["plots/drift.png"]) > 10_000


# --- the real synthetic market --------------------------------------------------------------------


def _market(preset, *, drift_on, seed, cache_dir):
    import yaml

    from bondexp.data import data_fingerprint
    from bondexp.features import load_dataset

    data_cfg = dict(yaml.safe_load((Path(bondexp.conf.__file__).parent / "data" / f"{preset}.yaml").read_text()), drift=drift_on)
    dataset, _ = load_dataset(data_cfg, seed=seed, cache_dir=cache_dir)
    return dataset, data_cfg, data_fingerprint(data_cfg, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stationary_default_market_raises_no_alert(seed, tmp_path_factory):
    dataset, _, _ = _market("synthetic", drift_on=False, seed=seed, cache_dir=tmp_path_factory.mktemp("cache"))
    report = drift_report(dataset, {})
    assert report["metrics"]["n_alert"] == 0, {n: f["status"] for n, f in report["features"].items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_forced_stress_on_the_default_market_alerts_on_the_credit_spread(seed, tmp_path_factory):
    """The forced stress/crisis test period: spreads move more month to month than in training."""
    dataset, _, _ = _market("synthetic", drift_on=True, seed=seed, cache_dir=tmp_path_factory.mktemp("cache"))
    spread = drift_report(dataset, {})["features"]["market_credit_spread"]
    assert spread["status"] == "alert"
    assert spread["volatility_ratio"] > 1.5


def linear_model(config, inputs, ctx):
    """A model step for the runner test: ridge regression on every feature, predictions for every split."""
    from sklearn.linear_model import Ridge

    dataset = drift_module.dataset_for(ctx.shared)
    model = Ridge(alpha=1.0).fit(dataset.frame("train"), dataset.target("train"))
    predictions = {split: {"mean": model.predict(dataset.frame(split))} for split in dataset.splits}
    val_rmse = float(np.sqrt(np.mean((dataset.target("validation") - predictions["validation"]["mean"]) ** 2)))
    return ModelArtifact(
        name=ctx.name,
        group="ml",
        config=config,
        features=list(dataset.feature_names),
        predictions=predictions,
        metrics={"val_rmse": val_rmse},
        pipeline=model,
    )


def test_drift_step_under_the_runner_on_the_small_market(tmp_path, monkeypatch):
    """Model step, then drift through the real runner (in-process), which writes the files drift returns."""
    import joblib

    from bondexp.graph import Step, build_graph
    from bondexp.runner import run_graph

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    cache = tmp_path / "cache"
    _, data_cfg, fingerprint = _market("small", drift_on=True, seed=0, cache_dir=cache)
    graph = build_graph(
        [
            Step("ridge", "test_drift.linear_model", group="ml"),
            Step(
                "drift",
                "bondexp.steps.drift.drift",
                needs=("ridge",),
                group="report",
                config={"psi_warn": 0.1, "psi_alert": 0.25, "ks_alpha": 0.05, "correction": "holm", "n_bins": 10, "psi_floor": 1e-4},
            ),
        ]
    )
    shared = {"data": data_cfg, "seed": 0, "cache_dir": str(cache), "data_fingerprint": fingerprint}
    run_dir = tmp_path / "run"
    result = run_graph(graph, run_dir=run_dir, workers=1, shared=shared, data_fingerprint=fingerprint, progress=False)
    assert result.ok, result.to_dict()
    artifact = joblib.load(run_dir / "checkpoints" / "drift.pkl")
    assert set(artifact["models"]) == {"ridge"}
    assert set(artifact["models"]["ridge"]["monthly"]) == set(artifact["months"])
    assert json.loads((run_dir / "drift.json").read_text())["metrics"] == artifact["metrics"]  # the runner wrote it
    assert (run_dir / "plots" / "drift.png").stat().st_size > 10_000
