"""The walk-forward backtest preset, timed side by side in one run: workers=1 against workers=2.

    python benchmarks/backtest.py                        # the preset: 8 models x 12 origins = 96 refits
    python benchmarks/backtest.py --n 6000               # the same 96 refits on a 6,000-observation market

Each worker count runs `python -m bondexp +experiment=backtest ~steps.tune` (8 model steps, evaluate,
drift, 96 refits, the backtest step: 107 steps) as a subprocess in a fresh run folder with a warm
feature cache (built once first), workers=1 first, then workers=2. Printed for each:

- wall: the whole command (start-up, data, report files included) and the runner's wall (`wall_s`
  of results.json: the step graph alone);
- steps' own time: the sum of the steps' durations measured inside the workers;
- runner overhead a step, two ways:
  `graph`: (runner wall x workers - steps' own time) / steps, i.e. every second a worker slot was
  not running a step, idle tail and the parent's start-up of the pool included;
  `gap`: the mean (and median) time between a step's end and the start of the next step on the same
  worker (the parent collecting, checkpointing and submitting, and the worker unpickling the task),
  from the `started`/`ended` times each worker records; with 2 workers it also holds a worker's
  wait for a step the next one needs, so `latency` is the mean time from the latest end of any step
  to each start (the runner submits only when some step ends).
Goals (issue 12): speedup of the runner's wall 1.8, overhead under 0.1 s a step.
The steps' own time differs between the two when a step runs slower or faster with 2 BLAS/OpenMP
threads (workers=1) than with 1 (workers=2); the ratio is printed, since it moves the speedup.
On a machine loaded past its cores, two OpenMP threads of one step rarely run at once and every
barrier waits for a time slice: HistGradientBoosting on 25,000 rows took 21 s with 1 thread and
did not finish in 8 minutes with 2 at load average 23 on 2 cores. `--one-thread` pins both runs
to one thread a step (``OMP_NUM_THREADS=1``), so the ratio measures the runner's parallelism alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any


def run(args: list[str], *, cwd: Path, cache: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one `python -m bondexp` run (exits with its output if it fails)."""
    env = {**os.environ, **(env or {}), "BONDEXP_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bondexp", "progress=false", *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bondexp {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def dispatch_gaps(steps: dict[str, dict[str, Any]]) -> list[float]:
    """Seconds from each step's end to the start of the next step on the same worker."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for step in steps.values():
        if step["status"] == "ran" and step["started"] and step["ended"]:
            by_worker.setdefault(step["worker"], []).append((_seconds(step["started"]), _seconds(step["ended"])))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [start - previous_end for (_, previous_end), (start, _) in pairwise(spans)]
    return gaps


def start_latencies(steps: dict[str, dict[str, Any]]) -> list[float]:
    """Seconds from the latest end of any step to each step's start (steps started before any end are left out)."""
    spans = [(_seconds(s["started"]), _seconds(s["ended"])) for s in steps.values() if s["status"] == "ran" and s["started"] and s["ended"]]
    ends = sorted(end for _, end in spans)
    latencies = []
    for start, _ in spans:
        before = [end for end in ends if end <= start]
        if before:
            latencies.append(start - before[-1])
    return latencies


def measure(workers: int, common: list[str], *, tmp: Path, cache: Path, env: dict[str, str]) -> dict[str, float]:
    """Run the preset on ``workers`` and return its figures (see the module docstring)."""
    run_dir = tmp / f"w{workers}"
    wall = run([*common, f"workers={workers}", f"hydra.run.dir={run_dir}"], cwd=tmp, cache=cache, env=env)
    results = json.loads((run_dir / "results.json").read_text())
    steps = results["steps"]
    own = sum(s["duration_s"] for s in steps.values())
    gaps, latencies = dispatch_gaps(steps), start_latencies(steps)
    figures = {
        "wall": wall,
        "graph": results["wall_s"],
        "own": own,
        "steps": len(steps),
        "refits": sum("@" in name for name in steps),
        "overhead_graph": (results["wall_s"] * workers - own) / len(steps),
        "overhead_gap": statistics.mean(gaps),
        "gap_median": statistics.median(gaps),
        "gap_max": max(gaps),
        "latency": statistics.mean(latencies),
    }
    print(
        f"workers={workers}: {wall:7.1f} s wall, {figures['graph']:7.1f} s in the runner; {figures['steps']} steps "
        f"({figures['refits']} refits), steps' own time {own:7.1f} s; overhead a step: graph "
        f"{figures['overhead_graph']:.3f} s, gap {figures['overhead_gap']:.3f} s (median {figures['gap_median']:.3f} s, "
        f"largest {figures['gap_max']:.3f} s), latency {figures['latency']:.3f} s",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="observations (default: the synthetic preset's 50,000)")
    parser.add_argument("--origins", type=int, default=None, help="origins (default: the preset's 12)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides")
    parser.add_argument("--one-thread", action="store_true", help="one BLAS/OpenMP thread a step in both runs")
    opts = parser.parse_args()
    env = {"OMP_NUM_THREADS": "1"} if opts.one_thread else {}
    common = ["+experiment=backtest", "~steps.tune", *opts.extra]
    common += [f"data.n_observations={opts.n}"] if opts.n else []
    common += [f"backtest.origins={opts.origins}"] if opts.origins else []
    print(
        f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"overrides {common}; {env or 'threads: cores // workers'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        build = run(
            [*common, "model=factor", "backtest.origins=null", "~steps.drift", "~steps.evaluate", f"hydra.run.dir={tmp / 'warm'}"],
            cwd=tmp,
            cache=cache,
        )
        print(f"feature cache built (with one small model) in {build:.1f} s", flush=True)
        one, two = (measure(workers, common, tmp=tmp, cache=cache, env=env) for workers in (1, 2))
    print(
        f"speedup workers=2 / workers=1: {one['graph'] / two['graph']:.2f}x in the runner (goal 1.8), "
        f"{one['wall'] / two['wall']:.2f}x of the whole command; steps' own time workers=1 / workers=2: "
        f"{one['own'] / two['own']:.2f}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
