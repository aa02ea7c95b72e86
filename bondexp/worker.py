"""What runs inside a worker process: import the step, load its inputs, call it, report back.

Everything here gets plain data only (a :class:`Task`) and returns plain data, so it runs the same
in the parent (``workers=1``), in a pool process, or on a Dask worker. On a shared disk
(:func:`execute_step`) a step reads its inputs from the run folder's checkpoints and writes its log
there. Without one (:func:`execute_remote_step`, Dask) it gets its inputs and the dataset as
arguments, works in a scratch folder, and hands back its log text and the files it wrote, which
only the parent writes into the run folder. It is imported light: the forkserver preloads it, so
a new worker starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bondexp import executors
from bondexp.artifacts import ModelArtifact, StepOutput, check_files
from bondexp.checkpoints import CheckpointStore, PickledArtifact
from bondexp.errors import StepSkipped
from bondexp.graph import resolve_target
from bondexp.script import raise_lost_ctrl_c


@dataclass(frozen=True)
class StepContext:
    """What a step function gets besides its config and inputs.

    Attributes
    ----------
    name : str
        The step's name.
    run_dir : Path
        The run folder (only the tuning step keeps files here: its study storage). On a cluster
        without a shared disk, a scratch folder holding the files this step left in the run
        folder before; whatever the step writes there is copied back into the run folder.
    workers : int
        Steps the run executes at once; a step that starts its own processes stays within it.
        ``1`` on a Dask worker, whose process may not start children.
    threads : int
        The step's BLAS/OpenMP thread budget (already applied with threadpoolctl).
    shared : dict
        Run-level plain values the caller passes to every step (data config, cache dir, seed).
    log : logging.Logger
        Writes to ``logs/<step>.log`` in the run folder.
    load_pipeline : callable
        ``load_pipeline(need)``: the fitted pipeline of the model step ``need`` (its inputs carry
        predictions and metrics only), verified against its checkpoint.
    """

    name: str
    run_dir: Path
    workers: int
    threads: int
    shared: dict
    log: logging.Logger
    load_pipeline: Callable[[str], Any] = field(default=lambda need: _no_pipeline(need))


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
    #: Files (path relative to the run folder -> bytes) the step left there before; sent to a remote step.
    files: dict = field(default_factory=dict)


def execute_step(task: Task) -> dict[str, Any]:
    """Run one step on the run folder's disk: inputs from its checkpoints, log to ``logs/<step>.log``.

    Returns
    -------
    dict
        ``artifact`` (a :class:`~bondexp.checkpoints.PickledArtifact`; a
        :class:`~bondexp.artifacts.StepOutput`'s is unwrapped), ``output_files`` (the report files it
        returned, path -> bytes), ``warnings`` (the lines its StepOutput asks the run to print), ``metrics``,
        ``error`` (traceback text or ``None``), ``skipped`` (the reason a
        step raised :class:`StepSkipped`, else ``None``), ``started`` and ``ended`` (POSIX seconds),
        ``duration_s``, ``worker`` (``host:pid``) and ``peak_rss_mb`` (see :class:`_PeakRSS`). A step
        that raises is reported in ``error``, not raised, so the parent records it as a value.
    """
    run_dir = Path(task.run_dir)
    store = CheckpointStore(run_dir / "checkpoints")
    report = _run(
        task,
        run_dir=run_dir,
        log_path=run_dir / "logs" / f"{task.name}.log",
        load_inputs=lambda: {need: store.load(need) for need in task.needs},
        load_pipeline=store.load_pipeline,
        threads=task.threads,
        workers=task.workers,
        own_process=executors.IN_POOL_WORKER,
    )
    if report["artifact"] is not None:  # pickled here, so the parent writes it without importing what it holds
        report["artifact"] = PickledArtifact.of(report["artifact"])
    return report


def execute_remote_step(
    task: Task, reports: Mapping[str, Mapping[str, Any]], artifacts: Mapping[str, Any], dataset: Any = None
) -> dict[str, Any]:
    """Run one step on a Dask worker that shares no disk with the parent.

    Parameters
    ----------
    task : Task
        The step; ``task.files`` pre-fill its scratch run folder.
    reports : mapping
        Need name -> the report of a need that ran in this run (its artifact is taken from it).
    artifacts : mapping
        Need name -> the artifact of a need reused from a checkpoint (the parent sent it, a model's
        fitted pipeline included: there is no disk to load it from here).
    dataset : Dataset, optional
        The run's dataset, scattered once by the parent; the step's ``dataset_for`` returns it.

    Returns
    -------
    dict
        What :func:`execute_step` returns, plus ``log_text`` (the step's log) and ``files``
        (path relative to the run folder -> bytes: every file the step wrote or changed).
        The thread budget is this worker's cores divided by its task slots (``nthreads``).
    """
    with tempfile.TemporaryDirectory(prefix=f"bondexp-{task.name}-", dir=_scratch_parent()) as scratch:
        run_dir, log_path = Path(scratch) / "run", Path(scratch) / "step.log"
        run_dir.mkdir()
        sent = {}
        for relative, data in task.files.items():
            path = run_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            sent[relative] = hashlib.sha256(data).hexdigest()
        # In the order of task.needs, as a step on a shared disk gets them: a report step (the
        # backtest's table) writes its rows in that order, whichever needs were reused.
        inputs = {need: reports[need]["artifact"] if need in reports else artifacts[need] for need in task.needs}
        with _dataset_provided(dataset):
            report = _run(
                task,
                run_dir=run_dir,
                log_path=log_path,
                load_inputs=lambda: inputs,
                load_pipeline=lambda need: _carried_pipeline(inputs, need),
                threads=_dask_worker_threads(),
                workers=1,
                own_process=True,
                alone=_dask_worker_slots() == 1,
            )
        report["log_text"] = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
        report["files"] = _written_files(run_dir, sent)
    return report


def _run(
    task: Task,
    *,
    run_dir: Path,
    log_path: Path,
    load_inputs: Callable[[], dict],
    load_pipeline: Callable[[str], Any],
    threads: int,
    workers: int,
    own_process: bool,
    alone: bool = True,
) -> dict[str, Any]:
    """Import the step, load its inputs, call it under the thread budget; report instead of raising.

    ``alone``: this process runs no other step meanwhile, so what it prints is the step's (see :func:`_output_to`).
    """
    started, t0 = time.time(), time.perf_counter()
    step_log, handlers = _open_step_log(
        task.name, log_path, optuna_too=executors.IN_POOL_WORKER or not own_process, warnings_too=not own_process
    )
    artifact, files, metrics, error, skipped = None, {}, {}, None, None
    warnings: list[str] = []
    peak = _PeakRSS(reset=own_process)
    try:
        step_log.info("step %s started (target %s, %d thread(s))", task.name, task.target, threads)
        with _output_to(log_path, descriptors=own_process) if alone else contextlib.nullcontext():
            fn = resolve_target(task.target)  # imports the step's libraries before the thread limit below
            from threadpoolctl import threadpool_limits  # here: a run whose every step is reused never needs it

            inputs = load_inputs()
            ctx = StepContext(task.name, run_dir, workers, threads, dict(task.shared), step_log, load_pipeline)
            # OpenMP (the boosters) may use the step's budget; BLAS gets one thread: a matrix product's last bits
            # changed with its thread count, and bayesian's predictions differed between workers=1 and workers=2
            with threadpool_limits(limits={"openmp": threads, "blas": 1}), _interruptible():
                artifact = fn(dict(task.config), inputs, ctx)
        if isinstance(artifact, StepOutput):
            artifact, files, warnings = artifact.artifact, check_files(task.name, artifact.files), list(artifact.warnings)
        metrics = _check_artifact(task.name, artifact)
        step_log.info("step %s finished in %.3f s", task.name, time.perf_counter() - t0)
    except StepSkipped as exc:
        artifact, files, metrics, skipped = None, {}, {}, str(exc)
        step_log.info("step %s skipped: %s", task.name, skipped)
    except Exception:
        artifact, files, metrics, error = None, {}, {}, traceback.format_exc()
        step_log.error("step %s failed:\n%s", task.name, error)
    finally:
        _close_step_log(step_log, handlers)
    return {
        "artifact": artifact,
        "output_files": files,
        "warnings": warnings,
        "metrics": metrics,
        "error": error,
        "skipped": skipped,
        "started": started,
        "ended": time.time(),
        "duration_s": time.perf_counter() - t0,
        "worker": executors.worker_label(),
        "peak_rss_mb": peak.mb(),
    }


class _PeakRSS:
    """The peak resident memory of a step's process (MiB), and of the children it waited for if larger.

    In a worker process (a pool process or a Dask worker) the kernel's peak (``VmHWM``) is reset
    when the step starts (Linux ``/proc/self/clear_refs``), so the figure is the step's own. In
    the parent (``workers=1``) it is not reset, since that would lose the run's own peak: the
    figure is then the parent's peak up to the step's end. Children (the tuning step's trial
    processes) count once reaped, when their peak is above every earlier child's.
    """

    def __init__(self, *, reset: bool):
        if reset:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        self._children_before = _maxrss_mb(resource.RUSAGE_CHILDREN)

    def mb(self) -> float:
        own = _vm_hwm_mb()
        own = own if own is not None else _maxrss_mb(resource.RUSAGE_SELF)
        children = _maxrss_mb(resource.RUSAGE_CHILDREN)
        if children > self._children_before:
            own = max(own, children)
        return round(own, 1)


def _vm_hwm_mb() -> float | None:
    """``VmHWM`` of this process in MiB (Linux), or ``None`` where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb(who: int) -> float:
    """``ru_maxrss`` in MiB (kilobytes on Linux, bytes on macOS)."""
    value = resource.getrusage(who).ru_maxrss
    return value / (1024 * 1024) if sys.platform == "darwin" else value / 1024


@contextlib.contextmanager
def _output_to(path: Path, *, descriptors: bool) -> Iterator[None]:
    """Send what the step prints, on stdout or stderr, to its log file; restore both afterwards.

    README promises only warnings and errors above the bar: a verbose estimator's lines (printed by
    Python's ``print``, as GradientBoosting's, or by C stdio, as libsvm's) tore it, and parallel fits
    interleaved. With ``descriptors`` (a process of its own: a pool worker, a Dask worker with one
    task slot) file descriptors 1 and 2 themselves are pointed at the log, which also catches C stdio
    and the processes the step starts (the tuning step's trial processes inherit them). In the run's
    own process (``workers=1``) those descriptors carry the bar and the run's warnings, so only
    ``sys.stdout`` and ``sys.stderr`` are swapped: what C code prints directly still reaches the terminal.
    """
    with open(path, "a", encoding="utf-8", buffering=1) as log_file:
        if not descriptors:
            with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
                yield
            return
        _flush_standard_streams()  # what was printed before the step stays where it was going
        saved = [os.dup(fd) for fd in (1, 2)]
        try:
            for fd in (1, 2):
                os.dup2(log_file.fileno(), fd)
            yield
        finally:
            _flush_standard_streams()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)


