"""report.md: every section from full artifacts, and one line per section whose step is missing."""

from __future__ import annotations

import numpy as np
import pytest

from bondexp.artifacts import ModelArtifact
from bondexp.report import write_report
from bondexp.steps.evaluate import evaluate_models
from conftest import make_toy_dataset


def _model(dataset, name, noise, seed):
    rng = np.random.default_rng(seed)
    predictions = {
        split: {"mean": dataset.meta["oracle_prediction"][rows] + rng.normal(0, noise, len(rows))} for split, rows in dataset.splits.items()
    }
    return ModelArtifact(name=name, group="ml", config={}, features=[], predictions=predictions, metrics={"val_rmse": noise})


@pytest.fixture(scope="module")
def evaluate_artifact():
    dataset = make_toy_dataset(n_bonds=30, n_months=20)
    models = {"basic": _model(dataset, "basic", 0.3, 0), "enhanced": _model(dataset, "enhanced", 0.1, 1)}
    return evaluate_models(dataset, models, sample_pct=50, n_bootstrap=50, seed=0)


SUMMARY = {
    "fingerprint": "abc123",
    "cache_hit": True,
    "load_seconds": 0.25,
    "n_rows": 600,
    "dropped_rows": {},
    "splits": {
        split: {
            "rows": 200,
            "first_date": "2020-01-31",
            "last_date": "2020-12-31",
            "residual_mean": 0.1,
            "residual_std": 0.9,
            "residual_p05": -1.4,
            "residual_p95": 1.6,
        }
        for split in ("train", "validation", "test")
    },
}

DRIFT = {
    "features": {
        "time_to_maturity": {"status": "ok", "psi": 0.01, "ks_pvalue": 0.8},
        "curve_level": {"status": "alert", "why": "a level shift, p 1e-06 < 0.05", "psi": 0.42, "ks_pvalue": 1e-6},
        "credit_spread": {"status": "warn", "psi": 0.12, "ks_pvalue": 0.03},
    },
    "models": {"enhanced": {"status": "alert", "rmse_ratio": 1.8}},
    "metrics": {"n_alert": 1, "n_warn": 1},
}


def tune_artifact(*, improved):
    val_rmse = 0.44 if improved else 0.46
    record = {
        "target": "enhanced",
        "best_params": {"max_depth": 4, "learning_rate": 0.05123},
        "best_value": 0.4321,
        "untuned_value": 0.45,
        "improved": improved,
        "note": "Tuning enhanced lowered the validation RMSE from 0.4500 to 0.4400." if improved else None,
        "val_rmse": val_rmse,
        "n_trials": 12,
        "trials": [],
    }
    return ModelArtifact(
        name="enhanced_tuned",
        group="ml",
        config={},
        features=[],
        predictions={},
        metrics={"val_rmse": val_rmse, "n_trials": 12},
        info={"tuning": record},
    )


def results(statuses):
    steps = {
        name: {
            "status": status,
            "group": "report" if name in ("evaluate", "drift", "tune") else "ml",
            "duration_s": 1.5,
            "worker": "w1",
            "metrics": {"val_rmse": 0.3} if status == "ran" else {},
            "error": "Traceback ...\nValueError: boom"
            if status == "failed"
            else ("needs failed step 'evaluate'" if status == "skipped" else None),
        }
        for name, status in statuses.items()
    }
    return {"steps": steps, "wall_s": 12.5, "ok": all(s in ("ran", "reused") for s in statuses.values()), "executor": "local", "workers": 2}


def test_full_report_has_every_section(tmp_path, evaluate_artifact):
    (tmp_path / "plots").mkdir()
    for name in ("timeline.png", "rmse_ci.png", "drift.png"):
        (tmp_path / "plots" / name).write_bytes(b"\x89PNG")
    rows = list(evaluate_artifact["leaderboard"])
    tuned = {**rows[0], "model": "enhanced_tuned", "rmse": rows[0]["rmse"] - 0.01}
    rows = sorted(rows + [tuned], key=lambda r: r["rmse"])
    path = write_report(
        tmp_path,
        command="python -m bondexp model=[basic,enhanced] workers=2",
        overrides=["model=[basic,enhanced]", "workers=2"],
        data_summary=SUMMARY,
        results=results({"basic": "ran", "enhanced": "ran", "evaluate": "ran", "drift": "ran", "tune": "ran"}),
        artifacts={"evaluate": {**evaluate_artifact, "leaderboard": rows}, "drift": DRIFT, "tune": tune_artifact(improved=True)},
    )
    text = path.read_text()
    assert path == tmp_path / "report.md"
    for heading in (
        "## Data",
        "## Steps",
        "## Leaderboard",
        "## Drift",
        "## Tuning",
        "## Plots",
        "### RMSE by rating",
        "### RMSE by market regime",
    ):
        assert heading in text, heading
    assert "python -m bondexp model=[basic,enhanced] workers=2" in text and "`workers=2`" in text
    assert "| test | 200 |" in text and "feature cache" in text
    assert "[plots/timeline.png](plots/timeline.png)" in text
    assert "| model | n | rmse | rmse_ci_low | rmse_ci_high | mae | r2 | improvement_pct |" in text
    for model in ("enhanced_tuned", "enhanced", "basic", "dcf_baseline", "oracle"):
        assert f"| {model} |" in text, model
    chosen = evaluate_artifact["metrics"]["best_model"]  # validation's choice, not the lowest test RMSE (enhanced_tuned)
    assert "Best model, chosen on validation (lowest validation RMSE" in text and f"**{chosen}**, test RMSE" in text
    assert f"| {chosen} * |" in text
    assert "50% sample, stratified by rating" in text
    assert "| curve_level | alert | a level shift, p 1e-06 < 0.05 | 0.4200 |" in text and "| credit_spread | warn | " in text
    assert "time_to_maturity" not in text.split("## Drift")[1].split("## Tuning")[0]
    assert "enhanced (alert" in text
    assert "`max_depth=4`" in text and "12 trial(s)" in text and "Improved on the untuned model: **yes**" in text
    assert "lowered the validation RMSE" in text
    for name in ("timeline", "rmse_ci", "drift"):
        assert f"(plots/{name}.png)" in text


