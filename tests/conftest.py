"""Shared fixtures: a small in-memory Dataset for unit tests of steps, and a composed, shrunk config; which of a
module's tests a session runs; the processes of a run's group still running."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bondexp.feature_names import FEATURES
from bondexp.features import Dataset


def make_toy_dataset(n_bonds: int = 60, n_months: int = 30, seed: int = 0) -> Dataset:
    """A panel with a learnable, regime-dependent residual; for tests that must not price a market."""
    rng = np.random.default_rng(seed)
    months = np.arange(n_months)
    regime_by_month = (np.sin(months / 4.0) > 0.6).astype(int) + (np.sin(months / 4.0) > 0.9)
    bond = np.repeat(np.arange(n_bonds), n_months)
    month = np.tile(months, n_bonds)
    n = len(bond)
    regime = regime_by_month[month]
    static = {
        "coupon_rate": rng.uniform(0.01, 0.08, n_bonds)[bond],
        "frequency": rng.choice([1, 2, 4, 12], n_bonds, p=[0.1, 0.7, 0.1, 0.1])[bond],
        "day_count": rng.integers(0, 2, n_bonds)[bond],
        "rating": rng.integers(0, 7, n_bonds)[bond],
        "sector": rng.integers(0, 5, n_bonds)[bond],
        "log_issue_size": rng.normal(6.0, 1.0, n_bonds)[bond],
    }
    ttm = np.maximum(rng.uniform(1, 30, n_bonds)[bond] - month / 12.0, 0.1)
    cols = dict(static)
    cols["time_to_maturity"] = ttm
    cols["age"] = month / 12.0 + rng.uniform(0, 3, n_bonds)[bond]
    cols["fair_value"] = 100 + rng.normal(0, 5, n)
    cols["yield_at_fair"] = 0.03 + 0.01 * regime + rng.normal(0, 0.002, n)
    cols["modified_duration"] = ttm * 0.8
    cols["convexity"] = ttm**2 * 0.7
    cols["credit_spread"] = 0.005 * (1 + cols["rating"]) * (1 + regime)
    level = 0.03 + 0.01 * regime_by_month + rng.normal(0, 0.001, n_months)
    cols["curve_level"] = level[month]
    cols["curve_slope"] = (0.01 - 0.005 * regime_by_month)[month]
    cols["curve_curvature"] = rng.normal(0, 0.002, n_months)[month]
    cols["market_credit_spread"] = (0.01 + 0.01 * regime_by_month)[month]
    truth = (
        -0.3 * (cols["log_issue_size"] - 6.0) * (1 + regime) + 0.05 * cols["modified_duration"] * (regime > 0) + 0.2 * (cols["sector"] == 2)
    )
    persistent = np.zeros(n)
    for m in range(1, n_months):
        idx = month == m
        persistent[idx] = 0.8 * persistent[month == m - 1] + rng.normal(0, 0.3, n_bonds)
    scale = 0.2 * (1 + regime)
    y = truth + persistent + scale * rng.standard_t(5, n) / np.sqrt(5 / 3)
    prev = np.full(n, np.nan)
    prev[month > 0] = np.roll(y, 1)[month > 0]  # rows are bond-major, so the roll is the same bond's last month
    cols["prev_residual"] = np.nan_to_num(prev)
    cols["has_prev_residual"] = np.isfinite(prev).astype(float)
    X = np.column_stack([np.asarray(cols[name], dtype=np.float64) for name in FEATURES])
    order = np.lexsort((bond, month))
    X, y, bond, month, regime, truth, scale = (a[order] for a in (X, y, bond, month, regime, truth, scale))
    prev_expect = np.nan_to_num(0.8 * X[:, FEATURES.index("prev_residual")] * 0.5)
    cut1, cut2 = int(n_months * 0.6), int(n_months * 0.8)
    splits = {
        "train": np.flatnonzero(month < cut1),
        "validation": np.flatnonzero((month >= cut1) & (month < cut2)),
        "test": np.flatnonzero(month >= cut2),
    }
    obs_date = (np.datetime64("2020-01-31", "M") + month).astype("datetime64[D]")
    meta = {
        "obs_date": obs_date,
        "bond_id": bond,
        "rating": X[:, FEATURES.index("rating")].astype(np.int8),
        "sector": X[:, FEATURES.index("sector")].astype(np.int16),
        "fair_value": X[:, FEATURES.index("fair_value")],
        "market_price": X[:, FEATURES.index("fair_value")] + y,
        "oracle_regime": regime,
        "oracle_noise_scale": scale,
        "oracle_adjustment": truth,
        "oracle_prediction": truth + prev_expect,
    }
    return Dataset(
        fingerprint=f"toy-{seed}",
        feature_names=FEATURES,
        X=X,
        y=y,
        splits=splits,
        meta=meta,
        sectors=tuple(f"sector{i}" for i in range(5)),
    )


@pytest.fixture(scope="session")
def toy_dataset() -> Dataset:
    return make_toy_dataset()


def needed_by(request: pytest.FixtureRequest, *tests: str) -> bool:
    """Whether this session runs any of the requesting module's tests named ``tests`` (any parameters): a
    fixture that starts a module's whole runs together starts only the ones its selected tests read."""
    return any(item.module is request.module and getattr(item, "originalname", item.name) in tests for item in request.session.items)


def group_running(pgid: int) -> list[str]:
    """The command lines of group ``pgid``'s processes still running. Zombies left for init to reap do not
    count, nor processes exiting (no command line left), nor multiprocessing's resource tracker, which
    ends by itself once the run's end of its pipe closes."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            command = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(group) == pgid and state != "Z" and command and "resource_tracker" not in command:
            running.append(command)
    return running


def hide_package(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``importlib.util.find_spec(name)`` say ``name`` is not installed, as bondexp's checks ask it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
