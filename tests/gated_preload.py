"""Preloaded by a test into the workers' forkserver: the server's imports last until the file named by
``BONDEXP_TEST_PRELOAD_GATE`` exists (at most 60 s), as scikit-learn's import holds a run's first seconds."""

import os
import time
from pathlib import Path

_gate = Path(os.environ["BONDEXP_TEST_PRELOAD_GATE"])
_deadline = time.monotonic() + 60
while not _gate.exists() and time.monotonic() < _deadline:
    time.sleep(0.02)
