"""The executors steps run on, chosen by name: in-process, a local process pool, or a Dask cluster.

Each entry of :data:`EXECUTORS` builds a backend with ``start()``, ``submit(task, ...)`` returning a
``concurrent.futures.Future`` of the step's report, and ``stop(kill=...)``; the scheduler loop in
:mod:`bondexp.runner` is the same for all of them, so a new executor is one more entry here.
The in-process and local-process backends share the run folder's disk with their workers; the
Dask backend assumes no shared disk and ships a step's inputs, the dataset and its files through
Dask (see :func:`bondexp.worker.execute_remote_step`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from bondexp.errors import ConfigError, InputsLost, NoWorkers

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

log = logging.getLogger("bondexp")

# True inside a pool worker process; the step wrapper then lets Ctrl-C reach the step only while it runs.
IN_POOL_WORKER = False

#: The worker side of a step, and the libraries every step needs (about 3 s of CPU to import).
_WORKER = ["bondexp.worker"]
_STEP_LIBRARIES = ["bondexp.steps.train", "sklearn.ensemble"]


def _forkserver_preload(*, step_libraries: bool) -> list[str]:
    """What the forkserver imports before it forks a worker, in order.

    :mod:`bondexp.forkserver_first` and :mod:`bondexp.forkserver_last` bracket the imports (Ctrl-C
    left to the run, no collection during them, then ``gc.freeze``); they are for the server only,
    never the run's process. Without ``step_libraries`` (a pool started with no :func:`warm_up`)
    the server is up in milliseconds; with them (:func:`warm_up`, while the data loads) no worker
    imports them again at its first step.
    """
    return ["bondexp.forkserver_first", *_WORKER, *(_STEP_LIBRARIES if step_libraries else []), "bondexp.forkserver_last"]


_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when that is set.

    A process that was given a share of the machine is told so through ``OMP_NUM_THREADS``: joblib's
    loky workers (every job of a ``-m`` sweep) get ``cores // n_jobs``, and so does a user who pins
    it. Ignoring it gives each of two sweep jobs both cores, and OpenMP boosting oversubscribed that
    way ran 25 times slower (tail_risk: 74.7 s against 2.9 s on the default market).
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    share = os.environ.get("OMP_NUM_THREADS", "").strip()
    if share.isdigit() and int(share) > 0:
        cores = min(cores, int(share))
    return cores


def threads_per_worker(workers: int) -> int:
    """BLAS/OpenMP threads for each of ``workers`` concurrent steps, so they never oversubscribe the cores."""
    return max(1, cpu_count() // workers)


class InlineExecutor(Executor):
    """Runs each call in the calling process at submit time: ``workers=1``, easy to debug.

    The returned future is already done; ``KeyboardInterrupt`` propagates to the caller.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


class _SharedDiskBackend:
    """A backend whose workers see the run folder: a step reads its inputs from the checkpoints itself."""

    #: Whether steps run without the run folder (their inputs, files and log travel through the backend).
    remote = False
    #: Whether ``submit`` runs the step itself, in this process, before it returns.
    in_process = False
    _executor: Executor | None = None

    def submit(self, task: Any, *, load_input: Callable[[str], Any], dataset: Any) -> Future:
        """Run ``task`` through :func:`bondexp.worker.execute_step`.

        ``load_input`` and ``dataset`` are for backends without a shared disk: here the worker
        loads its inputs from the checkpoints and the dataset from the feature cache.
        """
        from bondexp.worker import execute_step  # not at the top: bondexp.worker imports this module

        if self._executor is None:
            raise RuntimeError(f"{type(self).__name__}.start() must run before submit()")
        return self._executor.submit(execute_step, task)

    def call(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        """``fn(*args)`` where the steps run (a worker; this process for one worker): checks needing the step libraries."""
        if self._executor is None:
            raise RuntimeError(f"{type(self).__name__}.start() must run before call()")
        return self._executor.submit(fn, *args)


class InlineBackend(_SharedDiskBackend):
    """Steps run one after another inside the parent process."""

    concurrency = 1
    in_process = True

    def __init__(self, *, workers: int, options: Mapping[str, Any]):
        _check_options("serial", options, ())

    def start(self) -> None:
        self._executor = InlineExecutor()

    def stop(self, *, kill: bool) -> None:
        """Nothing to stop: no processes were started."""
        self._executor = None


def _init_pool_worker(threads: int, run_pid: int) -> None:
    """Set up a fresh worker process: thread budget for it and its children, Ctrl-C left to the parent."""
    global IN_POOL_WORKER
    IN_POOL_WORKER = True
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)
    # Idle workers ignore Ctrl-C (no tracebacks from queue reads); the parent terminates them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_without, args=(run_pid,), name="bondexp-run-watch", daemon=True).start()


