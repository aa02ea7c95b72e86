"""Runner benchmark: 8 unequal CPU-bound independent steps plus a dependent tail, on 1 and N workers.

Prints the makespans, the speedup, the lower bound max(critical path, total work / workers), the
ratio makespan / lower bound, and the runner's own overhead. Goals on 2 cores: speedup >= 1.8,
ratio <= 1.1, overhead < 0.2 s per step.

    python benchmarks/runner.py [--unit-seconds 0.1] [--workers 2]

The N-worker run is done twice: cold (no recorded durations, declaration order) and warm (ordered
longest-expected-first from the durations the earlier runs recorded).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from bondexp.graph import Step, build_graph
from bondexp.results import RunResult
from bondexp.runner import run_graph

UNITS = (6, 16, 3, 12, 8, 14, 4, 10)  # unequal costs, deliberately not sorted
TAIL_UNITS = 2


def burn(config, inputs, ctx):
    """Single-threaded pure-Python busy loop of ``config['iterations']`` steps."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    acc = 0
    for i in range(config["iterations"]):
        acc = (acc + i * i) % 1_000_003
    # cpu / wall below 1 means the step waited for a core: other load on the machine.
    share = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    return {"acc": acc, "metrics": {"iterations": config["iterations"], "cpu_share": share}}


def iterations_per_second() -> float:
    """Calibrate :func:`burn` on this machine (best of three short runs)."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        burn({"iterations": 200_000}, {}, None)
        best = max(best, 200_000 / (time.perf_counter() - t0))
    return best


def make_graph(unit_iterations: int):
    # The step functions live in this script; worker processes re-import it as __main__.
    steps = [Step(f"s{i}", "__main__.burn", config={"iterations": u * unit_iterations}) for i, u in enumerate(UNITS)]
    steps.append(Step("tail", "__main__.burn", needs=tuple(s.name for s in steps), config={"iterations": TAIL_UNITS * unit_iterations}))
    return build_graph(steps)


def timed_run(graph, run_dir: Path, workers: int, durations: Path) -> tuple[float, float, RunResult]:
    t_call = time.time()
    t0 = time.perf_counter()
    result = run_graph(graph, run_dir=run_dir, workers=workers, data_fingerprint="bench", progress=False, durations_path=durations)
    wall = time.perf_counter() - t0
    assert result.ok, result.summary_table()
    return wall, t_call, result


def overhead(result: RunResult, t_call: float, wall: float) -> dict[str, float]:
    """Where the time not spent inside steps went: pool start-up, gaps between steps on a worker, wind-down."""
    steps = sorted(result.steps.values(), key=lambda s: s.started)
    by_worker: dict[str, list] = {}
    for s in steps:
        by_worker.setdefault(s.worker, []).append(s)
    gaps = [b.started - a.ended for row in by_worker.values() for a, b in pairwise(row)]
    first = steps[0].started - t_call
    last = max(s.ended for s in steps)
    return {
        "startup_s": first,
        "mean_gap_s": sum(gaps) / len(gaps) if gaps else 0.0,
        "max_gap_s": max(gaps, default=0.0),
        "wind_down_s": (t_call + wall) - last,
        "per_step_s": (wall - sum(s.duration_s for s in steps) / len(by_worker)) / len(steps),
    }


def cpu_share(result: RunResult) -> float:
    """Work-weighted share of wall time the steps actually had a core."""
    steps = result.steps.values()
    return sum(s.metrics["cpu_share"] * s.duration_s for s in steps) / sum(s.duration_s for s in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-seconds", type=float, default=0.1, help="seconds of work per cost unit")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    unit_iterations = int(iterations_per_second() * args.unit_seconds)
    graph = make_graph(unit_iterations)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        durations = tmp / "durations.json"
        serial_wall, t1, serial = timed_run(graph, tmp / "w1", 1, durations)
        durations.unlink()
        cold_wall, tc, cold = timed_run(graph, tmp / "cold", args.workers, durations)
        warm_wall, tw, warm = timed_run(graph, tmp / "warm", args.workers, durations)

    def bound(result: RunResult) -> tuple[float, float, float]:
        d = {n: s.duration_s for n, s in result.steps.items()}
        work = sum(d.values())
        critical = max(d[f"s{i}"] for i in range(len(UNITS))) + d["tail"]
        return work, critical, max(critical, work / args.workers)

    print(
        f"{len(UNITS)} independent steps of {UNITS} units + tail of {TAIL_UNITS}, "
        f"unit ~{args.unit_seconds:.2f} s ({unit_iterations} iterations)\n"
    )
    header = (
        f"{'run':<18}{'makespan':>10}{'work':>9}{'crit.path':>11}{'lower bd':>10}{'ratio':>8}"
        f"{'speedup':>9}{'startup':>9}{'mean gap':>10}{'per step':>10}{'cpu/wall':>10}"
    )
    print(header)
    print("-" * len(header))
    for label, wall, t_call, result, n in (
        ("workers=1", serial_wall, t1, serial, 1),
        (f"workers={args.workers} cold", cold_wall, tc, cold, args.workers),
        (f"workers={args.workers} warm", warm_wall, tw, warm, args.workers),
    ):
        work, critical, _ = bound(result)
        lower = max(critical, work / n)
        o = overhead(result, t_call, wall)
        print(
            f"{label:<18}{wall:>9.2f}s{work:>8.2f}s{critical:>10.2f}s{lower:>9.2f}s{wall / lower:>8.3f}"
            f"{serial_wall / wall:>9.2f}{o['startup_s']:>8.3f}s{o['mean_gap_s']:>9.4f}s{o['per_step_s']:>9.4f}s"
            f"{cpu_share(result):>10.2f}"
        )
    print("\nratio = makespan / max(critical path, work / workers), from this run's step durations;")
    print("speedup = workers=1 makespan / this makespan; startup = call to first step start;")
    print("mean gap = idle time on a worker between two of its steps; per step = (makespan - work/workers) / steps;")
    print("cpu/wall = CPU time / wall time inside the steps (below 1: they waited for a core, the machine is busy).")


if __name__ == "__main__":
    main()
