"""The drift step: has the test period moved away from the data the models learned from?

Each feature gets the test that suits how it is observed, train against test and month by month:

* **observation features** (one value per row): the population stability index (PSI) on quantile
  bins of the training split and a two-sample Kolmogorov-Smirnov test, plus a level-shift test of
  the feature's monthly cross-sectional mean (``level``) and standard deviation (``scale``);
* **categorical code features** (``Dataset.categorical``): PSI on the category shares, and a
  chi-square test of the 2 x categories count table (``scipy.stats.chi2_contingency``) in KS's
  place: KS needs an ordering, and rating or sector codes have none that matters;
* **market-state features** (``Dataset.market_features``, one value per month): the level-shift
  test and a one-sided volatility test of the month-on-month changes
  (:func:`volatility_test`). A dozen test months cannot fill ten quantile bins, so PSI is noise
  there; a stress or crisis shows as larger monthly moves even when the level stays inside the
  training range, and differencing makes the changes nearly independent, so the test stays honest.

The level-shift test (:func:`level_shift_test`) exists because months are autocorrelated: a
persistent but stationary factor spends long stretches away from its mean, and a test that treats
months as independent calls that drift. It fits an AR(1) to the training months (bias-corrected,
then one standard error more persistent), takes the variance of "test mean minus training mean"
from that AR(1)'s covariance at the real month distances (so the validation gap counts), and reads
the p-value from Student's t with the effective number of training months.

PSI is ``sum((q - p) * ln(q / p))`` over bins, ``p`` the training shares, ``q`` the test shares. A
bin empty on either side gets the share ``psi_floor`` and the shares are renormalised to sum to 1,
so PSI stays finite and an empty bin counts as a large but bounded difference.

KS and chi-square count **bonds, not rows**: a bond observed for 30 months is not 30 draws of its
coupon, so each sample's size is scaled by its distinct bonds per row (statistic from
``scipy.stats.ks_2samp``, p-value from scipy's large-sample ``kstwo`` at the effective sizes).
The features' KS / chi-square / market-state level p-values are one family, and the month-level
tests (observation features' level and scale, market-state volatility) a second; each is corrected with Holm's step-down method
(default) or Bonferroni, written here with numpy. Monthly p-values are corrected across features
within each month.

Status (``ok`` / ``warn`` / ``alert``):

* categorical: **alert** if ``psi >= psi_alert`` or (corrected p < ``ks_alpha`` and
  ``psi >= psi_warn``); **warn** if ``psi >= psi_warn`` or corrected p < ``ks_alpha``.
* observation: **alert** if ``psi >= psi_warn`` and the level or scale shift is significant after
  correction; **warn** if ``psi >= psi_warn``, KS is significant, or a level or scale shift is
  significant before correction. Rows of one month share the market, so a feature priced off the
  curve (fair value, yield, spread) has a large PSI whenever the persistent market sits away from
  its training average; only the month-level test can tell that from a change, so only it alerts.
* market state: **alert** if the level or volatility test's corrected p < ``ks_alpha``, **warn**
  if an uncorrected one is; both tests are scaled by the factor's own month-to-month variation,
  so significance is the effect size.

Models are compared against their **validation** predictions, not training: training errors are
in-sample, so a flexible model (boosting, forests) would look as if it had drifted on any new data.
Validation is out of sample and just before the test period, so larger absolute errors there
mean the world moved, and the monthly RMSE shows a model going stale. The error test is one-sided
KS (are the test errors stochastically larger?): a model doing better in a calm test period is not
stale. Model p-values are corrected across models. A model **alerts** when its errors grew
(corrected p < ``ks_alpha``) and **warns** when they grew before correction or its predictions'
PSI reaches ``psi_warn`` (it is being asked about inputs unlike validation's).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import numpy as np
from scipy import stats

from bondexp.errors import ConfigError
from bondexp.features import Dataset, dataset_for

CORRECTIONS = ("holm", "bonferroni", "none")
#: Monthly series of an observation feature tested for a shift: its cross-sectional mean and sd.
PARTS = ("level", "scale")
STATUS_COLORS = {"ok": "tab:green", "warn": "tab:orange", "alert": "tab:red"}
#: Largest AR(1) coefficient the market-state test uses, so a near unit root keeps a finite scale.
MAX_PHI = 0.99


def population_stability_index(
    reference: np.ndarray, current: np.ndarray, *, n_bins: int = 10, psi_floor: float = 1e-4
) -> float:
    """PSI of ``current`` against ``reference`` on ``n_bins`` quantile bins of ``reference``.

    Returns
    -------
    float
        The index (0 = same shares); NaN when either sample has no finite value.
    """
    reference, current = _finite(reference), _finite(current)
    if not (len(reference) and len(current)):
        return float("nan")
    edges = quantile_edges(reference, n_bins=n_bins)
    n_cells = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=n_cells)
    cur_counts = np.bincount(np.searchsorted(edges, current, side="right"), minlength=n_cells)
    return float(psi_from_counts(ref_counts, cur_counts, psi_floor=psi_floor))


def quantile_edges(reference: np.ndarray, *, n_bins: int) -> np.ndarray:
    """Distinct interior bin edges at the ``n_bins`` quantiles of ``reference`` (ties merge bins)."""
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray, *, psi_floor: float) -> np.ndarray:
    """PSI from bin counts; ``current_counts`` may be (..., bins) for many samples at once.

    Shares below ``psi_floor`` are raised to it and renormalised. Returns NaN where a sample is empty.
    """
    def shares(counts):
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.maximum(counts / total, psi_floor)
        return share / share.sum(axis=-1, keepdims=True)

    p, q = shares(reference_counts), shares(current_counts)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def correct_pvalues(pvalues: np.ndarray, *, method: str = "holm") -> np.ndarray:
    """Family-wise corrected p-values (``holm``, ``bonferroni`` or ``none``) along axis 0.

    Each column of a 2-D input is its own family; NaN entries are not tested and stay NaN.

    Returns
    -------
    ndarray
        Adjusted p-values, same shape, capped at 1, compared directly with the significance level.

    Raises
    ------
    ConfigError
        If ``method`` is unknown.
    """
    if method not in CORRECTIONS:
        raise ConfigError(f"The 'drift.correction' config key must be one of {list(CORRECTIONS)}. Got {method!r} instead.")
    p = np.asarray(pvalues, dtype=np.float64)
    tested = np.isfinite(p)
    m = tested.sum(axis=0)
    if method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.where(tested, np.minimum(p * m, 1.0), np.nan)
    order = np.argsort(p, axis=0, kind="stable")  # NaN sorts last
    rank = np.arange(p.shape[0]).reshape((-1,) + (1,) * (p.ndim - 1))
    stepped = np.take_along_axis(p, order, axis=0) * (m - rank)
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.minimum(np.fmax.accumulate(stepped, axis=0), 1.0), axis=0)
    return np.where(tested, out, np.nan)


def level_shift_test(
    reference: np.ndarray, reference_months: np.ndarray, current: np.ndarray, current_months: np.ndarray
) -> Dict[str, Any]:
    """Test whether a monthly series' level in ``current`` months differs from its ``reference`` months.

    An AR(1) is fitted to the reference months: ``phi`` is the lag-1 autocorrelation plus Kendall's
    bias correction ``(1 + 3 phi) / n`` (short samples underestimate persistence), then raised by
    one standard error ``sqrt((1 - phi**2) / n)`` and capped at ``MAX_PHI``: the variance of a mean
    climbs steeply with ``phi`` and the plain estimate made stationary AR(1)s with phi 0.7-0.95
    "shift" in 11-22% of simulated 43 + 14 month samples at the 5% level (3-10% with the raise).
    The stationary variance is the innovation variance over ``1 - phi**2`` (or the plain sample
    variance if larger). The variances of "current mean minus reference mean" and of each
    current month minus the reference mean follow from the AR(1) covariance ``var * phi**|s - t|``
    at the actual month numbers, so gaps between the periods count. The scale itself is estimated
    from few effectively independent months, so p-values come from Student's t with
    ``n_eff - 1`` degrees of freedom (at least 2), ``n_eff = n (1 - phi) / (1 + phi)``; with it the
    simulated false-positive rate at the 0.0026 level (5% Holm-corrected over 19 features) stays
    at 0-0.4% for phi 0.3-0.9, while a 2 sd shift of a phi = 0.3 series is found 93-95% of the time.

    Returns
    -------
    dict
        ``z``, two-sided ``pvalue``, ``phi``, ``df``, ``sd`` (stationary), ``shift`` (mean
        difference), and ``monthly_z``, ``monthly_pvalue`` arrays, one per current month. NaN
        p-values when the reference has fewer than 3 months.
    """
    x = np.asarray(reference, dtype=np.float64)
    s = np.asarray(reference_months, dtype=np.int64)
    t = np.asarray(current_months, dtype=np.int64)
    current = np.asarray(current, dtype=np.float64)
    shift = float(current.mean() - x.mean())
    nan_months = np.full(len(t), np.nan)
    if len(x) < 3:
        return {"z": float("nan"), "pvalue": float("nan"), "phi": float("nan"), "df": float("nan"),
                "sd": float("nan"), "shift": shift, "monthly_z": nan_months, "monthly_pvalue": nan_months}
    d = x - x.mean()
    step = np.diff(s) == 1
    lagged, lead = d[:-1][step], d[1:][step]
    sum_sq = float(np.sum(d**2))
    rho = float(np.sum(lead * lagged) / sum_sq) if sum_sq > 0 else 0.0
    phi = float(np.clip(rho + (1 + 3 * rho) / len(x), 0.0, MAX_PHI))
    phi = float(min(phi + np.sqrt((1 - phi**2) / len(x)), MAX_PHI))
    innovation = float(np.mean((lead - phi * lagged) ** 2)) if step.any() else sum_sq / len(x)
    variance = max(innovation / (1 - phi**2), sum_sq / (len(x) - 1))
    ref_ref = np.mean(phi ** np.abs(s[:, None] - s[None, :]))
    cur_ref = np.mean(phi ** np.abs(t[:, None] - s[None, :]), axis=1)
    cur_cur = np.mean(phi ** np.abs(t[:, None] - t[None, :]))
    var_mean = variance * (cur_cur - 2 * cur_ref.mean() + ref_ref)
    var_month = variance * (1.0 - 2 * cur_ref + ref_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = shift / np.sqrt(var_mean)
        monthly_z = (current - x.mean()) / np.sqrt(var_month)
    tiny = 1e-9 * (abs(x.mean()) + np.sqrt(variance))  # differences at rounding level are no shift
    z = 0.0 if abs(shift) <= tiny else z
    monthly_z = np.where(np.abs(current - x.mean()) <= tiny, 0.0, monthly_z)
    df = max(len(x) * (1 - phi) / (1 + phi) - 1, 2.0)
    return {
        "z": float(z),
        "pvalue": float(2 * stats.t.sf(abs(z), df)),
        "phi": phi,
        "df": df,
        "sd": float(np.sqrt(variance)),
        "shift": shift,
        "monthly_z": monthly_z,
        "monthly_pvalue": 2 * stats.t.sf(np.abs(monthly_z), df),
    }


def volatility_test(
    reference: np.ndarray, reference_months: np.ndarray, current: np.ndarray, current_months: np.ndarray
) -> Dict[str, float]:
    """One-sided F test: are a monthly series' month-on-month changes more volatile in ``current``?

    Differencing removes the persistent level, so the changes of even a near unit-root AR(1) are
    close to independent and a variance test stays honest on a dozen months. One-sided, because a
    market calmer than training moves inside what the models saw, while a stress or crisis shows
    as larger moves. Only changes between consecutive months count.

    Returns
    -------
    dict
        ``ratio`` (sd of current changes over sd of reference changes) and ``pvalue``; NaN when
        either side has fewer than 2 changes.
    """
    def changes(values, months):
        values, months = np.asarray(values, dtype=np.float64), np.asarray(months, dtype=np.int64)
        return np.diff(values)[np.diff(months) == 1]

    ref, cur = changes(reference, reference_months), changes(current, current_months)
    if len(ref) < 2 or len(cur) < 2:
        return {"ratio": float("nan"), "pvalue": float("nan")}
    ref_var, cur_var = ref.var(ddof=1), cur.var(ddof=1)
    if ref_var == 0:
        return {"ratio": float("inf") if cur_var > 0 else 1.0, "pvalue": 0.0 if cur_var > 0 else 1.0}
    return {
        "ratio": float(np.sqrt(cur_var / ref_var)),
        "pvalue": float(stats.f.sf(cur_var / ref_var, len(cur) - 1, len(ref) - 1)),
    }


def status_of(psi: float, pvalue: float, *, psi_warn: float, psi_alert: float, ks_alpha: float) -> str:
    """``"alert"``, ``"warn"`` or ``"ok"`` from a PSI and a corrected p-value (rule in the module docstring)."""
    significant = bool(np.isfinite(pvalue) and pvalue < ks_alpha)
    psi = psi if np.isfinite(psi) else 0.0
    if psi >= psi_alert or (significant and psi >= psi_warn):
        return "alert"
    return "warn" if psi >= psi_warn or significant else "ok"


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _by_month(values: np.ndarray, month: np.ndarray, n_months: int) -> list:
    """``values`` split into one array per month code (0 .. n_months-1), without a pass per month."""
    order = np.argsort(month, kind="stable")
    return np.split(values[order], np.cumsum(np.bincount(month, minlength=n_months))[:-1])


def _ks_pvalue(
    reference: np.ndarray, current: np.ndarray, *, shares: Tuple[float, float] = (1.0, 1.0), larger: bool = False
) -> float:
    """Two-sample KS p-value with each sample counted as ``len * share`` independent draws.

    ``shares`` are the samples' distinct bonds per row: a bond seen in 30 months is not 30 draws of
    its coupon. The statistic is ``scipy.stats.ks_2samp``'s; the p-value is the distribution scipy
    uses for large samples at ``n = n1 n2 / (n1 + n2)`` with those effective sizes: ``kstwo`` for
    the two-sided test, ``exp(-2 n D**2)`` for ``larger=True`` (is ``current`` stochastically larger?).
    """
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    alternative = "greater" if larger else "two-sided"
    statistic = stats.ks_2samp(reference, current, alternative=alternative, method="asymp").statistic
    n1, n2 = max(len(reference) * shares[0], 1.0), max(len(current) * shares[1], 1.0)
    n = n1 * n2 / (n1 + n2)
    if larger:
        return float(min(np.exp(-2.0 * n * statistic**2), 1.0))
    return float(stats.kstwo.sf(statistic, max(round(n), 1)))


def _chi2_pvalue(counts: np.ndarray, *, shares: Tuple[float, float] = (1.0, 1.0)) -> float:
    """p-value of a 2 x categories count table, each row scaled by its distinct bonds per row.

    Returns 1 when only one category occurs, NaN for an empty row.
    """
    counts = counts[:, counts.sum(axis=0) > 0] * np.asarray(shares, dtype=np.float64)[:, None]
    if (counts.sum(axis=1) == 0).any():
        return float("nan")
    if counts.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(counts).pvalue)


def _sample_drift(
    reference: np.ndarray, current: np.ndarray, month: np.ndarray, n_months: int, *,
    categorical: bool, n_bins: int, psi_floor: float, shares: Tuple[float, float],
) -> Tuple[float, float, np.ndarray, np.ndarray]:
    """``(psi, p, monthly psi, monthly p)`` of one row-level variable (raw p-values, uncorrected).

    ``shares``: distinct bonds per row of the reference and of the whole current sample; within one
    month each bond appears once, so the monthly tests count the current rows in full.
    """
    keep = np.isfinite(current)
    reference, current, month = _finite(reference), current[keep], month[keep]
    if categorical:
        levels = np.unique(np.concatenate([reference, current]))
        ref_cells, cur_cells = np.searchsorted(levels, reference), np.searchsorted(levels, current)
    else:
        levels = quantile_edges(reference, n_bins=n_bins)
        ref_cells = np.searchsorted(levels, reference, side="right")
        cur_cells = np.searchsorted(levels, current, side="right")
        levels = np.append(levels, np.inf)
    n_cells = len(levels)
    ref_counts = np.bincount(ref_cells, minlength=n_cells)
    monthly_counts = np.bincount(month * n_cells + cur_cells, minlength=n_months * n_cells).reshape(n_months, n_cells)
    cur_counts = monthly_counts.sum(axis=0)
    psi = float(psi_from_counts(ref_counts, cur_counts, psi_floor=psi_floor))
    monthly_psi = psi_from_counts(ref_counts, monthly_counts, psi_floor=psi_floor)
    if categorical:
        pvalue = _chi2_pvalue(np.vstack([ref_counts, cur_counts]), shares=shares)
        monthly_p = np.array([_chi2_pvalue(np.vstack([ref_counts, row]), shares=(shares[0], 1.0)) for row in monthly_counts])
    else:
        pvalue = _ks_pvalue(reference, current, shares=shares)
        monthly_p = np.array([_ks_pvalue(reference, chunk, shares=(shares[0], 1.0)) for chunk in _by_month(current, month, n_months)])
    return psi, pvalue, monthly_psi, monthly_p


def _monthly_series(values: np.ndarray, month: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(month numbers, monthly mean)`` of a market-state column (constant within a month)."""
    months, inverse = np.unique(month, return_inverse=True)
    return months, np.bincount(inverse, weights=values) / np.bincount(inverse)


