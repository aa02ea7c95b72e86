"""The walk-forward backtest: origins from config, the (model, origin) steps, what each fit sees, the scores, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
from hydra import compose, initialize_config_module

from bondexp.app import run
from bondexp.config import collect_models, register_configs, validate_config
from bondexp.errors import ConfigError
from bondexp.features import load_dataset
from bondexp.pipeline import build_steps
from bondexp.steps.backtest import origin_months, origin_rows
from bondexp.steps.backtest_score import OVERALL, score_backtest
from test_app import Started

register_configs()

#: The tiny market's 36 months start in 2015-01; 3 origins 3 months apart score its last 9 months.
ORIGINS = ["2017-04", "2017-07", "2017-10"]
SMALL = ["data=small", "backtest.origins=3", "backtest.horizon=3", "progress=false", "eval.n_bootstrap=50"]


def composed(*overrides: str):
    with initialize_config_module(config_module="bondexp.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def small_months(cache: Path) -> np.ndarray:
    cfg = composed("data=small")
    from omegaconf import OmegaConf

    dataset, _ = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), seed=0, cache_dir=cache)
    return dataset.meta["obs_date"]


def test_the_default_run_has_no_backtest():
    cfg = composed()
    assert cfg.backtest.origins is None
    assert [s.name for s in build_steps(cfg, collect_models(cfg))][-3:] == ["evaluate", "drift", "tune"]


def test_the_preset_asks_for_twelve_origins_three_months_apart():
    cfg = composed("+experiment=backtest")
    assert (cfg.backtest.origins, cfg.backtest.horizon, cfg.data.n_months) == (12, 3, 72)
    months = np.arange("2015-01", "2021-01", dtype="datetime64[M]")
    origins = origin_months(months, dict(cfg.backtest))
    assert origins[0] == "2018-01" and origins[-1] == "2020-10" and len(origins) == 12


def test_origin_months_from_a_count_and_from_a_list():
    months = np.arange("2015-01", "2018-01", dtype="datetime64[M]")
    spec = {"origins": 3, "horizon": 3, "window": "expanding", "calibration_months": 6}
    assert origin_months(months, spec) == ORIGINS
    assert origin_months(months, {**spec, "origins": ["2017-06", "2016-01"]}) == ["2016-01", "2017-06"]


def test_origin_rows_keep_the_past_and_the_window():
    months = np.repeat(np.arange("2016-01", "2017-01", dtype="datetime64[M]"), 2)
    rows = origin_rows(months, "2016-09", horizon=2, window=5, calibration_months=2, calibrates=True)
    as_months = {k: sorted({str(m) for m in months[v]}) for k, v in rows.items()}
    assert as_months == {"fit": ["2016-04", "2016-05", "2016-06"], "calibration": ["2016-07", "2016-08"], "scored": ["2016-09", "2016-10"]}
    rows = origin_rows(months, "2016-09", horizon=2, window="expanding", calibration_months=2, calibrates=False)
    assert len(rows["calibration"]) == 0 and sorted({str(m) for m in months[rows["fit"]]})[0] == "2016-01"


def test_steps_are_one_per_model_and_origin_then_the_backtest(cache):
    cfg = composed(*SMALL, "model=[basic,factor]")
    models = collect_models(cfg)
    validate_config(cfg, models=models)
    steps = {s.name: s for s in build_steps(cfg, models, months=small_months(cache))}
    refits = [f"{m}@{o}" for m in ("basic", "factor", "tuned") for o in ORIGINS]
    assert list(steps)[-len(refits) - 1 :] == refits + ["backtest"]
    assert set(steps["backtest"].needs) == set(refits)
    assert steps["tuned@2017-04"].needs == ("tune",) and steps["basic@2017-04"].needs == ()
    assert steps["factor@2017-07"].config["model"]["estimator"]["_target_"].endswith("FactorRegressor")
    no_tune = composed(*SMALL, "model=[basic,factor]", "~steps.tune")
    assert not any(name.startswith("tuned@") for name in (s.name for s in build_steps(no_tune, models, months=small_months(cache))))


def test_a_model_named_like_a_backtest_step_is_a_config_error(cache):
    cfg = composed(*SMALL, "model=[basic]")
    basic = collect_models(cfg)["basic"]
    with pytest.raises(ConfigError, match=r"named after \['tuned'\]; rename that model"):
        build_steps(cfg, {"tuned": basic}, months=small_months(cache))


def test_a_dry_run_plans_the_refits_and_runs_nothing(tmp_path, cache, capsys):
    cfg = composed("data=small", "backtest.origins=2", "model=[basic]", "dry_run=true", f"cache_dir={cache}")
    assert run(cfg, run_dir=tmp_path / "run", workers=1) is None
    plan = capsys.readouterr().out
    assert "basic@2017-07" in plan and "basic@2017-10" in plan and "tuned@2017-10" in plan
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("backtest.origins=0", "The 'backtest.origins' config key must be null (no backtest), a count of at least 1"),
        ("backtest.origins=[2017-13]", "The 'backtest.origins' config key must list months as 'YYYY-MM'. Got '2017-13'"),
        ("backtest.horizon=0", "The 'backtest.horizon' config key must be a whole number of months, at least 1. Got 0"),
        ("backtest.window=rolling", "The 'backtest.window' config key must be 'expanding' or a number of months"),
        ("backtest.window=4", "The 'backtest.window' config key must be 'expanding' or a number of months of at least"),
        ("backtest.calibration_months=0", "The 'backtest.calibration_months' config key must be a whole number"),
        # these need the data's 36 months
        ("backtest.origins=12", "The 'backtest.origins' config key asks for 12 origins 3 months apart"),
        ("backtest.origins=[2010-01]", "The 'backtest.origins' config key must list months of the data"),
        ("backtest.origins=[2017-11]", "The 'backtest.origins' month 2017-11 leaves fewer than backtest.horizon = 3"),
    ],
)
def test_bad_backtest_values_fail_before_any_work(tmp_path, cache, override, message):
    cfg = composed("data=small", "backtest.origins=3", override, f"cache_dir={cache}", "progress=false")
    with pytest.raises(ConfigError) as err:
        run(cfg, run_dir=tmp_path / "run", workers=1)
    assert message in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_score_backtest_matches_a_hand_computation():
    dates = np.repeat(np.arange("2020-01", "2020-07", dtype="datetime64[M]"), 3).astype("datetime64[D]")
    y = np.arange(18, dtype=np.float64) / 10.0
    oracle = y + 0.05
    fits = []
    for origin, rows in (("2020-01", np.arange(0, 9)), ("2020-04", np.arange(9, 18))):
        for name, shift in (("a", 0.1), ("b", -0.3)):
            fits.append(
                {
                    "name": name,
                    "origin": origin,
                    "rows": {"scored": rows},
                    "predictions": {"mean": y[rows] + shift * (1 + rows % 2)},
                    "metrics": {"n_train": 7},
                }
            )
    out = score_backtest(fits, y=y, meta={"obs_date": dates, "oracle_prediction": oracle}, n_bootstrap=200, confidence=0.9, seed=3)
    rmse = {(r["model"], r["origin"]): r for r in out["rows"]}
    err_a = 0.1 * (1 + np.arange(9) % 2)
    assert rmse[("a", "2020-01")]["rmse"] == pytest.approx(np.sqrt(np.mean(err_a**2)))
    dcf = np.sqrt(np.mean(y[9:] ** 2))
    assert rmse[("dcf_baseline", "2020-04")]["rmse"] == pytest.approx(dcf)
    assert rmse[("oracle", "2020-04")]["rmse"] == pytest.approx(0.05)
    err_b = np.abs(-0.3 * (1 + np.arange(18) % 2))
    assert rmse[("b", OVERALL)]["rmse"] == pytest.approx(np.sqrt(np.mean(err_b**2)))
    assert rmse[("b", "2020-04")]["improvement_pct"] == pytest.approx(100 * (1 - rmse[("b", "2020-04")]["rmse"] / dcf))
    # the month-block bootstrap: six months drawn as wholes, the same draws for every model
    draws = np.random.default_rng(3).integers(0, 6, size=(200, 6))
    month_sse = np.array([np.sum(err_b[3 * k : 3 * k + 3] ** 2) for k in range(6)])
    boot = [np.sqrt(month_sse[d].sum() / (3 * len(d))) for d in draws]
    assert rmse[("b", OVERALL)]["rmse_ci_low"] == pytest.approx(np.percentile(boot, 5))
    assert rmse[("b", OVERALL)]["rmse_ci_high"] == pytest.approx(np.percentile(boot, 95))


def test_overlapping_origins_share_their_months_blocks():
    """Origins 2020-01 and 2020-02 with a 3-month horizon both score 2020-02 and 2020-03: the `all` row said 6 months
    for 4, and resampled each shared month as two independent blocks."""
    dates = np.repeat(np.arange("2020-01", "2020-05", dtype="datetime64[M]"), 2).astype("datetime64[D]")
    y = np.arange(8, dtype=np.float64)
    scored = {"2020-01": np.arange(0, 6), "2020-02": np.arange(2, 8)}
    fits = [
        {"name": "a", "origin": o, "rows": {"scored": rows}, "predictions": {"mean": y[rows] + 0.1 * (i + 1)}, "metrics": {"n_train": 5}}
        for i, (o, rows) in enumerate(scored.items())
    ]
    out = score_backtest(fits, y=y, meta={"obs_date": dates}, n_bootstrap=100, confidence=0.9, seed=0)
    overall = next(r for r in out["rows"] if r["model"] == "a" and r["origin"] == OVERALL)
    assert (overall["n"], overall["n_months"], out["metrics"]["n_scored_months"]) == (12, 4, 4)
    # a drawn month brings the rows every origin scored in it: 2020-02 holds 2 rows from each origin
    draws = np.random.default_rng(0).integers(0, 4, size=(100, 4))
    sse = np.array([2 * 0.01, 2 * 0.01 + 2 * 0.04, 2 * 0.01 + 2 * 0.04, 2 * 0.04])
    count = np.array([2.0, 4.0, 4.0, 2.0])
    boot = [np.sqrt(sse[d].sum() / count[d].sum()) for d in draws]
    assert overall["rmse_ci_low"] == pytest.approx(np.percentile(boot, 5)) and overall["rmse_ci_high"] == pytest.approx(
        np.percentile(boot, 95)
    )


@pytest.fixture(scope="module")
def finished_backtest(tmp_path_factory, cache):
    """basic and bayesian (which calibrates), plus basic tuned, over the tiny market's last 9 months."""
    run_dir = tmp_path_factory.mktemp("bt")
    cfg = composed(*SMALL, "model=[basic,bayesian]", "tune.target=basic", "tune.n_trials=2", "~steps.drift", f"cache_dir={cache}")
    result = run(cfg, run_dir=run_dir, workers=1)
    assert result.ok
    return cfg, run_dir


