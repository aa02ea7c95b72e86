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
  (:func:`bondexp.stats.volatility_test`). A dozen test months cannot fill ten quantile bins, so
  PSI is noise there; a stress or crisis shows as larger monthly moves even when the level stays
  inside the training range, and differencing makes the changes nearly independent.

The level-shift test (:func:`bondexp.stats.level_shift_test`) exists because months are
autocorrelated: a persistent but stationary factor spends long stretches away from its mean, and a
test that treats months as independent calls that drift. The statistics themselves (PSI, KS and
chi-square counting bonds rather than rows, Holm and Bonferroni) live in :mod:`bondexp.stats`;
this module chooses among them. The features' KS / chi-square / market-state level p-values are
one family, and the month-level tests (observation features' level and scale, market-state
volatility) a second; each is corrected with ``drift.correction`` (Holm by default). Monthly
p-values are corrected across features within each month.

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

Models are compared by :mod:`bondexp.steps.drift_models` (their predictions' PSI and their errors'
one-sided KS, against validation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from bondexp.artifacts import ModelArtifact, StepOutput, model_artifacts
from bondexp.errors import ConfigError, check_keys
from bondexp.features import Dataset, dataset_for
from bondexp.plots import drift_png
from bondexp.stats import (
    CORRECTIONS,
    correct_pvalues,
    level_shift_test,
    sample_drift,
    volatility_test,
)
from bondexp.steps.drift_models import bond_share, json_number, model_drift

#: Monthly series of an observation feature tested for a shift: its cross-sectional mean and sd.
PARTS = ("level", "scale")


def status_of(psi: float, pvalue: float, *, psi_warn: float, psi_alert: float, ks_alpha: float) -> str:
    """``"alert"``, ``"warn"`` or ``"ok"`` from a PSI and a corrected p-value (rule in the module docstring)."""
    return rated(psi, pvalue, psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha)[0]


def rated(psi: float, pvalue: float, *, psi_warn: float, psi_alert: float, ks_alpha: float) -> tuple[str, str]:
    """``(status, why)``: :func:`status_of`'s status and the part of the rule that set it (empty for ``ok``)."""
    significant = bool(np.isfinite(pvalue) and pvalue < ks_alpha)
    psi = psi if np.isfinite(psi) else 0.0
    if psi >= psi_alert:
        return "alert", f"PSI {psi:.3g} >= {psi_alert:g}"
    if significant and psi >= psi_warn:
        return "alert", f"PSI {psi:.3g} >= {psi_warn:g} and KS p {pvalue:.2g} < {ks_alpha:g}"
    if psi >= psi_warn:
        return "warn", f"PSI {psi:.3g} >= {psi_warn:g}"
    return ("warn", f"KS p {pvalue:.2g} < {ks_alpha:g}") if significant else ("ok", "")


def _monthly_series(values: np.ndarray, month: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(month numbers, monthly mean)`` of a market-state column (constant within a month)."""
    months, inverse = np.unique(month, return_inverse=True)
    return months, np.bincount(inverse, weights=values) / np.bincount(inverse)


def _month_shifts(
    ref: np.ndarray, ref_month: np.ndarray, cur: np.ndarray, cur_code: np.ndarray, cur_months: np.ndarray
) -> dict[str, dict[str, Any]]:
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
    psi: float, pvalue: float, shifts: dict[str, dict[str, Any]], *, psi_warn: float, psi_alert: float, ks_alpha: float
) -> tuple[str, str]:
    """``(status, why)`` of an observation feature (rule in the module docstring): alerts need a month-level shift."""
    psi = psi if np.isfinite(psi) else 0.0
    for key, part in shifts.items():
        if psi >= psi_warn and part["p_corrected"] < ks_alpha:
            return "alert", f"PSI {psi:.3g} >= {psi_warn:g} and a monthly {key} shift, p {part['p_corrected']:.2g} < {ks_alpha:g}"
    row_level = rated(psi, pvalue, psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha)
    if row_level[0] != "ok":
        return "warn", row_level[1] + (", but no monthly shift (an alert needs one)" if row_level[0] == "alert" else "")
    for key, part in shifts.items():
        if part["p"] < ks_alpha:
            return "warn", f"a monthly {key} shift, p {part['p']:.2g} < {ks_alpha:g} before the correction"
    return "ok", ""


def _market_state_status(corrected: float, raw: float, volatility: dict[str, Any], *, ks_alpha: float) -> tuple[str, str]:
    """``(status, why)`` of a market-state series: a level shift or a volatility change, corrected p-values alert."""
    if corrected < ks_alpha:
        return "alert", f"a level shift, p {corrected:.2g} < {ks_alpha:g}"
    if volatility["p_corrected"] < ks_alpha:
        return "alert", f"volatility x{volatility['ratio']:.2f}, p {volatility['p_corrected']:.2g} < {ks_alpha:g}"
    if min(raw, volatility["p"]) < ks_alpha:
        test = "a level shift" if raw < volatility["p"] else f"volatility x{volatility['ratio']:.2f}"
        return "warn", f"{test}, p {min(raw, volatility['p']):.2g} < {ks_alpha:g} before the correction"
    return "ok", ""


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
    models: Mapping[str, ModelArtifact],
    *,
    psi_warn: float = 0.1,
    psi_alert: float = 0.25,
    ks_alpha: float = 0.05,
    correction: str = "holm",
    n_bins: int = 10,
    psi_floor: float = 1e-4,
) -> dict[str, Any]:
    """Feature drift (train vs test) and model drift (validation vs test), overall and per test month.

    ``models`` maps model names to their artifacts; their ``predictions["validation"|"test"]["mean"]``
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
    model_report = model_drift(dataset, models, test_month, labels, correction=correction, n_bins=n_bins, psi_floor=psi_floor, rules=rules)
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
    dataset: Dataset,
    month_number: np.ndarray,
    test_months: np.ndarray,
    test_month: np.ndarray,
    labels: list,
    *,
    correction: str,
    n_bins: int,
    psi_floor: float,
    rules: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Every feature's tests, corrected p-values and status (the ``features`` part of the artifact)."""
    tests = _feature_tests(dataset, month_number, test_months, test_month, n_bins=n_bins, psi_floor=psi_floor)
    corrected = correct_pvalues(np.array([t["p"] for t in tests]), method=correction)
    monthly_p = correct_pvalues(np.array([t["monthly_p"] for t in tests]).reshape(len(tests), len(labels)), method=correction)
    month_level = [part for t in tests for part in t.get("parts", {}).values()]
    month_level_p = correct_pvalues(np.array([part["p"] for part in month_level]), method=correction)
    for part, value in zip(month_level, month_level_p, strict=True):
        part["p_corrected"] = value
    named = zip(dataset.feature_names, tests, strict=True)
    return {name: _feature_entry(t, corrected[i], monthly_p[i], labels, rules) for i, (name, t) in enumerate(named)}


def _feature_tests(
    dataset: Dataset, month_number: np.ndarray, test_months: np.ndarray, test_month: np.ndarray, *, n_bins: int, psi_floor: float
) -> list:
    """Each feature's raw (uncorrected) tests, chosen by its kind: market state, categorical or observation."""
    train_rows, test_rows = dataset.splits["train"], dataset.splits["test"]
    n_months = len(test_months)
    train_month = month_number[train_rows]
    feature_shares = (bond_share(dataset, "train"), bond_share(dataset, "test"))
    tests = []
    for j, name in enumerate(dataset.feature_names):
        ref, cur = np.asarray(dataset.X[train_rows, j]), np.asarray(dataset.X[test_rows, j])
        if name in dataset.market_features:
            ref_months, ref_series = _monthly_series(ref, train_month)
            cur_series = _monthly_series(cur, month_number[test_rows])[1]
            shift = level_shift_test(ref_series, ref_months, cur_series, test_months)
            volatility = volatility_test(ref_series, ref_months, cur_series, test_months)
            tests.append(
                {
                    "kind": "market_state",
                    "test": "level_shift",
                    "psi": np.nan,
                    "p": shift["pvalue"],
                    "monthly_psi": np.full(n_months, np.nan),
                    "monthly_p": shift["monthly_pvalue"],
                    "monthly": {"z": shift["monthly_z"]},
                    "extra": {key: shift[key] for key in ("z", "shift", "sd", "phi")},
                    "parts": {"volatility": {"ratio": volatility["ratio"], "p": volatility["pvalue"]}},
                }
            )
            continue
        categorical = name in dataset.categorical
        psi, p, m_psi, m_p = sample_drift(
            ref, cur, test_month, n_months, categorical=categorical, n_bins=n_bins, psi_floor=psi_floor, shares=feature_shares
        )
        entry: dict[str, Any] = {
            "kind": "categorical" if categorical else "observation",
            "test": "chi2" if categorical else "ks",
            "psi": psi,
            "p": p,
            "monthly_psi": m_psi,
            "monthly_p": m_p,
            "monthly": {},
            "extra": {},
        }
        if not categorical:
            entry["parts"] = _month_shifts(ref, train_month, cur, test_month, test_months)
        tests.append(entry)
    return tests


def _feature_entry(t: dict[str, Any], corrected: float, monthly_p: np.ndarray, labels: list, rules: dict[str, float]) -> dict[str, Any]:
    """One feature's drift.json entry from its raw tests ``t`` and its corrected p-values."""
    ks_alpha = rules["ks_alpha"]
    if t["kind"] == "market_state":
        volatility = t["parts"]["volatility"]
        status, why = _market_state_status(corrected, t["p"], volatility, ks_alpha=ks_alpha)
        t["extra"].update({"volatility_ratio": volatility["ratio"], "volatility_pvalue": volatility["p_corrected"]})
    elif t["kind"] == "categorical":
        status, why = rated(t["psi"], corrected, **rules)
    else:
        status, why = _observation_status(t["psi"], corrected, t["parts"], **rules)
        parts = t["parts"]
        t["extra"] = {f"{key}_{field}": parts[key][src] for key in PARTS for field, src in (("z", "z"), ("pvalue", "p_corrected"))}
        t["monthly"] = {"level_z": parts["level"]["monthly_z"]}
    monthly = {}
    for k, label in enumerate(labels):
        monthly[label] = {"psi": json_number(t["monthly_psi"][k]), "ks_pvalue": json_number(monthly_p[k])}
        monthly[label].update({key: json_number(values[k]) for key, values in t["monthly"].items()})
    return {
        "psi": json_number(t["psi"]),
        "ks_pvalue": json_number(corrected),
        "pvalue_raw": json_number(t["p"]),
        "status": status,
        "why": why,
        "kind": t["kind"],
        "test": t["test"],
        **{key: json_number(value) for key, value in t["extra"].items()},
        "monthly": monthly,
    }


def drift(config: dict[str, Any], inputs: dict[str, Any], ctx) -> StepOutput:
    """The step: drift of every feature and of every model in ``inputs`` (their :class:`ModelArtifact`).

    Returns
    -------
    StepOutput
        The artifact of :func:`drift_report` and its files (:func:`drift_files`).

    Raises
    ------
    ConfigError
        If the config slice holds an unknown key or a value out of range.
    """
    options = {key: value for key, value in config.items() if key != "seed"}
    known = ("psi_warn", "psi_alert", "ks_alpha", "correction", "n_bins", "psi_floor")
    check_keys("drift", sorted(options), known)  # validate_config checks them before any work; this for a direct call
    models = {artifact.name: artifact for artifact in model_artifacts(inputs).values()}  # the tuned one as <target>_tuned
    artifact = drift_report(dataset_for(ctx.shared), models, **options)
    ctx.log.info(
        "drift: %d alert, %d warn (%s); models drifted: %s",
        artifact["metrics"]["n_alert"],
        artifact["metrics"]["n_warn"],
        artifact["metrics"]["drifted"] or "none",
        artifact["metrics"]["models_drifted"] or "none",
    )
    return StepOutput(artifact, drift_files(artifact))


def drift_files(artifact: dict[str, Any]) -> dict[str, bytes]:
    """``drift.json`` (strict JSON, no NaN) and ``plots/drift.png``, rendered (path -> bytes)."""
    return {"drift.json": json.dumps(artifact, indent=2, allow_nan=False).encode(), "plots/drift.png": drift_png(artifact)}