def _flush_standard_streams() -> None:
    """Write out what Python's ``sys.stdout``/``sys.stderr`` and C stdio's buffers hold, before fds 1 and 2 change."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    import ctypes  # here: the forkserver preloads this module and needs no ctypes

    with contextlib.suppress(OSError, TypeError, AttributeError):  # no C library to ask (Windows)
        ctypes.CDLL(None).fflush(None)


def _scratch_parent() -> str | None:
    """The Dask worker's own ``--local-directory`` when running on one, else the system's temp folder."""
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        return get_worker().local_directory
    return None


def _dask_worker_threads() -> int:
    """BLAS/OpenMP threads per task on this Dask worker: its own cores over its task slots."""
    return max(1, executors.cpu_count() // _dask_worker_slots())


def _dask_worker_slots() -> int:
    """Tasks this Dask worker runs at once (its ``nthreads``); 1 off a Dask worker."""
    slots = 1
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        slots = get_worker().state.nthreads
    return max(1, slots)


@contextlib.contextmanager
def _dataset_provided(dataset: Any) -> Iterator[None]:
    """Make ``dataset_for`` return the dataset the parent sent, and forget it afterwards (workers outlive runs)."""
    if dataset is None:
        yield
        return
    from bondexp.features import provided_dataset

    with provided_dataset(dataset):
        yield


def _written_files(run_dir: Path, sent: Mapping[str, str]) -> dict[str, bytes]:
    """Files under ``run_dir`` that are new or differ from what was sent (relative POSIX path -> bytes)."""
    files: dict[str, bytes] = {}
    if not run_dir.is_dir():
        return files
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir).as_posix()
        data = path.read_bytes()
        if sent.get(relative) != hashlib.sha256(data).hexdigest():
            files[relative] = data
    return files


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """In a pool worker, let Ctrl-C interrupt the step (and reach processes it starts) only while it runs;
    a step that returns after a Ctrl-C raises it then.

    Library code may catch the ``KeyboardInterrupt`` and return early: scikit-learn's MLP stops
    training ("Training interrupted by user"), and a sweep's jobs saved that cut-short fit as a step
    that ran, which a resume then reused. In a pool worker this handler remembers the Ctrl-C; in the
    run's own process (``workers=1``) the run's handler does (:func:`bondexp.script.raise_lost_ctrl_c`).
    """
    if not executors.IN_POOL_WORKER:
        yield
        raise_lost_ctrl_c()
        return
    pressed = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal pressed
        pressed = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
        if pressed:
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _open_step_log(
    name: str, path: Path, *, optuna_too: bool, warnings_too: bool = False
) -> tuple[logging.Logger, list[tuple[logging.Logger, logging.Handler]]]:
    """Attach ``logs/<step>.log`` to the step's logger (``optuna_too``: and Optuna's); in a pool worker also to
    the root logger and warnings; in the run's own process (``warnings_too``, ``workers=1``) to warnings.

    A pool worker runs one step at a time, so library logs and warnings there belong to the step.
    In the parent process the root logger is the application's, so it is left alone. Optuna's
    logs (a failed trial and its traceback, one for each trial a Ctrl-C interrupts) go to the
    step's log in the run's process and its pool workers: Optuna's own handler would print them
    under the progress bar. A Dask worker may run several steps at once, so its logs stay its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    step_log = logging.getLogger(f"bondexp.steps.{name}")
    step_log.setLevel(logging.INFO)
    step_log.propagate = False
    attached: list[tuple[logging.Logger, logging.Handler]] = [(step_log, handler)]
    if optuna_too:
        import optuna

        optuna.logging.disable_default_handler()
        attached.append((logging.getLogger("optuna"), handler))
    if executors.IN_POOL_WORKER:
        logging.captureWarnings(True)
        attached.append((logging.getLogger(), handler))
    elif warnings_too:  # scikit-learn's ConvergenceWarnings of a tune step printed under the bar with workers=1
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").propagate = False
        attached.append((logging.getLogger("py.warnings"), handler))
    for logger, _ in attached:
        logger.addHandler(handler)
    return step_log, attached


