"""What the user sees while a run goes: one progress bar (or plain lines).

The bar lives in the parent process only and is updated by the scheduler loop on every start and
finish, so it cannot stall on the first step. When stderr is not a terminal (CI, log files), plain
one-line events replace the bar; so they do, labelled, for a run that shares its terminal with
others (the jobs of a sweep running at once), where bars would overwrite each other.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, TypeGuard


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


class Progress:
    """Steps done out of the total, elapsed time, ETA and the steps running now.

    Parameters
    ----------
    total : int
        Number of steps in the run, reused ones included.
    done : int
        Steps already complete before any work (reused checkpoints).
    enabled : bool
        ``False`` shows nothing.
    stream : file, optional
        Where to write; defaults to ``sys.stderr``. A terminal gets a tqdm bar, anything
        else gets plain lines.
    label : str, optional
        Plain lines, each starting with this label, even on a terminal: for a run whose terminal
        other runs write to at the same time (``#0`` for a sweep's job 0).
    """

    def __init__(self, *, total: int, done: int = 0, enabled: bool = True, stream: TextIO | None = None, label: str | None = None):
        self.total = total
        self.done = done
        self.stream = sys.stderr if stream is None else stream
        self.label = label
        self.mode = None if not enabled else ("bar" if label is None and _is_terminal(self.stream) else "lines")
        self._bar = None
        self._t0 = time.perf_counter()
        self._redirect = None
        if self.mode == "bar":
            self._redirect = _ConsoleThroughTqdm(logging.getLogger(), bar_stream=self.stream)
            self._bar = _bar_class()(
                total=total,
                initial=done,
                file=self.stream,
                desc="bondexp",
                unit="step",
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]",
            )
        elif self.mode == "lines" and done:
            self._line(f"reusing {done} of {total} checkpoints")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the bar, drawn once more as it ends."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.restore()
            self._redirect = None

    def interrupted(self) -> None:
        """End the bar after a Ctrl-C: it stays as it stood, with the terminal's ``^C`` after it, and
        what follows starts on the next line. Closing it as usual would draw it once more."""
        if self._bar is not None:
            self.stream.write("\n")
            self._bar.leave = False  # tqdm then blanks the line it stands on: the empty one under the bar
        self.close()

    def started(self, name: str, *, running: Sequence[str], eta_s: float | None) -> None:
        """A step was handed to a worker."""
        if self.mode == "lines":
            self._line(f"start  {name}")
        self.refresh(running=running, eta_s=eta_s)

    def finished(self, name: str, *, status: str, duration_s: float | None, running: Sequence[str], eta_s: float | None) -> None:
        """A step ended (ran, failed or was skipped)."""
        self.done += 1
        if self.mode == "lines":
            took = "" if duration_s is None else f" in {duration_s:.2f} s"
            self._line(f"{status:<6} {name}{took} ({self.done}/{self.total})")
        if self._bar is not None:
            self._bar.set_postfix_str(_postfix(running, eta_s), refresh=False)
            self._bar.update(1)

    def refresh(self, *, running: Sequence[str], eta_s: float | None) -> None:
        """Redraw the bar's postfix (elapsed time moves even when no step ends)."""
        if self._bar is not None:
            self._bar.set_postfix_str(_postfix(running, eta_s), refresh=True)

    @contextlib.contextmanager
    def ticking(self, status: Callable[[], dict[str, Any]], *, every_s: float) -> Iterator[None]:
        """Redraw the bar every ``every_s`` seconds from a thread while the caller is busy.

        With ``workers=1`` the step runs inside the scheduler loop's submit, so the loop's own
        redraw waited for it and the bar's clock stood still. ``status()`` gives :meth:`refresh`'s
        arguments. The thread is stopped and joined on leaving, Ctrl-C included, so it never draws
        after the bar is closed.
        """
        if self._bar is None:
            yield
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(every_s):
                self.refresh(**status())

        thread = threading.Thread(target=tick, name="bondexp-bar", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _line(self, text: str) -> None:
        elapsed = _fmt_seconds(time.perf_counter() - self._t0)
        label = "" if self.label is None else f" {self.label}"
        print(f"[bondexp{label} {elapsed}] {text}", file=self.stream, flush=True)


def _bar_class() -> type:
    """tqdm's bar, two columns short of the terminal's width.

    A terminal echoes Ctrl-C as ``^C`` where the cursor is, at the bar's end: past a full-width bar
    it wrapped, and left a ``^`` on the bar's line and a ``C`` on the next.
    """
    from tqdm.auto import tqdm

    class Bar(tqdm):
        @property
        def format_dict(self) -> dict[str, Any]:
            shape = super().format_dict
            return {**shape, "ncols": max(1, shape["ncols"] - 2)} if shape.get("ncols") else shape

    return Bar


class _ConsoleThroughTqdm:
    """Route a logger's console handlers through ``tqdm.write`` while the bar is shown, so a log line
    does not tear the bar.

    tqdm's own ``logging_redirect_tqdm`` swaps each console handler for one of level NOTSET, so the
    terminal got every INFO line although Hydra's console handler is at WARNING; the stand-in here
    keeps the replaced handler's level, formatter and filters.
    """

    def __init__(self, logger: logging.Logger, *, bar_stream: TextIO):
        self.logger = logger
        self.original = list(logger.handlers)
        logger.handlers = [_TqdmWriteHandler.like(h, bar_stream=bar_stream) if _is_console_handler(h) else h for h in self.original]

    def restore(self) -> None:
        self.logger.handlers = self.original


class _TqdmWriteHandler(logging.StreamHandler):
    """A console handler that clears the bar, prints and redraws the bar.

    The bar is found by its own stream: ``tqdm.write`` finds it through ``sys.stdout`` and
    ``sys.stderr`` when the two streams differ (the console on stdout, the bar on stderr), and an
    in-process step (``workers=1``) points those at its log, so a warning then tore the bar.
    """

    bar_stream: TextIO

    @classmethod
    def like(cls, handler: logging.StreamHandler, *, bar_stream: TextIO) -> _TqdmWriteHandler:
        twin = cls(handler.stream)
        twin.setLevel(handler.level)
        twin.setFormatter(handler.formatter)
        twin.filters = list(handler.filters)
        twin.bar_stream = bar_stream
        return twin

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            with tqdm.external_write_mode(file=self.bar_stream):
                self.stream.write(self.format(record) + self.terminator)
                self.flush()
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


def _is_console_handler(handler: logging.Handler) -> TypeGuard[logging.StreamHandler]:
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)


def _postfix(running: Sequence[str], eta_s: float | None) -> str:
    parts = [] if eta_s is None else [f"ETA {_fmt_seconds(eta_s)}"]
    if running:
        parts.append("running: " + ", ".join(running))
    return "; ".join(parts)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
