"""Benchmark of the data layer at scale: generate, price, validate, write and read back a market.

    python benchmarks/synthetic.py                     # 1,000,000 observations over 120 months
    python benchmarks/synthetic.py --n-observations 200000 --no-files

Prints one table: stage, seconds, rows per second, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from bondexp.bondtable import validate
from bondexp.data import load_market
from bondexp.data.files import write_market
from bondexp.data.synthetic import generate_market


def timed(rows, label, results, func, *args, **kwargs):
    start = time.perf_counter()
    value = func(*args, **kwargs)
    results.append((label, time.perf_counter() - start, rows))
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-observations", type=int, default=1_000_000)
    parser.add_argument("--n-months", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-files", action="store_true", help="skip the CSV/Parquet write and read")
    args = parser.parse_args()

    n = args.n_observations
    results = []
    market = timed(n, "generate_market (pricing included)", results, generate_market,
                   n_observations=n, n_months=args.n_months, seed=args.seed)  # fmt: skip
    timed(n, "  of which: curves.fair_value alone", results, market.curves.fair_value, market.bonds)
    timed(n, "validate (the generated table)", results, validate, market.bonds)
    if not args.no_files:
        with tempfile.TemporaryDirectory() as folder:
            for fmt in ("csv", "parquet"):
                paths = timed(n, f"write_market ({fmt})", results, write_market, market, f"{folder}/{fmt}", fmt=fmt)
                cfg = {"source": fmt, **{key: str(path) for key, path in paths.items()}}
                timed(n, f"load_market ({fmt}: read, convert, validate)", results, load_market, cfg, seed=0)

    width = max(len(label) for label, _, _ in results)
    print(f"{'stage':<{width}}  {'seconds':>8}  {'rows/s':>12}")
    for label, seconds, rows in results:
        print(f"{label:<{width}}  {seconds:8.2f}  {rows / seconds:12,.0f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory: {peak:.2f} GiB ({n:,} observations, {len(market.curves.dates)} months)")


if __name__ == "__main__":
    main()
