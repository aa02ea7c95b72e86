"""Importable helpers for the tuning tests: a slow estimator, model artifacts on the toy panel, and
entry points that run the tune step in another process (a pool worker, or a script to be killed).

Run as a script (``python tune_helpers.py RUN_DIR N_TRIALS DELAY WORKERS``) it tunes a deliberately
slow model, so a test can kill it between trials and run it again.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from sklearn.linear_model import Ridge

from bondexp import features
from bondexp.artifacts import ModelArtifact
from bondexp.feature_names import FEATURES
from conftest import make_toy_dataset

BASE_TUNE = {
    "target": None,
    "n_trials": 4,
    "batch_size": 2,
    "timeout": None,
    "storage": None,
    "class_search_space": {},
    "search_space": {
        "ridge": {"alpha": {"low": 1e-3, "high": 1e3, "log": True}},
        "tree": {"max_depth": {"low": 2, "high": 8}, "min_samples_leaf": {"low": 1, "high": 50, "log": True}},
        "slow": {"alpha": {"low": 1e-3, "high": 1e3, "log": True}},
    },
    "seed": 0,
}
ESTIMATORS = {
    "ridge": {"_target_": "sklearn.linear_model.Ridge", "alpha": 1.0},
    "tree": {"_target_": "sklearn.tree.DecisionTreeRegressor", "max_depth": 3, "random_state": 0},
    "slow": {"_target_": "tune_helpers.SlowRidge", "alpha": 1.0, "delay": 0.1},
}


class SlowRidge(Ridge):
    """Ridge that sleeps ``delay`` seconds per fit, so a study takes long enough to be killed mid-way."""

    def __init__(self, alpha=1.0, *, delay=0.1):
        super().__init__(alpha=alpha)
        self.delay = delay

    def fit(self, X, y, sample_weight=None):
        time.sleep(self.delay)
        return super().fit(X, y, sample_weight=sample_weight)


def use_toy_dataset(seed: int = 0) -> dict:
    """Register the toy panel as this process's run dataset; return the ``ctx.shared`` that finds it."""
    dataset = make_toy_dataset(seed=seed)
    features._LOADED[dataset.fingerprint] = dataset
    return {"data_fingerprint": dataset.fingerprint, "data": {}, "seed": seed, "cache_dir": "unused"}


def model_artifact(name: str, *, group: str = "ml", estimator: dict | None = None, dataset=None) -> dict:
    """A model step's artifact for ``name``, fitted on the toy panel with the train step's helper."""
    from bondexp.steps.train import fit_predict

    dataset = dataset if dataset is not None else make_toy_dataset()
    config = {
        "name": name,
        "group": group,
        "estimator": dict(estimator or ESTIMATORS[name]),
        "features": list(FEATURES),
        "early_stopping": {"enabled": True, "patience": 5, "validation_fraction": 0.1, "tol": 1e-4},
        "seed": 0,
        "n_jobs": 1,
    }
    model, predictions = fit_predict(config, dataset)
    val_rmse = float(np.sqrt(np.mean((predictions["validation"]["mean"] - dataset.target("validation")) ** 2)))
    return ModelArtifact(
        name=name,
        group=group,
        config=config,
        features=list(FEATURES),
        predictions=predictions,
        metrics={"val_rmse": val_rmse},
        pipeline=model,
    )


def tune_flat(config: dict, inputs: dict, ctx) -> dict:
    """The tune step with its output flattened for the tests to read: the tuning record (tuning.json's
    keys), the artifact's fields (``model`` is its pipeline), ``files`` (what the runner would write) and
    ``warnings`` (what the run would print)."""
    from bondexp.tuning.step import tune

    output = tune(config, inputs, ctx)
    art = output.artifact
    return {
        **art.info["tuning"],
        "name": art.name,
        "group": art.group,
        "config": art.config,
        "metrics": art.metrics,
        "predictions": art.predictions,
        "info": art.info,
        "model": art.pipeline,
        "files": output.files,
        "warnings": output.warnings,
    }


def context(run_dir: Path, shared: dict, *, workers: int = 1, threads: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        name="tune", run_dir=Path(run_dir), workers=workers, threads=threads, shared=shared, log=logging.getLogger("test.tune")
    )


def tune_in_worker(run_dir: str, config: dict, workers: int, delay: float = 0.0) -> dict:
    """Run the tune step inside a pool process (as the runner does); return what the tests check.

    ``delay`` > 0 tunes the slow ridge (``target: slow``), whose fits sleep that long.
    """
    shared = use_toy_dataset()
    inputs = {
        "evaluate": {},
        "ridge": model_artifact("ridge"),
        "slow": model_artifact("slow", estimator={**ESTIMATORS["slow"], "delay": float(delay)}),
    }
    artifact = tune_flat(config, inputs, context(Path(run_dir), shared, workers=workers))
    return {"trials": artifact["trials"], "best_params": artifact["best_params"], "info": artifact["info"], "metrics": artifact["metrics"]}


def main(run_dir: str, n_trials: str, delay: str, workers: str) -> None:
    """Tune the slow model with a fixed budget on ``workers`` processes (the kill-and-resume test's script)."""
    shared = use_toy_dataset()
    estimator = {**ESTIMATORS["slow"], "delay": float(delay)}
    inputs = {"evaluate": {}, "slow": model_artifact("slow", estimator=estimator)}
    config = {**BASE_TUNE, "target": "slow", "n_trials": int(n_trials)}
    artifact = tune_flat(config, inputs, context(Path(run_dir), shared, workers=int(workers)))
    print(f"done {artifact['metrics']['n_trials']} {json.dumps(artifact['best_params'])}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