def test_the_backtest_writes_its_files_and_report_section(finished_backtest):
    _, run_dir = finished_backtest
    results = json.loads((run_dir / "results.json").read_text())["steps"]
    refits = {f"{m}@{o}" for m in ("basic", "bayesian", "tuned") for o in ORIGINS}
    assert refits | {"backtest"} <= set(results) and all(results[n]["status"] == "ran" for n in refits)
    rows = list(csv.DictReader((run_dir / "backtest.csv").open()))
    assert {(r["model"], r["origin"]) for r in rows} >= {
        (m, o) for m in ("basic", "basic_tuned", "bayesian", "dcf_baseline", "oracle") for o in ORIGINS + [OVERALL]
    }
    assert (run_dir / "plots" / "backtest.png").stat().st_size > 0
    assert "## Walk-forward backtest" in (run_dir / "report.md").read_text()


def test_no_fit_sees_its_origin_or_later_and_calibration_is_the_latest_past(finished_backtest):
    cfg, run_dir = finished_backtest
    tune = joblib.load(run_dir / "checkpoints" / "tune.pkl")
    for path in (run_dir / "checkpoints").glob("*@*.pkl"):
        art = joblib.load(path)
        origin = np.datetime64(art.info["origin"], "M")
        dataset_months = _months(cfg)
        fit, cal, scored = (dataset_months[art.info["rows"][k]] for k in ("fit", "calibration", "scored"))
        assert fit.max() < origin and (len(cal) == 0 or cal.max() < origin), path.name
        assert scored.min() == origin and scored.max() == origin + 2
        if art.name == "bayesian":
            assert sorted(set(cal)) == list(np.arange(origin - 6, origin)) and fit.max() == origin - 7
        else:
            assert len(cal) == 0 and fit.max() == origin - 1 and fit.min() == dataset_months.min()
        if art.name == "basic_tuned":
            assert tune.info["tuning"]["best_params"].items() <= art.config["estimator"].items()