def _exit_without(run_pid: int, *, every_s: float = 1.0) -> None:
    """End this worker once the run's process is gone.

    A run killed with SIGKILL cannot stop its pool, and its workers (children of the forkserver,
    not of the run) would otherwise idle, or finish a step no one collects, until the machine reboots.
    """
    while True:
        time.sleep(every_s)
        try:
            os.kill(run_pid, 0)
        except (ProcessLookupError, PermissionError):  # PermissionError: the pid now belongs to another user
            os._exit(1)


class ProcessBackend(_SharedDiskBackend):
    """``workers`` processes started once per run (``forkserver`` on POSIX, else ``spawn``).

    Both start methods are safe with threads in the parent and give non-daemonic workers,
    so a step may start processes of its own (the Optuna tuning step does).
    """

    def __init__(self, *, workers: int, options: Mapping[str, Any]):
        _check_options("local", options, ("start_method",))
        default = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        method = options.get("start_method", default)
        if method not in ("forkserver", "spawn"):
            raise ConfigError(f"The 'start_method' option of the local executor must be 'forkserver' or 'spawn'. Got {method!r} instead.")
        self.concurrency = workers
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            # What the pool's first start imports, imported now, before the scheduling loop: a Ctrl-C that
            # lands inside an import can leave Python's import lock held (see bondexp.app.run).
            importlib.import_module("multiprocessing.synchronize")
            importlib.import_module("multiprocessing.popen_forkserver")
        if method == "forkserver":
            # Workers fork from a server that has already imported the worker side (numpy, joblib),
            # so each worker starts in milliseconds. Ignored if the server is already running
            # (started by warm_up with the step libraries preloaded).
            self._context.set_forkserver_preload(_forkserver_preload(step_libraries=False))
        self._threads = threads_per_worker(workers)
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=self.concurrency,
            mp_context=self._context,
            initializer=_init_pool_worker,
            initargs=(self._threads, os.getpid()),
        )

    def stop(self, *, kill: bool) -> None:
        """Shut the pool down; with ``kill`` terminate the workers instead of letting running steps end."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if not kill:
            executor.shutdown(wait=True)
            return
        # ProcessPoolExecutor cannot stop calls already running, so terminate its (private) process table.
        processes = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        if self._context.get_start_method() == "forkserver":
            # Last: a worker's exit status comes through the server, and with the server gone first
            # every worker looked already dead, was never terminated, and held the run's output open.
            kill_forkserver()


class DaskBackend:
    """Steps on a Dask cluster that shares no disk with the parent: ``options['address']``, or a new ``LocalCluster``.

    The dataset is scattered once (again if the cluster loses it); a step gets its needs' artifacts
    as Dask futures of their reports (worker to worker, never through the parent) or, for needs
    reused from checkpoints or lost by the cluster, as data the parent loaded and scattered. A step
    returns its artifact, log text and files; only the parent writes the run folder. A worker that
    dies mid-step has its step run again elsewhere by Dask's scheduler. The local cluster has
    ``workers`` single-threaded, non-daemonic worker processes.
    """

    remote = True
    in_process = False

    def __init__(self, *, workers: int, options: Mapping[str, Any]):
        _check_options("dask", options, ("address",))
        try:
            import distributed  # noqa: F401  (checked here so a missing extra fails before any work)
        except ImportError as exc:
            raise ConfigError("executor='dask' needs Dask's 'distributed' package: pip install \".[dask]\".") from exc
        self.concurrency = workers
        self._address = options.get("address")
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._reports: dict[str, Any] = {}  # step name -> Dask future of its report, kept for its dependents
        self._reused: dict[str, Any] = {}  # step name -> scattered artifact of a step reused from its checkpoint
        self._dataset: tuple[Any, Any] | None = None  # (the dataset, its scattered future)
        self._workerless_since: float | None = None  # monotonic time the cluster was first seen with no worker

    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self._address:
            check_scheduler(self._address)
            try:
                self._client = Client(self._address)
            except (OSError, TimeoutError, ValueError, TypeError) as exc:
                raise _address_error(self._address, exc) from exc
            try:
                self._wait_for_a_worker(self._client)
            except BaseException:  # no worker joined, or Ctrl-C meanwhile: the runner has nothing to stop yet
                self._client.close()
                self._client = None
                raise
        else:
            with dask.config.set({"distributed.worker.daemon": False}):
                self._cluster = LocalCluster(
                    n_workers=self.concurrency,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.WARNING,
                )
            self._client = Client(self._cluster)

    def _wait_for_a_worker(self, client: Client) -> None:
        """Return once the scheduler has a worker; wait up to :data:`WORKERS_WAIT_S` for one, saying so, then raise ConfigError.

        Without a worker the first task (the config check) waited for ever, with nothing shown.
        """
        if client.scheduler_info(n_workers=1)["workers"]:
            return
        log.warning("the Dask scheduler at %s has no workers yet: waiting up to %g s for a worker", self._address, WORKERS_WAIT_S)
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError as exc:
            raise ConfigError(
                f"The 'executor.address' config key names the Dask scheduler {self._address!r}, which has no workers: "
                f"none joined within {WORKERS_WAIT_S:g} s. Start one with: dask worker {self._address}"
            ) from exc

    def submit(self, task: Any, *, load_input: Callable[[str], Any], dataset: Any) -> Future:
        """Submit ``task`` with its inputs as Dask data; return a future of its report.

        ``load_input(name)`` loads a need's artifact in the parent (a need reused from its
        checkpoint); ``dataset`` is scattered to every worker the first time it is needed.
        """
        from bondexp.worker import execute_remote_step  # not at the top: bondexp.worker imports this module

        reports = {need: self._reports[need] for need in task.needs if _kept(self._reports.get(need))}
        try:
            for need in task.needs:
                if need not in reports and not _kept(self._reused.get(need)):
                    self._reused[need] = self._scatter(load_input(need))
            artifacts = {need: self._reused[need] for need in task.needs if need not in reports}
            scattered = self._scattered(dataset)
        except NoWorkers as exc:  # the step fails like any step: the run goes on to its table and resume command
            failed: Future = Future()
            failed.set_running_or_notify_cancel()
            failed.set_exception(exc)
            return failed
        key = f"bondexp-step-{task.name}-{uuid.uuid4().hex}"
        future = self._started_client().submit(execute_remote_step, task, reports, artifacts, scattered, key=key, pure=False)
        self._reports[task.name] = future
        return _as_concurrent_future(future)

    def call(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        """``fn(*args)`` on a worker of the cluster: checks needing the step libraries."""
        return _as_concurrent_future(self._started_client().submit(fn, *args, pure=False))

    def _scattered(self, dataset: Any) -> Any:
        if dataset is None:
            return None
        if self._dataset is None or self._dataset[0] is not dataset or not _kept(self._dataset[1]):
            self._dataset = (dataset, self._scatter(dataset))
        return self._dataset[1]

    def _scatter(self, value: Any) -> Any:
        """A future of ``value`` on the cluster (in a list: ``scatter`` splits a dict by its keys).

        Scattered data has no task to recompute it from, and the scheduler's Active Memory Manager
        soon keeps a single copy whatever ``broadcast`` asked for: when the worker holding it dies,
        the steps needing it are cancelled, the runner submits them again (:class:`InputsLost`)
        and :meth:`submit` scatters what the cluster no longer holds. With no worker left it waits
        up to :data:`WORKERS_WAIT_S` from when none was first seen (Dask's scatter would wait its
        own timeout at every call), then raises :class:`NoWorkers`, which :meth:`submit` hands back
        as the step's failure.
        """
        client = self._started_client()
        if client.scheduler_info(n_workers=1)["workers"]:
            self._workerless_since = None
        else:  # every worker is gone: wait for one a while (a nanny restarts its worker), then fail fast
            now = time.monotonic()
            self._workerless_since = self._workerless_since or now
            left = self._workerless_since + WORKERS_WAIT_S - now
            try:
                if left <= 0:
                    raise TimeoutError
                client.wait_for_workers(1, timeout=left)
            except TimeoutError:
                address = self._address or "<scheduler address>"
                raise NoWorkers(
                    f"The Dask cluster at {address} has had no workers for {WORKERS_WAIT_S:g} s, so this step's inputs "
                    f"could not be sent. Start workers (dask worker {address}), then resume."
                ) from None
            self._workerless_since = None
        try:
            return client.scatter([value], broadcast=True, hash=False)[0]
        except TimeoutError as exc:  # "No valid workers found": the last worker left meanwhile
            raise NoWorkers(
                f"The Dask cluster lost its last worker while this step's inputs were sent ({exc}). Start workers, then resume."
            ) from exc

    def _started_client(self) -> Client:
        if self._client is None:
            raise RuntimeError("DaskBackend.start() must run before steps are submitted")
        return self._client

    def stop(self, *, kill: bool) -> None:
        """Release this run's data on the cluster and close the client (and the local cluster if started here).

        With ``kill`` the steps still running are cancelled first.
        """
        client, cluster = self._client, self._cluster
        futures = list(self._reports.values())
        self._client = self._cluster = self._dataset = None
        self._reports.clear()
        self._reused.clear()
        if client is not None:
            if kill and futures:
                client.cancel(futures)
            client.close()
        if cluster is not None:
            cluster.close()


#: How long a run waits for a worker to join a scheduler that has none, before it stops with a ConfigError.
WORKERS_WAIT_S = 30.0

#: How long a run waits for the scheduler at ``executor.address`` to answer, when Dask's own
#: ``distributed.comm.timeouts.connect`` is left at Dask's default (30 s, and a port that accepts but
#: never speaks Dask held ``distributed.Client`` for ever).
CONNECT_TIMEOUT_S = 10.0
_CONNECT_KEY = "distributed.comm.timeouts.connect"


def connect_timeout() -> float:
    """Seconds to wait for a scheduler: Dask's ``distributed.comm.timeouts.connect`` if set, else :data:`CONNECT_TIMEOUT_S`."""
    import dask
    from dask.utils import parse_timedelta
    from distributed.config import defaults

    configured = dask.config.get(_CONNECT_KEY)
    if configured == defaults["distributed"]["comm"]["timeouts"]["connect"]:
        return CONNECT_TIMEOUT_S
    return float(parse_timedelta(configured, default="seconds"))


