"""MLflow tracking with the real package (no mock): runs, resumes and sweeps logged into a temporary store,
read back through `mlflow.search_runs`; and what a run logs, as pure functions."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bondexp.config import collect_models, validate_config
from bondexp.errors import ConfigError
from bondexp.tracking import RUN_FILE, flatten, mlflow_keys, note_in_report, run_metrics, run_params, track_run
from conftest import hide_package, needed_by
from test_app import Started, bondexp
from test_config import composed

mlflow = pytest.importorskip("mlflow")

TRACKED = ["data=small", "model=factor", "~steps.tune", "eval.n_bootstrap=20", "progress=false", "workers=1", "tracking=mlflow"]


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["bondexp"], output_format="list")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite store; MLflow puts its artifacts in ./mlruns beside it (the subprocess runs there)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def started(request, store, cache, tmp_path_factory):
    """The module's whole runs, started together when its first test needs one: each is mostly one busy process
    (one worker, MLflow in the parent), so at once they share the two cores instead of leaving one idle.
    ``{name: (folder, tracking uri, Started)}``, for the runs of the tests this session runs."""
    runs = {}
    with contextlib.ExitStack() as stack:

        def start(name: str, folder: Path, uri: str, *args: str) -> None:
            runs[name] = folder, uri, stack.enter_context(Started(*args, f"tracking.uri={uri}", cwd=folder, cache=cache))

        if needed_by(
            request,
            "test_a_tracked_run_logs_params_leaderboard_metrics_and_artifacts",
            "test_a_resume_logs_into_the_run_it_started",
            "test_log_models_registers_each_model_with_its_test_metrics",
        ):
            folder, _ = store  # given relative, with the run working in its own folder: the store is still the launch folder's
            start("tracked", folder, "sqlite:///mlflow.db", *TRACKED, "hydra.job.chdir=true", f"hydra.run.dir={folder / 'run'}")
        if needed_by(request, "test_log_models_registers_the_tuned_model_too"):
            folder = tmp_path_factory.mktemp("tuned")
            with_tune = [arg for arg in TRACKED if arg != "~steps.tune"]
            tuned = [*with_tune, "model=basic", "tune.n_trials=2", "tune.batch_size=2", "tracking.log_models=true"]
            start("tuned", folder, f"sqlite:///{folder / 'mlflow.db'}", *tuned, f"hydra.run.dir={folder / 'run'}")
        if needed_by(request, "test_a_sweep_is_one_parent_run_with_one_child_per_job"):
            folder = tmp_path_factory.mktemp("sweep")
            start("sweep", folder, f"sqlite:///{folder / 'mlflow.db'}", "-m", *TRACKED, "seed=0,1", f"hydra.sweep.dir={folder / 'sweep'}")
        if needed_by(request, "test_an_unreachable_tracking_uri_warns_and_the_run_completes"):
            with socket.socket() as probe:  # a port nothing listens on
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            folder = tmp_path_factory.mktemp("unreachable")
            start("unreachable", folder, f"http://127.0.0.1:{port}", *TRACKED, f"hydra.run.dir={folder / 'run'}")
        yield runs


@pytest.fixture(scope="module")
def tracked_run(started):
    folder, _, run = started["tracked"]
    run.result()
    return folder / "run"


def test_a_tracked_run_logs_params_leaderboard_metrics_and_artifacts(tracked_run, store):
    folder, uri = store
    [run] = _runs(uri)
    assert run.info.run_id == json.loads((tracked_run / RUN_FILE).read_text())["run_id"]
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert "model=factor" in params["overrides"]
    assert params["models.factor._target_"].startswith("bondexp.models")
    assert not any(key.startswith("hydra.") for key in params)
    for column in ("rmse", "mae", "r2", "improvement_pct"):
        assert f"factor.{column}" in metrics and f"dcf_baseline.{column}" in metrics
    assert metrics["factor.val_rmse"] > 0 and "evaluate.best_rmse" in metrics
    leaderboard = (tracked_run / "leaderboard.csv").read_text().splitlines()
    factor_row = next(line for line in leaderboard if line.startswith("factor,"))
    assert metrics["factor.rmse"] == pytest.approx(float(factor_row.split(",")[2]))
    assert tags["bondexp.run_dir"] == str(tracked_run.resolve())
    assert tags["bondexp.best_model"] == "factor" and tags["bondexp.model"] == "factor"
    assert len(tags["bondexp.data_fingerprint"]) >= 12
    client = mlflow.MlflowClient(tracking_uri=uri)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "leaderboard.csv", "drift.json", "results.json", "plots"} <= top
    assert "plots/timeline.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert f"MLflow run `{run.info.run_id}`" in (tracked_run / "report.md").read_text()
    logged = Path(client.download_artifacts(run.info.run_id, "report.md", str(folder))).read_text()
    assert logged == (tracked_run / "report.md").read_text()  # the section was appended after the upload
    # with hydra.job.chdir=true the experiment's artifacts went in this run's folder, every later run's too
    location = client.get_experiment_by_name("bondexp").artifact_location
    assert Path(location.removeprefix("file://")).parent == folder / "mlruns" and not (tracked_run / "mlruns").exists()


def test_a_resume_logs_into_the_run_it_started(tracked_run, store, cache):
    folder, uri = store
    [before] = _runs(uri)
    bondexp(f"resume={tracked_run}", f"tracking.uri={uri}", cwd=folder, cache=cache)
    [after] = _runs(uri)
    assert after.info.run_id == before.info.run_id
    assert after.data.metrics["factor.rmse"] == before.data.metrics["factor.rmse"]
    assert (tracked_run / "report.md").read_text().count("## Tracking") == 1


def test_log_models_registers_each_model_with_its_test_metrics(tracked_run, store, monkeypatch, capfd):
    folder, uri = store
    monkeypatch.chdir(folder)
    cfg = OmegaConf.load(tracked_run / ".hydra" / "config.yaml")
    cfg.tracking.log_models = True
    [before] = _runs(uri)
    assert track_run(cfg, run_dir=tracked_run, overrides=["model=factor"]) == before.info.run_id
    # as a resume that reuses the fit: no second version of it (every resume registered one more)
    assert track_run(cfg, run_dir=tracked_run, overrides=["model=factor"]) == before.info.run_id
    assert "Successfully registered" not in "".join(capfd.readouterr())  # MLflow's print, under the run's table
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    [version] = client.search_model_versions("name='bondexp-factor'")
    rmse = _runs(uri)[0].data.metrics["factor.rmse"]
    assert f"rmse {rmse:.4f}" in version.description and version.run_id == before.info.run_id
    mlflow.set_registry_uri(uri)
    model = mlflow.sklearn.load_model("models:/bondexp-factor/1")
    assert hasattr(model, "predict")


def test_log_models_registers_the_tuned_model_too(started):
    """The tune step's model (``basic_tuned``), which the run may call its best, was not registered: only the model steps were."""
    folder, uri, run = started["tuned"]
    run.result()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert {m.name for m in client.search_registered_models()} == {"bondexp-basic", "bondexp-basic_tuned"}
    [version] = client.search_model_versions("name='bondexp-basic_tuned'")
    assert f"rmse {_runs(uri)[0].data.metrics['basic_tuned.rmse']:.4f}" in version.description