def test_backtest_figures_equal_the_refits_scored_by_hand(finished_backtest):
    cfg, run_dir = finished_backtest
    from omegaconf import OmegaConf

    dataset, _ = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), seed=0, cache_dir=cfg.cache_dir)
    rows = {(r["model"], r["origin"]): r for r in joblib.load(run_dir / "checkpoints" / "backtest.pkl")["rows"]}
    pooled = []
    for origin in ORIGINS:
        art = joblib.load(run_dir / "checkpoints" / f"bayesian@{origin}.pkl")
        err = dataset.y[art.info["rows"]["scored"]] - art.predictions["scored"]["mean"]
        pooled.append(err)
        assert rows[("bayesian", origin)]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
        oracle = dataset.y[art.info["rows"]["scored"]] - dataset.meta["oracle_prediction"][art.info["rows"]["scored"]]
        assert rows[("oracle", origin)]["rmse"] == pytest.approx(np.sqrt(np.mean(oracle**2)))
    assert rows[("bayesian", OVERALL)]["rmse"] == pytest.approx(np.sqrt(np.mean(np.concatenate(pooled) ** 2)))


def test_a_second_run_in_the_folder_reuses_every_refit_and_reruns_a_lost_one(finished_backtest):
    cfg, run_dir = finished_backtest
    before = json.loads((run_dir / "results.json").read_text())["steps"]
    result = run(cfg, run_dir=run_dir, workers=1)
    assert {s.status for s in result.steps.values()} == {"reused"}
    (run_dir / "checkpoints" / "basic@2017-07.pkl").unlink()  # as if the run was killed before it finished
    result = run(cfg, run_dir=run_dir, workers=1)
    ran = {name for name, s in result.steps.items() if s.status == "ran"}
    assert ran == {"basic@2017-07", "backtest"}
    after = json.loads((run_dir / "results.json").read_text())["steps"]
    assert after["basic@2017-07"]["metrics"] == before["basic@2017-07"]["metrics"]


