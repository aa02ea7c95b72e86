"""Whole runs around tuning, as subprocesses on the tiny market: nothing to tune skips, a user's model
is tuned through its class's default space, and on the stationary market tuning helps on test and
never hurts on validation. (The study is the same for one and two workers under load: test_reproducible.py.)"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest

from test_app import Started, bondexp

QUICK = ["data=small", "tune.n_trials=4", "tune.batch_size=2", "eval.n_bootstrap=50", "progress=false", "~steps.drift"]
BASIC = (Path(__file__).parent.parent / "conf" / "model" / "basic.yaml").read_text()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _leaderboard(run_dir: Path) -> dict:
    return {row["model"]: float(row["rmse"]) for row in csv.DictReader((run_dir / "leaderboard.csv").open())}


def test_nothing_to_tune_skips_the_step_and_the_run_succeeds(tmp_path, cache):
    run_dir = tmp_path / "r"
    proc = bondexp(*QUICK, "model=factor", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    tune = json.loads((run_dir / "results.json").read_text())["steps"]["tune"]
    assert tune["status"] == "skipped" and "nothing to tune" in tune["error"]
    assert "skipped tune: nothing to tune" in proc.stdout
    assert "nothing to tune" in (run_dir / "report.md").read_text()
    assert set(_leaderboard(run_dir)) >= {"factor"} and not (run_dir / "tuning.json").exists()
    again = bondexp("progress=false", f"resume={run_dir}", cwd=tmp_path, cache=cache)  # the skip is checkpointed
    assert json.loads((run_dir / "results.json").read_text())["steps"]["tune"]["status"] == "skipped"
    assert again.returncode == 0


def test_a_users_extra_trees_is_tuned_through_its_class_space(tmp_path, cache):
    folder = tmp_path / "myconf" / "model"
    folder.mkdir(parents=True)
    # basic.yaml with the class swapped; ExtraTrees draws no bootstrap sample unless asked, and max_samples needs one
    (folder / "my_trees.yaml").write_text(
        BASIC.replace("models.basic", "models.my_trees").replace("RandomForestRegressor", "ExtraTreesRegressor") + "bootstrap: true\n"
    )
    run_dir = tmp_path / "r"
    bondexp(
        *QUICK, "model=my_trees", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["ok"] and results["steps"]["tune"]["status"] == "ran"
    assert "my_trees_tuned" in _leaderboard(run_dir)
    log = (run_dir / "logs" / "tune.log").read_text()
    assert "tune.class_search_space.ExtraTreesRegressor" in log


def test_failed_trials_are_in_the_tune_log_the_report_and_the_terminal(tmp_path, cache):
    """A newcomer's 15 failed trials of 16 showed in tuning.json only."""
    run_dir = tmp_path / "r"
    space = "+tune.search_space.basic={criterion: {choices: [squared_error, poisson]}}"  # Poisson refuses negative residuals
    proc = bondexp(*QUICK, "model=basic", space, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    tuning = json.loads((run_dir / "tuning.json").read_text())
    failed = [t for t in tuning["trials"] if t["state"] == "FAIL"]
    summary = f"{len(failed)} of 4 trials failed: ValueError: Some value(s) of y are negative which is not allowed for Poisson regression."
    assert failed and tuning["n_failed"] == len(failed) and tuning["failures"] == summary
    assert f"tune: {summary} (every error in tuning.json, tracebacks in logs/tune.log)" in proc.stdout
    assert summary in (run_dir / "report.md").read_text()
    log = (run_dir / "logs" / "tune.log").read_text()
    assert log.count(" failed with parameters ") == len(failed) and log.count("Traceback") == 1
    # a resume that reuses the study's result says it again: it was said once, in a terminal maybe long gone
    resumed = bondexp(f"resume={run_dir}", cwd=tmp_path, cache=cache)
    assert f"tune (reused): {summary} (every error in tuning.json" in resumed.stdout, resumed.stdout
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    assert steps["tune"]["status"] == "reused" and steps["tune"]["warnings"] == [
        f"{summary} (every error in tuning.json, tracebacks in logs/tune.log)"
    ]
    assert steps["basic"]["warnings"] == []


def test_on_the_stationary_market_tuning_lowers_test_rmse_and_never_raises_validation(tmp_path, cache):
    gains = []
    # The seeds' runs are independent, so they run at once, on one worker each: on the tiny market a run's own
    # worker processes cost more start-up than they save, and the numbers are the same (test_reproducible.py).
    with contextlib.ExitStack() as stack:
        runs = {
            seed: stack.enter_context(
                Started(*STATIONARY, f"seed={seed}", "workers=1", f"hydra.run.dir={tmp_path / f's{seed}'}", cwd=tmp_path, cache=cache)
            )
            for seed in (0, 1, 2)
        }
        for run in runs.values():
            run.result()
    for seed in runs:
        run_dir = tmp_path / f"s{seed}"
        tuning = json.loads((run_dir / "tuning.json").read_text())
        assert tuning["val_rmse"] <= tuning["untuned_value"]
        board = _leaderboard(run_dir)
        gains.append(board[tuning["target"]] - board[f"{tuning['target']}_tuned"])
    assert sum(gains) / len(gains) > 0, gains


#: The reduced stationary market of the test above (figures in README "Tuning").
STATIONARY = ["+experiment=stationary", "data=small", "model=[basic,enhanced]", "eval.n_bootstrap=50", "progress=false", "~steps.drift"]