def check_scheduler(address: str) -> None:
    """Raise ConfigError naming ``executor.address`` unless a Dask scheduler answers at ``address`` within :func:`connect_timeout`.

    One connection, Dask's handshake and its ``identity`` call, then closed: a few milliseconds.
    ``distributed.Client`` bounds the connection by its ``timeout`` but not the handshake after it,
    so a port that accepts and never answers (a dashboard, another server) held it for ever; a
    malformed address raised ``ValueError`` or ``TypeError`` (``tls://`` with no security
    configured); a worker's or nanny's address failed inside the client with Dask's own
    "Worker.identity() got an unexpected keyword argument", after the data had loaded.
    """
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    timeout = connect_timeout()

    async def server_type() -> str:
        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            identity = await comm.read()
        finally:
            await comm.close()
        return str(identity.get("type")) if isinstance(identity, dict) else type(identity).__name__

    try:
        kind = asyncio.run(asyncio.wait_for(server_type(), timeout))
    except TimeoutError as exc:
        raise _address_error(address, exc, f"no Dask handshake within {timeout:g} s") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise _address_error(address, exc) from exc
    if kind != "Scheduler":
        raise ConfigError(
            f"The 'executor.address' config key must name a Dask scheduler. Got {address!r}, which is a Dask {kind}: "
            "give the scheduler's address, the one its `dask worker` command was given."
        )


