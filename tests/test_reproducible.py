"""Same config and seed, same numbers: whole runs on the tiny market agree to the last digit.

Each run is `python -m bondexp` as a subprocess, the way a user runs it: with one worker, with two
workers while a CPU-burning process competes for the cores, and through a Dask LocalCluster.
Every step's metrics in results.json and every model's predictions in its checkpoint must be
identical; AutoML is in the model set, since its budget counts candidates, not seconds, and so
is tuning (a batched study on two trial processes when workers=2, in-process when workers=1): its
trials, one by one, and the tuned model's test score must be the same too.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bondexp.checkpoints import CheckpointStore
from test_app import bondexp

pytestmark = pytest.mark.slow

#: A small model set with AutoML (its budget cut to one candidate per family and a TPE one), two
#: interval models (bayesian's mean is matrix products: BLAS), and enhanced tuned in two batches of
#: two trials (no time cap).
RUN = [
    "data=small",
    "model=[automl,tail_risk,bayesian,enhanced]",
    "models.automl.n_candidates=5",
    "tune.target=enhanced",
    "tune.n_trials=4",
    "tune.batch_size=2",
    "tune.timeout=null",
    "eval.n_bootstrap=50",
    "progress=false",
]
MODELS = ("automl", "tail_risk", "bayesian", "enhanced", "tune")


@contextlib.contextmanager
def cpu_burner():
    """A process that keeps one core busy for as long as the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _run(tmp_path: Path, cache: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    bondexp(*RUN, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    return run_dir


def _metrics(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["ok"], results
    assert all(step["reproducible"] for step in results["steps"].values())
    return {name: step["metrics"] for name, step in results["steps"].items()}


def _assert_same_run(a: Path, b: Path) -> None:
    assert _metrics(a) == _metrics(b)
    stores = CheckpointStore(a / "checkpoints"), CheckpointStore(b / "checkpoints")
    for name in MODELS:
        pa, pb = (store.load(name).predictions for store in stores)
        for split in pa:
            for key in pa[split]:
                np.testing.assert_array_equal(pa[split][key], pb[split][key], err_msg=f"{name} {split} {key}")


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp, cache = tmp_path_factory.mktemp("serial"), tmp_path_factory.mktemp("cache")
    return _run(tmp, cache, "w1", "workers=1"), cache


def test_two_workers_under_load_give_the_same_numbers_as_one(serial_run, tmp_path):
    serial, cache = serial_run
    with cpu_burner():
        loaded = _run(tmp_path, cache, "w2", "workers=2")
    _assert_same_run(serial, loaded)
    # the same study: in-process with one worker, on two trial processes with two
    tuning = [json.loads((run / "tuning.json").read_text()) for run in (serial, loaded)]
    assert tuning[0]["best_params"] == tuning[1]["best_params"]
    assert [(t["params"], t["value"]) for t in tuning[0]["trials"]] == [(t["params"], t["value"]) for t in tuning[1]["trials"]]
    # the whole leaderboard, byte for byte: bayesian's predictions and the bootstrap intervals differed in their
    # last bits when a step's matrix products ran on two BLAS threads (workers=1) instead of one
    assert (serial / "leaderboard.csv").read_bytes() == (loaded / "leaderboard.csv").read_bytes()


def test_dask_gives_the_same_numbers(serial_run, tmp_path):
    pytest.importorskip("distributed")
    serial, cache = serial_run
    _assert_same_run(serial, _run(tmp_path, cache, "dask", "executor=dask", "workers=2"))
