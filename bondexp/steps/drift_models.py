"""The models' drift, for the drift step: has each model gone stale on the test period?

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

from collections.abc import Mapping
from typing import Any

import numpy as np

from bondexp.artifacts import ModelArtifact
from bondexp.features import Dataset
from bondexp.metrics import rmse
from bondexp.stats import KSReference, correct_pvalues, ks_pvalue, sample_drift, split_by_month


def bond_share(dataset: Dataset, split: str) -> float:
    """Distinct bonds per row of a split: how many independent draws a row is worth."""
    bonds = dataset.meta_of(split, "bond_id")
    return len(np.unique(bonds)) / len(bonds) if len(bonds) else 1.0


def json_number(value) -> Any:
    """A float for drift.json: NaN and infinity become null, which JSON can hold."""
    value = float(value)
    return value if np.isfinite(value) else None


def model_drift(
    dataset: Dataset,
    models: Mapping[str, ModelArtifact],
    test_month: np.ndarray,
    labels: list,
    *,
    correction: str,
    n_bins: int,
    psi_floor: float,
    rules: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Each model's predictions (PSI) and absolute errors (KS) month by month against validation."""
    y_val, y_test = dataset.target("validation"), dataset.target("test")
    shares = (bond_share(dataset, "validation"), bond_share(dataset, "test"))
    n_months = len(labels)
    count = np.bincount(test_month, minlength=n_months)
    results: dict[str, dict[str, Any]] = {}
    for name, artifact in models.items():
        pred_val = np.asarray(artifact.predictions["validation"]["mean"], dtype=np.float64)
        pred_test = np.asarray(artifact.predictions["test"]["mean"], dtype=np.float64)
        psi, _, m_psi, _ = sample_drift(
            pred_val, pred_test, test_month, n_months, categorical=False, n_bins=n_bins, psi_floor=psi_floor, shares=shares
        )
        err_val, err_test = y_val - pred_val, y_test - pred_test
        abs_val, abs_test = KSReference(np.abs(err_val)), np.abs(err_test)
        m_p = np.array(
            [ks_pvalue(abs_val, chunk, shares=(shares[0], 1.0), larger=True) for chunk in split_by_month(abs_test, test_month, n_months)]
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            m_rmse = np.sqrt(np.bincount(test_month, weights=err_test**2, minlength=n_months) / count)
            m_bias = np.bincount(test_month, weights=err_test, minlength=n_months) / count
        rmse_val, rmse_test = rmse(y_val, pred_val), rmse(y_test, pred_test)
        results[name] = {
            "psi": psi,
            "pvalue_raw": ks_pvalue(abs_val, abs_test, shares=shares, larger=True),
            "monthly_psi": m_psi,
            "monthly_p": m_p,
            "rmse_validation": rmse_val,
            "rmse_test": rmse_test,
            "rmse": m_rmse,
            "bias": m_bias,
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
            "psi": json_number(r["psi"]),
            "ks_pvalue": json_number(corrected[i]),
            "pvalue_raw": json_number(r["pvalue_raw"]),
            "status": _model_status(r["psi"], corrected[i], r["pvalue_raw"], psi_warn=rules["psi_warn"], ks_alpha=rules["ks_alpha"]),
            "rmse_validation": json_number(r["rmse_validation"]),
            "rmse_test": json_number(r["rmse_test"]),
            "rmse_ratio": json_number(r["rmse_test"] / r["rmse_validation"]) if r["rmse_validation"] > 0 else None,
            "monthly": {
                label: {
                    "psi": json_number(r["monthly_psi"][k]),
                    "ks_pvalue": json_number(monthly[i, k]),
                    "rmse": json_number(r["rmse"][k]),
                    "bias": json_number(r["bias"][k]),
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
