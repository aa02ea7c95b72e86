"""MLflow tracking (``tracking=mlflow``): a finished run, or a sweep, logged to MLflow from the parent.

Everything here reads the run folder's files after the steps (results.json, leaderboard.csv,
data_summary.json, the checkpoints for ``tracking.log_models``), so a step never talks to MLflow
and a worker on another machine needs no access to it. MLflow is imported only when tracking is
on (its import takes seconds). Tracking never breaks a run: any failure becomes a warning and a
line in report.md, and the run's own files stay as they are.

The MLflow run's id is kept in the run folder (``mlflow_run.json``), so a resume logs into the run
it started; a sweep keeps its parent run's id in the sweep folder (``mlflow_sweep.json``), where each
job, in its own worker process, finds it and logs itself as a child.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bondexp import __version__
from bondexp.atomic import atomic_write_json, atomic_write_text
from bondexp.checkpoints import CheckpointStore
from bondexp.config import absolute_sqlite_url, launch_dir, plain_dict, saved_launch_dir
from bondexp.errors import hide_passwords
from bondexp.runs import best_model_on_validation, read_json, read_leaderboard, run_status

log = logging.getLogger("bondexp")

#: In a run folder: the MLflow run this folder logs to ({"run_id", "experiment_id", "uri"}).
RUN_FILE = "mlflow_run.json"
#: In a sweep folder: the sweep's parent MLflow run, same fields.
SWEEP_FILE = "mlflow_sweep.json"
#: Leaderboard columns logged as ``<model>.<column>`` metrics.
LEADERBOARD_METRICS = ("rmse", "mae", "r2", "improvement_pct", "oracle_gap_pct", "coverage", "nll")
#: Run-folder files logged as artifacts (those that exist), and the folder logged whole.
ARTIFACT_FILES = ("report.md", "leaderboard.csv", "drift.json", "tuning.json", "results.json")
ARTIFACT_DIRS = ("plots",)
#: report.md's closing section, rewritten (never appended twice) on every tracked attempt.
REPORT_SECTION = "## Tracking"
#: A registered model version's tag: the sha256 of the fitted pipeline it holds. A resume that reuses the fit
#: registers no second version of it (it did, one more on every resume of a `tracking.log_models=true` run).
FIT_TAG = "bondexp.pipeline_sha256"
#: The MLflow run status for each run status (:func:`bondexp.runs.run_status`): an interrupted run is KILLED, as in MLflow's own UI.
MLFLOW_STATUS = {"ok": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "unfinished": "FAILED"}
#: A character MLflow refuses in a metric, param or tag key: it accepts letters, digits, ``_ - . / space``
#: (and ``:``, which a Windows server refuses: left out too). See mlflow/utils/validation.py.
REFUSED_IN_KEY = re.compile(r"[^\w.\- /]")
#: An unreachable server fails in seconds rather than after MLflow's default minutes of retries, and
#: MLflow's INFO lines (database set-up) stay off the terminal; a value already in the environment wins.
MLFLOW_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def track_run(cfg: DictConfig, *, run_dir: Path, overrides: Sequence[str] = (), model_choice: str | None = None) -> str | None:
    """Log the finished run in ``run_dir`` to MLflow when ``cfg.tracking.name`` is ``mlflow``.

    Returns the MLflow run id, or None when tracking is off or failed (then a warning is logged and
    report.md says why). Never raises.
    """
    if cfg.tracking.name != "mlflow":
        return None
    run_dir = Path(run_dir)
    cfg = copy.deepcopy(cfg)  # a relative SQLite store is the one in the folder the run was first launched from
    cfg.tracking.uri = absolute_sqlite_url(cfg.tracking.uri, saved_launch_dir(run_dir) or launch_dir())
    settings = cfg.tracking
    retries = logging.getLogger("urllib3.connectionpool")  # its "Retrying (Retry(total=0, ...))" came before the warning below
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        run_id = _log_run(cfg, run_dir=run_dir, overrides=overrides, model_choice=model_choice or ",".join(cfg.models))
    except Exception as err:  # tracking must never fail the run: any error is reported, not raised
        uri = hide_passwords(settings.uri)
        message = f"MLflow tracking to {uri} failed ({type(err).__name__}: {_first_line(err)}); the run folder is complete."
        log.warning(message)
        note_in_report(run_dir, f"Not tracked: {message}")
        return None
    finally:
        retries.setLevel(level)
    return run_id


def start_sweep(config: DictConfig, *, sweep_dir: Path) -> str | None:
    """Create the sweep's parent MLflow run and keep its id in ``sweep_dir``; return it (None when off or failed).

    A sweep run again in its folder (the resume its interruption prints) reopens the parent run it
    started there, when it is still in the same store: a second parent split the sweep's jobs
    between two runs, the first left KILLED.
    """
    settings = config.tracking
    if settings.name != "mlflow":
        return None
    uri = absolute_sqlite_url(settings.uri, launch_dir())  # as each job reads it (track_run, from its launch folder)
    try:
        client = _client(uri, launched_in=launch_dir())
        experiment_id = _experiment_id(client, settings.experiment)
        reopened = _reopen_parent(client, read_json(Path(sweep_dir) / SWEEP_FILE), uri=uri, experiment_id=experiment_id)
        if reopened is not None:
            return reopened
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        run = client.create_run(
            experiment_id,
            run_name=_run_name(sweep_dir),
            tags={"bondexp.sweep_dir": str(Path(sweep_dir).resolve()), "bondexp.version": __version__, **_git_tags()},
        )
        client.log_param(run.info.run_id, "overrides", hide_passwords(" ".join(overrides)))
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(sweep_dir) / SWEEP_FILE, {"run_id": run.info.run_id, "experiment_id": experiment_id, "uri": uri})
        return run.info.run_id
    except Exception as err:  # a sweep's jobs then log as runs of their own, or warn in turn
        log.warning("MLflow tracking of the sweep to %s failed (%s: %s)", hide_passwords(uri), type(err).__name__, _first_line(err))
        return None


def _reopen_parent(client, parent: Mapping[str, Any] | None, *, uri: str, experiment_id: str) -> str | None:
    """The id of the sweep's earlier parent run, set running again; None when there is none in this store and experiment."""
    if not parent or parent.get("uri") != uri or parent.get("experiment_id") != experiment_id:
        return None
    try:
        run = client.get_run(parent["run_id"])
    except Exception:  # deleted, or the store was replaced: a new parent run
        return None
    if run.info.lifecycle_stage != "active":
        return None
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def end_sweep(config: DictConfig, *, sweep_dir: Path) -> None:
    """Log the sweep summary to the parent run and close it: FAILED when a job failed, else KILLED when one was interrupted."""
    if config.tracking.name != "mlflow":
        return
    parent = read_json(Path(sweep_dir) / SWEEP_FILE)
    if not parent:
        return
    try:
        client = _client(parent["uri"])
        for name in ("summary.csv", "summary.md"):
            if (Path(sweep_dir) / name).is_file():
                client.log_artifact(parent["run_id"], str(Path(sweep_dir) / name))
        children = client.search_runs([parent["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'")
        statuses = {child.info.status for child in children}
        status = "FAILED" if "FAILED" in statuses else "KILLED" if statuses - {"FINISHED"} else "FINISHED"
        client.set_terminated(parent["run_id"], status=status)
    except Exception as err:
        uri = hide_passwords(str(parent.get("uri")))
        log.warning("MLflow tracking of the sweep to %s failed (%s: %s)", uri, type(err).__name__, _first_line(err))


# ----------------------------------------------------------------------------- what a run logs


def run_params(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, str]:
    """``overrides`` (the command line's, space-joined) plus the composed config flattened to dotted
    keys, Hydra's own node left out; values as text (JSON for everything but strings), a URL's
    password (``tune.storage``, ``tracking.uri``) shown as ``***``."""
    plain = plain_dict(cfg)
    plain.pop("hydra", None)
    params = {"overrides": " ".join(overrides)}
    params.update(flatten(plain))
    return mlflow_keys({key: hide_passwords(value) for key, value in params.items()})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and empty mappings stay one JSON value."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def run_metrics(results: Mapping[str, Any], leaderboard: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every numeric step metric as ``<step>.<metric>``, every leaderboard row as ``<model>.<column>``
    (:data:`LEADERBOARD_METRICS`), and ``wall_s`` (every attempt's: ``total_wall_s``), under :func:`mlflow_key` keys (a backtest refit's
    ``enhanced@2017-07.rmse`` is ``enhanced/2017-07.rmse``). Text, flags and non-finite values are left out."""
    metrics: dict[str, Any] = {}
    for step, record in results.get("steps", {}).items():
        for key, value in (record.get("metrics") or {}).items():
            metrics[f"{step}.{key}"] = value
    for row in leaderboard:
        for column in LEADERBOARD_METRICS:
            metrics[f"{row['model']}.{column}"] = row.get(column)
    metrics["wall_s"] = results.get("total_wall_s", results.get("wall_s"))  # every attempt's, as bondexp.runs shows
    return mlflow_keys(
        {
            key: float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
    )


def mlflow_key(name: str) -> str:
    """``name`` as a key MLflow accepts: ``@`` becomes ``/`` and any other character MLflow refuses ``_``.

    A backtest refit's step is ``<model>@<origin>``, so its metrics are ``enhanced/2017-07.rmse``: no
    step name holds ``/`` (the graph refuses it), so such a key names that refit and nothing else, and
    MLflow's charts group a ``/`` key's metrics under its first part.
    """
    return REFUSED_IN_KEY.sub("_", name.replace("@", "/"))


def mlflow_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` under :func:`mlflow_key` keys.

    Raises
    ------
    ValueError
        Two keys become the same MLflow key (say ``a+b`` and ``a_b``): one would hide the other.
    """
    keyed: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, value in values.items():
        key = mlflow_key(name)
        if key in source:
            raise ValueError(f"{source[key]!r} and {name!r} would both be logged to MLflow as {key!r}; rename one of them.")
        keyed[key], source[key] = value, name
    return keyed


def run_tags(
    *, run_dir: Path, results: Mapping[str, Any], leaderboard: Sequence[Mapping[str, Any]], model_choice: str | None
) -> dict[str, str]:
    """Run folder, data fingerprint, bondexp version, git commit (when launched in a checkout), the
    model choice, the status and the model validation chose."""
    summary = read_json(run_dir / "data_summary.json")
    tags = {
        "bondexp.run_dir": str(run_dir.resolve()),
        "bondexp.data_fingerprint": summary.get("fingerprint", ""),
        "bondexp.version": __version__,
        "bondexp.model": model_choice or "",
        "bondexp.status": run_status(results),
        "bondexp.best_model": best_model_on_validation(results, leaderboard) or "",
        **_git_tags(),
    }
    return {key: hide_passwords(value) for key, value in tags.items() if value}


def note_in_report(run_dir: Path, line: str) -> None:
    """Make report.md end with a Tracking section holding ``line`` (replacing an earlier one)."""
    path = Path(run_dir) / "report.md"
    try:
        text = path.read_text() if path.is_file() else ""
        head = text.split(f"\n\n{REPORT_SECTION}\n", 1)[0].rstrip()
        atomic_write_text(path, (head + "\n\n" if head else "") + f"{REPORT_SECTION}\n\n{line}\n")
    except OSError as err:
        log.warning("could not note tracking in %s: %s", path, err)


# ----------------------------------------------------------------------------- MLflow


def _log_run(cfg: DictConfig, *, run_dir: Path, overrides: Sequence[str], model_choice: str | None) -> str:
    settings = cfg.tracking
    results = read_json(run_dir / "results.json")
    leaderboard = read_leaderboard(run_dir)
    client = _client(settings.uri, launched_in=saved_launch_dir(run_dir) or launch_dir())
    run_id = _open_run(client, settings, run_dir=run_dir)
    # before report.md is logged: the copy in MLflow lacked the section the run folder's ends with
    note_in_report(run_dir, f"MLflow run `{run_id}` in experiment `{settings.experiment}` at `{hide_passwords(settings.uri)}`.")
    try:
        logged = client.get_run(run_id).data.params
        # MLflow params are immutable: a resume keeps what its first attempt logged and adds only new keys
        params = {key: value for key, value in run_params(cfg, overrides).items() if key not in logged}
        tags = run_tags(run_dir=run_dir, results=results, leaderboard=leaderboard, model_choice=model_choice)
        _log_batch(client, run_id, params=params, metrics=run_metrics(results, leaderboard), tags=tags)
        for name in ARTIFACT_FILES:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        for name in ARTIFACT_DIRS:
            if (run_dir / name).is_dir():
                client.log_artifacts(run_id, str(run_dir / name), artifact_path=name)
        if settings.log_models:
            _log_models(settings, run_id=run_id, run_dir=run_dir, results=results, leaderboard=leaderboard)
    except Exception:
        client.set_terminated(run_id, status="FAILED")  # half-logged: not left RUNNING in the UI
        raise
    client.set_terminated(run_id, status=MLFLOW_STATUS[run_status(results)])
    return run_id


def _open_run(client, settings, *, run_dir: Path) -> str:
    """The MLflow run this folder logged to before (same store), else a new one: a child of the
    sweep's parent run when this is a sweep job. Its id is written to the run folder."""
    known = read_json(run_dir / RUN_FILE)
    if known.get("uri") == settings.uri and known.get("run_id"):
        client.get_run(known["run_id"])  # raises when the store lost it: a warning, never a second run
        return known["run_id"]
    experiment_id = _experiment_id(client, settings.experiment)
    tags = {}
    parent = _sweep_parent()
    if parent.get("uri") == settings.uri and parent.get("experiment_id") == experiment_id:
        tags["mlflow.parentRunId"] = parent["run_id"]
    run = client.create_run(experiment_id, run_name=_run_name(run_dir), tags=tags)
    atomic_write_json(run_dir / RUN_FILE, {"run_id": run.info.run_id, "experiment_id": experiment_id, "uri": settings.uri})
    return run.info.run_id


def _log_models(settings, *, run_id: str, run_dir: Path, results: Mapping[str, Any], leaderboard: Sequence[Mapping[str, Any]]) -> None:
    """Log each fitted model (sha256-verified checkpoint) with the sklearn flavour and register it as
    ``bondexp-<model>``, the run's test metrics in the version's description."""
    import mlflow
    import sklearn
    import skops.io

    store = CheckpointStore(run_dir / "checkpoints")
    rows = {row["model"]: row for row in leaderboard}
    client = _client(settings.uri)
    mlflow.set_tracking_uri(settings.uri)
    mlflow.set_registry_uri(settings.uri)
    requirements = [f"scikit-learn=={sklearn.__version__}", f"bondexp=={__version__}"]
    for step_name, step in results.get("steps", {}).items():
        # the steps that kept a fitted pipeline: the model steps, and tune's model (named <target>_tuned)
        manifest = store.manifest(step_name) or {}
        if step.get("status") not in ("ran", "reused") or "pipeline_sha256" not in manifest:
            continue
        problem = store.verify(step_name, step.get("fingerprint"))
        if problem:
            raise RuntimeError(f"checkpoint of step {step_name!r} not logged: {problem}")
        artifact = store.load(step_name, pipeline=True)
        name = artifact.name
        if name not in rows:
            continue
        registered, fit = f"bondexp-{name}", manifest["pipeline_sha256"]
        versions = client.search_model_versions(f"name='{registered}' and run_id='{run_id}'")
        if any(version.tags.get(FIT_TAG) == fit for version in versions):
            continue  # a resume's reused fit: registered once, by the attempt that made it
        # skops, MLflow's safe format, loads only types it is told to trust: our own model's, from a verified checkpoint
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(artifact.pipeline))
        printed = io.StringIO()  # MLflow prints "Successfully registered model ..." to stderr, under the run's table
        with mlflow.start_run(run_id=run_id), contextlib.redirect_stderr(printed):
            info = mlflow.sklearn.log_model(
                artifact.pipeline,
                name=name,
                registered_model_name=registered,
                pip_requirements=requirements,
                skops_trusted_types=trusted,
            )
        for line in printed.getvalue().splitlines():
            log.info("MLflow: %s", line)  # the run's log file
        scores = ", ".join(
            f"{column} {rows[name][column]:.4f}" for column in LEADERBOARD_METRICS if isinstance(rows[name].get(column), float)
        )
        client.update_model_version(
            registered,
            info.registered_model_version,
            description=f"Test split of run {run_dir.resolve()}: {scores}. Features: {', '.join(artifact.features)}.",
        )
        client.set_model_version_tag(registered, info.registered_model_version, FIT_TAG, fit)


def set_environment() -> None:
    """:data:`MLFLOW_ENV_DEFAULTS`, before MLflow's import reads them (on the run's main thread: other threads may start processes)."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def warm_up() -> None:
    """Import MLflow's client (3 s here) while the steps run, on the run's warm-up thread, so the run's
    end only logs: with tracking on, a ``data=small`` run's outputs took 3.6-5.0 s after its last step."""
    import mlflow.tracking  # noqa: F401


def _client(uri: str, *, launched_in: Path | None = None):
    """MLflow's client of the store ``uri``; its store made in ``launched_in``.

    A local store (SQLite, files) puts the artifacts of a new experiment under ``./mlruns``, resolved
    against the current folder when MLflow makes the store (once a process). With
    ``hydra.job.chdir=true`` that was the run's own folder: every later run's artifacts went there
    too, and deleting that run deleted them. The store is made from ``launched_in``, as the store's
    own path is (:func:`bondexp.config.absolute_sqlite_url`).
    """
    set_environment()
    from mlflow.tracking import MlflowClient

    if launched_in is None:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    here = os.getcwd()
    os.chdir(launched_in)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)  # makes the store, which MLflow keeps for the process
    finally:
        os.chdir(here)


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a sibling sweep job
        return client.get_experiment_by_name(name).experiment_id


def _log_batch(client, run_id: str, *, params: Mapping[str, str], metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
        params=[Param(key, value) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def _sweep_parent() -> dict[str, Any]:
    """The sweep's parent run (from the sweep folder) when this process runs a job of a sweep, else {}."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    return read_json(Path(HydraConfig.get().sweep.dir) / SWEEP_FILE)


def _git_tags() -> dict[str, str]:
    """MLflow's own git-commit tag, when the current folder is inside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit} if commit else {}


def _run_name(folder: Path) -> str:
    """``2026-11-29/10-00-00`` for a run, ``.../10-00-00/3`` for a sweep job: the folder's last parts."""
    parts = Path(folder).resolve().parts
    return "/".join(parts[-3:] if len(parts) >= 3 and parts[-1].isdigit() else parts[-2:])


def _first_line(err: BaseException) -> str:
    """The error's first line, a URL's password hidden (MLflow's own messages quote the tracking URI)."""
    text = str(err).strip()
    return hide_passwords(text.splitlines()[0]) if text else ""