def _address_error(address: str, exc: BaseException, what: str | None = None) -> ConfigError:
    """The ConfigError for a scheduler address that is malformed (ValueError, TypeError) or did not answer."""
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(
            f"The 'executor.address' config key must be a Dask scheduler's address, such as tcp://host:8786. Got {address!r}: {exc}"
        )
    return ConfigError(
        f"The 'executor.address' config key must name a running Dask scheduler. Got {address!r}, which did not answer: "
        f"{what or exc}. Check the host and port (the scheduler's, not its dashboard's); to wait longer than "
        f"{connect_timeout():g} s, set Dask's {_CONNECT_KEY} (e.g. DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s)."
    )


def _kept(dask_future: Any) -> bool:
    """Whether the cluster still holds (or is computing) ``dask_future``'s data; False for None."""
    return dask_future is not None and dask_future.status in ("pending", "finished")


def _as_concurrent_future(dask_future: Any) -> Future:
    """A ``concurrent.futures.Future`` that ends as ``dask_future`` does, for the runner's ``wait``.

    Dask cancels a step when the cluster lost one of its inputs; that becomes :class:`InputsLost`.
    """
    future: Future = Future()
    future.set_running_or_notify_cancel()

    def copy(done: Any) -> None:
        try:
            future.set_result(done.result())
        except CancelledError as exc:
            future.set_exception(InputsLost(str(exc)))
        except BaseException as exc:  # the step's own errors come back in the report; this is Dask's
            future.set_exception(exc)

    dask_future.add_done_callback(copy)
    return future