def test_a_sweep_is_one_parent_run_with_one_child_per_job(started):
    folder, uri, sweep = started["sweep"]
    sweep.result()
    runs = _runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert parents[0].info.status == "FINISHED"
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert "summary.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_a_sweep_run_again_in_its_folder_reopens_its_parent_run(tmp_path, monkeypatch):
    """The resume an interrupted sweep prints made a second parent run: the first stayed KILLED with the jobs
    that had run, the second held the rest."""
    from bondexp.tracking import end_sweep, start_sweep

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = composed("tracking=mlflow", f"tracking.uri={uri}")
    first = start_sweep(cfg, sweep_dir=tmp_path / "sweep")
    mlflow.MlflowClient(tracking_uri=uri).set_terminated(first, status="KILLED")  # as an interrupted sweep leaves it
    assert start_sweep(cfg, sweep_dir=tmp_path / "sweep") == first
    assert [r.info.status for r in _runs(uri)] == ["RUNNING"]
    end_sweep(cfg, sweep_dir=tmp_path / "sweep")
    assert [(r.info.run_id, r.info.status) for r in _runs(uri)] == [(first, "FINISHED")]
    assert start_sweep(cfg, sweep_dir=tmp_path / "other") != first  # another sweep folder: a parent of its own


def test_an_unreachable_tracking_uri_warns_and_the_run_completes(started):
    folder, _, run = started["unreachable"]
    proc = run.result()
    run_dir = folder / "run"
    assert proc.returncode == 0
    output = proc.stdout + proc.stderr
    assert "MLflow tracking to http://127.0.0.1" in output and "failed" in output
    assert "Not tracked: MLflow tracking" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "results.json").read_text())["ok"] is True
    assert (run_dir / "leaderboard.csv").is_file() and not (run_dir / RUN_FILE).exists()
    assert "Retrying (Retry(" not in output  # urllib3's own warning, before the one that says what failed


def test_a_tracked_run_imports_mlflow_while_its_steps_run():
    """The warm-up thread imports MLflow's client (3 s) so the run's end only logs."""
    import subprocess
    import sys

    code = "import sys; from bondexp.app import _warm_up_outputs; _warm_up_outputs(False, True); print('mlflow.tracking' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


