"""Batches spread over worker processes, their results handed back in submission order.

The workers are forked from the parent after it has loaded the run and the new file, so they
share the fitted models and the bond columns without pickling them (``state`` reaches them as
the pool initializer's argument, which a fork does not pickle); each task carries only row
bounds and a few arrays, and sends back its batch's columns. At most ``workers + 1`` batches
are in flight, so memory follows the batch size, not the file's. Each worker predicts with one
BLAS/OpenMP thread (``bondexp.steps.train.one_thread``), which also keeps OpenMP out
of the fork-safety trouble GNU libgomp has with a pool of threads inherited across ``fork``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_state: Any = None  # the worker's copy of the parent's state, set by the pool initializer


def _set_state(state: Any) -> None:
    global _state
    _state = state
    leave_ctrl_c_to_the_parent()


def leave_ctrl_c_to_the_parent() -> None:
    """A forked helper process's first act: ignore Ctrl-C, which the command answers (see :func:`forking`).

    A terminal's Ctrl-C reaches every process of the command: each worker and the file's reader
    printed a KeyboardInterrupt traceback under the command's own, and one that died in the middle
    of handing back its result left the command waiting for the rest of it, for good.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def forking() -> Iterator[None]:
    """Ctrl-C blocked while this thread submits to a pool that forks on its first task.

    A process forked before its initializer (:func:`leave_ctrl_c_to_the_parent`) ignores Ctrl-C
    would still answer one; blocked, it waits, and reaches the command when the block ends.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _timed_call(fn: Callable, args: tuple) -> tuple[Any, dict[str, float]]:
    return timed(fn, _state, *args)


def timed(fn: Callable, state: Any, *args) -> tuple[Any, dict[str, float]]:
    """``fn(state, *args, times)``'s result and ``times``: CPU seconds per phase that ``fn`` recorded with :func:`lap`."""
    times: dict[str, float] = {"_start": time.process_time()}
    result = fn(state, *args, times)
    times.pop("_start")
    return result, times


def lap(times: dict[str, float], phase: str) -> None:
    """Charge the CPU time since the previous lap (or the task's start) to ``phase``."""
    now = time.process_time()
    times[phase] = times.get(phase, 0.0) + now - times["_start"]
    times["_start"] = now


def ordered_map(fn: Callable, tasks: Iterable[tuple], *, state: Any, workers: int) -> Iterator[tuple[Any, dict[str, float]]]:
    """``(fn(state, *task, times), times)`` for each task, in order; ``workers`` forked processes (1: in-process).

    ``fn`` is a module-level function (sent to the workers by name). Fork is needed to share
    ``state``; where the platform lacks it the tasks run in-process.
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for task in tasks:
            yield timed(fn, state, *task)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_set_state, initargs=(state,)) as pool:
        pending: deque = deque()
        try:
            for task in tasks:
                with forking():
                    pending.append(pool.submit(_timed_call, fn, task))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