#: Two quick models, no report step but the backtest: 6 refits.
INTERRUPTED = [*SMALL, "model=[basic,factor]", "~steps.tune", "~steps.drift", "~steps.evaluate", "workers=1"]


def test_ctrl_c_then_resume_reuses_every_finished_refit_and_ends_the_same(tmp_path, cache, request):
    """`python -m bondexp` interrupted after two refits, then `resume=<folder>`: the same backtest as one whole run."""
    whole, run_dir = tmp_path / "whole", tmp_path / "run"
    # the whole run goes on beside the interrupted one (each is one process), and is waited for at the end
    whole_run = Started(*INTERRUPTED, f"cache_dir={cache}", f"hydra.run.dir={whole}", cwd=tmp_path, cache=cache)
    request.addfinalizer(whole_run.stop)
    command = [sys.executable, "-m", "bondexp", *INTERRUPTED, f"cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((run_dir / "checkpoints").glob("*@*.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before two refits"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and f"resume={run_dir}" in output, output[-2000:]
    assert "interrupted before this step finished" not in output, output[-2000:]  # said once, not once a step
    finished = {p.stem for p in (run_dir / "checkpoints").glob("*@*.json")}
    assert not (run_dir / "backtest.csv").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "bondexp", f"resume={run_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    refits = {name for name in steps if "@" in name}
    assert len(refits) == 6 and {name for name in refits if steps[name]["status"] == "reused"} == finished
    assert all(steps[name]["status"] == "ran" for name in refits - finished)
    whole_run.result()
    assert json.loads((whole / "results.json").read_text())["ok"]
    assert (run_dir / "backtest.csv").read_text() == (whole / "backtest.csv").read_text()


def _months(cfg) -> np.ndarray:
    from omegaconf import OmegaConf

    dataset, _ = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), seed=0, cache_dir=cfg.cache_dir)
    return np.asarray(dataset.meta["obs_date"], dtype="datetime64[M]")