# ----------------------------------------------------------------------------- config and pure functions


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], {"name": "none", "uri": "sqlite:///mlflow.db", "experiment": "bondexp", "log_models": False}),
        (["tracking=mlflow"], {"name": "mlflow", "uri": "sqlite:///mlflow.db", "experiment": "bondexp", "log_models": False}),
        (
            ["tracking=mlflow", "tracking.uri=http://mlflow:5000", "tracking.log_models=true"],
            {"name": "mlflow", "uri": "http://mlflow:5000", "experiment": "bondexp", "log_models": True},
        ),
    ],
)
def test_the_tracking_group_composes(overrides, expected):
    assert OmegaConf.to_container(composed(*overrides).tracking) == expected


def test_tracking_mlflow_without_mlflow_installed_fails_before_any_work(monkeypatch):
    cfg = composed("tracking=mlflow", "data=small")
    hide_package(monkeypatch, "mlflow")
    with pytest.raises(ConfigError, match=r"'tracking' config group is 'mlflow' but MLflow is not installed: pip install"):
        validate_config(cfg, models=collect_models(cfg, choice="all"))


def test_params_are_the_overrides_and_the_flattened_config_without_hydra():
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "eval": {"confidence": 0.95},
            "feature_sets": {"all": ["bond"]},
            "executor": {"address": None},
            "hydra": {"run": {"dir": "x"}},
            "steps": {},
        }
    )
    assert run_params(cfg, ["seed=3", "model=basic"]) == {
        "overrides": "seed=3 model=basic",
        "seed": "3",
        "eval.confidence": "0.95",
        "feature_sets.all": '["bond"]',
        "executor.address": "null",
        "steps": "{}",
    }
    assert flatten({"a": {"b": {"c": "x"}}}) == {"a.b.c": "x"}


def test_metrics_are_numeric_step_metrics_and_leaderboard_columns():
    results = {
        "steps": {
            "basic": {"metrics": {"val_rmse": 1.5, "early_stopped": True, "n_iter": 20}},
            "evaluate": {"metrics": {"best_model": "basic", "best_rmse": 1.7}},
        },
        "wall_s": 9.5,
    }
    leaderboard = [
        {"model": "basic", "rmse": 1.7, "mae": 1.1, "r2": 0.3, "improvement_pct": 10.0, "n": 594.0, "coverage": None, "nll": float("nan")}
    ]
    assert run_metrics(results, leaderboard) == {
        "basic.val_rmse": 1.5,
        "basic.n_iter": 20.0,
        "evaluate.best_rmse": 1.7,
        "wall_s": 9.5,
        "basic.rmse": 1.7,
        "basic.mae": 1.1,
        "basic.r2": 0.3,
        "basic.improvement_pct": 10.0,
    }


def test_the_report_holds_one_tracking_section(tmp_path):
    (tmp_path / "report.md").write_text("# bondexp run\n\nbody\n")
    note_in_report(tmp_path, "Not tracked: first")
    note_in_report(tmp_path, "MLflow run `abc`")
    assert (tmp_path / "report.md").read_text() == "# bondexp run\n\nbody\n\n## Tracking\n\nMLflow run `abc`\n"


# ----------------------------------------------------------------------------- a run folder logged into a temporary store


def _run_folder(folder: Path, steps: dict, *, ok=True, interrupted=False, wall_s=2.0, total_wall_s=None, leaderboard="") -> Path:
    """A run folder as a run leaves it (results.json, data_summary.json, leaderboard.csv), without running anything."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {"steps": steps, "wall_s": wall_s, "ok": ok, "interrupted": interrupted, "attempts": 1}
    results["total_wall_s"] = wall_s if total_wall_s is None else total_wall_s
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "data_summary.json").write_text(json.dumps({"fingerprint": "abcdef0123456789"}))
    if leaderboard:
        (folder / "leaderboard.csv").write_text(leaderboard)
    return folder


def _logged(tmp_path, folder: Path, overrides=("model=basic",), **config):
    """Track ``folder`` into a fresh sqlite store under ``tmp_path`` and read the MLflow run back with MlflowClient."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"name": "mlflow", "uri": uri, "experiment": "bondexp", "log_models": False}
    tree = {"seed": 0, "models": {"basic": {"group": "ml"}}, "tracking": tracking}
    cfg = OmegaConf.merge(OmegaConf.create(tree), OmegaConf.create(config))
    launched_in = os.getcwd()
    os.chdir(tmp_path)  # MLflow's store puts the artifacts in ./mlruns: here, not in the checkout pytest runs from
    try:
        run_id = track_run(cfg, run_dir=folder, overrides=list(overrides))
    finally:
        os.chdir(launched_in)
    assert run_id is not None, (folder / "report.md").read_text()
    return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)


def _step(group: str, **metrics) -> dict:
    return {"group": group, "status": "ran", "metrics": metrics}


