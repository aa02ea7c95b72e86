"""Benchmark: `python -m bondexp.predict` on a million new observations through a run's eight models.

Writes a synthetic market of ``--n-observations`` rows (the run's own data config, another seed,
bond ids the run never saw) as Parquet in row groups, then times the predict command as a user
runs it, in a subprocess with its worker processes, and prints side by side: the CPU seconds of each
phase (from the Time section of predictions.md), the wall time, rows per second, the peak memory of
the largest process and of the whole process tree (sampled with psutil), and the CPU time from the
kernel (which says what a loaded machine's wall time hides). The goal is the design's: 60 s or
less, peak memory 2 GiB or less, on this 2-core machine. Below 1M rows it also prints an
extrapolation to 1M, marked as such.

Run: ``python benchmarks/predict.py --run outputs/<date>/<time> [--n-observations 1000000] [--workers 2]``
(the run must be a finished run of the default experiment, or any run on synthetic data).
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import TreeMemory
from omegaconf import OmegaConf

from bondexp.bondtable import BondTable
from bondexp.data import Market, load_market
from bondexp.data.files import write_market

EIGHT_MODELS = "[basic,enhanced,advanced,automl,regime,factor,tail_risk,bayesian]"
GOAL_SECONDS, GOAL_MIB = 60.0, 2048.0


def new_market_files(run_dir: Path, n_observations: int, folder: Path) -> dict:
    """A market like the run's, of ``n_observations`` rows, with another seed and new bond ids, as Parquet."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if data_cfg["source"] != "synthetic":
        raise SystemExit(f"The run {run_dir} trained on {data_cfg['source']} data; this benchmark needs a synthetic run.")
    data_cfg["n_observations"] = n_observations
    market, _ = load_market(data_cfg, seed=int(cfg.seed) + 1)
    bonds = BondTable({**market.bonds.data, "bond_id": market.bonds["bond_id"] + 10_000_000}, market.bonds.sectors)
    return write_market(Market(bonds, market.curves), folder, fmt="parquet")


def phase_times(markdown: str) -> dict:
    """CPU seconds per phase from the Time section of predictions.md."""
    section = markdown.split("## Time", 1)[1]
    return {m[1]: float(m[2]) for m in re.finditer(r"^\| ([^|]+?) \| ([0-9.]+) \| [0-9.]+% \|$", section, re.M)}


FIXED_PHASES = ("open the run",)  # costs that do not grow with the rows (for the extrapolation to 1M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run folder on synthetic data")
    parser.add_argument("--n-observations", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run_dir = Path(args.run).resolve()
    n = args.n_observations
    with tempfile.TemporaryDirectory(prefix="bondexp-predict-bench-") as tmp:
        start = time.perf_counter()
        files = new_market_files(run_dir, n, Path(tmp) / "data")
        print(f"wrote {n:,} observations as Parquet in {time.perf_counter() - start:.1f} s (not timed)")
        command = [
            sys.executable,
            "-m",
            "bondexp.predict",
            f"run={run_dir}",
            "data=parquet",
            *(f"data.{key}={path}" for key, path in files.items()),
            f"models={EIGHT_MODELS}",
            f"batch_rows={args.batch_rows}",
            f"workers={args.workers}",
            "progress=false",
            f"hydra.run.dir={Path(tmp) / 'out'}",
        ]
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        memory = TreeMemory(proc.pid)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        memory.stop()
        if proc.returncode != 0:
            raise SystemExit(f"predict failed (exit {proc.returncode}):\n{stderr}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        phases = phase_times((Path(tmp) / "out" / "predictions.md").read_text())
        size_mib = sum(p.stat().st_size for p in (Path(tmp) / "out").glob("predictions.*")) / 2**20
    load = os.getloadavg()
    mib = 2.0**20
    print(
        f"\nmachine load average (1, 5, 15 min) before: {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
        f"after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, on {os.cpu_count()} cores; {args.workers} worker processes"
    )
    total = sum(phases.values())
    print(f"\n{'phase (CPU, all processes)':<28}{'seconds':>10}{'share':>8}{'s per 1M rows':>16}")
    for phase, seconds in phases.items():
        per_million = seconds if phase in FIXED_PHASES else seconds * 1e6 / n
        print(f"{phase:<28}{seconds:>10.2f}{100 * seconds / total:>7.1f}%{per_million:>16.1f}")
    fixed = sum(phases.get(p, 0.0) for p in FIXED_PHASES)
    cpu_million = fixed + (cpu - fixed) * 1e6 / n
    print(f"{'all phases':<28}{total:>10.2f}{100.0:>7.1f}%")
    print(f"\n{'figure':<36}{'measured':>14}{'goal':>12}{'goal / measured':>18}")
    goal = f"{GOAL_SECONDS:>10.0f} s{GOAL_SECONDS / wall:>18.2f}" if n == 1_000_000 else "  (the goal is for 1,000,000 rows)"
    print(f"{'wall, 8 models, ' + f'{n:,} rows':<36}{wall:>12.1f} s{goal}")
    for label, peak in (("largest process", memory.largest), ("sum of RSS", memory.total), ("sum of PSS", memory.total_pss)):
        print(f"{'peak memory, ' + label:<36}{peak / mib:>10.0f} MiB{GOAL_MIB:>8.0f} MiB{GOAL_MIB * mib / peak:>18.2f}")
    print(f"{'CPU time (user + system)':<36}{cpu:>12.1f} s")
    print(f"{'rows per second (wall)':<36}{n / wall:>14,.0f}")
    print(f"{'output files':<36}{size_mib:>10.0f} MiB")
    if n != 1_000_000:
        print(
            f"\nEXTRAPOLATED to 1,000,000 rows (not measured): CPU {cpu_million:.0f} s (fixed {fixed:.1f} s + per-row costs "
            f"x {1e6 / n:.2f}); on {os.cpu_count()} idle cores at least {cpu_million / os.cpu_count():.0f} s wall "
            f"(goal {GOAL_SECONDS:.0f} s)"
        )
    else:
        print(f"\nCPU / cores: {cpu / os.cpu_count():.1f} s, the wall time this run would take on {os.cpu_count()} idle cores at best")


if __name__ == "__main__":
    main()
