"""Does tuning help? The tuned model against the untuned one on the stationary market, seeds 0, 1, 2.

    python benchmarks/tuning.py                       # default market (~50k observations), the ml models
    python benchmarks/tuning.py --extra data=small    # the reduced market of tests/test_tuning_runs.py

Each seed runs `python -m bondexp +experiment=stationary model=ml ~steps.drift seed=S` in a fresh run
folder and reads the tuned target's validation RMSE (untuned and tuned, from tuning.json) and test
RMSE (untuned and tuned, from the leaderboard), and tune's own seconds. Prints one row per seed,
the mean test-RMSE change and the tuned/untuned ratio, and the load average (timings depend on it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_seed(seed: int, extra: list[str], *, tmp: Path) -> dict:
    """One stationary run; the tuned target's validation and test RMSE, untuned and tuned."""
    run_dir = tmp / f"seed{seed}"
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(tmp / "cache")}
    args = ["+experiment=stationary", "model=ml", "~steps.drift", "progress=false", f"seed={seed}", *extra, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "bondexp", *args], cwd=tmp, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bondexp {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    tuning = json.loads((run_dir / "tuning.json").read_text())
    board = {row["model"]: float(row["rmse"]) for row in csv.DictReader((run_dir / "leaderboard.csv").open())}
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    target = tuning["target"]
    return {
        "seed": seed,
        "target": target,
        "val_untuned": tuning["untuned_value"],
        "val_tuned": tuning["val_rmse"],
        "test_untuned": board[target],
        "test_tuned": board[f"{target}_tuned"],
        "tune_s": steps["tune"]["duration_s"],
        "n_trials": steps["tune"]["metrics"]["n_trials"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides (data=small, tune.n_trials=...)")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'seed':>4} {'target':<10} {'val untuned':>11} {'val tuned':>9} {'test untuned':>12} {'test tuned':>10} "
            f"{'trials':>6} {'tune s':>7}"
        )
        for seed in (0, 1, 2):
            r = run_seed(seed, opts.extra, tmp=Path(tmp))
            rows.append(r)
            print(
                f"{r['seed']:>4} {r['target']:<10} {r['val_untuned']:>11.4f} {r['val_tuned']:>9.4f} "
                f"{r['test_untuned']:>12.4f} {r['test_tuned']:>10.4f} {r['n_trials']:>6} {r['tune_s']:>7.1f}",
                flush=True,
            )
    untuned = sum(r["test_untuned"] for r in rows) / len(rows)
    tuned = sum(r["test_tuned"] for r in rows) / len(rows)
    print(f"mean test RMSE untuned {untuned:.4f}, tuned {tuned:.4f}: ratio tuned/untuned {tuned / untuned:.4f}")
    print(f"validation never worse: {all(r['val_tuned'] <= r['val_untuned'] for r in rows)}")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
