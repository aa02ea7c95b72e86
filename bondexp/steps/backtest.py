"""The walk-forward backtest: one step per (model, origin) refit, and the `backtest` step that scores them.

One train/validation/test cut says how a model did over one stretch of months; a walk-forward
(rolling-origin) backtest refits at many origins and scores the ``horizon`` months after each one.
Every fit sees only months before its origin (the whole past, or the last ``window`` months);
a model that calibrates (tail_risk, bayesian) fits on the earlier part of that past and calibrates
on its latest ``calibration_months``, never on months after the origin.

The gathering step scores the refits with :func:`bondexp.steps.backtest_score.score_backtest`
(RMSE per origin and overall, with a month-block bootstrap interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np

from bondexp.artifacts import ModelArtifact, StepOutput, model_artifacts
from bondexp.bondtable import count_of
from bondexp.errors import ConfigError, StepSkipped, check_keys
from bondexp.steps.backtest_score import BASELINE, ORACLE, OVERALL, score_backtest

#: Keys of the ``backtest`` config group.
CONFIG_KEYS = ("origins", "horizon", "window", "calibration_months")
#: Fewest months a fit trains on (before the calibration months): early stopping holds out the latest of them.
MIN_FIT_MONTHS = 3
#: Target of the (model, origin) steps and of the step that gathers them.
ORIGIN_TARGET = "bondexp.steps.backtest.fit_origin"
REPORT_TARGET = "bondexp.steps.backtest.backtest"
#: Name of the gathering step; (model, origin) steps are ``<model>@<YYYY-MM>``.
REPORT_STEP = "backtest"
#: Model name of the tuned model's origin steps (``tuned@<YYYY-MM>``); their artifacts carry ``<target>_tuned``.
TUNED = "tuned"
CSV_COLUMNS = ("model", "origin", "n", "n_months", "n_train", "rmse", "rmse_ci_low", "rmse_ci_high", "improvement_pct", "oracle_gap_pct")


# ----------------------------------------------------------------------------- config and origins


def _is_int(value: Any) -> TypeGuard[int | np.integer]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _month(value: Any, *, key: str) -> np.datetime64:
    try:
        month = np.datetime64(str(value), "M")
    except ValueError:
        month = None
    if month is None or len(str(value)) != 7:
        raise ConfigError(f"The '{key}' config key must list months as 'YYYY-MM'. Got {value!r} instead.")
    return month


def check_backtest_config(spec: Mapping[str, Any]) -> None:
    """Check the ``backtest`` keys that need no data; raise ConfigError naming the key.

    ``origins`` is null (no backtest), a count of at least 1, or a list of distinct 'YYYY-MM'
    months; ``horizon`` and ``calibration_months`` are at least 1; ``window`` is ``expanding``
    or a number of months that leaves ``MIN_FIT_MONTHS`` after the calibration months.
    """
    check_keys("backtest", sorted(spec), CONFIG_KEYS)
    origins = spec.get("origins")
    if origins is not None:
        if isinstance(origins, (list, tuple)):
            if not origins:
                raise ConfigError("The 'backtest.origins' config key must be null, a count or a non-empty list of months. Got [] instead.")
            months = [_month(o, key="backtest.origins") for o in origins]
            if len(set(months)) != len(months):
                raise ConfigError(f"The 'backtest.origins' config key must list distinct months. Got {list(origins)} instead.")
        elif not _is_int(origins) or origins < 1:
            raise ConfigError(
                "The 'backtest.origins' config key must be null (no backtest), a count of at least 1 or a list of "
                f"'YYYY-MM' months. Got {origins!r} instead."
            )
    for key in ("horizon", "calibration_months"):
        value = spec.get(key)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"The 'backtest.{key}' config key must be a whole number of months, at least 1. Got {value!r} instead.")
    window, calibration = spec.get("window"), spec["calibration_months"]  # the loop above checked it is there
    if window != "expanding":
        if not _is_int(window) or window < calibration + MIN_FIT_MONTHS:
            raise ConfigError(
                "The 'backtest.window' config key must be 'expanding' or a number of months of at least "
                f"backtest.calibration_months + {MIN_FIT_MONTHS} = {calibration + MIN_FIT_MONTHS}. Got {window!r} instead."
            )


def origin_months(months: Sequence[Any], spec: Mapping[str, Any]) -> list[str]:
    """The origins of the backtest as 'YYYY-MM', earliest first.

    Parameters
    ----------
    months : sequence of datetime64
        The observation months of the data (any order, repeats allowed).
    spec : mapping
        The ``backtest`` config (checked by :func:`check_backtest_config`). A count ``n`` places
        ``n`` origins ``horizon`` months apart so that the last horizon ends at the last month:
        the scored months do not overlap and cover the last ``n * horizon`` months.

    Raises
    ------
    ConfigError
        An origin not among the data's months, one leaving fewer than ``horizon`` months after it,
        or one with fewer than ``calibration_months + MIN_FIT_MONTHS`` months before it.
    """
    check_backtest_config(spec)
    data_months = np.unique(np.asarray(months, dtype="datetime64[M]"))
    origins, horizon = spec["origins"], int(spec["horizon"])
    need_before = int(spec["calibration_months"]) + MIN_FIT_MONTHS
    n = len(data_months)
    if _is_int(origins):
        first = n - int(origins) * horizon
        if first < need_before:
            raise ConfigError(
                f"The 'backtest.origins' config key asks for {origins} origins {horizon} months apart "
                f"(backtest.horizon), which leaves {max(first, 0)} of the data's {n} months before the first "
                f"origin; it needs at least backtest.calibration_months + {MIN_FIT_MONTHS} = {need_before}. "
                "Use fewer origins or a shorter horizon."
            )
        chosen = [data_months[first + k * horizon] for k in range(int(origins))]
    else:
        chosen = sorted(_month(o, key="backtest.origins") for o in origins)
        for origin in chosen:
            if origin not in data_months:
                raise ConfigError(
                    f"The 'backtest.origins' config key must list months of the data ({data_months[0]} .. "
                    f"{data_months[-1]}). Got {origin} instead."
                )
            if origin + horizon - 1 > data_months[-1]:
                raise ConfigError(
                    f"The 'backtest.origins' month {origin} leaves fewer than backtest.horizon = {horizon} months "
                    f"after it (the data ends {data_months[-1]})."
                )
            before = int(np.sum(data_months < origin))
            if before < need_before:
                raise ConfigError(
                    f"The 'backtest.origins' month {origin} has {count_of(before, 'month')} of data before it; it needs at "
                    f"least backtest.calibration_months + {MIN_FIT_MONTHS} = {need_before}."
                )
    return [str(o) for o in chosen]


def origin_rows(
    month_of_row: np.ndarray, origin: str, *, horizon: int, window: Any, calibration_months: int, calibrates: bool
) -> dict[str, np.ndarray]:
    """Row positions a (model, origin) step fits on, calibrates on and scores.

    Returns
    -------
    dict
        ``fit`` (months before the origin, within the window, before the calibration months when
        the model calibrates), ``calibration`` (the latest ``calibration_months`` before the origin,
        or empty) and ``scored`` (the ``horizon`` months from the origin on), each sorted.
    """
    months = np.asarray(month_of_row, dtype="datetime64[M]")
    start = np.datetime64(origin, "M")
    past = months < start
    if window != "expanding":
        past &= months >= start - int(window)
    calibration = past & (months >= start - int(calibration_months)) if calibrates else np.zeros_like(past)
    scored = (months >= start) & (months < start + int(horizon))
    return {"fit": np.flatnonzero(past & ~calibration), "calibration": np.flatnonzero(calibration), "scored": np.flatnonzero(scored)}


# ----------------------------------------------------------------------------- the (model, origin) step


def fit_origin(config: dict[str, Any], inputs: dict[str, Any], ctx) -> ModelArtifact:
    """Refit one model on the months before ``config['origin']`` and predict the ``horizon`` months from it.

    Parameters
    ----------
    config : dict
        ``origin`` ('YYYY-MM'), ``horizon``, ``window``, ``calibration_months`` and ``model``: the
        model step's config slice, or None for the tuned model, whose config (estimator parameters =
        the best ones) comes from the ``tune`` input.
    inputs : dict
        ``tune`` for the tuned model; nothing otherwise.

    Returns
    -------
    ModelArtifact
        ``config`` (the model's, with the estimator parameters refit), ``predictions["scored"]`` (of
        the scored rows, see ``predict_all``), ``metrics`` (``rmse`` over the scored rows, ``n_train``,
        ``n_scored``) and ``info``: ``origin`` and ``rows`` ({"fit", "calibration", "scored"}: dataset
        row positions). No fitted pipeline: the backtest's refits are scored, not reused.
    """
    import pandas as pd

    from bondexp.features import dataset_for
    from bondexp.models.base import final_estimator
    from bondexp.steps.train import _train, build_model, predict_all

    if config["model"] is None and inputs.get("tune") is None:
        raise StepSkipped("the tune step was skipped (nothing to tune), so there is no tuned model to refit")
    model_config = config["model"] if config["model"] is not None else inputs["tune"].config
    dataset = dataset_for(ctx.shared)
    features = list(model_config["features"])
    calibrates = hasattr(final_estimator(build_model(model_config, dataset=dataset)), "calibrate")
    rows = origin_rows(
        dataset.meta["obs_date"],
        config["origin"],
        horizon=config["horizon"],
        window=config["window"],
        calibration_months=config["calibration_months"],
        calibrates=calibrates,
    )
    model = _train(model_config, dataset, params=None, train_rows=rows["fit"], calibration_rows=rows["calibration"] if calibrates else None)
    cols = np.asarray(dataset.columns(features), dtype=np.intp)
    frame = pd.DataFrame(np.asarray(dataset.X[np.ix_(rows["scored"], cols)]), columns=features)
    predictions = predict_all(model, frame)
    y = np.asarray(dataset.y[rows["scored"]])
    rmse = float(np.sqrt(np.mean((y - predictions["mean"]) ** 2)))
    ctx.log.info(
        "%s at %s: fit on %d rows, calibrated on %d, RMSE %.4f over %d rows",
        model_config["name"],
        config["origin"],
        len(rows["fit"]),
        len(rows["calibration"]),
        rmse,
        len(y),
    )
    return ModelArtifact(
        name=model_config["name"],
        group=model_config.get("group", "ml"),
        config=dict(model_config),
        features=features,
        predictions={"scored": predictions},
        metrics={"rmse": rmse, "n_train": int(len(rows["fit"]) + len(rows["calibration"])), "n_scored": int(len(y))},
        # int32: the backtest step receives them all
        info={"origin": config["origin"], "rows": {k: v.astype(np.int32) for k, v in rows.items()}},
    )


# ----------------------------------------------------------------------------- the gathering step


def backtest(config: dict[str, Any], inputs: dict[str, Any], ctx) -> StepOutput:
    """The step: score every (model, origin) refit in ``inputs`` against the DCF and the oracle.

    Returns
    -------
    StepOutput
        The artifact of :func:`score_backtest` and its files (:func:`backtest_files`).
    """
    from bondexp.features import dataset_for

    dataset = dataset_for(ctx.shared)
    meta = {"obs_date": dataset.meta["obs_date"]}
    if dataset.has_oracle:
        meta["oracle_prediction"] = dataset.meta["oracle_prediction"]
    fits = [
        {
            "name": art.name,
            "origin": art.info["origin"],
            "rows": art.info["rows"],
            "predictions": art.predictions["scored"],
            "metrics": art.metrics,
        }
        for art in model_artifacts(inputs).values()
    ]
    artifact = score_backtest(
        fits,
        y=np.asarray(dataset.y),
        meta=meta,
        n_bootstrap=int(config["n_bootstrap"]),
        confidence=float(config["confidence"]),
        seed=int(config["seed"]),
    )
    ctx.log.info("backtest: %d models over %d origins", artifact["metrics"]["n_models"], artifact["metrics"]["n_origins"])
    return StepOutput(artifact, backtest_files(artifact))


# ----------------------------------------------------------------------------- outputs


def backtest_files(artifact: Mapping[str, Any]) -> dict[str, bytes]:
    """``backtest.csv`` and ``plots/backtest.png``, rendered (path -> bytes)."""
    from bondexp import plots
    from bondexp.tables import csv_text

    return {
        "backtest.csv": csv_text(artifact["rows"], CSV_COLUMNS).encode(),
        "plots/backtest.png": plots.backtest_png(artifact, references=(BASELINE, ORACLE), overall=OVERALL),
    }


def report_section(artifact: Mapping[str, Any] | None, *, status: str) -> str:
    """The ``report.md`` section: RMSE per origin per model, and over the whole backtest with its interval."""
    lines = ["## Walk-forward backtest", ""]
    if artifact is None:
        return "\n".join(lines + [f"No backtest results: the backtest step {status}."])
    origins = artifact["origins"]
    overall = [r for r in artifact["rows"] if r["origin"] == OVERALL]
    rmse = {(r["model"], r["origin"]): r["rmse"] for r in artifact["rows"]}
    confidence = 100 * artifact["config"]["confidence"]
    lines += [
        f"Each model refit at {len(origins)} origins ({origins[0]} .. {origins[-1]}) on the months before the origin "
        f"only, and scored on the months after it. `all` pools every scored row; its "
        f"{confidence:g}% interval is a month-block bootstrap (scored months drawn as wholes, since a month's "
        "bonds share its shocks). `dcf_baseline` is the DCF alone, `oracle` the best achievable.",
        "",
        f"| model | all | {confidence:g}% interval | " + " | ".join(origins) + " |",
        "|---|---:|---|" + "---:|" * len(origins),
    ]
    for row in overall:
        cells = [f"{rmse[(row['model'], o)]:.4f}" for o in origins]
        lines.append(
            f"| {row['model']} | {row['rmse']:.4f} | [{row['rmse_ci_low']:.4f}, {row['rmse_ci_high']:.4f}] | " + " | ".join(cells) + " |"
        )
    lines += ["", "RMSE by origin: [plots/backtest.png](plots/backtest.png); every figure: `backtest.csv`."]
    return "\n".join(lines)