#: The environment and working folder of a forkserver :func:`launch_forkserver_early` launched.
_EARLY_LAUNCH: tuple[dict[str, str], str] | None = None


def launch_forkserver_early(argv: Sequence[str]) -> None:
    """Launch the local pool's forkserver before Hydra composes the config, when ``argv`` asks for a plain run.

    The forkserver imports scikit-learn (2.5-3 s) before the first step can start. Launched here,
    it does so while Hydra imports and composes (about 1 s) instead of after. A config file may
    still ask for no pool (``workers: 1``, Dask): :func:`warm_up` then kills it. It relaunches it
    if Hydra's job changed the environment or the working folder (``hydra.job.env_set``,
    ``hydra.job.chdir``), which the workers would otherwise miss.
    """
    global _EARLY_LAUNCH
    if _EARLY_LAUNCH is None and "forkserver" in multiprocessing.get_all_start_methods() and is_plain_run(argv):
        _EARLY_LAUNCH = (dict(os.environ), os.getcwd())
        _launch_forkserver()


def is_plain_run(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs steps on the local pool as far as the command line says.

    Not with a Hydra flag (``--help``, ``--cfg``, ``-m`` ...), nor with the overrides that start
    no pool in this process: ``dry_run``, ``resume``, ``workers=1``, another executor.
    """
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        key, value = key.lstrip("+~"), value.strip()
        if arg.startswith("-") or key in ("dry_run", "resume") or (key, value) == ("workers", "1"):
            return False
        if key == "executor" and value != "local":
            return False
    return True


def warm_up(name: str, *, workers: int) -> None:
    """Before the data loads, start what the steps will need.

    The local pool's forkserver is launched now with the step libraries preloaded (this call only
    launches it), so it imports scikit-learn in its own process while the parent loads the data,
    and no worker imports it again: each forks from a server that already has. A server
    :func:`launch_forkserver_early` launched is kept if this job's environment and working folder
    are still those it inherited. The parent itself never needs those libraries here: pool
    workers hand their artifacts back pickled (:class:`~bondexp.checkpoints.PickledArtifact`).
    A Dask cluster hands back objects, so beside it the parent imports the step libraries in a
    background thread: the first artifact would otherwise stall the scheduler loop for that
    import (3 s of CPU, 23 s at load average 17). Nothing to do for one in-process worker.
    """
    global _EARLY_LAUNCH
    if _EARLY_LAUNCH is not None and (name != "local" or workers < 2):
        kill_forkserver()  # the config file asked for no pool (`workers: 1`, Dask): no importing for nothing
    if name == "local" and workers < 2:
        return
    if name != "local":
        threading.Thread(target=_import_step_libraries, name="bondexp-import").start()
    elif "forkserver" in multiprocessing.get_all_start_methods():
        if _EARLY_LAUNCH is not None and _EARLY_LAUNCH != (dict(os.environ), os.getcwd()):
            from multiprocessing import forkserver

            # CPython has no public way to replace a running server; its own tests stop it so.
            # This waits for the old server to finish its imports (at most a few seconds).
            forkserver._forkserver._stop()  # type: ignore[attr-defined]
            _EARLY_LAUNCH = None
            log.info("workers' forkserver relaunched: this job's environment or working folder is not the one it started in")
        elif _EARLY_LAUNCH is not None:
            log.info("workers' forkserver: launched before the config was composed")
        _launch_forkserver()


def kill_forkserver() -> None:
    """Kill the workers' forkserver, if this process runs one; the next pool launches a new one.

    For a run that stops on Ctrl-C or a crash. In a run's first seconds the server is still
    importing the step libraries: it would hold the run's output open until it is done, then fork
    the worker a start interrupted mid-way had asked for, which fails with a ``FileNotFoundError``
    traceback (its pool's semaphores are gone) printed after the run's own message.
    """
    from multiprocessing import forkserver

    global _EARLY_LAUNCH
    server: Any = forkserver._forkserver  # its pid, lock and _stop_unlocked() are private, as the stop in warm_up
    # Called from a signal handler too: the main thread may be inside ensure_running() holding the
    # lock, and waiting for it would never end. The process is exiting then: the kill is enough.
    locked = server._lock.acquire(blocking=False)
    try:
        if server._forkserver_pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(server._forkserver_pid, signal.SIGKILL)
        if locked:
            server._stop_unlocked()  # as CPython's own tests stop a server: reap it, remove its socket
            _EARLY_LAUNCH = None
    finally:
        if locked:
            server._lock.release()


def _launch_forkserver() -> None:
    """Launch the forkserver with the step libraries preloaded; returns at once (a no-op when it runs).

    It is started with Ctrl-C blocked, as CPython starts its resource tracker: a new process keeps
    the blocked signal through its ``exec``, and :mod:`bondexp.forkserver_first` ignores it, then
    unblocks it. A Ctrl-C during the server's interpreter start-up, before that module ran, printed
    "Fatal Python error: init_import_site" and a traceback under the run's message (13 of 30 runs
    with Ctrl-C pressed as the server appeared, on a loaded machine; seen in CI). A Ctrl-C meanwhile
    waits for this process: blocked, not ignored, so none is lost.
    """
    from multiprocessing import forkserver, resource_tracker

    multiprocessing.get_context("forkserver").set_forkserver_preload(_forkserver_preload(step_libraries=True))
    # The server's start starts the resource tracker first if it is not running, and that start
    # unblocks SIGINT when it is done (it blocks it for its own child): so it comes first.
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _import_step_libraries() -> None:
    """Import what the steps need, in this (the run's) process: the forkserver's preload without its bracket."""
    for module in [*_WORKER, *_STEP_LIBRARIES]:
        importlib.import_module(module)


def _local_backend(*, workers: int, options: Mapping[str, Any]) -> InlineBackend | ProcessBackend:
    """``local``: in-process for one worker (no pool start-up), a process pool for more."""
    if workers == 1:
        _check_options("local", options, ("start_method",))
        return InlineBackend(workers=1, options={})
    return ProcessBackend(workers=workers, options=options)


EXECUTORS: dict[str, Callable[..., Any]] = {
    "serial": InlineBackend,
    "local": _local_backend,
    "dask": DaskBackend,
}


def make_backend(name: str, *, workers: int, options: Mapping[str, Any] | None = None) -> Any:
    """Build the executor backend registered as ``name``.

    Returns
    -------
    backend
        An object with ``concurrency`` (steps it runs at once), ``remote`` (steps run without
        the run folder), ``start()``, ``submit(task, load_input=, dataset=)`` returning a
        ``concurrent.futures.Future`` of the step's report, and ``stop(kill=bool)``.

    Raises
    ------
    ConfigError
        On an unknown name (listing the supported ones), an unknown or bad option (options
        set to ``None`` count as not given), or a missing extra.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"Unknown executor {name!r}. Supported executors: {sorted(EXECUTORS)}.")
    # An option set to None means "not set", so one config shape (address: null) serves every executor.
    given = {key: value for key, value in (options or {}).items() if value is not None}
    return EXECUTORS[name](workers=workers, options=given)


def _check_options(name: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for the {name!r} executor. Supported options: {list(allowed)}.")


def worker_label() -> str:
    """``host:pid`` of this process; the parent turns it into a short ``w<i>/<pid>`` label."""
    return f"{socket.gethostname()}:{os.getpid()}"
