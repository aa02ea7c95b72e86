"""Imported first by the worker processes' forkserver: Ctrl-C is the run's to handle, not the server's.

A terminal's Ctrl-C reaches every process of the run, the forkserver too. The server ignores it
once its preload is done; while it imports the step libraries (the first seconds of every run) it
would die with a ``KeyboardInterrupt`` traceback printed under the run's own message. Ignoring it
from the start leaves the run the only one to answer. Workers set their own handling (see
:func:`bondexp.executors._init_pool_worker`).
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
