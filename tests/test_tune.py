"""Tests of the tune step: target choice, search-space errors, time folds, the untuned trial, seeding,
resume after a kill, parallel trials sharing one journal (also from inside a pool worker), outputs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import pytest
import tune_helpers as helpers
from optuna.trial import TrialState

from bondexp.errors import ConfigError
from bondexp.steps.tune import (
    UNTUNED_ATTR,
    choose_target,
    parse_search_space,
    time_folds,
    tune,
    tuning_window,
    write_outputs,
)

TESTS = Path(__file__).parent


def _artifact(group: str, val_rmse: float) -> dict:
    return {"group": group, "config": {}, "metrics": {"val_rmse": val_rmse}, "predictions": {}}


def _study(run_dir: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "tuning" / "journal.log"))
    )
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def shared():
    return helpers.use_toy_dataset()


@pytest.fixture(scope="module")
def inputs(shared):
    return {"evaluate": {"validation_rmse": {}}, "ridge": helpers.model_artifact("ridge"),
            "tree": helpers.model_artifact("tree")}


# ----------------------------------------------------------------------------- choosing and checking


def test_target_defaults_to_best_tunable_ml_model_by_validation_rmse():
    models = {"basic": _artifact("ml", 0.9), "enhanced": _artifact("ml", 0.7), "automl": _artifact("ml", 0.6),
              "bayesian": _artifact("risk", 0.5)}
    spaces = {"basic": {"a": {}}, "enhanced": {"a": {}}, "bayesian": {"a": {}}}
    # the risk model is better but not ML; automl is the best ML model but has no search space
    assert choose_target(None, models, spaces) == "enhanced"
    assert choose_target("bayesian", models, spaces) == "bayesian"


@pytest.mark.parametrize(
    ("target", "models", "message"),
    [
        (None, {"bayesian": _artifact("risk", 0.5)}, "'tune.target' config key is null.*no model of group 'ml'"),
        (None, {"automl": _artifact("ml", 0.5)}, "'tune.target' config key is null.*no model of group 'ml'"),
        ("enhancd", {"enhanced": _artifact("ml", 0.5)}, r"must name a trained model, one of \['enhanced'\]"),
    ],
)
def test_target_errors(target, models, message):
    with pytest.raises(ConfigError, match=message):
        choose_target(target, models, {"bayesian": {"a": {}}, "enhanced": {"a": {}}})


def test_tune_defaults_to_the_best_ml_model(tmp_path, shared, inputs):
    expected = min(("ridge", "tree"), key=lambda m: inputs[m]["metrics"]["val_rmse"])
    artifact = tune({**helpers.BASE_TUNE, "n_trials": 2}, inputs, helpers.context(tmp_path, shared))
    assert artifact["target"] == expected
    assert artifact["name"] == f"{expected}_tuned"


def test_target_without_search_space_is_a_clear_error(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "tree", "search_space": {"ridge": helpers.BASE_TUNE["search_space"]["ridge"]}}
    with pytest.raises(ConfigError, match=r"'tune\.search_space\.tree' config key must map parameters.*\['ridge'\]"):
        tune(config, inputs, helpers.context(tmp_path, shared))
    assert not (tmp_path / "tuning").exists()  # failed before touching the study


def test_unknown_estimator_parameter_is_a_clear_error(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "tree", "search_space": {"tree": {"max_dept": {"low": 2, "high": 8}}}}
    with pytest.raises(ConfigError, match=r"'tune\.search_space\.tree\.max_dept' .* of DecisionTreeRegressor.*'max_depth'"):
        tune(config, inputs, helpers.context(tmp_path, shared))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"low": 1, "high": 1}, "numeric bounds with low < high"),
        ({"low": 0.0, "high": 1.0, "log": True}, "low > 0 when log is true"),
        ({"low": 1, "high": 5, "type": "integer"}, "'type' is 'int' or 'float'"),
        ({"low": 0.5, "high": 5, "type": "int"}, "integer bounds for type int"),
        ({"low": 1, "hihg": 5}, "with 'low' and 'high'"),
        ({"choices": []}, "non-empty list"),
        ({"choices": [[64, 32]]}, "choices of null, bool, int, float or str"),
        ("0.1..1", "a mapping"),
    ],
)
def test_search_space_errors_name_the_parameter(spec, message):
    with pytest.raises(ConfigError, match=rf"'tune\.search_space\.m\.p' config key must be .*{message}"):
        parse_search_space({"m": {"p": spec}}, target="m")


def test_search_space_kinds():
    space = parse_search_space(
        {"m": {"a": {"low": 1, "high": 9}, "b": {"low": 1e-3, "high": 1.0, "log": True},
               "c": {"low": 1, "high": 9, "type": "float"}, "d": {"choices": [None, 8, "x"]}}},
        target="m",
    )
    assert [type(d).__name__ for d in space.values()] == [
        "IntDistribution", "FloatDistribution", "FloatDistribution", "CategoricalDistribution"]
    assert space["b"].log and space["d"].choices == (None, 8, "x")


# ----------------------------------------------------------------------------- folds


def test_time_folds_expand_forward_in_time_and_never_split_a_month(toy_dataset):
    window = tuning_window(toy_dataset, max_train_rows=700, n_folds=3)
    dates = window.meta["obs_date"]
    assert len(window.y) == 660 and np.all(np.diff(dates.astype("int64")) >= 0)  # 11 whole months of 60 rows
    assert dates[-1] == toy_dataset.meta_of("train", "obs_date").max()  # the latest training rows
    folds = time_folds(dates, n_folds=3)
    assert len(folds) == 3
    for k, (train, val) in enumerate(folds):
        assert dates[train].max() < dates[val].min()  # train strictly before validation: no month on both sides
        if k:
            assert np.array_equal(folds[k - 1][0], train[: len(folds[k - 1][0])])  # expanding window
            assert np.array_equal(np.union1d(folds[k - 1][0], folds[k - 1][1]), train)
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= 2 * 60  # blocks of about equal rows (60 rows per month here)


def test_window_keeps_enough_months_and_samples_rows_when_a_month_is_larger_than_the_budget(toy_dataset):
    """A large market has more bonds in one month than max_train_rows: sample rows, keep the months."""
    window = tuning_window(toy_dataset, max_train_rows=100, n_folds=3, seed=0)
    months = np.unique(window.meta["obs_date"].astype("datetime64[M]"))
    assert len(window.y) == 100 and len(months) == 8  # 2 * (n_folds + 1) months, 100 of their 480 rows
    assert np.all(np.diff(window.meta["obs_date"].astype("int64")) >= 0)
    assert len(time_folds(window.meta["obs_date"], n_folds=3)) == 3
    again = tuning_window(toy_dataset, max_train_rows=100, n_folds=3, seed=0)
    assert np.array_equal(window.y, again.y)  # seeded


def test_time_folds_need_enough_months():
    dates = np.repeat(np.array(["2020-01-31", "2020-02-29"], dtype="datetime64[D]"), 10)
    with pytest.raises(ConfigError, match="'tune.n_folds' config key must leave every fold at least one month"):
        time_folds(dates, n_folds=2)


# ----------------------------------------------------------------------------- the study


def test_untuned_trial_is_enqueued_first_and_outputs_are_written(tmp_path, shared, inputs, toy_dataset):
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 5}
    artifact = tune(config, inputs, helpers.context(tmp_path, shared))
    first = artifact["trials"][0]
    assert first["untuned"] and first["state"] == "COMPLETE"
    assert first["params"] == {"max_depth": 3, "min_samples_leaf": 1} == artifact["untuned_params"]
    assert sum(t["untuned"] for t in artifact["trials"]) == 1
    assert artifact["best_value"] <= first["value"]  # the best trial is never worse than untuned on the objective
    assert artifact["metrics"]["n_trials"] == 5 and len(artifact["trials"]) == 5
    assert set(artifact["predictions"]) == {"validation", "test"}
    assert artifact["predictions"]["test"]["mean"].shape == toy_dataset.splits["test"].shape
    assert artifact["improved"] == (artifact["metrics"]["val_rmse"] < artifact["untuned_value"])
    assert artifact["note"]
    write_outputs(artifact, tmp_path)
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["target"] == "tree" and saved["best_params"] == artifact["best_params"]
    assert [t["number"] for t in saved["trials"]] == list(range(5))
    assert (tmp_path / "plots" / "tuning_history.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_gives_same_best_params_with_one_worker(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "tree", "n_trials": 6}
    a = tune(config, inputs, helpers.context(tmp_path / "a", shared))
    b = tune(config, inputs, helpers.context(tmp_path / "b", shared))
    c = tune({**config, "seed": 1}, inputs, helpers.context(tmp_path / "c", shared))
    assert a["best_params"] == b["best_params"]
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]
    assert [t["params"] for t in a["trials"]][1:] != [t["params"] for t in c["trials"]][1:]


def test_resume_runs_only_the_missing_trials_and_fails_stale_ones(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "ridge", "pruner": "none"}
    first = tune({**config, "n_trials": 3}, inputs, helpers.context(tmp_path, shared))
    stale = _study(tmp_path).ask()  # a trial a killed process left RUNNING
    second = tune({**config, "n_trials": 5}, inputs, helpers.context(tmp_path, shared))
    states = {t["number"]: t["state"] for t in second["trials"]}
    assert states[stale.number] == "FAIL"
    assert [t for t in second["trials"] if t["number"] < 3] == first["trials"]
    assert sum(s == "COMPLETE" for s in states.values()) == 5
    assert second["info"]["stale_trials_failed"] == 1
    again = tune({**config, "n_trials": 5}, inputs, helpers.context(tmp_path, shared))
    assert again["trials"] == second["trials"]  # nothing left to run


def test_a_changed_search_space_starts_a_new_study(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "ridge", "n_trials": 2}
    tune(config, inputs, helpers.context(tmp_path, shared))
    narrower = {**config["search_space"], "ridge": {"alpha": {"low": 0.1, "high": 10.0, "log": True}}}
    artifact = tune({**config, "search_space": narrower}, inputs, helpers.context(tmp_path, shared))
    assert len(artifact["trials"]) == 2
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "tuning" / "journal.log")))
    assert len(optuna.get_all_study_names(storage)) == 2


@pytest.mark.parametrize("storage", ["tuning.db", "postgres"])
def test_storage_must_be_a_url(tmp_path, shared, inputs, storage):
    config = {**helpers.BASE_TUNE, "target": "ridge", "storage": storage}
    with pytest.raises(ConfigError, match="'tune.storage' config key must be null .* or a database URL"):
        tune(config, inputs, helpers.context(tmp_path, shared))


def test_sqlite_url_storage(tmp_path, shared, inputs):
    config = {**helpers.BASE_TUNE, "target": "ridge", "n_trials": 2, "storage": f"sqlite:///{tmp_path / 'study.db'}"}
    artifact = tune(config, inputs, helpers.context(tmp_path, shared))
    assert artifact["metrics"]["n_trials"] == 2 and (tmp_path / "study.db").exists()
    assert not (tmp_path / "tuning").exists()


def _complete_trials(run_dir: Path) -> list:
    try:
        return [t for t in _study(run_dir).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    except (ValueError, FileNotFoundError):  # the study is not created yet
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_study_resumes_keeping_finished_trials(tmp_path, workers):
    n_trials, k = 6, 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(TESTS / "tune_helpers.py"), str(tmp_path), str(n_trials), "0.1", str(workers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(_complete_trials(tmp_path)) < k:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the study never reached k complete trials"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    trials = _study(tmp_path).get_trials(deepcopy=False)
    before = {t.number: (t.params, t.value) for t in trials if t.state == TrialState.COMPLETE}
    assert k <= len(before) < n_trials
    pids = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials if "worker" in t.user_attrs}
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids - {process.pid}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "trial processes outlived the killed run"

    resume = command[:-1] + ["1"]  # resumed in-process: the parallel path is tested on its own below
    finished = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"done {n_trials}" in finished.stdout
    trials = _study(tmp_path).get_trials(deepcopy=False)
    complete = {t.number: (t.params, t.value) for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == n_trials
    assert {n: complete[n] for n in before} == before  # the finished trials were kept, not re-run
    assert len({params["alpha"] for params, _ in complete.values()}) == n_trials  # no replayed points
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert sum(t.state == TrialState.FAIL for t in trials) <= workers  # at most the trials the kill interrupted
    assert sum(bool(t.user_attrs.get(UNTUNED_ATTR)) for t in trials) == 1


def test_parallel_trials_share_one_study_from_inside_a_pool_worker(tmp_path):
    config = {**helpers.BASE_TUNE, "target": "slow", "n_trials": 6, "pruner": "none"}
    # The runner's pool workers are forkserver processes; the step spawns its own trial processes.
    # Fits sleep 0.3 s (two folds: 0.6 s a trial), so the second process is up before the first
    # has taken every trial: processes take trials one at a time, not a fixed share each.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        result = pool.submit(helpers.tune_in_worker, str(tmp_path), config, 2, 0.3).result(timeout=120)
    numbers = [t["number"] for t in result["trials"]]
    assert sorted(numbers) == list(range(6))  # unique trial numbers, all in one study
    trials = _study(tmp_path).get_trials(deepcopy=False)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(list((tmp_path / "tuning").iterdir())) == 1  # one journal file
    assert sum(bool(t.user_attrs.get(UNTUNED_ATTR)) for t in trials) == 1
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two trial processes


def test_no_trial_starts_after_the_timeout(tmp_path, shared):
    slow = helpers.model_artifact("slow", estimator={**helpers.ESTIMATORS["slow"], "delay": 0.25})
    config = {**helpers.BASE_TUNE, "target": "slow", "n_trials": 50, "timeout": 1.0, "pruner": "none"}
    artifact = tune(config, {"evaluate": {}, "slow": slow}, helpers.context(tmp_path, shared))
    # a trial fits two folds at 0.25 s each: about two trials fit in the second, far from fifty
    assert 1 <= artifact["metrics"]["n_trials"] <= 4
