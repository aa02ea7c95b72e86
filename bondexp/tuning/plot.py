"""The tuning history plot: each trial's validation RMSE, the running best and the untuned trial's value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def plot_history(artifact: Mapping[str, Any], path: Path) -> None:
    """Objective per complete trial, the running best, the untuned trial's value and where trials failed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = artifact["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if done:
        numbers = np.array([t["number"] for t in done])
        values = np.array([t["value"] for t in done])
        ax.scatter(numbers, values, s=22, color="tab:blue", label="trial (validation RMSE)")
        ax.step(numbers, np.minimum.accumulate(values), where="post", color="tab:green", label="best so far")
    if failed:  # a failed trial has no value: mark it along the bottom edge
        ax.scatter([t["number"] for t in failed], np.full(len(failed), 0.03), s=22, marker="x", color="tab:gray",
                   transform=ax.get_xaxis_transform(), label="failed trial")
    untuned = [t for t in done if t["untuned"]]
    if untuned:
        ax.axhline(untuned[0]["value"], color="tab:orange", linestyle="--", label="untuned parameters")
    if trials:  # the failed marks use axes coordinates for y, which autoscaling ignores
        ax.set_xlim(-0.5, max(t["number"] for t in trials) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective: validation RMSE")
    ax.set_title(f"Tuning {artifact['target']}: best {artifact['best_value']:.4f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
