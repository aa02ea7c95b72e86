"""The `bondexp` console script: what `python -m bondexp` does before Hydra's import, then its main().

`python -m bondexp` runs `bondexp/__main__.py` from its first line, so that file answers a Ctrl-C
and launches the forkserver before it imports Hydra (about 0.3-0.9 s). A console script imports
its module before calling it: pointed at `bondexp.__main__:main`, it printed Python's
KeyboardInterrupt traceback for a Ctrl-C during that import, and launched the forkserver only
after it. This module imports nothing heavy, so the script does the same as `python -m` first.
And as `python -m` does, it puts the current folder first on ``sys.path`` (:func:`import_from_here`), so a
model file's ``_target_: my_est.MyShrink`` finds ``my_est.py`` beside the command, in the run's
process and in the workers the forkserver forks (launched after, it takes the run's ``sys.path``).
It also holds the run's own Ctrl-C handler (:func:`ctrl_c`), which the runner asks whether a Ctrl-C
came whose exception library code swallowed (:func:`raise_lost_ctrl_c`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from bondexp.executors import kill_forkserver, launch_forkserver_early


def interrupted_while_importing(signum: int, frame: object) -> None:
    """Ctrl-C before :func:`bondexp.__main__.main` runs (Hydra's import): end as main does, without a
    traceback or a forkserver left importing."""
    kill_forkserver()
    print("\nInterrupted.", file=sys.stderr)
    raise SystemExit(130)


#: Whether :func:`ctrl_c` has run in this process: a Ctrl-C the run received, kept even if its exception was lost.
_ctrl_c_pressed = False


def ctrl_c(signum: int, frame: object) -> None:
    """The run's Ctrl-C handler: a ``KeyboardInterrupt`` as Python's own, remembered for :func:`raise_lost_ctrl_c`."""
    global _ctrl_c_pressed
    _ctrl_c_pressed = True
    raise KeyboardInterrupt


def raise_lost_ctrl_c() -> None:
    """Raise again the ``KeyboardInterrupt`` of a Ctrl-C that library code swallowed (a no-op if none came).

    CPython 3.11 can drop the exception a signal handler raises inside ``int(text)`` under ``except
    ValueError`` (1,737 of 5,998 tries here), and OmegaConf's YAML dump does that for every string of
    the config Hydra saves to ``.hydra/``: a Ctrl-C pressed then (1 run in 35 under load, and once in
    CI) was lost and the run went on to its end with exit 0. The run calls this before its data, its
    first step and on every tick of its scheduler loop.
    """
    if _ctrl_c_pressed:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then answer it as the handler before would: for writes that
    must land together (a tuning batch told back to its study).

    Only in the main thread, where Python runs signal handlers; elsewhere (a Dask worker's thread) the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


#: What a Ctrl-C prints once every step of the run has ended (:func:`hold_ctrl_c`).
OUTPUTS_FIRST = (
    "Ctrl-C: every step has finished; writing the run's outputs first (results.json, report.md, tracking). Ctrl-C again to stop now."
)
#: The Ctrl-Cs held since :func:`hold_ctrl_c` (None when not holding), and the handler it replaced.
_held: list[int] | None = None
_replaced: Any = None


def hold_ctrl_c() -> None:
    """From now on hold a Ctrl-C: the first prints :data:`OUTPUTS_FIRST`, a second one stops at once.

    For a run whose steps have all ended: a Ctrl-C then made it "interrupted" (exit 130 and "resume
    with") beside a results.json that said ok, or none, and no MLflow run, which takes seconds to
    log. What is left is its outputs, to be written whole. :func:`release_ctrl_c` ends the hold; a
    no-op outside the main thread, where Python runs no signal handler.
    """
    global _held, _replaced
    if _held is not None or threading.current_thread() is not threading.main_thread():
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)
        if len(held) > 1:
            raise KeyboardInterrupt
        print(f"\n{OUTPUTS_FIRST}", file=sys.stderr, flush=True)

    _held, _replaced = held, signal.signal(signal.SIGINT, hold)


def release_ctrl_c() -> bool:
    """Put back the handler :func:`hold_ctrl_c` replaced; return whether it held a Ctrl-C meanwhile."""
    global _held, _replaced
    if _held is None:
        return False
    signal.signal(signal.SIGINT, _replaced)
    held, _held, _replaced = bool(_held), None, None
    return held


def import_from_here() -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does (not under ``python -P`` or PYTHONSAFEPATH).

    A console script's ``sys.path`` starts with the script's own folder (the venv's ``bin/``), not
    the current one: a model module beside the command, which ``python -m bondexp`` imported, was
    refused by the script with "no module 'my_est' is installed".
    """
    if not getattr(sys.flags, "safe_path", False):  # the flag is Python 3.11's
        sys.path.insert(0, os.getcwd())


def main() -> None:
    """The `bondexp` script's entry point."""
    signal.signal(signal.SIGINT, interrupted_while_importing)
    import_from_here()  # before the forkserver's launch: it starts with this sys.path, and the workers with it
    launch_forkserver_early(sys.argv)
    from bondexp.__main__ import main as run

    run()