def _bond_share(dataset: Dataset, split: str) -> float:
    """Distinct bonds per row of a split: how many independent draws a row is worth."""
    bonds = dataset.meta_of(split, "bond_id")
    return len(np.unique(bonds)) / len(bonds) if len(bonds) else 1.0


def _month_shifts(
    ref: np.ndarray, ref_month: np.ndarray, cur: np.ndarray, cur_code: np.ndarray, cur_months: np.ndarray
) -> Dict[str, Dict[str, Any]]:
    """:func:`level_shift_test` of an observation feature's monthly mean (``level``) and sd (``scale``).

    ``cur_code`` numbers the current rows' months 0 .. len(cur_months)-1. Returns raw p-values.
    """
    keep_ref, keep_cur = np.isfinite(ref), np.isfinite(cur)
    ref, ref_month, cur, cur_code = ref[keep_ref], ref_month[keep_ref], cur[keep_cur], cur_code[keep_cur]
    ref_months, ref_code = np.unique(ref_month, return_inverse=True)

    def moments(x, code, n):
        count = np.bincount(code, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(code, weights=x, minlength=n) / count
            sd = np.sqrt(np.bincount(code, weights=(x - mean[code]) ** 2, minlength=n) / count)
        return count > 0, {"level": mean, "scale": sd}

    ref_seen, ref_series = moments(ref, ref_code, len(ref_months))
    cur_seen, cur_series = moments(cur, cur_code, len(cur_months))
    shifts = {}
    for key in PARTS:
        test = level_shift_test(ref_series[key][ref_seen], ref_months[ref_seen], cur_series[key][cur_seen], cur_months[cur_seen])
        monthly_z = np.full(len(cur_months), np.nan)
        monthly_z[cur_seen] = test["monthly_z"]
        shifts[key] = {"z": test["z"], "p": test["pvalue"], "monthly_z": monthly_z}
    return shifts


def _observation_status(
    psi: float, pvalue: float, shifts: Dict[str, Dict[str, Any]], *, psi_warn: float, psi_alert: float, ks_alpha: float
) -> str:
    """Status of an observation feature (rule in the module docstring): alerts need a month-level shift."""
    psi = psi if np.isfinite(psi) else 0.0
    if psi >= psi_warn and any(part["p_corrected"] < ks_alpha for part in shifts.values()):
        return "alert"
    month_level = any(part["p"] < ks_alpha for part in shifts.values())
    row_level = status_of(psi, pvalue, psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha) != "ok"
    return "warn" if month_level or row_level else "ok"


def _json_number(value) -> Any:
    value = float(value)
    return value if np.isfinite(value) else None


def _check_options(*, psi_warn, psi_alert, ks_alpha, correction, n_bins, psi_floor) -> None:
    checks = (
        ("psi_warn", 0 <= psi_warn <= psi_alert, f"between 0 and drift.psi_alert ({psi_alert})", psi_warn),
        ("ks_alpha", 0 < ks_alpha < 1, "in (0, 1)", ks_alpha),
        ("correction", correction in CORRECTIONS, f"one of {list(CORRECTIONS)}", correction),
        ("n_bins", isinstance(n_bins, (int, np.integer)) and n_bins >= 2, "an integer of at least 2", n_bins),
        ("psi_floor", 0 < psi_floor < 1, "in (0, 1)", psi_floor),
    )
    for key, ok, expected, got in checks:
        if not ok:
            raise ConfigError(f"The 'drift.{key}' config key must be {expected}. Got {got!r} instead.")


def drift_report(
    dataset: Dataset,
    models: Mapping[str, Mapping[str, Any]],
    *,
    psi_warn: float = 0.1,
    psi_alert: float = 0.25,
    ks_alpha: float = 0.05,
    correction: str = "holm",
    n_bins: int = 10,
    psi_floor: float = 1e-4,
) -> Dict[str, Any]:
    """Feature drift (train vs test) and model drift (validation vs test), overall and per test month.

    ``models`` maps model names to model-step artifacts; their ``predictions["validation"|"test"]["mean"]``
    are read. Returns the step artifact: ``features``, ``models``, ``drifted``, ``months``,
    ``thresholds`` and flat ``metrics``; every number is a float or None, ready for JSON.

    Raises
    ------
    ConfigError
        If an option is out of range.
    """
    _check_options(psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha, correction=correction, n_bins=n_bins, psi_floor=psi_floor)
    rules = {"psi_warn": psi_warn, "psi_alert": psi_alert, "ks_alpha": ks_alpha}
    month_number = np.asarray(dataset.meta["obs_date"]).astype("datetime64[M]").astype(np.int64)
    test_months, test_month = np.unique(month_number[dataset.splits["test"]], return_inverse=True)
    labels = [str(m) for m in test_months.astype("datetime64[M]")]
    features = _feature_drift(
        dataset, month_number, test_months, test_month, labels, correction=correction, n_bins=n_bins, psi_floor=psi_floor, rules=rules
    )
    model_report = _model_drift(dataset, models, test_month, labels, correction=correction, n_bins=n_bins, psi_floor=psi_floor, rules=rules)
    drifted = [name for name, entry in features.items() if entry["status"] != "ok"]
    statuses = [entry["status"] for entry in features.values()]
    stale = [name for name, entry in model_report.items() if entry["status"] != "ok"]
    return {
        "features": features,
        "models": model_report,
        "drifted": drifted,
        "months": labels,
        "thresholds": {**rules, "correction": correction, "n_bins": n_bins, "psi_floor": psi_floor},
        "metrics": {
            "n_alert": statuses.count("alert"),
            "n_warn": statuses.count("warn"),
            "drifted": ",".join(drifted),
            "n_models_drifted": len(stale),
            "models_drifted": ",".join(stale),
        },
    }


def _feature_drift(
    dataset: Dataset, month_number: np.ndarray, test_months: np.ndarray, test_month: np.ndarray, labels: list, *,
    correction: str, n_bins: int, psi_floor: float, rules: Dict[str, float]
) -> Dict[str, Dict[str, Any]]:
    """Every feature's tests, corrected p-values and status (the ``features`` part of the artifact)."""
    train_rows, test_rows = dataset.splits["train"], dataset.splits["test"]
    ks_alpha = rules["ks_alpha"]
    n_months = len(labels)
    train_month = month_number[train_rows]
    feature_shares = (_bond_share(dataset, "train"), _bond_share(dataset, "test"))
    tests = []
    for j, name in enumerate(dataset.feature_names):
        ref, cur = np.asarray(dataset.X[train_rows, j]), np.asarray(dataset.X[test_rows, j])
        if name in dataset.market_features:
            ref_months, ref_series = _monthly_series(ref, train_month)
            cur_series = _monthly_series(cur, month_number[test_rows])[1]
            shift = level_shift_test(ref_series, ref_months, cur_series, test_months)
            volatility = volatility_test(ref_series, ref_months, cur_series, test_months)
            tests.append({
                "kind": "market_state", "test": "level_shift", "psi": np.nan, "p": shift["pvalue"],
                "monthly_psi": np.full(n_months, np.nan), "monthly_p": shift["monthly_pvalue"],
                "monthly": {"z": shift["monthly_z"]}, "extra": {key: shift[key] for key in ("z", "shift", "sd", "phi")},
                "parts": {"volatility": {"ratio": volatility["ratio"], "p": volatility["pvalue"]}},
            })
            continue
        categorical = name in dataset.categorical
        psi, p, m_psi, m_p = _sample_drift(
            ref, cur, test_month, n_months, categorical=categorical, n_bins=n_bins, psi_floor=psi_floor, shares=feature_shares
        )
        entry = {
            "kind": "categorical" if categorical else "observation", "test": "chi2" if categorical else "ks",
            "psi": psi, "p": p, "monthly_psi": m_psi, "monthly_p": m_p, "monthly": {}, "extra": {},
        }
        if not categorical:
            entry["parts"] = _month_shifts(ref, train_month, cur, test_month, test_months)
        tests.append(entry)
    raw = np.array([t["p"] for t in tests])
    corrected = correct_pvalues(raw, method=correction)
    monthly_p = correct_pvalues(np.array([t["monthly_p"] for t in tests]).reshape(len(tests), n_months), method=correction)
    month_level = [part for t in tests for part in t.get("parts", {}).values()]
    for part, value in zip(month_level, correct_pvalues(np.array([part["p"] for part in month_level]), method=correction)):
        part["p_corrected"] = value
    features: Dict[str, Dict[str, Any]] = {}
    for i, (name, t) in enumerate(zip(dataset.feature_names, tests)):
        if t["kind"] == "market_state":
            volatility = t["parts"]["volatility"]
            status = (
                "alert" if min(corrected[i], volatility["p_corrected"]) < ks_alpha
                else "warn" if min(raw[i], volatility["p"]) < ks_alpha else "ok"
            )
            t["extra"].update({"volatility_ratio": volatility["ratio"], "volatility_pvalue": volatility["p_corrected"]})
        elif t["kind"] == "categorical":
            status = status_of(t["psi"], corrected[i], **rules)
        else:
            status = _observation_status(t["psi"], corrected[i], t["parts"], **rules)
            parts = t["parts"]
            t["extra"] = {f"{key}_{field}": parts[key][src] for key in PARTS for field, src in (("z", "z"), ("pvalue", "p_corrected"))}
            t["monthly"] = {"level_z": parts["level"]["monthly_z"]}
        monthly = {}
        for k, label in enumerate(labels):
            monthly[label] = {"psi": _json_number(t["monthly_psi"][k]), "ks_pvalue": _json_number(monthly_p[i, k])}
            monthly[label].update({key: _json_number(values[k]) for key, values in t["monthly"].items()})
        features[name] = {
            "psi": _json_number(t["psi"]),
            "ks_pvalue": _json_number(corrected[i]),
            "pvalue_raw": _json_number(t["p"]),
            "status": status,
            "kind": t["kind"],
            "test": t["test"],
            **{key: _json_number(value) for key, value in t["extra"].items()},
            "monthly": monthly,
        }
    return features


def _model_drift(
    dataset: Dataset, models: Mapping[str, Mapping[str, Any]], test_month: np.ndarray, labels: list, *,
    correction: str, n_bins: int, psi_floor: float, rules: Dict[str, float]
) -> Dict[str, Dict[str, Any]]:
    """Each model's predictions (PSI) and absolute errors (KS) month by month against validation."""
    y_val, y_test = dataset.target("validation"), dataset.target("test")
    shares = (_bond_share(dataset, "validation"), _bond_share(dataset, "test"))
    n_months = len(labels)
    count = np.bincount(test_month, minlength=n_months)
    results = {}
    for name, artifact in models.items():
        pred_val = np.asarray(artifact["predictions"]["validation"]["mean"], dtype=np.float64)
        pred_test = np.asarray(artifact["predictions"]["test"]["mean"], dtype=np.float64)
        psi, _, m_psi, _ = _sample_drift(
            pred_val, pred_test, test_month, n_months, categorical=False, n_bins=n_bins, psi_floor=psi_floor, shares=shares
        )
        err_val, err_test = y_val - pred_val, y_test - pred_test
        abs_val, abs_test = np.abs(err_val), np.abs(err_test)
        m_p = np.array([
            _ks_pvalue(abs_val, chunk, shares=(shares[0], 1.0), larger=True) for chunk in _by_month(abs_test, test_month, n_months)
        ])
        with np.errstate(invalid="ignore", divide="ignore"):
            m_rmse = np.sqrt(np.bincount(test_month, weights=err_test**2, minlength=n_months) / count)
            m_bias = np.bincount(test_month, weights=err_test, minlength=n_months) / count
        rmse_val, rmse_test = float(np.sqrt(np.mean(err_val**2))), float(np.sqrt(np.mean(err_test**2)))
        results[name] = {
            "psi": psi, "pvalue_raw": _ks_pvalue(abs_val, abs_test, shares=shares, larger=True), "monthly_psi": m_psi, "monthly_p": m_p,
            "rmse_validation": rmse_val, "rmse_test": rmse_test, "rmse": m_rmse, "bias": m_bias,
        }
    names = list(results)
    if not names:
        return {}
    corrected = correct_pvalues(np.array([results[n]["pvalue_raw"] for n in names]), method=correction)
    monthly = correct_pvalues(np.array([results[n]["monthly_p"] for n in names]).reshape(len(names), n_months), method=correction)
    report = {}
    for i, name in enumerate(names):
        r = results[name]
        report[name] = {
            "psi": _json_number(r["psi"]),
            "ks_pvalue": _json_number(corrected[i]),
            "pvalue_raw": _json_number(r["pvalue_raw"]),
            "status": _model_status(r["psi"], corrected[i], r["pvalue_raw"], psi_warn=rules["psi_warn"], ks_alpha=rules["ks_alpha"]),
            "rmse_validation": _json_number(r["rmse_validation"]),
            "rmse_test": _json_number(r["rmse_test"]),
            "rmse_ratio": _json_number(r["rmse_test"] / r["rmse_validation"]) if r["rmse_validation"] > 0 else None,
            "monthly": {
                label: {
                    "psi": _json_number(r["monthly_psi"][k]),
                    "ks_pvalue": _json_number(monthly[i, k]),
                    "rmse": _json_number(r["rmse"][k]),
                    "bias": _json_number(r["bias"][k]),
                }
                for k, label in enumerate(labels)
            },
        }
    return report


def _model_status(psi: float, pvalue: float, pvalue_raw: float, *, psi_warn: float, ks_alpha: float) -> str:
    """Alert when the errors grew (corrected one-sided KS); warn when they may have or the predictions moved."""
    if pvalue < ks_alpha:
        return "alert"
    return "warn" if pvalue_raw < ks_alpha or (np.isfinite(psi) and psi >= psi_warn) else "ok"


def drift(config: Dict[str, Any], inputs: Dict[str, Any], ctx) -> Dict[str, Any]:
    """The step: drift of every feature and of every model in ``inputs`` (model-step artifacts).

    Returns
    -------
    dict
        The artifact of :func:`drift_report`.

    Raises
    ------
    ConfigError
        If the config slice holds an unknown key or a value out of range.
    """
    options = {key: value for key, value in config.items() if key != "seed"}
    known = ("psi_warn", "psi_alert", "ks_alpha", "correction", "n_bins", "psi_floor")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"The 'drift' config keys must be among {list(known)}. Got {unknown} instead.")
    models = {artifact.get("name", name): artifact for name, artifact in inputs.items()
              if isinstance(artifact, Mapping) and "predictions" in artifact}  # the tuned model too, as <target>_tuned
    artifact = drift_report(dataset_for(ctx.shared), models, **options)
    ctx.log.info(
        "drift: %d alert, %d warn (%s); models drifted: %s",
        artifact["metrics"]["n_alert"], artifact["metrics"]["n_warn"],
        artifact["metrics"]["drifted"] or "none", artifact["metrics"]["models_drifted"] or "none",
    )
    return artifact


