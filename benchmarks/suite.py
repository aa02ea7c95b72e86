"""The whole experiment end to end, side by side in one run: cold and warm feature cache, workers, resume.

    python benchmarks/suite.py                 # default market (~50k observations), workers=1 and 2
    python benchmarks/suite.py --n 6000        # the 6,000 observations the old pipeline took 767 s on
    python benchmarks/suite.py --n 1000000 --only 2 --cold-only   # one size, one worker count, one run

Each configuration runs `python -m bondexp` as a subprocess in a fresh run folder, first with an
empty feature cache (cold), then with the cache that run filled (warm), then resumes the warm run.
For each run it prints three phases, from results.json's step times and the process's wall time:

    start   the command's start to the first step starting (imports, data, worker start-up)
    graph   the first step's start to the last step's end
    end     the last step's end to the command's exit (report files, plots, results.json)

with the ratio of the 767 s the replaced pipeline took on 6,000 observations to the run's wall
time, and a calibration line: the goals are scaled by how long a fixed pure-Python loop takes
here against the reference machine. It also prints the graph's lower bound, max(critical path,
work / workers) from the steps' own durations and needs (the checkpoint manifests), and the graph
phase over it (goal 1.15): how close the runner's ordering comes to the best any order could do.
And the memory, sampled with psutil over the command's process tree (the forkserver's workers and
tune's trial processes included): the peak RSS of the largest process and the peak sum of PSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from calibration import REFERENCE_LOOP_S, calibration_line, loop_seconds
from memory import TreeMemory

OLD_PIPELINE_S = 767.0  # the pipeline bondexp replaces, on its default 6,000 observations
GOALS_S = {  # (observations or None for the default market, workers) -> wall-time goal, cold cache
    (6000, 2): 7.7,
    (None, 2): 25.0,
    (1_000_000, 2): 300.0,
}
GOAL_START_S = 1.0  # the first step starts within this of the command
GOAL_END_S = 0.5  # the last step's end to the exit
GOAL_SPEEDUP = 1.8  # workers=2 against workers=1, default market
GOAL_BOUND = 1.15  # the graph phase over its lower bound
GOAL_LARGEST_MIB = 3072.0  # no process above 3 GiB (the goal is set at 1,000,000 observations)


def _epoch(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text).timestamp()


def lower_bound(run_dir: Path, steps: dict, workers: int) -> float | None:
    """max(critical path, work / workers) over the steps that ran, from their durations and needs; None if none ran."""
    ran = {name: s["duration_s"] for name, s in steps.items() if s["status"] == "ran" and s["duration_s"] is not None}
    if not ran:
        return None
    path: dict[str, float] = {}
    for name in steps:  # results.json lists the steps in graph order, so needs come first
        if name in ran:
            manifest = json.loads((run_dir / "checkpoints" / f"{name}.json").read_text())
            path[name] = ran[name] + max((path.get(need, 0.0) for need in manifest.get("needs", {})), default=0.0)
    return max(max(path.values()), sum(ran.values()) / workers)


def run(args: list[str], *, cwd: Path, cache: Path, workers: int) -> dict:
    """One `python -m bondexp` run: wall seconds and the three phases (None where no step ran)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    started_at = time.time()
    start = time.perf_counter()
    command = [sys.executable, "-m", "bondexp", "progress=false", *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    memory.stop()
    exited_at = started_at + wall
    if proc.returncode != 0:
        sys.exit(f"bondexp {' '.join(args)} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    run_dir = next(Path(a.split("=", 1)[1]) for a in args if a.startswith(("hydra.run.dir=", "resume=")))
    by_name = json.loads((run_dir / "results.json").read_text())["steps"]
    steps = by_name.values()
    starts = [t for t in (_epoch(s["started"]) for s in steps) if t is not None]
    ends = [t for t in (_epoch(s["ended"]) for s in steps) if t is not None]
    phases = {"start": None, "graph": None, "end": None}
    if starts and ends:
        phases = {"start": min(starts) - started_at, "graph": max(ends) - min(starts), "end": exited_at - max(ends)}
    mib = 2**20
    return {
        "wall": wall,
        **phases,
        "bound": lower_bound(run_dir, by_name, workers),
        "largest_mib": memory.largest / mib,
        "pss_mib": memory.total_pss / mib,
    }


def _fmt(seconds: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if seconds is None else f"{seconds:{width}.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="observations (default: the synthetic preset)")
    parser.add_argument("--only", type=int, default=None, help="run one worker count only")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides")
    parser.add_argument("--cold-only", action="store_true", help="the cold run only (no warm run, no resume)")
    opts = parser.parse_args()
    size = [f"data.n_observations={opts.n}"] if opts.n else []
    loop_s = loop_seconds()
    rows = []
    walls: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for workers in [opts.only] if opts.only else [1, 2]:
            cache = tmp / f"cache{workers}"  # each worker count starts cold
            for label in ("cold",) if opts.cold_only else ("cold", "warm"):
                run_dir = tmp / f"w{workers}-{label}"
                result = run([*size, *opts.extra, f"workers={workers}", f"hydra.run.dir={run_dir}"], cwd=tmp, cache=cache, workers=workers)
                rows.append((f"workers={workers} {label}", result))
                if label == "cold":
                    walls[workers] = result["wall"]
            if not opts.cold_only:
                rows.append((f"workers={workers} resume", run([f"resume={run_dir}"], cwd=tmp, cache=cache, workers=workers)))
        loop_after = loop_seconds()
    load = os.getloadavg()
    print(
        f"{opts.n or 'default'} observations {' '.join(opts.extra)}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    print(calibration_line((loop_s + loop_after) / 2) + f" (before {loop_s:.2f} s, after {loop_after:.2f} s)")
    scale = (loop_s + loop_after) / 2 / REFERENCE_LOOP_S
    print(
        f"{'run':<18} {'wall s':>7} {'start':>7} {'graph':>7} {'end':>7} {'bound':>7} {'graph/bound':>11} {'767 s / wall':>13} "
        f"{'largest MiB':>12} {'sum PSS MiB':>12}"
    )
    for label, r in rows:
        ratio = f"{r['graph'] / r['bound']:11.2f}" if r["bound"] and r["graph"] is not None else f"{'-':>11}"
        print(
            f"{label:<18} {_fmt(r['wall'])} {_fmt(r['start'])} {_fmt(r['graph'])} {_fmt(r['end'])} {_fmt(r['bound'])} "
            f"{ratio} {OLD_PIPELINE_S / r['wall']:13.1f} {r['largest_mib']:12.0f} {r['pss_mib']:12.0f}"
        )
    print(f"bound: max(critical path, work / workers) of the steps that ran; graph/bound goal {GOAL_BOUND}")
    print(f"memory: peak RSS of the largest process (goal {GOAL_LARGEST_MIB:.0f} MiB) and peak sum of PSS over the process tree")
    print(f"goals scaled by {scale:.2f}: start {GOAL_START_S * scale:.2f} s, end {GOAL_END_S * scale:.2f} s", end="")
    for workers, wall in walls.items():
        goal = GOALS_S.get((opts.n, workers))
        if goal is not None:
            print(f"; workers={workers} cold {goal * scale:.1f} s (measured {wall:.1f} s)", end="")
    print()
    if len(walls) == 2:
        print(f"speedup workers=2 / workers=1 (cold): {walls[1] / walls[2]:.2f} (goal {GOAL_SPEEDUP})")
    if opts.n != 6000:
        print("(the 767 s figure is the old pipeline on 6,000 observations: compare with --n 6000)")


if __name__ == "__main__":
    main()
