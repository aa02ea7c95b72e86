"""The walk-forward backtest preset, timed side by side in one run: workers=1 against workers=2.

    python benchmarks/backtest.py                       # the preset: 8 models x 12 origins = 96 refits
    python benchmarks/backtest.py --origins 4 --n 20000 # a reduced variant

Each worker count runs `python -m bondexp +experiment=backtest ~steps.tune` as a subprocess in a
fresh run folder with a warm feature cache (built once first). Prints the wall time of each, the
speedup of the step graph (the runner's wall, `results.json`) and of the whole command, and the
runner's overhead a step: the run's busy worker time (wall x workers) minus
the steps' own durations, over the number of steps (with 2 workers it includes any idle tail).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], *, cwd: Path, cache: Path) -> float:
    """Wall seconds of one `python -m bondexp` run (exits with its output if it fails)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bondexp", "progress=false", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bondexp {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="observations (default: the synthetic preset)")
    parser.add_argument("--origins", type=int, default=None, help="origins (default: the preset's 12)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides")
    opts = parser.parse_args()
    common = ["+experiment=backtest", "~steps.tune", *opts.extra]
    common += [f"data.n_observations={opts.n}"] if opts.n else []
    common += [f"backtest.origins={opts.origins}"] if opts.origins else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        build = run([*common, "model=factor", "backtest.origins=null", "~steps.drift", "~steps.evaluate",
                     f"hydra.run.dir={tmp / 'warm'}"], cwd=tmp, cache=cache)
        print(f"feature cache built (with one small model) in {build:.1f} s")
        walls, graph_walls = {}, {}
        for workers in (1, 2):
            run_dir = tmp / f"w{workers}"
            walls[workers] = run([*common, f"workers={workers}", f"hydra.run.dir={run_dir}"], cwd=tmp, cache=cache)
            results = json.loads((run_dir / "results.json").read_text())
            graph_walls[workers] = results["wall_s"]
            steps = results["steps"].values()
            refits = sum("@" in name for name in results["steps"])
            busy = sum(s["duration_s"] for s in steps)
            overhead = (results["wall_s"] * workers - busy) / len(results["steps"])
            print(f"workers={workers}: {walls[workers]:6.1f} s wall ({results['wall_s']:.1f} s in the runner), "
                  f"{len(results['steps'])} steps of which {refits} refits, steps' own time {busy:.1f} s, "
                  f"runner overhead {overhead:.3f} s a step")
        print(f"speedup workers=2 / workers=1: {graph_walls[1] / graph_walls[2]:.2f}x in the runner (goal 1.8), "
              f"{walls[1] / walls[2]:.2f}x of the whole command (start-up, data and report files included)")


if __name__ == "__main__":
    main()
