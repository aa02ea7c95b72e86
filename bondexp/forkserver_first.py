"""Imported first by the worker processes' forkserver: Ctrl-C is the run's to handle, and no collection while it imports.

A terminal's Ctrl-C reaches every process of the run, the forkserver too. The server ignores it
once its preload is done; while it imports the step libraries (the first seconds of every run) it
would die with a ``KeyboardInterrupt`` traceback printed under the run's own message. Ignoring it
from the start leaves the run the only one to answer. The run launches the server with Ctrl-C
blocked, for the interpreter's own start-up before this module (see
:func:`bondexp.executors._launch_forkserver`): it is unblocked here, once ignored, so the workers
the server forks can receive it. Workers set their own handling (see
:func:`bondexp.executors._init_pool_worker`).

``gc.disable()`` is the first half of what Python's ``gc`` documentation advises for a process that
forks (:mod:`bondexp.forkserver_last` is the rest): importing scikit-learn, SciPy and pandas
creates about 150,000 objects, and the collections they set off cost 11% of the import's CPU
(median user time 3.37 s -> 2.99 s, 8 runs each) for 1,800 unreachable objects at the end and the
same resident memory. The first step waits for this import.
"""

import gc
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C pending since the server's start is dropped
gc.disable()
