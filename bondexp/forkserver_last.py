"""Imported last by the worker processes' forkserver: move what its preload created out of the collector's reach.

The forkserver imports the step libraries once, so every worker forks with them loaded.
``gc.freeze()`` after that import is what Python's ``gc`` documentation advises before ``fork()``:
the workers' collections no longer touch those objects, so their pages stay shared instead of
being copied; and the server, which ends when the run does, exits in milliseconds instead of
collecting scikit-learn, SciPy and pandas object by object for about 0.7 s while the run's output
pipe stays open. The collector, off since :mod:`bondexp.forkserver_first`, is then on again, for
the server and every worker it forks.

The server ends when the run's process does, and it holds the run's stdout and stderr: whoever
reads them (a pipe, ``| tee``, a CI log, ``benchmarks/suite.py``) waits for the server too. Its
interpreter's teardown (freeing the modules it imported) took 0.11-0.17 s after the run had
exited, so its last exit handler (the first to run) ends it at once, after flushing its output;
the server holds nothing else to release. Workers never run it: a process the server forks ends
with ``os._exit`` after its task.
"""

import atexit
import gc
import os
import sys

gc.freeze()
gc.enable()


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


atexit.register(_exit_now)
