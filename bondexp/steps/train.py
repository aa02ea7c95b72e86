"""The model step: build any estimator a model file names, fit it on the train split, predict the validation and test splits.

Every model of the suite, and a user's own (``_target_: sklearn.linear_model.Lasso``), goes through
the same three functions: :func:`build_model` (config -> unfitted pipeline), :func:`fit_predict`
(fit, calibrate on validation, predict) and the step :func:`fit_model`. The tuning step calls the
first two with its own parameters and training rows.

Estimators may implement a small protocol, detected with ``hasattr`` on the pipeline's last step:
``fit(X, y, groups=...)`` (gets each training row's observation date, so holdouts and folds fall
between whole months), ``calibrate(X_val, y_val[, groups])`` (conformal calibration on the
validation split),
``check_features(names)`` (raises scikit-learn's InvalidParameterError when the model file's features
lack a column a parameter names; asked before any fit),
``predict_interval(X) -> (lower, upper)`` with ``interval_level_``, ``predict_std(X)``,
``predict_var_es(X) -> (VaR, ES)``, ``predict_outputs(X)`` (all of these as :func:`predict_all`'s
dict, from one pass: used instead of them when present), ``predict_regime(X)``, and the attributes ``metrics_`` (flat)
and ``info_`` (anything) that land in the artifact.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from threadpoolctl import threadpool_limits

from bondexp.artifacts import ModelArtifact
from bondexp.data.split import month_holdout, month_labels
from bondexp.errors import ConfigError, did_you_mean
from bondexp.features import Dataset, dataset_for
from bondexp.metrics import prediction_scores
from bondexp.models.base import (
    final_estimator,
    fit_time_ordered,
    iterations,
    make_preprocessor,
    set_early_stopping,
    takes_raw_features,
    transform_features,
)

SPLITS = ("train", "validation", "test")
#: The splits a model step predicts: what the drift (validation, test) and evaluate (test) steps read.
#: The train split's predictions, which nothing read, took 1.6-1.7 s of CPU in a default run (of about 45 s in its steps).
PREDICTED_SPLITS = ("validation", "test")
_one_thread_depth = 0  # how many one_thread() blocks this process is inside


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One BLAS/OpenMP thread inside the block; nested blocks cost nothing.

    A matrix product's last bit can depend on the thread count, and the same model must give the
    same predictions in a step (any worker count) and in predict. Each ``threadpool_limits`` call
    rescans the process's loaded libraries (about 8 ms), so callers looping over models or batches
    open one block around the loop and :func:`predict_all`'s own block inside it is free.
    """
    global _one_thread_depth
    if _one_thread_depth:
        yield
        return
    with threadpool_limits(limits=1):
        _one_thread_depth += 1
        try:
            yield
        finally:
            _one_thread_depth -= 1


class FeatureColumns(Protocol):
    """What :func:`build_model` reads of a dataset: a :class:`~bondexp.features.Dataset`, or the names alone."""

    @property
    def feature_names(self) -> Sequence[str]: ...

    @property
    def categorical(self) -> Sequence[str]: ...


