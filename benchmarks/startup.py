"""Start-up of the commands that do no work, side by side with the import of Hydra alone.

    python benchmarks/startup.py                      # makes a finished default run first (a minute or more)
    python benchmarks/startup.py --run outputs/2026-11-29/10-00-00   # time the resume of a finished run you have
    python benchmarks/startup.py --repeat 7

Each repetition runs every command once, in turn, so load on a shared machine falls on all of
them alike; the table gives the median and the fastest of each. Goals (`--help` under 1 s, the
resume of a finished default run under 1.5 s) are scaled by the calibration loop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from calibration import REFERENCE_LOOP_S, calibration_line

GOALS_S = {"--help": 1.0, "resume of a finished run": 1.5}


def timed(argv: list[str], *, cwd: Path, env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def finished_default_run(folder: Path, *, env: dict) -> Path:
    """Run the default experiment once into ``folder`` and return it."""
    print(f"making a finished default run in {folder} ...", flush=True)
    seconds, _ = timed([sys.executable, "-m", "bondexp", "progress=false", f"hydra.run.dir={folder}"], cwd=folder.parent, env=env)
    print(f"  done in {seconds:.1f} s", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a finished run folder to resume (default: make one)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every command")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "BONDEXP_CACHE_DIR": os.environ.get("BONDEXP_CACHE_DIR", str(tmp / "cache"))}
        run_dir = opts.run.resolve() if opts.run else finished_default_run(tmp / "finished", env=env)
        results = json.loads((run_dir / "results.json").read_text())
        if not results.get("ok"):
            sys.exit(f"{run_dir} is not a finished run (results.json says ok=false)")
        bondexp = [sys.executable, "-m", "bondexp"]
        commands = {
            "calibration loop": [sys.executable, "-c", "from calibration import loop; loop()"],
            "import hydra (alone)": [sys.executable, "-c", "import hydra, omegaconf"],
            "--help": [*bondexp, "--help"],
            "--cfg job": [*bondexp, "--cfg", "job"],
            "dry_run=true": [*bondexp, "dry_run=true", f"hydra.run.dir={tmp / 'dry'}"],
            "resume of a finished run": [*bondexp, f"resume={run_dir}", "progress=false"],
        }
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(opts.repeat):
            for name, argv in commands.items():
                seconds, cpu_seconds = timed(argv, cwd=tmp, env=env)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    loop_s = statistics.median(wall.pop("calibration loop"))
    cpu.pop("calibration loop")
    scale = loop_s / REFERENCE_LOOP_S
    hydra_s = statistics.median(wall["import hydra (alone)"])
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; {opts.repeat} repetitions")
    print(calibration_line(loop_s) + " (the loop ran in turn with the commands)")
    print(f"{'command':<26} {'median s':>9} {'fastest s':>10} {'CPU s':>6} {'x hydra':>8} {'goal s':>8}")
    for name, values in wall.items():
        goal = GOALS_S.get(name)
        goal_text = f"{goal * scale:8.2f}" if goal else f"{'':>8}"
        print(
            f"{name:<26} {statistics.median(values):9.2f} {min(values):10.2f} {statistics.median(cpu[name]):6.2f} "
            f"{statistics.median(values) / hydra_s:8.2f} {goal_text}"
        )


if __name__ == "__main__":
    main()
