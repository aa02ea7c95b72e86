"""Preloaded by a test into the workers' forkserver, before ``bondexp.forkserver_last``: it says when it is
imported, and when the server runs the exit handlers registered before that module's."""

import atexit
import sys


def _say_exit_handlers_ran() -> None:
    sys.stdout.write("forkserver: earlier exit handlers ran\n")
    sys.stdout.flush()


atexit.register(_say_exit_handlers_ran)
sys.stdout.write("forkserver: preloaded\n")
sys.stdout.flush()