def build_model(config: Mapping[str, Any], *, dataset: FeatureColumns, params: Mapping[str, Any] | None = None) -> Pipeline:
    """The unfitted model a model step's config describes.

    Parameters
    ----------
    config : mapping
        The model step's config slice (``estimator`` with ``_target_``, ``features``,
        ``early_stopping``, ``seed``, ``n_jobs``).
    dataset : FeatureColumns
        Only its ``feature_names`` and ``categorical`` are read; never its rows.
    params : mapping, optional
        Estimator parameters overriding the model file's, by the names the file uses.

    Returns
    -------
    Pipeline
        ``prep`` (standardisation and one-hot encoding for estimators that need them, else
        ``passthrough``) then ``model``, the estimator with ``random_state``, ``n_jobs`` and the
        early-stopping settings put in where it has them.

    Raises
    ------
    ConfigError
        If ``_target_`` is missing, cannot be instantiated or names no regressor, or a feature is unknown.
    """
    name = config.get("name")
    key = config.get("key") or f"models.{name}"  # where the model's settings are given (`model` for a header-less file)
    features = list(config["features"])
    unknown = [f for f in features if f not in dataset.feature_names]
    if unknown:
        raise ConfigError(
            f"The '{key}.features' config key names {unknown}, which the data does not have; its features are "
            f"{list(dataset.feature_names)}.{did_you_mean(unknown[0], dataset.feature_names)}"
        )
    spec = dict(config["estimator"])
    if "_target_" not in spec:
        raise ConfigError(f"The '{key}._target_' config key must name an estimator class. Got none.")
    spec.update(params or {})
    _check_parameter_names(spec, key=key)
    try:
        estimator = instantiate(spec, _convert_="all")
    except Exception as exc:  # hydra wraps import and argument errors in its own exception types
        reason = str(exc).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "")  # bondexp shows the cause
        raise ConfigError(f"The '{key}' model file could not build {spec['_target_']!r}: {reason}") from exc
    _check_regressor(estimator, target=spec["_target_"], key=key)
    own = estimator.get_params(deep=False)
    constrained = own.get("monotonic_cst")
    if isinstance(constrained, Mapping) and set(constrained) - set(features):
        raise ConfigError(
            f"The '{key}.monotonic_cst' config key names {sorted(set(constrained) - set(features))}, which are not among "
            f"the model's features ({key}.features): {features}. Add them, or set {key}.monotonic_cst=null."
        )
    fixed = {"random_state": int(config.get("seed", 0)), "n_jobs": int(config.get("n_jobs", 1))}
    estimator.set_params(**{k: v for k, v in fixed.items() if k in own})
    set_early_stopping(estimator, config.get("early_stopping"))
    _check_parameter_values(estimator, key=key, features=features)
    prep = "passthrough" if takes_raw_features(estimator) else make_preprocessor(features, categorical=dataset.categorical)
    return Pipeline([("prep", prep), ("model", estimator)])


def _check_regressor(estimator: Any, *, target: str, key: str) -> None:
    """Raise ConfigError unless ``estimator`` has fit, predict, get_params and set_params, and scikit-learn's
    ``estimator_type`` tag calls it a regressor or nothing (a user's BaseEstimator without RegressorMixin).

    A clusterer (KMeans) trained and could be chosen the best model; a classifier failed in fit once the data
    had loaded ("Unknown label type: continuous"); a class without ``get_params`` failed the check with a
    worker's traceback.
    """
    missing = [method for method in ("fit", "predict", "get_params", "set_params") if not hasattr(estimator, method)]
    kind = None if missing else _estimator_type(estimator)
    if missing or kind not in (None, "regressor"):
        got = f"a {type(estimator).__name__} without {missing[0]}" if missing else f"whose scikit-learn estimator type is {kind!r}"
        raise ConfigError(
            f"The '{key}._target_' config key must name a regressor: a scikit-learn estimator with fit and predict "
            f"(a class inheriting sklearn.base.BaseEstimator and RegressorMixin). Got {target!r}, {got}."
        )


def _estimator_type(estimator: Any) -> str | None:
    """scikit-learn's ``estimator_type`` tag: ``'regressor'``, ``'classifier'``, ``'clusterer'``, ... or None."""
    try:
        return get_tags(estimator).estimator_type
    except AttributeError:  # no __sklearn_tags__ (a class not inheriting BaseEstimator): a Pipeline reads no type from it either
        return None


