"""The `bondexp` console script: what `python -m bondexp` does before Hydra's import, then its main().

`python -m bondexp` runs `bondexp/__main__.py` from its first line, so that file answers a Ctrl-C
and launches the forkserver before it imports Hydra (about 0.3-0.9 s). A console script imports
its module before calling it: pointed at `bondexp.__main__:main`, it printed Python's
KeyboardInterrupt traceback for a Ctrl-C during that import, and launched the forkserver only
after it. This module imports nothing heavy, so the script does the same as `python -m` first.
"""

from __future__ import annotations

import signal
import sys

from bondexp.executors import kill_forkserver, launch_forkserver_early


def interrupted_while_importing(signum: int, frame: object) -> None:
    """Ctrl-C before :func:`bondexp.__main__.main` runs (Hydra's import): end as main does, without a
    traceback or a forkserver left importing."""
    kill_forkserver()
    print("\nInterrupted.", file=sys.stderr)
    raise SystemExit(130)


def main() -> None:
    """The `bondexp` script's entry point."""
    signal.signal(signal.SIGINT, interrupted_while_importing)
    launch_forkserver_early(sys.argv)
    from bondexp.__main__ import main as run

    run()
