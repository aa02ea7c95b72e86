"""The evaluate step: stratified sampling, scores against the DCF and the oracle, intervals, files."""

from __future__ import annotations

import csv
import dataclasses
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from bondexp.artifacts import ModelArtifact, StepOutput
from bondexp.errors import ConfigError, DataValidationError
from bondexp.steps import evaluate as ev
from bondexp.steps.evaluate import (
    COLUMNS,
    evaluate_models,
    sample_rows,
    score_breakdown,
    score_models,
)
from bondexp.steps.leaderboard import leaderboard_files


def write_files(files: dict, folder) -> None:
    """Write a step's returned files as the runner does (the runner's own writing is tested in test_runner)."""
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)


def model_artifact(dataset, name, *, noise, group="ml", band=None, std=None, seed=0):
    """A hand-made model-step artifact: the oracle's prediction plus noise on every split."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for split, rows in dataset.splits.items():
        mean = dataset.meta["oracle_prediction"][rows] + rng.normal(0.0, noise, len(rows))
        p = {"mean": mean}
        if band is not None:
            p.update(lower=mean - band, upper=mean + band, level=0.9)
        if std is not None:
            p["std"] = np.full(len(rows), std)
        predictions[split] = p
    return ModelArtifact(
        name=name, group=group, config={"name": name}, features=[], predictions=predictions, metrics={"val_rmse": noise + 0.01}
    )


@pytest.fixture(scope="module")
def models(toy_dataset):
    return {
        "good": model_artifact(toy_dataset, "good", noise=0.05),
        "band": model_artifact(toy_dataset, "band", noise=0.4, group="risk", band=0.8, seed=1),
        "prob": model_artifact(toy_dataset, "prob", noise=0.3, group="risk", band=0.6, std=0.5, seed=2),
    }


@pytest.fixture(scope="module")
def artifact(toy_dataset, models):
    return evaluate_models(toy_dataset, models, sample_pct=100, n_bootstrap=200, seed=0)


# ----------------------------------------------------------------------------- sampling


def test_sample_pct_sets_the_count_and_keeps_every_rating(toy_dataset):
    ratings = toy_dataset.meta_of("test", "rating")
    n, n_ratings = len(ratings), len(np.unique(ratings))
    rows = sample_rows(toy_dataset, pct=10, seed=0)
    assert abs(len(rows) - round(0.1 * n)) <= n_ratings
    assert set(ratings[rows]) == set(ratings)
    assert len(np.unique(rows)) == len(rows) and rows.min() >= 0 and rows.max() < n
    assert np.all(np.diff(rows) > 0)  # time order kept
    assert len(sample_rows(toy_dataset, pct=50, seed=0)) > 4 * len(rows)


def test_sample_is_proportional_per_rating(toy_dataset):
    ratings = toy_dataset.meta_of("test", "rating")
    rows = sample_rows(toy_dataset, pct=25, seed=3)
    for code in np.unique(ratings):
        expected = 0.25 * np.sum(ratings == code)
        assert abs(np.sum(ratings[rows] == code) - expected) <= 1


def test_seed_changes_the_rows_but_not_their_count(toy_dataset):
    a = sample_rows(toy_dataset, pct=10, seed=0)
    b = sample_rows(toy_dataset, pct=10, seed=1)
    assert len(a) == len(b)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, sample_rows(toy_dataset, pct=10, seed=0))
    assert not np.array_equal(a, np.arange(len(a)))  # never the first N rows


def test_full_percentage_is_every_row_and_a_tiny_one_still_covers_each_rating(toy_dataset):
    n = len(toy_dataset.splits["test"])
    np.testing.assert_array_equal(sample_rows(toy_dataset, pct=100, seed=5), np.arange(n))
    ratings = toy_dataset.meta_of("test", "rating")
    tiny = sample_rows(toy_dataset, pct=0.01, seed=0)
    assert len(tiny) == len(np.unique(ratings))
    assert set(ratings[tiny]) == set(ratings)


@pytest.mark.parametrize("pct", [0, -5, 100.5])
def test_sample_pct_out_of_range_is_a_config_error(toy_dataset, pct):
    with pytest.raises(ConfigError, match=r"'eval.sample_pct' config key must be a percentage in \(0, 100\]"):
        sample_rows(toy_dataset, pct=pct, seed=0)


def test_sample_pct_changes_the_evaluated_rows(toy_dataset, models):
    small = evaluate_models(toy_dataset, models, sample_pct=20, n_bootstrap=50, seed=0)
    other = evaluate_models(toy_dataset, models, sample_pct=20, n_bootstrap=50, seed=1)
    n = len(small["sample_rows"])
    assert small["metrics"]["n_evaluated"] == n < small["metrics"]["n_test"]
    assert {row["n"] for row in small["leaderboard"]} == {n}
    assert len(small["samples"]["y"]) == n
    y = toy_dataset.target("test")
    np.testing.assert_array_equal(small["samples"]["y"], y[small["sample_rows"]])
    assert not np.array_equal(small["sample_rows"], other["sample_rows"])


# ----------------------------------------------------------------------------- the leaderboard


def test_leaderboard_has_baseline_oracle_and_every_model_sorted(artifact, toy_dataset):
    rows = artifact["leaderboard"]
    assert {row["model"] for row in rows} == {"good", "band", "prob", "dcf_baseline", "oracle"}
    rmse = [row["rmse"] for row in rows]
    assert rmse == sorted(rmse)
    by_name = {row["model"]: row for row in rows}
    y = toy_dataset.target("test")
    assert by_name["dcf_baseline"]["rmse"] == pytest.approx(np.sqrt(np.mean(y**2)))
    assert by_name["dcf_baseline"]["improvement_pct"] == pytest.approx(0.0)
    assert by_name["dcf_baseline"]["oracle_gap_pct"] == pytest.approx(100.0)
    assert by_name["oracle"]["oracle_gap_pct"] == pytest.approx(0.0)
    assert artifact["metrics"]["best_model"] == "good"
    assert artifact["metrics"]["n_models"] == 3
    assert artifact["validation_rmse"] == {"good": pytest.approx(0.06), "band": pytest.approx(0.41), "prob": pytest.approx(0.31)}
    assert artifact["groups"] == {"good": "ml", "band": "risk", "prob": "risk"}
    assert set(artifact["breakdown"]) == {row["model"] for row in rows}


def score_one(name, prediction, y, **kw):
    """The leaderboard row of one model scored alone."""
    return score_models({name: prediction}, y, **kw)[0]


def test_scores_match_their_definitions():
    y = np.array([1.0, -1.0, 2.0, 0.0])
    pred = np.array([0.5, -1.0, 1.0, 0.5])
    oracle = np.array([1.0, -1.0, 1.5, 0.0])
    row = score_one("m", {"mean": pred}, y, meta={"oracle_prediction": oracle}, n_bootstrap=100, confidence=0.9, seed=0)
    rmse = np.sqrt(np.mean((y - pred) ** 2))
    rmse_dcf, rmse_oracle = np.sqrt(np.mean(y**2)), np.sqrt(np.mean((y - oracle) ** 2))
    assert row["rmse"] == pytest.approx(rmse)
    assert row["mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert row["r2"] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    assert row["improvement_pct"] == pytest.approx(100 * (1 - rmse / rmse_dcf))
    assert row["oracle_gap_pct"] == pytest.approx(100 * (rmse - rmse_oracle) / (rmse_dcf - rmse_oracle))
    assert list(row)[: len(COLUMNS)] == list(COLUMNS)


def test_bootstrap_interval_brackets_the_rmse_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, 2000)
    pred = y + rng.normal(0, 0.5, 2000)
    kw = dict(meta={}, n_bootstrap=300, confidence=0.95)
    row = score_one("m", {"mean": pred}, y, seed=0, **kw)
    assert row["rmse_ci_low"] < row["rmse"] < row["rmse_ci_high"]
    assert row["rmse_ci_high"] - row["rmse_ci_low"] < 0.1  # about 4 standard errors of 0.008
    assert score_one("m", {"mean": pred}, y, seed=0, **kw)["rmse_ci_low"] == row["rmse_ci_low"]
    assert score_one("m", {"mean": pred}, y, seed=1, **kw)["rmse_ci_low"] != row["rmse_ci_low"]
    wider = score_one("m", {"mean": pred}, y, seed=0, meta={}, n_bootstrap=300, confidence=0.99)
    assert wider["rmse_ci_low"] < row["rmse_ci_low"] and wider["rmse_ci_high"] > row["rmse_ci_high"]


def test_models_scored_together_share_the_bootstrap_draws():
    rng = np.random.default_rng(4)
    y = rng.normal(0, 1, 3000)
    predictions = {"a": {"mean": y + rng.normal(0, 0.5, 3000)}, "b": {"mean": y + rng.normal(0, 0.8, 3000)}}
    kw = dict(meta={}, n_bootstrap=200, confidence=0.9, seed=7)
    together = score_models(predictions, y, **kw)
    assert [row["model"] for row in together] == ["a", "b"]
    for row in together:
        alone = score_one(row["model"], predictions[row["model"]], y, **kw)
        assert (row["rmse_ci_low"], row["rmse_ci_high"]) == pytest.approx((alone["rmse_ci_low"], alone["rmse_ci_high"]), rel=1e-12)


def test_interval_scores_on_a_known_band():
    y = np.arange(10, dtype=float)
    mean = np.full(10, 4.5)
    lower, upper = np.full(10, 2.0), np.full(10, 6.0)  # covers 2..6: five of ten
    prediction = {"mean": mean, "lower": lower, "upper": upper, "level": 0.8}
    row = score_one("q", prediction, y, meta={}, n_bootstrap=10, confidence=0.95, seed=0)
    assert row["coverage"] == pytest.approx(0.5)
    assert row["level"] == 0.8
    by_hand = 0.5 * (
        np.mean(np.maximum(0.1 * (y - lower), -0.9 * (y - lower))) + np.mean(np.maximum(0.9 * (y - upper), -0.1 * (y - upper)))
    )
    assert row["pinball"] == pytest.approx(by_hand)
    assert "nll" not in row


def test_gaussian_nll_prefers_the_right_spread():
    rng = np.random.default_rng(3)
    y = rng.normal(0, 2.0, 5000)

    def score(s: float) -> float:
        return score_one("b", {"mean": np.zeros(5000), "std": np.full(5000, s)}, y, meta={}, n_bootstrap=5, confidence=0.9, seed=0)["nll"]

    assert score(2.0) == pytest.approx(0.5 * np.log(2 * np.pi * 4.0) + 0.5, abs=0.05)
    assert score(2.0) < score(1.0) and score(2.0) < score(4.0)


def test_interval_models_get_coverage_and_proper_scores(artifact):
    by_name = {row["model"]: row for row in artifact["leaderboard"]}
    assert {"coverage", "pinball", "level"} <= set(by_name["band"]) and "nll" not in by_name["band"]
    assert "nll" in by_name["prob"]
    assert "coverage" not in by_name["good"]
    assert 0.0 <= by_name["band"]["coverage"] <= 1.0
    assert "coverage" in artifact["breakdown"]["band"]["rating"]["AAA"]


def test_breakdown_by_rating_and_regime_adds_up(toy_dataset, artifact):
    breakdown = artifact["breakdown"]["good"]
    n_test = len(toy_dataset.splits["test"])
    assert sum(entry["n"] for entry in breakdown["rating"].values()) == n_test
    assert sum(entry["n"] for entry in breakdown["regime"].values()) == n_test
    assert set(breakdown["regime"]) <= {"calm", "stress", "crisis"}
    # the overall RMSE is the row-weighted root mean of the per-rating mean squares
    rmse = next(row["rmse"] for row in artifact["leaderboard"] if row["model"] == "good")
    pooled = np.sqrt(sum(e["n"] * e["rmse"] ** 2 for e in breakdown["rating"].values()) / n_test)
    assert pooled == pytest.approx(rmse)


def test_breakdown_without_oracle_has_no_regime():
    y = np.array([1.0, 2.0, 3.0])
    out = score_breakdown({"mean": np.zeros(3)}, y, meta={"rating": np.array([0, 0, 6])})
    assert out["regime"] == {}
    assert out["rating"] == {"AAA": {"n": 2, "rmse": pytest.approx(np.sqrt(2.5))}, "CCC": {"n": 1, "rmse": 3.0}}


def test_data_without_oracle_has_no_oracle_row(toy_dataset, models):
    meta = {k: v for k, v in toy_dataset.meta.items() if not k.startswith("oracle_")}
    plain = type(toy_dataset)(**{**toy_dataset.__dict__, "meta": meta})
    result = evaluate_models(plain, models, sample_pct=100, n_bootstrap=20, seed=0)
    assert {row["model"] for row in result["leaderboard"]} == {"good", "band", "prob", "dcf_baseline"}
    assert all("oracle_gap_pct" not in row for row in result["leaderboard"])
    assert "oracle_rmse" not in result["metrics"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: {**p, "mean": p["mean"][:-1]}, r"prediction 'mean' of model 'bad' must hold one value per test row"),
        (
            lambda p: {**p, "mean": np.where(np.arange(len(p["mean"])) == 3, np.nan, p["mean"])},
            r"'mean' of model 'bad' must be finite. Got 1 non-finite value",
        ),
        (
            lambda p: {**p, "lower": p["mean"] - 1, "upper": p["mean"][:5], "level": 0.9},
            r"prediction 'upper' of model 'bad' must hold one value per test row",
        ),
        (lambda p: {**p, "std": np.zeros(len(p["mean"]))}, r"'std' of model 'bad' must be positive"),
    ],
)
def test_bad_predictions_are_named(toy_dataset, change, message):
    bad = model_artifact(toy_dataset, "bad", noise=0.1)
    bad.predictions["test"] = change(bad.predictions["test"])
    with pytest.raises(DataValidationError, match=message):
        evaluate_models(toy_dataset, {"bad": bad}, n_bootstrap=10)


def test_the_step_reads_model_artifacts_and_rejects_bad_config(toy_dataset, models, monkeypatch):
    monkeypatch.setattr(ev, "dataset_for", lambda shared: toy_dataset)
    ctx = SimpleNamespace(name="evaluate", run_dir=None, workers=1, threads=1, shared={}, log=logging.getLogger("t"))
    config = {"sample_pct": 50, "n_bootstrap": 20, "confidence": 0.9, "seed": 4}
    inputs = {**models, "drift": {"metrics": {"n_alert": 0}}}
    output = ev.evaluate(config, inputs, ctx)
    assert isinstance(output, StepOutput) and set(output.files) == set(leaderboard_files(output.artifact))
    result = output.artifact
    assert {row["model"] for row in result["leaderboard"]} == {"good", "band", "prob", "dcf_baseline", "oracle"}
    assert all(isinstance(v, (int, float, str, bool)) for v in result["metrics"].values())
    with pytest.raises(ConfigError, match=r"'eval' config keys must be among .* Got \['samplepct'\]"):
        ev.evaluate({**config, "samplepct": 5}, inputs, ctx)
    with pytest.raises(ConfigError, match="needs at least one model step"):
        ev.evaluate(config, {"drift": {}}, ctx)
    with pytest.raises(ConfigError, match=r"'eval.confidence' config key must be in \(0, 1\)"):
        ev.evaluate({**config, "confidence": 1.0}, inputs, ctx)
    with pytest.raises(ConfigError, match=r"must differ from the leaderboard's reference rows .* Got \['oracle'\]"):
        ev.evaluate(config, {"oracle": dataclasses.replace(models["good"], name="oracle")}, ctx)
    # the tune step's artifact is scored under its own name; a skipped tune (None) is no model
    tuned = ev.evaluate(config, {**inputs, "tune": dataclasses.replace(models["good"], name="good_tuned")}, ctx).artifact
    assert "good_tuned" in {row["model"] for row in tuned["leaderboard"]}
    skipped = ev.evaluate(config, {**inputs, "tune": None}, ctx).artifact
    assert {row["model"] for row in skipped["leaderboard"]} == {row["model"] for row in result["leaderboard"]}


# ----------------------------------------------------------------------------- files


def test_leaderboard_files_are_the_documented_files(tmp_path, toy_dataset, models):
    result = evaluate_models(toy_dataset, {**models, "good_tuned": models["good"]}, sample_pct=40, n_bootstrap=50, seed=0)
    files = leaderboard_files(result)
    assert set(files) == {
        "leaderboard.csv",
        "leaderboard.md",
        "plots/predicted_vs_actual.png",
        "plots/residual_distribution.png",
        "plots/rmse_ci.png",
    }
    assert all(files.values()) and files["plots/rmse_ci.png"].startswith(b"\x89PNG")
    write_files(files, tmp_path)
    with open(tmp_path / "leaderboard.csv") as handle:
        reader = csv.DictReader(handle)
        table = list(reader)
        header = reader.fieldnames
    assert header[: len(COLUMNS)] == list(COLUMNS)
    assert {"oracle_gap_pct", "coverage", "pinball", "nll"} <= set(header)
    assert {r["model"] for r in table} == {"good_tuned", "good", "band", "prob", "dcf_baseline", "oracle"}
    assert [float(r["rmse"]) for r in table] == sorted(float(r["rmse"]) for r in table)
    assert float(next(r for r in table if r["model"] == "good")["rmse"]) == next(
        row["rmse"] for row in result["leaderboard"] if row["model"] == "good"
    )  # full precision
    assert next(r for r in table if r["model"] == "good")["coverage"] == ""
    md = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| model | n | rmse | rmse_ci_low | rmse_ci_high | mae | r2 | improvement_pct |")
    assert len(md) == 2 + len(table) + 2  # the table, then the line naming validation's choice
    assert any(line.startswith("| good * |") for line in md) and md[-1].startswith("Sorted by test RMSE. \\* Validation chose **good**")


def test_validation_chooses_the_best_model_when_test_disagrees(toy_dataset, tmp_path):
    """``lucky`` has the lowest test RMSE but the higher validation RMSE: validation's choice wins everywhere."""
    from bondexp.sweep import summarize_sweep

    lucky = model_artifact(toy_dataset, "lucky", noise=0.05, seed=3)
    lucky.metrics["val_rmse"] = 0.5
    steady = model_artifact(toy_dataset, "steady", noise=0.2, seed=4)
    steady.metrics["val_rmse"] = 0.2
    artifact = evaluate_models(toy_dataset, {"lucky": lucky, "steady": steady}, n_bootstrap=50, seed=0)
    trained = [row for row in artifact["leaderboard"] if row["model"] in ("lucky", "steady")]
    assert trained[0]["model"] == "lucky"  # still sorted by test RMSE
    assert artifact["metrics"]["best_model"] == "steady" and artifact["metrics"]["best_val_rmse"] == 0.2
    assert artifact["metrics"]["best_rmse"] == next(r["rmse"] for r in trained if r["model"] == "steady")
    assert {r["model"]: r["val_rmse"] for r in trained} == {"lucky": 0.5, "steady": 0.2}
    job = tmp_path / "sweep" / "0"
    write_files(leaderboard_files(artifact), job)
    assert "Validation chose **steady**" in (job / "leaderboard.md").read_text()
    rows = list(csv.DictReader((job / "leaderboard.csv").open()))
    assert {r["model"]: float(r["val_rmse"]) for r in rows if r["model"] in ("lucky", "steady")} == {"lucky": 0.5, "steady": 0.2}
    assert summarize_sweep(tmp_path / "sweep")[0]["best_model"] == "steady"


def test_no_validation_rmse_to_choose_by_is_an_error(toy_dataset):
    blind = model_artifact(toy_dataset, "blind", noise=0.1)
    blind.metrics.clear()
    with pytest.raises(DataValidationError, match="no model step reported a finite 'val_rmse'"):
        evaluate_models(toy_dataset, {"blind": blind}, n_bootstrap=10)


def test_the_plotted_best_models_are_validations_not_the_test_splits():
    """The plots showed the leaderboard's first three rows, which are ranked by the test split."""
    from bondexp.steps.leaderboard import _best_models

    rows = [  # leaderboard order: test RMSE
        {"model": "dcf_baseline", "rmse": 0.1, "val_rmse": 0.1},
        {"model": "a", "rmse": 1.0, "val_rmse": 1.4},
        {"model": "b", "rmse": 1.1, "val_rmse": 1.1},
        {"model": "c", "rmse": 1.2, "val_rmse": None},
        {"model": "d", "rmse": 1.3, "val_rmse": 1.2},
        {"model": "e", "rmse": 1.4, "val_rmse": 1.0},
    ]
    held = {row["model"]: {} for row in rows}
    assert _best_models({"leaderboard": rows, "samples": {"predictions": held}}) == ["e", "b", "d"]