def _estimator_class(target: str, *, key: str) -> Any:
    """What ``_target_`` names (found as Hydra finds it: the longest importable module, then its
    attributes), or ConfigError saying which part is wrong, with a suggestion.

    Hydra's ``get_class`` logs its own ERROR line before raising, which printed above bondexp's message.
    """
    parts = target.split(".")
    for n in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:n])
        try:
            found: Any = importlib.import_module(module)
            break
        except Exception as exc:  # a user's module may fail to import in any way: a SyntaxError, a RuntimeError it raises
            if not (isinstance(exc, ModuleNotFoundError) and exc.name is not None and module.startswith(exc.name)):
                # the module is there but its own import failed (a package it needs is missing, its code is wrong)
                raise ConfigError(
                    f"The '{key}._target_' config key names {target!r}, whose module {module!r} fails: {_import_failure(exc)}"
                ) from None
    else:
        # Among the hundreds of installed top-level modules, difflib's default 0.6 finds one for nearly any
        # name: 'my_est', the user's own module run from another folder, got "Did you mean 'pytest'?".
        # A misspelled package is closer ('sklaern' -> 'sklearn' 0.86, 'xgbost' -> 'xgboost' 0.92).
        installed = [m.name for m in pkgutil.iter_modules()]
        why = (
            "a class is named with its module's path"
            if len(parts) == 1
            else f"no module {parts[0]!r} is installed or beside the command "
            "(your own module: run the command from its folder, or put that folder on PYTHONPATH)."
            f"{did_you_mean(parts[0], installed, cutoff=0.8)}"
        )
        raise ConfigError(
            f"The '{key}._target_' config key must name an importable class, as sklearn.linear_model.Lasso does. Got {target!r}: {why}"
        )
    for depth, part in enumerate(parts[n:], start=n):
        if not hasattr(found, part):
            where = ".".join(parts[:depth])
            names = [m.name for m in pkgutil.iter_modules(getattr(found, "__path__", []))]
            names += [a for a in dir(found) if not a.startswith("_")]
            raise ConfigError(
                f"The '{key}._target_' config key must name an importable class. Got {target!r}: {where!r} has no {part!r}."
                f"{did_you_mean(part, names)}"
            )
        found = getattr(found, part)
    return found