def write_outputs(artifact: Dict[str, Any], run_dir) -> None:
    """Write ``drift.json`` (atomically: temp file, fsync, ``os.replace``) and ``plots/drift.png``."""
    run_dir = Path(run_dir)
    text = json.dumps(artifact, indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".drift.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, run_dir / "drift.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    (run_dir / "plots").mkdir(exist_ok=True)
    _plot(artifact, run_dir / "plots" / "drift.png")


def _plot(artifact: Dict[str, Any], path: Path) -> None:
    """Four panels: PSI per feature, market-state evidence, monthly PSI of drifted features, monthly RMSE per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = artifact["thresholds"]
    features = artifact["features"]
    months = artifact["months"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    ax = axes[0, 0]
    binned = [n for n, f in features.items() if f["kind"] != "market_state"]
    ax.bar(binned, [features[n]["psi"] or 0.0 for n in binned], color=[STATUS_COLORS[features[n]["status"]] for n in binned])
    ax.axhline(limits["psi_warn"], color=STATUS_COLORS["warn"], ls="--", label=f"warn {limits['psi_warn']}")
    ax.axhline(limits["psi_alert"], color=STATUS_COLORS["alert"], ls="--", label=f"alert {limits['psi_alert']}")
    ax.set_title("PSI, train vs test (bar color = status)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend()
    ax = axes[0, 1]
    market = [n for n, f in features.items() if f["kind"] == "market_state"]
    x = np.arange(len(market))
    for offset, key, hatch in ((-0.2, "ks_pvalue", ""), (0.2, "volatility_pvalue", "//")):
        evidence = [-np.log10(max(features[n][key] if features[n][key] is not None else 1.0, 1e-12)) for n in market]
        label = "level shift" if key == "ks_pvalue" else "volatility (one-sided)"
        ax.bar(x + offset, evidence, width=0.4, hatch=hatch, label=label,
               color=[STATUS_COLORS[features[n]["status"]] for n in market], edgecolor="black")
    ax.axhline(-np.log10(limits["ks_alpha"]), color="grey", ls="--", label=f"corrected p = {limits['ks_alpha']}")
    ax.set_xticks(x, market)
    ax.set_ylabel("-log10 corrected p")
    ax.set_title("market state: level shift and volatility (bar color = status)")
    ax.legend(fontsize="small")
    ax = axes[1, 0]
    shown = [n for n in artifact["drifted"] if features[n]["kind"] != "market_state"][:8]
    for name in shown:
        ax.plot(months, [features[name]["monthly"][m]["psi"] for m in months], marker="o", label=name)
    ax.axhline(limits["psi_warn"], color=STATUS_COLORS["warn"], ls="--")
    ax.axhline(limits["psi_alert"], color=STATUS_COLORS["alert"], ls="--")
    ax.set_title("monthly PSI of drifted features" if shown else "monthly PSI: no drifted feature")
    ax.tick_params(axis="x", rotation=60)
    if shown:
        ax.legend(fontsize="small")
    ax = axes[1, 1]
    for name, entry in artifact["models"].items():
        line, = ax.plot(months, [entry["monthly"][m]["rmse"] for m in months], marker=".", label=f"{name} ({entry['status']})")
        ax.axhline(entry["rmse_validation"], color=line.get_color(), ls=":", lw=0.8)
    ax.set_title("test RMSE per month (dotted: validation RMSE)")
    ax.tick_params(axis="x", rotation=60)
    if artifact["models"]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
