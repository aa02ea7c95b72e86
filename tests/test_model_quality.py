"""Quality bars of the models on the stationary synthetic market (test split, two seeds).

Slow by design (per seed, a real market is priced and every model with a bar trained through the step, once);
each bar is a share of what the oracle achieves, so it does not depend on the market's noise.
Every bar the README states is asserted here; what is only printed, the README calls reported.
The best model is the one validation chooses (lowest validation RMSE), never the test split's.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

from bondexp.feature_names import BOND_FEATURES, FEATURES
from bondexp.features import load_dataset

pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA = CONF / "data" / "synthetic.yaml"
MODELS = ("basic", "enhanced", "advanced", "automl", "regime", "tail_risk", "bayesian")  # factor has no bar: not trained
SEEDS = (0, 1)
ML = ("basic", "enhanced", "advanced", "automl")


def _train(seed: int, cache_dir: str) -> tuple:
    """The stationary 20,000-row market of ``seed`` and every model with a bar trained on it through the step,
    on one BLAS/OpenMP thread, as the runner gives a step on a shared machine (boosting oversubscribes otherwise)."""
    import bondexp.steps.train as train

    cfg = yaml.safe_load(DATA.read_text())
    cfg.update(drift=False, n_observations=20000, n_months=60)
    with threadpool_limits(1):
        dataset, _ = load_dataset(cfg, seed=seed, cache_dir=cache_dir)
        original = train.dataset_for
        train.dataset_for = lambda shared: dataset
        try:
            ctx = SimpleNamespace(name="q", run_dir=Path("."), workers=1, threads=1, shared={}, log=logging.getLogger("q"))
            artifacts = {name: train.fit_model(_config(name, seed), {}, ctx) for name in MODELS}
        finally:
            train.dataset_for = original
    return dataset, artifacts


@pytest.fixture(scope="module")
def trained_by_seed(tmp_path_factory) -> dict:
    """Each seed's market and models, trained once for every test: the seeds side by side in two processes
    (spawned, so no OpenMP state is forked), which halves the wall time on two cores and changes no number."""
    with ProcessPoolExecutor(max_workers=len(SEEDS), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {seed: pool.submit(_train, seed, str(tmp_path_factory.mktemp("cache"))) for seed in SEEDS}
        return {seed: future.result() for seed, future in futures.items()}


@pytest.fixture(params=SEEDS)
def trained(request, trained_by_seed):
    """(dataset, artifacts by model name) of one seed."""
    return trained_by_seed[request.param]


def _config(name: str, seed: int) -> dict:
    """The step config of ``conf/model/<name>.yaml`` exactly as shipped (no budget cuts)."""
    spec = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    return {
        "name": name,
        "group": spec.get("group", "ml"),
        "estimator": {k: v for k, v in spec.items() if k not in ("group", "features", "early_stopping")},
        "features": list(BOND_FEATURES if spec.get("features") == "bond" else FEATURES),
        "early_stopping": {"enabled": True, "patience": 10, "validation_fraction": 0.1, "tol": 1e-4},
        "seed": seed,
        "n_jobs": 1,
    }


def _rmse(y, p):
    return float(np.sqrt(np.mean((y - p) ** 2)))


def test_ml_models_reach_most_of_the_oracle_gain(trained):
    dataset, artifacts = trained
    y, oracle = dataset.target("test"), dataset.meta_of("test", "oracle_prediction")
    zero, best = _rmse(y, 0.0), _rmse(y, oracle)
    shares = {n: (zero - _rmse(y, artifacts[n].predictions["test"]["mean"])) / (zero - best) for n in ML}
    print("share of the oracle's RMSE reduction:", {n: round(s, 3) for n, s in shares.items()})
    assert min(shares.values()) >= 0.7, shares
    chosen = min(ML, key=lambda n: artifacts[n].metrics["val_rmse"])  # validation chooses, test reports
    r2 = 1 - _rmse(y, artifacts[chosen].predictions["test"]["mean"]) ** 2 / np.var(y)
    assert r2 >= 0.8 * (1 - best**2 / np.var(y)), (chosen, r2)


def _coverage_by_regime(dataset, pred):
    y, regime = dataset.target("test"), dataset.meta_of("test", "oracle_regime")
    inside = (y >= pred["lower"]) & (y <= pred["upper"])
    return float(inside.mean()), {int(k): float(inside[regime == k].mean()) for k in np.unique(regime)}


def test_tail_risk_band_covers_ninety_percent(trained):
    """Overall only (the README says so): a regime with one or two test months is a handful of
    sector shocks, so per regime is printed for the record, not asserted."""
    dataset, artifacts = trained
    overall, by_regime = _coverage_by_regime(dataset, artifacts["tail_risk"].predictions["test"])
    print("tail_risk coverage:", round(overall, 3), by_regime)
    assert abs(overall - 0.9) <= 0.04


def test_bayesian_band_covers_ninety_percent_in_every_regime(trained):
    """Normalized conformal is calibrated on validation, whose regime mix differs from test's, so
    the bar holds per regime only if sigma(x) tells calm from stressed bonds and months."""
    dataset, artifacts = trained
    overall, by_regime = _coverage_by_regime(dataset, artifacts["bayesian"].predictions["test"])
    print("bayesian coverage:", round(overall, 3), by_regime)
    assert abs(overall - 0.9) <= 0.05
    # Six points per regime: seed 1's test stress months have credit spreads between the training
    # stress and crisis levels, where the variance booster steps to the crisis side (95.1% there).
    assert all(abs(c - 0.9) <= 0.06 for c in by_regime.values()), by_regime


def test_regimes_match_the_oracle_over_training_months(trained):
    _, artifacts = trained
    metrics = artifacts["regime"].metrics
    print("regime ARI:", metrics["train_regime_ari"], "calm vs stress:", metrics["train_regime_ari_calm_vs_stress"])
    assert metrics["train_regime_ari"] >= 0.5, metrics  # calm, stress and crisis told apart
    assert metrics["train_regime_ari_calm_vs_stress"] >= 0.5, metrics