def _import_failure(exc: Exception) -> str:
    """Why a module did not import, in one line: an ImportError's text (it names the missing package), else the
    error's type and text, a SyntaxError's with its file's whole path (its own text names the base name only)."""
    if isinstance(exc, ImportError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


def _check_parameter_names(spec: Mapping[str, Any], *, key: str) -> None:
    """Raise ConfigError naming a key of the model file that the estimator class does not take.

    Hydra's own error for it is a TypeError raised inside ``__init__`` ("got an unexpected keyword
    argument 'alpah'"); the class's signature lets this name the key and suggest the parameter. A
    class that takes ``**kwargs`` is left to ``instantiate``.
    """
    cls = _estimator_class(str(spec["_target_"]), key=key)
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: instantiate's message says why
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    for param in spec:
        if not (param.startswith("_") and param.endswith("_")) and param not in accepted:  # Hydra's _target_, _partial_ ...
            raise ConfigError(
                f"The '{key}.{param}' config key must name a parameter of {cls.__name__}. Got {param!r} instead."
                f"{did_you_mean(param, accepted)}"
            )


def _check_parameter_values(estimator: Any, *, key: str, features: Sequence[str]) -> None:
    """Raise ConfigError for a value the estimator's own constraints reject (``alpha: abc``), naming the key.

    scikit-learn checks them only in ``fit``: the step failed once the run had begun, and its
    ``Resume with:`` could only fail again. An estimator that also answers ``check_features`` (the
    regime model) is asked about the model's ``features`` here too. One without constraints is left to ``fit``.
    """
    if not hasattr(estimator, "_parameter_constraints"):
        return
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        estimator._validate_params()
        if hasattr(estimator, "check_features"):  # what an estimator needs of its columns (the regime's state)
            estimator.check_features(features)
    except InvalidParameterError as err:
        found = re.match(r"The '(\w+)' parameter of (\w+) (.*)", str(err), re.S)
        if found is None:
            raise ConfigError(f"The '{key}' model file sets a value {type(estimator).__name__} rejects: {err}") from None
        param, cls, rest = found.groups()
        raise ConfigError(f"The '{key}.{param}' config key (a parameter of {cls}) {rest}") from None


def predict_all(model: Pipeline, X: pd.DataFrame) -> dict[str, Any]:
    """Predictions for the rows of ``X`` in one batch: ``mean`` plus whatever the estimator offers.

    Returns
    -------
    dict
        ``mean``; with an interval ``lower``, ``upper`` and ``level``; ``std``; ``var`` and
        ``es`` (value at risk and expected shortfall, price points per 100 below fair value).
    """
    with one_thread():
        est, Xt = final_estimator(model), transform_features(model, X)
        if hasattr(est, "predict_outputs"):  # the same outputs from one pass over the estimator's members
            return {k: v if k == "level" else np.asarray(v, dtype=np.float64) for k, v in est.predict_outputs(Xt).items()}
        out: dict[str, Any] = {"mean": np.asarray(est.predict(Xt), dtype=np.float64)}
        if hasattr(est, "predict_interval"):
            out["lower"], out["upper"] = (np.asarray(a, dtype=np.float64) for a in est.predict_interval(Xt))
            out["level"] = float(est.interval_level_)
        if hasattr(est, "predict_std"):
            out["std"] = np.asarray(est.predict_std(Xt), dtype=np.float64)
        if hasattr(est, "predict_var_es"):
            out["var"], out["es"] = (np.asarray(a, dtype=np.float64) for a in est.predict_var_es(Xt))
    return out


def _train(config, dataset: Dataset, *, params, train_rows, calibration_rows=None) -> Pipeline:
    """Build, fit on the training rows (time order kept, months given) and calibrate on the validation split.

    ``calibration_rows`` calibrate instead of the validation split (a backtest calibrates on the
    latest months before its origin).
    """
    features = list(config["features"])
    model = build_model(config, dataset=dataset, params=params)
    rows = dataset.splits["train"] if train_rows is None else np.sort(np.asarray(train_rows))
    cols = np.asarray(dataset.columns(features), dtype=np.intp)
    X = pd.DataFrame(np.asarray(dataset.X[np.ix_(rows, cols)]), columns=features)
    fit_time_ordered(model, X, np.asarray(dataset.y[rows]), groups=np.asarray(dataset.meta["obs_date"])[rows])
    est = final_estimator(model)
    if hasattr(est, "calibrate"):
        if calibration_rows is None:
            X_cal, y_cal = dataset.frame("validation", features), dataset.target("validation")
            dates = dataset.meta_of("validation", "obs_date")
        else:
            rows = np.sort(np.asarray(calibration_rows))
            X_cal = pd.DataFrame(np.asarray(dataset.X[np.ix_(rows, cols)]), columns=features)
            y_cal, dates = np.asarray(dataset.y[rows]), np.asarray(dataset.meta["obs_date"])[rows]
        _calibrate(est, transform_features(model, X_cal), y_cal, dates)
    return model


def _calibrate(est, X, y, obs_date) -> None:
    """``est.calibrate`` on these rows, with their dates when it takes ``groups``."""
    if "groups" in inspect.signature(est.calibrate).parameters:
        est.calibrate(X, y, groups=obs_date)
    else:
        est.calibrate(X, y)


def held_out_interval_metrics(model: Pipeline, dataset: Dataset, features: Sequence[str]) -> dict[str, float]:
    """Coverage, pinball loss and NLL of a calibrated model on validation rows its calibration did not use.

    A copy of the model is calibrated on the earlier half of the validation months and scored on the
    later half; the model itself keeps its calibration on all validation months, as it ships
    (calibrating it back cost a third calibration pass). Scored on the rows it was calibrated on, a
    conformal band covers its nominal level by construction.

    Returns
    -------
    dict
        ``val_coverage`` and ``val_pinball`` (with an interval), ``val_nll`` (with a std); empty
        for a model without ``calibrate`` or with fewer than two validation months.
    """
    est = final_estimator(model)
    dates = dataset.meta_of("validation", "obs_date")
    if not hasattr(est, "calibrate") or len(np.unique(month_labels(dates))) < 2:
        return {}
    frame, y = dataset.frame("validation", features), dataset.target("validation")
    early, late = month_holdout(dates, fraction=0.5)
    held = copy.deepcopy(model)
    _calibrate(final_estimator(held), transform_features(held, frame.iloc[early]), y[early], dates[early])
    scored = validation_metrics(y[late], predict_all(held, frame.iloc[late]))
    return {k: v for k, v in scored.items() if k in ("val_coverage", "val_pinball", "val_nll")}


def fit_predict(
    config: Mapping[str, Any],
    dataset: Dataset,
    *,
    params: Mapping[str, Any] | None = None,
    train_rows: Sequence[int] | None = None,
    splits: Sequence[str] = ("validation", "test"),
) -> tuple[Pipeline, dict[str, dict[str, Any]]]:
    """Fit a model as its step would and predict ``splits`` (the validation and test splits).

    Parameters
    ----------
    config : mapping
        The model step's config slice.
    dataset : Dataset
    params : mapping, optional
        Estimator parameters overriding the model file's.
    train_rows : sequence of int, optional
        Dataset row indices to train on instead of the train split (sorted into time order).
    splits : sequence of str
        The splits to predict (a tuning trial needs only the validation split's).

    Returns
    -------
    (fitted, predictions)
        The fitted pipeline and ``{split: P}`` for each of ``splits`` (see :func:`predict_all`).

    Raises
    ------
    ConfigError
        From :func:`build_model`.
    """
    model = _train(config, dataset, params=params, train_rows=train_rows)
    features = list(config["features"])
    return model, {s: predict_all(model, dataset.frame(s, features)) for s in splits}


def validation_metrics(y: np.ndarray, pred: Mapping[str, Any]) -> dict[str, float]:
    """:func:`bondexp.metrics.prediction_scores` of the validation split, named ``val_*``: ``val_rmse``,
    ``val_mae``, ``val_r2``; with an interval ``val_coverage`` and ``val_pinball``; with a std ``val_nll``."""
    return {f"val_{key}": value for key, value in prediction_scores(y, pred).items() if key != "level"}


def _regime_report(est, model: Pipeline, dataset: Dataset, features: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Regime by month for every split and, with oracle columns, the ARI over the training months.

    Reads ``dataset.meta`` (dates, oracle regimes) for reporting only; nothing here is fit.
    """
    by_month: dict[str, int] = {}
    metrics: dict[str, Any] = {}
    for split in SPLITS:
        regime = np.asarray(est.predict_regime(transform_features(model, dataset.frame(split, features))))
        months = dataset.meta_of(split, "obs_date").astype("datetime64[M]")
        first = np.unique(months, return_index=True)[1]
        by_month.update({str(months[i]): int(regime[i]) for i in first})
        if split == "train" and dataset.has_oracle:
            oracle = dataset.meta_of(split, "oracle_regime")
            metrics["train_regime_ari"] = float(adjusted_rand_score(oracle[first], regime[first]))
            stressed = (oracle[first] > 0).astype(int)
            metrics["train_regime_ari_calm_vs_stress"] = float(adjusted_rand_score(stressed, regime[first] > 0))
    return metrics, {"regime_by_month": by_month}


def fit_model(config: dict[str, Any], inputs: dict[str, Any], ctx) -> ModelArtifact:
    """The step function of every model: fit on train, calibrate on validation, predict validation and test.

    Returns
    -------
    ModelArtifact
        ``predictions`` on the validation and test splits (see :func:`predict_all`), ``metrics`` (validation scores,
        iterations, the estimator's own), ``info`` and the fitted ``pipeline``.

    Raises
    ------
    ConfigError
        From :func:`build_model`.
    """
    dataset = dataset_for(ctx.shared)
    features = list(config["features"])
    model = _train(config, dataset, params=None, train_rows=None)
    predictions = {s: predict_all(model, dataset.frame(s, features)) for s in PREDICTED_SPLITS}
    # RMSE, MAE, R2 on every validation row; interval scores only on rows the calibration did not see.
    metrics: dict[str, Any] = {
        k: v
        for k, v in validation_metrics(dataset.target("validation"), predictions["validation"]).items()
        if k in ("val_rmse", "val_mae", "val_r2")
    }
    metrics.update(held_out_interval_metrics(model, dataset, features))
    est = final_estimator(model)
    runs = iterations(model)
    if runs:
        metrics.update(
            n_iter=sum(n for n, _ in runs),
            max_iter=sum(m for _, m in runs),
            early_stopped=any(n < m for n, m in runs),
        )
    metrics.update(getattr(est, "metrics_", {}))
    # threads: the OpenMP budget the fit ran under, BLAS being one thread (tune reuses a one-thread fit as its untuned trial)
    info: dict[str, Any] = {"estimator": type(est).__name__, "n_train": int(len(dataset.splits["train"])), "threads": int(ctx.threads)}
    info.update(getattr(est, "info_", {}))
    if hasattr(est, "predict_regime"):
        regime_metrics, regime_info = _regime_report(est, model, dataset, features)
        metrics.update(regime_metrics)
        info.update(regime_info)
    ctx.log.info("%s: validation RMSE %.4f", config["name"], metrics["val_rmse"])
    return ModelArtifact(
        name=config["name"],
        group=config.get("group", "ml"),
        config=dict(config),
        features=features,
        predictions=predictions,
        metrics=metrics,
        info=info,
        pipeline=model,
    )