def _close_step_log(step_log: logging.Logger, attached: list[tuple[logging.Logger, logging.Handler]]) -> None:
    for logger, handler in attached:
        logger.removeHandler(handler)
        if logger.name == "py.warnings":  # the run's process (workers=1): its warnings as before the step
            logging.captureWarnings(False)
            logger.propagate = True
        if logger.name == "optuna":
            import optuna

            optuna.logging.enable_default_handler()
    attached[0][1].close()


def _no_pipeline(need: str) -> Any:
    raise LookupError(f"No fitted pipeline can be loaded for {need!r} here: this step context has no checkpoints.")


def _carried_pipeline(inputs: Mapping[str, Any], need: str) -> Any:
    """A need's fitted pipeline from the artifact the parent sent with it (executors without a shared disk)."""
    pipeline = getattr(inputs.get(need), "pipeline", None)
    if pipeline is None:
        raise LookupError(f"The input {need!r} carries no fitted pipeline: it is not a model step's artifact.")
    return pipeline


def _check_artifact(name: str, artifact: Any) -> dict[str, Any]:
    """Return the artifact's flat metrics as plain Python scalars; raise TypeError on a malformed artifact."""
    if isinstance(artifact, ModelArtifact):
        metrics: Any = artifact.metrics
    elif isinstance(artifact, Mapping):
        metrics = artifact.get("metrics", {})
    else:
        raise TypeError(f"Step {name!r} must return a ModelArtifact, a dict or a StepOutput. Got {type(artifact).__name__} instead.")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"The 'metrics' of step {name!r} must be a dict. Got {type(metrics).__name__} instead.")
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):  # numpy scalar -> Python scalar
            value = value.item()
        if not isinstance(key, str) or not isinstance(value, (int, float, str)):
            raise TypeError(f"Metrics of step {name!r} must map str to a number or str. Got {key!r}: {type(value).__name__} instead.")
        clean[key] = value
    return clean
