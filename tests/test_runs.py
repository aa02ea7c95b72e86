"""`python -m bondexp.runs`: run folders listed and compared from their small files, without MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bondexp.runs import best_model_on_validation, find_run_folders, main, run_row, select

HEADER = "model,n,rmse,mae,r2,improvement_pct,val_rmse\n"


def make_run(
    folder: Path,
    *,
    overrides,
    ok=True,
    leaderboard=HEADER + "basic,10,1.2,1,0.5,10,0.9\nfactor,10,1.1,1,0.5,12,1.0\n",
    evaluate=None,
    started=None,
) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    steps = {"basic": {"status": "ran", "metrics": {"val_rmse": 0.9}}, "factor": {"status": "ran", "metrics": {"val_rmse": 1.0}}}
    if evaluate is not None:
        steps["evaluate"] = {"status": "ran", "metrics": evaluate}
    (folder / "results.json").write_text(json.dumps({"steps": steps, "wall_s": 12.5, "ok": ok, "interrupted": False}))
    (folder / "data_summary.json").write_text(json.dumps({"fingerprint": "abcdef0123456789"}))
    if leaderboard is not None:
        (folder / "leaderboard.csv").write_text(leaderboard)
    if started is not None:
        os.utime(folder / ".hydra" / "overrides.yaml", (started, started))
    return folder


@pytest.mark.parametrize(
    "evaluate, leaderboard, expected",
    [
        ({"best_model": "factor"}, [{"model": "basic", "val_rmse": 0.5}], "factor"),  # evaluate's choice first
        (
            {},
            [{"model": "oracle", "val_rmse": 0.1}, {"model": "basic", "val_rmse": 0.9}, {"model": "factor", "val_rmse": 0.8}],
            "factor",
        ),  # then the leaderboard's val_rmse
        ({}, [{"model": "basic", "rmse": 0.1}], "basic"),  # then the model steps' val_rmse (basic 0.9 < factor 1.0)
    ],
)
def test_best_model_is_chosen_on_validation(evaluate, leaderboard, expected):
    results = {
        "steps": {"basic": {"metrics": {"val_rmse": 0.9}}, "factor": {"metrics": {"val_rmse": 1.0}}, "evaluate": {"metrics": evaluate}}
    }
    assert best_model_on_validation(results, leaderboard) == expected


def test_an_interrupted_runs_best_model_is_a_model_not_the_tune_step(tmp_path):
    """Interrupted before evaluate: no leaderboard, and ``tune`` (whose val_rmse is its tuned model's, the lowest) was named best."""
    steps = {
        "basic": {"group": "ml", "status": "ran", "metrics": {"val_rmse": 1.17}},
        "enhanced": {"group": "ml", "status": "ran", "metrics": {"val_rmse": 1.23}},
        "tune": {"group": "report", "status": "ran", "metrics": {"val_rmse": 1.09, "best_value": 1.09}},
        "basic@2017-07": {"group": "backtest", "status": "ran", "metrics": {"val_rmse": 0.5}},
        "evaluate": {"group": "report", "status": "skipped", "metrics": {}},
    }
    assert best_model_on_validation({"steps": steps}, []) == "basic"
    assert best_model_on_validation({"steps": {"tune": steps["tune"]}}, []) is None
    # a run that records its tuned model's name: predict, which counts it, named it best where this said basic
    tuned = {**steps, "tune": {**steps["tune"], "metrics": {**steps["tune"]["metrics"], "tuned_model": "basic_tuned"}}}
    assert best_model_on_validation({"steps": tuned}, []) == "basic_tuned"
    run_dir = make_run(tmp_path / "r", overrides=["model=[basic,enhanced]"], leaderboard=None)
    (run_dir / "results.json").write_text(json.dumps({"steps": steps, "wall_s": 3.0, "ok": False, "interrupted": True}))
    assert (run_row(run_dir)["status"], run_row(run_dir)["best_model"]) == ("interrupted", "basic")


def test_a_row_names_the_validation_choice_and_its_test_rmse(tmp_path):
    row = run_row(make_run(tmp_path / "r", overrides=["model=[basic,factor]"]))
    # factor has the lower test RMSE, but validation chose basic
    assert (row["best_model"], row["test_rmse"], row["status"], row["wall_s"], row["data"]) == ("basic", 1.2, "ok", 12.5, "abcdef012345")
    assert row["overrides"] == ["model=[basic,factor]"]


def test_folders_are_found_filtered_by_override_and_date(tmp_path):
    old = time.mktime((2026, 1, 5, 10, 0, 0, 0, 0, -1))
    make_run(tmp_path / "outputs" / "2026-01-05" / "10-00-00", overrides=["model=basic"], started=old)
    make_run(tmp_path / "multirun" / "2026-11-20" / "09-00-00" / "0", overrides=["seed=0"])
    make_run(tmp_path / "multirun" / "2026-11-20" / "09-00-00" / "1", overrides=["seed=1"], ok=False)
    folders = find_run_folders([tmp_path / "outputs", tmp_path / "multirun"])
    assert len(folders) == 3
    rows = [run_row(f) for f in folders]
    assert [r["overrides"] for r in select(rows, patterns=["seed=*"])] == [["seed=0"], ["seed=1"]]
    assert [r["status"] for r in select(rows, patterns=["seed=1"])] == ["failed"]
    assert len(select(rows, since=datetime(2026, 6, 1))) == 2
    assert select(rows, since=datetime(2026, 6, 1), patterns=["model=basic"]) == []


def test_a_sweep_jobs_overrides_match_as_typed(tmp_path):
    """Hydra's sweeper records `~steps.tune` as `~steps.tune=null` and escapes a value's colons, so
    `--override '~steps.tune'` or the Dask address as typed matched no job of a sweep."""
    job = make_run(tmp_path / "0", overrides=["~steps.tune=null", "executor.address=tcp\\://127.0.0.1\\:18786", "seed=0"])
    row = run_row(job)
    assert row["overrides"] == ["~steps.tune", "executor.address=tcp://127.0.0.1:18786", "seed=0"]
    assert select([row], patterns=["~steps.tune", "executor.address=tcp://127.0.0.1:18786"]) == [row]


def test_folders_where_no_step_began_are_not_runs(tmp_path):
    """A dry run or a config error leaves Hydra's folder with only .hydra/; a killed run has logs/ and no results.json."""
    for stamp in ("09-00-00", "09-30-00"):
        (tmp_path / "outputs" / "2026-11-20" / stamp / ".hydra").mkdir(parents=True)
    killed = tmp_path / "outputs" / "2026-11-20" / "10-00-00"
    (killed / ".hydra").mkdir(parents=True)
    (killed / "logs").mkdir()
    (killed / "checkpoints").mkdir()
    assert find_run_folders([tmp_path / "outputs"]) == [killed]
    assert run_row(killed)["status"] == "unfinished"


def test_the_cli_lists_runs_under_outputs_and_multirun(tmp_path):
    make_run(tmp_path / "outputs" / "2026-11-29" / "10-00-00", overrides=["model=basic"], leaderboard=None)
    make_run(tmp_path / "multirun" / "2026-11-29" / "11-00-00" / "0", overrides=["seed=0"])
    proc = subprocess.run([sys.executable, "-m", "bondexp.runs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["date", "folder", "status", "wall_s", "data", "best_model", "test_rmse", "overrides"]
    assert len(lines) == 4 and "model=basic" in lines[2] and "seed=0" in lines[3] and "1.2000" in lines[3]


def test_the_cli_says_when_nothing_matches(tmp_path, capsys):
    make_run(tmp_path / "r", overrides=["seed=0"])
    assert main([str(tmp_path / "r"), "--override", "seed=9"]) == 1
    assert "none of the 1 run folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


@pytest.mark.parametrize("fmt", [[], ["--csv"]])
def test_a_reader_that_stops_early_ends_the_listing_quietly(tmp_path, fmt):
    """`python -m bondexp.runs --csv | head -3` printed a BrokenPipeError traceback."""
    make_run(tmp_path / "outputs" / "2026-11-29" / "10-00-00", overrides=["model=basic"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bondexp.runs", *fmt], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_resume_adds_its_wall_time_instead_of_replacing_the_runs(tmp_path):
    """The resume of a finished 4.44 s run rewrote results.json with its own 0.005 s, which `bondexp.runs` then listed."""
    from bondexp.results import RunResult

    run_dir = tmp_path / "outputs" / "2026-11-30" / "10-00-00"
    run_dir.mkdir(parents=True)
    RunResult(steps={}, wall_s=40.0, run_dir=run_dir).write_json()
    assert json.loads((run_dir / "results.json").read_text())["attempts"] == 1
    RunResult(steps={}, wall_s=0.07, run_dir=run_dir).write_json()
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["wall_s"], results["total_wall_s"], results["attempts"]) == (0.07, 40.07, 2)
    assert run_row(run_dir)["wall_s"] == 40.07
