"""Commands that do no work import only what they use: no numerical stack for `--help`, `--cfg job`,
a dry run or a resume whose every step is reused (issue 9). Imports are read from `python -X importtime`;
how long they take is for `benchmarks/startup.py`, not for a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Libraries only a step, loading data or a report needs (MLflow only with tracking=mlflow).
HEAVY = ("numpy", "pandas", "sklearn", "scipy", "optuna", "matplotlib", "joblib", "mlflow")


def imported(*args: str, cwd: Path, cache: Path) -> set[str]:
    """The modules ``python -m bondexp *args`` imports (it must exit 0)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bondexp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
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


def test_a_finished_resume_imports_no_numerical_stack(tmp_path, cache):
    run_dir = tmp_path / "run"
    args = ["data=small", "model=factor", "~steps.tune", "eval.n_bootstrap=50", "workers=1", "progress=false"]
    first = imported(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    assert "numpy" in first and "sklearn" in first  # the run itself trains: the check below can fail
    modules = imported(f"resume={run_dir}", cwd=tmp_path, cache=cache)
    results = json.loads((run_dir / "results.json").read_text())
    assert {step["status"] for step in results["steps"].values()} == {"reused"}
    assert heavy(modules) == []
