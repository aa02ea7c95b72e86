"""How fast this machine is now, against the one where the goals were measured.

Machines of the same kind here differ by up to two times, and a shared machine is slower still
under load, so the benchmarks print this calibration and scale their goals by it.
"""

from __future__ import annotations

import time

#: Seconds of :func:`loop` on the machine where the issues' goals (767 s pipeline, 1 s --help, ...) were set.
REFERENCE_LOOP_S = 1.1


def loop() -> int:
    """The fixed pure-Python loop of the issue: ``s = 0; for i in range(10_000_000): s += i``."""
    s = 0
    for i in range(10_000_000):
        s += i
    return s


def loop_seconds(repeat: int = 3) -> float:
    """Best of ``repeat`` timings of :func:`loop` (the best is the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - start)
    return best


def calibration_line(seconds: float) -> str:
    return (
        f"calibration: the fixed loop took {seconds:.2f} s here against {REFERENCE_LOOP_S} s on the reference "
        f"machine; goals below are scaled by {seconds / REFERENCE_LOOP_S:.2f}"
    )
