"""Commands that do no work import only what they use: no numerical stack for `--help`, `--cfg job`,
a dry run or a resume whose every step is reused (issue 9). Imports are read from `python -X importtime`;
how long they take is for `benchmarks/startup.py`, not for a test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: Libraries only a step, loading data or a report needs (MLflow only with tracking=mlflow).
HEAVY = ("numpy", "pandas", "sklearn", "scipy", "optuna", "matplotlib", "joblib", "mlflow")


def imported(*args: str, cwd: Path, cache: Path) -> set[str]:
    """The modules ``python -m bondexp *args`` imports (it must exit 0)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bondexp", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]])
def test_help_and_cfg_import_neither_the_app_nor_the_numerical_stack(args, tmp_path, cache):
    modules = imported(*args, cwd=tmp_path, cache=cache)
    assert "hydra" in modules  # the parse is real
    assert heavy(modules) == []
    assert "bondexp.app" not in modules and "tqdm" not in modules


def test_a_dry_run_imports_no_numerical_stack(tmp_path, cache):
    modules = imported("data=small", "dry_run=true", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, cache=cache)
    assert "bondexp.app" in modules
    assert heavy(modules) == []


def test_a_run_on_the_pool_keeps_pandas_and_scikit_learn_out_of_its_own_process(tmp_path, cache):
    """The steps run in the workers: the run's process builds the dataset and writes the reports without
    pandas (0.5 s of its start, on the way to the first step), scikit-learn or scipy.stats."""
    found = tmp_path / "modules.json"
    script = f"""
import atexit, json, runpy, sys
atexit.register(lambda: open({str(found)!r}, "w").write(json.dumps([m for m in ("pandas", "sklearn", "scipy.stats") if m in sys.modules])))
sys.argv = ["bondexp", "data=small", "model=factor", "~steps.tune", "eval.n_bootstrap=50", "workers=2", "progress=false",
            "hydra.run.dir={tmp_path / "run"}"]
runpy.run_module("bondexp", run_name="__main__")
"""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").exists()  # the run trained: the check below can fail
    assert json.loads(found.read_text()) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache) -> Path:
    """A finished run of one quick model and the report steps, and what it imported."""
    run_dir = tmp_path_factory.mktemp("finished")
    args = ["data=small", "model=factor", "~steps.tune", "eval.n_bootstrap=50", "workers=1", "progress=false"]
    modules = imported(*args, f"hydra.run.dir={run_dir}", cwd=run_dir, cache=cache)
    assert "numpy" in modules and "sklearn" in modules  # the run itself trains: the checks below can fail
    return run_dir


def test_a_finished_resume_imports_no_numerical_stack(finished_run, cache):
    modules = imported(f"resume={finished_run}", cwd=finished_run, cache=cache)
    results = json.loads((finished_run / "results.json").read_text())
    assert {step["status"] for step in results["steps"].values()} == {"reused"}
    assert heavy(modules) == []


def test_a_checkpoint_changed_in_place_is_run_again_not_reused(finished_run, tmp_path, cache):
    """The finished-resume shortcut trusts fingerprints and sizes; the runner's sha256 still decides what is reused."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    artifact = run_dir / "checkpoints" / "factor.pkl"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    artifact.write_bytes(bytes(data))
    imported(f"resume={run_dir}", cwd=tmp_path, cache=cache)
    results = json.loads((run_dir / "results.json").read_text())
    assert {name: step["status"] for name, step in results["steps"].items()} == {"factor": "ran", "evaluate": "ran", "drift": "ran"}


@pytest.mark.parametrize(
    "argv, plain",
    [
        (["bondexp"], True),
        (["bondexp", "model=enhanced", "workers=4", "executor=local", "~steps.tune"], True),
        (["bondexp", "--help"], False),
        (["bondexp", "-m", "seed=0,1"], False),
        (["bondexp", "--cfg", "job"], False),
        (["bondexp", "dry_run=true"], False),
        (["bondexp", "resume=last"], False),
        (["bondexp", "workers=1"], False),
        (["bondexp", "executor=dask"], False),
    ],
)
def test_only_a_plain_run_launches_the_forkserver_before_hydra_composes(argv, plain):
    from bondexp.executors import is_plain_run

    assert is_plain_run(argv) is plain


PROBE_STEP_YAML = """# @package _global_
steps:
  probe:
    _target_: runner_steps.environment
    config: {name: BONDEXP_PROBE}
"""


def test_workers_see_the_environment_hydras_job_sets(tmp_path, cache):
    """The forkserver launched before Hydra composed is relaunched when ``hydra.job.env_set`` changed the environment."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache), "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("BONDEXP_PROBE", None)
    args = ["data=small", "model=factor", "~steps.tune", "~steps.drift", "~steps.evaluate", "workers=2", "progress=false"]
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "probe.yaml").write_text(PROBE_STEP_YAML)
    probe = ["+experiment=probe", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    proc = subprocess.run(
        [sys.executable, "-m", "bondexp", *args, *probe, "+hydra.job.env_set.BONDEXP_PROBE=set", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    assert steps["probe"]["metrics"] == {"value": "set"}


def test_the_bondexp_script_launches_the_forkserver_before_importing_hydra(tmp_path):
    """As `python -m bondexp` does, so the workers' import of scikit-learn overlaps Hydra's. The script
    used to import bondexp.__main__ (and Hydra with it) before its entry point could launch anything."""
    script = Path(sys.executable).with_name("bondexp")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "BONDEXP_CACHE_DIR": str(tmp_path / "cache")}
    # a plain run that stops at the config check, once the forkserver is launched
    proc = subprocess.run(
        [str(script), "data=small", "eval.sample_pct=150"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    modules = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert modules.index("multiprocessing.forkserver") < modules.index("hydra")


#: A model class of the user's own, in a module beside the command (not installed, not on PYTHONPATH).
MY_EST = """
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class MyShrink(BaseEstimator, RegressorMixin):
    def __init__(self, shrink=0.5):
        self.shrink = shrink

    def fit(self, X, y, **kwargs):
        self.mean_ = float(np.mean(y))
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        return np.full(np.asarray(X).shape[0], self.mean_ * self.shrink)
"""


def test_the_bondexp_script_imports_a_model_module_beside_the_command_in_its_workers_too(tmp_path):
    """`python -m bondexp` puts the current folder first on sys.path; the script did not, and refused
    `_target_: my_est.MyShrink` with "no module 'my_est' is installed. Did you mean 'pytest'?"."""
    (tmp_path / "my_est.py").write_text(MY_EST)
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "my_shrink.yaml").write_text("_target_: my_est.MyShrink\nshrink: 0.5\n")
    run_dir = tmp_path / "run"
    args = ["model=my_shrink", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "data=small", "~steps.tune", "~steps.drift"]
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(tmp_path / "cache")}
    script = Path(sys.executable).with_name("bondexp")
    proc = subprocess.Popen(
        [str(script), *args, "workers=2", "progress=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    # both ran in the pool's workers, not in the script's process: the model step built MyShrink, evaluate unpickled it
    assert {name: (s["status"], s["worker"].rsplit("/", 1)[-1] != str(proc.pid)) for name, s in steps.items()} == {
        "my_shrink": ("ran", True),
        "evaluate": ("ran", True),
    }
