"""The whole experiment, timed side by side in one run: workers=1 against workers=2, resume, sizes.

    python benchmarks/suite.py                 # default market (~50k observations)
    python benchmarks/suite.py --n 6000        # the 6,000-observation suite
    python benchmarks/suite.py --n 1000000 --only 2   # one size, one worker count

Each configuration runs `python -m bondexp` as a subprocess in a fresh run folder with a warm
feature cache (built once first, and timed), then resumes the finished run. Prints wall times,
the speedup and the peak resident memory of each run (the process and its workers).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], *, cwd: Path, cache: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB, the largest child) of one `python -m bondexp` run."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bondexp", "progress=false", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bondexp {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="observations (default: the synthetic preset)")
    parser.add_argument("--only", type=int, default=None, help="run one worker count only")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides")
    opts = parser.parse_args()
    size = [f"data.n_observations={opts.n}"] if opts.n else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        build, _ = run([*size, *opts.extra, "model=factor", "~steps.tune", "~steps.drift", "~steps.evaluate",
                        f"hydra.run.dir={tmp / 'warm'}"], cwd=tmp, cache=cache)
        print(f"feature cache built (with one small model) in {build:.1f} s")
        counts = [opts.only] if opts.only else [1, 2]
        walls = {}
        for workers in counts:
            run_dir = tmp / f"w{workers}"
            walls[workers], peak = run([*size, *opts.extra, f"workers={workers}", f"hydra.run.dir={run_dir}"],
                                       cwd=tmp, cache=cache)
            resume, _ = run([f"resume={run_dir}"], cwd=tmp, cache=cache)
            print(f"workers={workers}: {walls[workers]:6.1f} s   resume of the finished run {resume:4.1f} s   "
                  f"peak RSS {peak:.2f} GiB")
        if len(walls) == 2:
            print(f"speedup workers=2 / workers=1: {walls[1] / walls[2]:.2f}x")


if __name__ == "__main__":
    main()