def test_report_survives_missing_and_failed_steps(tmp_path):
    path = write_report(
        tmp_path,
        command="python -m bondexp ~steps.drift",
        overrides=[],
        data_summary={},
        results=results({"basic": "failed", "evaluate": "skipped", "tune": "skipped"}),
        artifacts={},
    )
    text = path.read_text()
    assert "Overrides: none" in text
    assert "No leaderboard: the evaluate step was skipped: needs failed step 'evaluate'." in text
    assert "No drift findings: the drift step was not part of this run." in text
    assert "No tuning results: the tune step was skipped" in text
    assert "failed **basic**: ValueError: boom" in text
    assert "No timeline" in text and "No plots were written." in text
    assert "some steps failed" in text


def test_a_step_of_yours_shows_its_first_metric(tmp_path):
    """The terminal's table showed ``n_models=2`` for a report step of the user's; report.md's cell was empty."""
    summary = results({"basic": "ran", "model_table": "ran"})
    summary["steps"]["model_table"]["metrics"] = {"n_models": 2, "widest": "basic"}
    text = write_report(tmp_path, command="c", overrides=[], data_summary=SUMMARY, results=summary, artifacts={}).read_text()
    assert "| model_table | ml | ran | 1.50 | w1 | n_models=2 |" in text
    assert "| basic | ml | ran | 1.50 | w1 | val_rmse=0.3 |" in text


def test_the_command_and_overrides_show_no_password(tmp_path):
    """``tune.storage=postgresql://u:pw@host/db`` put the password in report.md, a file one shares."""
    storage = "tune.storage=postgresql://u:s3cretpw@127.0.0.1:5999/db"
    text = write_report(
        tmp_path, command=f"python -m bondexp {storage}", overrides=[storage], data_summary=SUMMARY, results=results({}), artifacts={}
    ).read_text()
    assert "s3cretpw" not in text
    assert "python -m bondexp tune.storage=postgresql://u:***@127.0.0.1:5999/db" in text
    assert "`tune.storage=postgresql://u:***@127.0.0.1:5999/db`" in text


def test_failed_evaluate_is_named(tmp_path):
    text = write_report(
        tmp_path, command="c", overrides=[], data_summary=SUMMARY, results=results({"evaluate": "failed"}), artifacts={}
    ).read_text()
    assert "No leaderboard: the evaluate step failed (see Steps)." in text


def test_tuning_that_did_not_help_says_so(tmp_path):
    text = write_report(
        tmp_path,
        command="c",
        overrides=[],
        data_summary=SUMMARY,
        results=results({"tune": "ran"}),
        artifacts={"tune": tune_artifact(improved=False)},
    ).read_text()
    assert "Improved on the untuned model: **no**" in text
    assert "Tuning did not beat the untuned model on the validation split; keep the untuned parameters." in text


def test_failed_trials_are_counted_under_the_tuning_line(tmp_path):
    """'Tuned enhanced over 12 trial(s)' alone hid that 11 of them failed."""
    tuned = tune_artifact(improved=False)
    tuned.info["tuning"].update(n_failed=11, failures="11 of 12 trials failed: ValueError: bad")
    text = write_report(
        tmp_path, command="c", overrides=[], data_summary=SUMMARY, results=results({"tune": "ran"}), artifacts={"tune": tuned}
    ).read_text()
    tuning = text.split("## Tuning")[1]
    assert "over 12 trial(s)" in tuning
    assert "\n11 of 12 trials failed: ValueError: bad (every trial's error in `tuning.json`, tracebacks in `logs/tune.log`)\n" in tuning


def test_no_drift_says_all_ok(tmp_path):
    quiet = {"features": {"age": {"status": "ok", "psi": 0.0, "ks_pvalue": 1.0}}, "models": {}}
    text = write_report(
        tmp_path, command="c", overrides=[], data_summary=SUMMARY, results=results({"drift": "ran"}), artifacts={"drift": quiet}
    ).read_text()
    assert "No feature drifted (all 1 ok)." in text