def test_a_backtest_runs_metrics_are_logged_with_mlflow_safe_names(tmp_path):
    """Backtest refits are steps named ``<model>@<origin>``; MLflow refused ``enhanced@2017-07.rmse`` and the run logged nothing."""
    steps = {
        "enhanced": _step("ml", val_rmse=1.2),
        "enhanced@2017-07": _step("backtest", rmse=1.3, n_train=2489),
        "tuned@2017-07": _step("backtest", rmse=1.25),
        "backtest": _step("report", n_origins=1),
    }
    run = _logged(tmp_path, _run_folder(tmp_path / "run", steps), backtest={"origins": 1})
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["enhanced/2017-07.rmse"] == 1.3 and metrics["enhanced/2017-07.n_train"] == 2489
    assert metrics["tuned/2017-07.rmse"] == 1.25 and metrics["enhanced.val_rmse"] == 1.2 and metrics["backtest.n_origins"] == 1


def test_keys_mlflow_refuses_are_mapped_and_a_clash_is_refused():
    assert mlflow_keys({"a@2017-07.rmse": 1, "b c.d-e_f/g": 2, "x+y": 3}) == {"a/2017-07.rmse": 1, "b c.d-e_f/g": 2, "x_y": 3}
    with pytest.raises(ValueError, match="'x\\+y' and 'x_y' would both be logged to MLflow as 'x_y'"):
        mlflow_keys({"x+y": 1, "x_y": 2})


def test_an_interrupted_run_is_killed_not_failed(tmp_path):
    """An interrupted run was tagged ``bondexp.status=failed`` and closed FAILED, while its results.json said interrupted."""
    steps = {"basic": _step("ml", val_rmse=1.2), "evaluate": {"group": "report", "status": "skipped", "metrics": {}}}
    run = _logged(tmp_path, _run_folder(tmp_path / "run", steps, ok=False, interrupted=True))
    assert (run.info.status, run.data.tags["bondexp.status"]) == ("KILLED", "interrupted")


def test_a_failed_run_stays_failed(tmp_path):
    steps = {"basic": {"group": "ml", "status": "failed", "metrics": {}}}
    run = _logged(tmp_path, _run_folder(tmp_path / "run", steps, ok=False))
    assert (run.info.status, run.data.tags["bondexp.status"]) == ("FAILED", "failed")


def test_wall_s_is_every_attempts_time(tmp_path):
    """After a resume (every step reused) ``wall_s`` was the resume's own 0.01 s, not the run's ``total_wall_s``."""
    run = _logged(tmp_path, _run_folder(tmp_path / "run", {"basic": _step("ml", val_rmse=1.2)}, wall_s=0.01, total_wall_s=10.76))
    assert run.data.metrics["wall_s"] == 10.76


def test_an_interrupted_runs_best_model_tag_is_a_model(tmp_path):
    """``bondexp.best_model`` was ``tune``, the step, for a run interrupted before evaluate."""
    steps = {"basic": _step("ml", val_rmse=1.17), "tune": _step("report", val_rmse=1.09, n_trials=4)}
    run = _logged(tmp_path, _run_folder(tmp_path / "run", steps, ok=False, interrupted=True))
    assert run.data.tags["bondexp.best_model"] == "basic"


def test_no_password_reaches_mlflow(tmp_path):
    """The flattened config (``tune.storage``, ``steps.tune.config.storage``) and the overrides went to MLflow params as typed."""
    storage = "postgresql://u:s3cretpw@127.0.0.1:5999/db"
    run = _logged(
        tmp_path,
        _run_folder(tmp_path / "run", {"basic": _step("ml", val_rmse=1.2)}),
        overrides=["model=basic", f"tune.storage={storage}"],
        tune={"storage": storage},
        steps={"tune": {"config": {"storage": storage}}},
    )
    logged = [*run.data.params.values(), *run.data.tags.values()]
    assert not any("s3cretpw" in value for value in logged)
    masked = "postgresql://u:***@127.0.0.1:5999/db"
    assert run.data.params["tune.storage"] == masked and run.data.params["steps.tune.config.storage"] == masked
    assert run.data.params["overrides"] == f"model=basic tune.storage={masked}"


def test_an_unreachable_uri_is_reported_without_its_password(tmp_path, caplog):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = _run_folder(tmp_path / "run", {"basic": _step("ml", val_rmse=1.2)})
    tracking = {"name": "mlflow", "uri": f"http://u:s3cretpw@127.0.0.1:{port}", "experiment": "bondexp", "log_models": False}
    assert track_run(OmegaConf.create({"models": {"basic": {}}, "tracking": tracking}), run_dir=folder) is None
    report = (folder / "report.md").read_text()
    assert f"Not tracked: MLflow tracking to http://u:***@127.0.0.1:{port} failed" in report
    assert "s3cretpw" not in report + caplog.text
