"""The few named exceptions bondexp raises; every message says what was expected, what came, and what to fix."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Iterable, Sequence


class BondexpError(Exception):
    """Base class: anything bondexp raises on purpose."""


class ConfigError(BondexpError, ValueError):
    """A config value is wrong; the message names the key and the bad value."""


class DataValidationError(BondexpError, ValueError):
    """Input data breaks the schema; the message names the reason, the column, the count and the first rows."""


class PricingError(BondexpError, ValueError):
    """A bond cannot be priced as asked (maturity not after settlement, unknown frequency, ...)."""


class GraphError(BondexpError):
    """The step graph is invalid: unknown need, duplicate name, cycle or empty graph."""


class RunLockedError(BondexpError):
    """Another live process is using this run folder."""


class CheckpointError(BondexpError):
    """A checkpoint's bytes do not match the sha256 its manifest recorded (or it has no manifest)."""


class StepSkipped(BondexpError):
    """Raised by a step that has nothing to do (tune with nothing tunable): the runner records it as
    ``skipped`` with this reason, and the steps that need it run without its artifact."""


class InputsLost(BondexpError):
    """A cluster forgot a step's inputs before the step could run (the worker holding their last copy
    died): the runner submits the step again, and the backend sends its inputs afresh."""


class NoWorkers(BondexpError):
    """A Dask cluster has had no worker for a while, so a step's inputs cannot be sent: the step fails like any step."""


class RunFolderError(BondexpError):
    """A run folder cannot serve predictions: a checkpoint fails its sha256, library versions differ, or a model is missing."""


#: ``scheme://user:password@``: a database or server URL's password, up to the last ``@`` before the host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"`]*:)[^\s/'\"`]+@")


def hide_passwords(text: str) -> str:
    """``text`` with every URL's password shown as ``***`` (``postgresql://u:***@host/db``), the user kept.

    For what bondexp shows or writes of a URL a user gave (``tune.storage``, ``tracking.uri``): the
    terminal, results.json, report.md, MLflow's params and tags.
    """
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def did_you_mean(name: str, known: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` with the up to ``n`` names of ``known`` closest to ``name``; empty when none is
    close (``difflib``'s similarity ``cutoff``).

    A name is as close as its closest ``_``-separated part of four letters or more, too: ``durration``
    means ``modified_duration`` more than ``rating``, which difflib's whole-name ratio put first.
    """
    import difflib

    def closeness(candidate: str) -> float:
        parts = [candidate, *(part for part in candidate.split("_") if len(part) >= 4 and part != candidate)]
        return max(difflib.SequenceMatcher(None, name, part).ratio() for part in parts)

    scored = sorted(((closeness(c), c) for c in dict.fromkeys(known)), key=lambda sc: -sc[0])
    close = [candidate for score, candidate in scored if score >= cutoff][:n]
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def check_keys(section: str, keys: Iterable[str], known: Sequence[str]) -> None:
    """Raise ConfigError naming the first of ``keys`` not among ``known`` by its full key ``<section>.<key>``.

    For a config section whose keys bondexp defines: a key added to it (Hydra's ``+key=value`` adds
    one to any section) is read by no step, so its value was ignored, or failed the step that
    checked its slice after the models had trained.
    """
    unknown = [str(key) for key in keys if key not in known]
    if unknown:
        raise ConfigError(
            f"The '{section}' config keys must be among {list(known)}. Got {unknown} instead: "
            f"'{section}.{unknown[0]}' is read by no step.{did_you_mean(unknown[0], known)}"
        )


def reader_went_away() -> int:
    """The exit code of a command whose output's reader stopped reading (``| head``): 141, quietly, as ``git log | head``.

    Standard output is pointed at /dev/null (Python's own recipe), so flushing it at exit raises no
    second BrokenPipeError.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def end_logged_output_with_its_reader(argv: Sequence[str]) -> None:
    """For Hydra's ``--info`` (``-i``): a reader that stops early ends the command quietly, as it does any other.

    Hydra logs ``--info`` line by line through a stdout handler it makes for it. With ``| head``,
    :mod:`logging` caught each line's ``BrokenPipeError`` and printed a "--- Logging error ---"
    traceback for it, about 150 of them, and the command exited 0. For ``--info`` (a command that
    runs nothing else) a handler's ``BrokenPipeError`` is raised on instead, to the entry point,
    which answers it with :func:`reader_went_away`.
    """
    if not any(arg in ("--info", "-i") or arg.startswith("--info=") for arg in argv[1:]):
        return
    handle_error = logging.Handler.handleError

    def raise_broken_pipe(handler: logging.Handler, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise  # the error the handler is handling: its emit() calls this inside its `except`
        handle_error(handler, record)

    logging.Handler.handleError = raise_broken_pipe  # type: ignore[method-assign,assignment]
