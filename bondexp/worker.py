"""What runs inside a worker process: import the step, load its inputs, call it, report back.

Everything here gets plain data only (a :class:`Task`) and returns plain data, so it runs the same
in the parent (``workers=1``), in a pool process, or on a Dask worker. It is imported light: the
forkserver preloads it, so a new worker starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from bondexp import executors
from bondexp.checkpoints import CheckpointStore
from bondexp.errors import StepSkipped
from bondexp.graph import resolve_target


@dataclass(frozen=True)
class StepContext:
    """What a step function gets besides its config and inputs.

    Attributes
    ----------
    name : str
        The step's name.
    run_dir : Path
        The run folder (only the tuning step keeps files here: its study storage).
    workers : int
        Steps the run executes at once; a step that starts its own processes stays within it.
    threads : int
        The step's BLAS/OpenMP thread budget (already applied with threadpoolctl).
    shared : dict
        Run-level plain values the caller passes to every step (data config, cache dir, seed).
    log : logging.Logger
        Writes to ``logs/<step>.log`` in the run folder.
    """

    name: str
    run_dir: Path
    workers: int
    threads: int
    shared: dict
    log: logging.Logger


@dataclass(frozen=True)
class Task:
    """Plain data shipped to a worker: nothing from Hydra, no open handles."""

    name: str
    target: str
    config: dict
    needs: tuple[str, ...]
    run_dir: str
    workers: int
    threads: int
    shared: dict


def execute_step(task: Task) -> dict[str, Any]:
    """Run one step in a worker: import it, load its inputs, call it under the thread budget.

    Returns
    -------
    dict
        ``artifact``, ``metrics``, ``error`` (traceback text or ``None``), ``skipped`` (the reason a
        step raised :class:`StepSkipped`, else ``None``), ``started`` and
        ``ended`` (POSIX seconds), ``duration_s`` and ``worker`` (``host:pid``). A step that
        raises is reported in ``error``, not raised, so the parent records it as a value.
    """
    started, t0 = time.time(), time.perf_counter()
    run_dir = Path(task.run_dir)
    step_log, handlers = _open_step_log(task.name, run_dir / "logs" / f"{task.name}.log")
    artifact, metrics, error, skipped = None, {}, None, None
    try:
        step_log.info("step %s started (target %s, %d thread(s))", task.name, task.target, task.threads)
        fn = resolve_target(task.target)  # imports the step's libraries before the thread limit below
        store = CheckpointStore(run_dir / "checkpoints")
        inputs = {need: store.load(need) for need in task.needs}
        ctx = StepContext(task.name, run_dir, task.workers, task.threads, dict(task.shared), step_log)
        with threadpool_limits(limits=task.threads), _interruptible():
            artifact = fn(dict(task.config), inputs, ctx)
        metrics = _check_artifact(task.name, artifact)
        step_log.info("step %s finished in %.3f s", task.name, time.perf_counter() - t0)
    except StepSkipped as exc:
        artifact, metrics, skipped = None, {}, str(exc)
        step_log.info("step %s skipped: %s", task.name, skipped)
    except Exception:
        artifact, metrics, error = None, {}, traceback.format_exc()
        step_log.error("step %s failed:\n%s", task.name, error)
    finally:
        _close_step_log(step_log, handlers)
    return {
        "artifact": artifact,
        "metrics": metrics,
        "error": error,
        "skipped": skipped,
        "started": started,
        "ended": time.time(),
        "duration_s": time.perf_counter() - t0,
        "worker": executors.worker_label(),
    }


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """In a pool worker, let Ctrl-C interrupt the step (and reach processes it starts) only while it runs."""
    if not executors.IN_POOL_WORKER:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _open_step_log(name: str, path: Path) -> tuple[logging.Logger, list[tuple[logging.Logger, logging.Handler]]]:
    """Attach ``logs/<step>.log`` to the step's logger; in a pool worker also to the root logger and warnings.

    A pool worker runs one step at a time, so library logs and warnings there belong to the step.
    In the parent process the root logger is the application's, so it is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    step_log = logging.getLogger(f"bondexp.steps.{name}")
    step_log.setLevel(logging.INFO)
    step_log.propagate = False
    attached = [(step_log, handler)]
    if executors.IN_POOL_WORKER:
        logging.captureWarnings(True)
        logging.getLogger().addHandler(handler)
        attached.append((logging.getLogger(), handler))
    step_log.addHandler(handler)
    return step_log, attached


def _close_step_log(step_log: logging.Logger, attached: list[tuple[logging.Logger, logging.Handler]]) -> None:
    for logger, handler in attached:
        logger.removeHandler(handler)
    attached[0][1].close()


def _check_artifact(name: str, artifact: Any) -> dict[str, Any]:
    """Return the artifact's flat metrics as plain Python scalars; raise TypeError on a malformed artifact."""
    if not isinstance(artifact, Mapping):
        raise TypeError(f"Step {name!r} must return a dict artifact. Got {type(artifact).__name__} instead.")
    metrics = artifact.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise TypeError(f"The 'metrics' of step {name!r} must be a dict. Got {type(metrics).__name__} instead.")
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):  # numpy scalar -> Python scalar
            value = value.item()
        if not isinstance(key, str) or not isinstance(value, (int, float, str)):
            raise TypeError(
                f"Metrics of step {name!r} must map str to a number or str. "
                f"Got {key!r}: {type(value).__name__} instead."
            )
        clean[key] = value
    return clean
