"""Benchmark: `python -m bondexp.predict` on a million new observations through a run's eight models.

Writes a synthetic market of ``--n-observations`` rows (the run's own data config, another seed,
bond ids the run never saw) as Parquet in row groups, then times the predict command as a user
runs it, in a subprocess, and reads its peak resident memory and CPU time from the kernel (the CPU
time says what a loaded machine's wall time hides). The goal is the
design's: 60 s or less, peak memory 2 GiB or less, on this 2-core machine.

Run: ``python benchmarks/predict.py --run outputs/<date>/<time> [--n-observations 1000000]``
(the run must be a finished run of the default experiment, or any run on synthetic data).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run folder on synthetic data")
    parser.add_argument("--n-observations", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    args = parser.parse_args()
    run_dir = Path(args.run).resolve()
    with tempfile.TemporaryDirectory(prefix="bondexp-predict-bench-") as tmp:
        start = time.perf_counter()
        files = new_market_files(run_dir, args.n_observations, Path(tmp) / "data")
        print(f"wrote {args.n_observations:,} observations as Parquet in {time.perf_counter() - start:.1f} s (not timed)")
        command = [sys.executable, "-m", "bondexp.predict", f"run={run_dir}", "data=parquet",
                   *(f"data.{key}={path}" for key, path in files.items()), f"models={EIGHT_MODELS}",
                   f"batch_rows={args.batch_rows}", "progress=false", f"hydra.run.dir={Path(tmp) / 'out'}"]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"predict failed (exit {proc.returncode}):\n{proc.stderr}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mib, cpu = usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
        size_mib = sum(p.stat().st_size for p in (Path(tmp) / "out").glob("predictions.*")) / 2**20
    load = os.getloadavg()
    print(f"\nmachine load average (1, 5, 15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print(f"{'figure':<28}{'measured':>14}{'goal':>12}{'goal / measured':>18}")
    print(f"{'wall, 8 models':<28}{wall:>12.1f} s{GOAL_SECONDS:>10.0f} s{GOAL_SECONDS / wall:>18.2f}")
    print(f"{'peak resident memory':<28}{peak_mib:>10.0f} MiB{GOAL_MIB:>8.0f} MiB{GOAL_MIB / peak_mib:>18.2f}")
    print(f"{'CPU time (user + system)':<28}{cpu:>12.1f} s")
    print(f"{'rows per second':<28}{args.n_observations / wall:>14,.0f}")
    print(f"{'output files':<28}{size_mib:>10.0f} MiB")


if __name__ == "__main__":
    main()
