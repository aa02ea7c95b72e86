"""The tune step: choose the target, run the study, keep the best trial's fit, return it as one more model.

The artifact is a :class:`~bondexp.artifacts.ModelArtifact` named ``<target>_tuned``, so evaluate, drift and
predict treat the tuned model like any other; the tuning facts (``target``, ``best_params``, ``trials``,
``untuned_value``, ``improved``, ``note``) ride along in ``info["tuning"]``, which the step also renders
as ``tuning.json`` and ``plots/tuning_history.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from bondexp.artifacts import ModelArtifact, StepOutput, model_artifacts
from bondexp.errors import BondexpError, ConfigError, StepSkipped
from bondexp.features import Dataset, dataset_for
from bondexp.models.base import final_estimator
from bondexp.steps.train import PREDICTED_SPLITS, predict_all, validation_metrics
from bondexp.tuning import study as studies
from bondexp.tuning.space import check_estimator_params, search_space, space_key, untuned_params


def tune(config: dict[str, Any], inputs: dict[str, Any], ctx) -> StepOutput:
    """Tune ``config["target"]`` (or the best tunable ML model) with a batched Optuna study.

    Parameters
    ----------
    config : dict
        The ``tune`` config slice plus ``seed``.
    inputs : dict
        The artifacts of the models it may tune.
    ctx : StepContext
        ``run_dir`` holds the study journal; up to ``workers`` processes run a batch's trials;
        ``load_pipeline`` loads the target's fitted pipeline (the only one this step reads).

    Returns
    -------
    StepOutput
        A :class:`ModelArtifact` named ``<target>_tuned`` (the best trial's own fit; the tuning facts
        in ``info["tuning"]``), with ``tuning.json`` and ``plots/tuning_history.png``, and a warning for the
        terminal when trials failed (each failure and its traceback are in the step's log).

    Raises
    ------
    StepSkipped
        ``target`` is null and no ML model among ``inputs`` has a search space.
    ConfigError
        An unknown target, a target without a search space, a bad search space or storage.
    BondexpError
        No trial of the study completed: every one failed (the message carries the first failure), or none ran.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    by_name, by_class = config.get("search_space") or {}, config.get("class_search_space") or {}
    models = model_artifacts(inputs)
    target = choose_target(config.get("target"), models, by_name=by_name, by_class=by_class)
    artifact = models[target]
    estimator_config = artifact.config.get("estimator", {})
    key, space = search_space(target, estimator_config, by_name=by_name, by_class=by_class)
    pipeline = artifact.pipeline if artifact.pipeline is not None else ctx.load_pipeline(target)
    estimator = final_estimator(pipeline)
    check_estimator_params(space, estimator, key=key)
    untuned, unplaced = untuned_params(estimator_config, estimator, space)
    dataset = dataset_for(ctx.shared)
    study, spec, n_stale = _open_study(target, key, artifact, space, untuned, config=config, dataset=dataset, ctx=ctx)
    reused = reusable_untuned_result(artifact, pipeline, dataset, exact_untuned=not unplaced)
    started = time.perf_counter()
    best_fit, timed_out = studies.run_study(
        study,
        model_config=artifact.config,
        dataset=dataset,
        space=space,
        n_trials=int(config["n_trials"]),
        batch_size=int(config["batch_size"]),
        timeout=config.get("timeout"),
        workers=ctx.workers,
        seed=int(config.get("seed", 0)),
        threads=ctx.threads,
        log=ctx.log,
        untuned_result=reused,
    )
    info = {
        "study_name": study.study_name,
        "storage": studies.storage_label(spec),
        "search_space": key,
        "stale_trials_failed": n_stale,
        "untuned_fit_reused": reused is not None,
        "study_seconds": round(time.perf_counter() - started, 3),
        "untuned_params": untuned,
        "unplaced": unplaced,
    }
    trials = studies.counted_trials(study, int(config["n_trials"]))
    best = _best_trial(study.study_name, trials)
    # No trial had the untuned values (some lie outside the space) and none beat the untuned model: validation keeps it
    kept_untuned = bool(unplaced) and best.value is not None and best.value >= float(artifact.metrics["val_rmse"])
    if kept_untuned:
        model, predictions = pipeline, dict(artifact.predictions)
    else:
        model, predictions = _best_model(best, best_fit, artifact, pipeline, dataset, exact_untuned=not unplaced)
    tuned = _tuned_artifact(
        artifact,
        trials,
        best,
        model=model,
        predictions=predictions,
        dataset=dataset,
        info=info,
        timed_out=timed_out,
        kept_untuned=kept_untuned,
        ctx=ctx,
    )
    record = tuned.info["tuning"]
    shown: tuple[str, ...] = ()
    if record["failures"]:
        ctx.log.warning(record["failures"])
        shown = (f"{record['failures']} (every error in tuning.json, tracebacks in logs/{ctx.name}.log)",)
    return StepOutput(tuned, tuning_files(record), warnings=shown)


def _open_study(
    target: str,
    key: str,
    artifact: ModelArtifact,
    space: Mapping[str, Any],
    untuned: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    dataset: Dataset,
    ctx,
) -> tuple[optuna.Study, str, int]:
    """``(study, storage spec, stale trials failed)``: the target's study, resumed from its storage when there,
    with the trials a killed run left running failed and the untuned parameters enqueued unless already run."""
    spec = studies.storage_spec_for(config.get("storage"), run_dir=Path(ctx.run_dir))
    name = studies.study_name(
        target,
        model_config=artifact.config,
        space_spec={p: repr(d) for p, d in space.items()},
        batch_size=int(config["batch_size"]),
        seed=int(config.get("seed", 0)),
        data_fingerprint=dataset.fingerprint,
    )
    study = studies.open_study(name, spec)
    n_stale = studies.fail_stale_trials(study, spec)
    studies.enqueue_untuned(study, untuned)
    finished = len(studies.finished_trials(study))
    ctx.log.info("tuning %s (space %s): study %s, %d trial(s) finished, %d stale trial(s) failed", target, key, name, finished, n_stale)
    return study, spec, n_stale


def choose_target(
    target: str | None, models: Mapping[str, ModelArtifact], *, by_name: Mapping[str, Any], by_class: Mapping[str, Any]
) -> str:
    """``target`` itself, or when None the ML model (group ``ml``) with a search space, by name or by
    class, and the lowest validation RMSE.

    Raises
    ------
    ConfigError
        ``target`` is not among the trained models.
    StepSkipped
        ``target`` is None and no ML model has a search space: there is nothing to tune, which is
        no reason to stop a run.
    """
    if target is not None:
        if target not in models:
            raise ConfigError(f"The 'tune.target' config key must name a trained model, one of {sorted(models)}. Got {target!r} instead.")
        return target
    scores = {
        name: float(art.metrics["val_rmse"])
        for name, art in models.items()
        if art.group == "ml"
        and np.isfinite(art.metrics.get("val_rmse", np.nan))
        and space_key(name, art.config.get("estimator", {}), by_name=by_name, by_class=by_class)
    }
    ml = sorted(name for name, art in models.items() if art.group == "ml")
    if not ml:
        raise StepSkipped("nothing to tune: tune.target is null and no model of group 'ml' was chosen")
    if not scores:
        raise StepSkipped(
            f"nothing to tune: tune.target is null and no chosen model of group 'ml' ({', '.join(ml)}) has a "
            "search space in tune.search_space (by name) or tune.class_search_space (by estimator class)"
        )
    return min(scores, key=scores.__getitem__)


def reusable_untuned_result(artifact: ModelArtifact, pipeline, dataset: Dataset, *, exact_untuned: bool) -> tuple | None:
    """The model step's own fit as the untuned trial's result, or None when a trial must fit it.

    That trial would build the same pipeline (every searched parameter at its untuned value:
    ``exact_untuned``) and fit it on the same rows with the same seed; on one BLAS/OpenMP thread, as
    the step ran (``info["threads"]``), it is the same arithmetic, so the fit and its validation
    RMSE are the step's to the last bit. Fitting it again cost one fit of the target in every study.
    """
    if not exact_untuned or artifact.info.get("threads") != 1 or "validation" not in artifact.predictions:
        return None
    predictions = {"validation": artifact.predictions["validation"]}
    try:
        value = studies.objective(dataset, predictions)
    except ValueError:  # a trial fits it and fails the same way, recorded as the study records failures
        return None
    return value, pipeline, predictions, f"the {artifact.name} step"


def _best_trial(study_name: str, trials: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    """The complete trial with the lowest value, the earliest among equals (Optuna's own tie-break is unspecified)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        return min(done, key=lambda t: (t.value, t.number))
    reason = failure_summary(trials) or "no trial ran (tune.timeout too short?)"
    raise BondexpError(f"The tuning study {study_name!r} has no complete trial: {reason}")


def failure_summary(trials: Sequence[optuna.trial.FrozenTrial]) -> str | None:
    """``"15 of 16 trials failed: <the first error's first line>"``, or None when none failed.

    Counts finished trials only (:func:`bondexp.tuning.study.is_finished`): a stale one was never told.
    """
    finished = [t for t in trials if studies.is_finished(t)]
    failed = [t for t in finished if t.state == TrialState.FAIL]
    if not failed:
        return None
    first = (str(failed[0].user_attrs.get("error") or "").strip().splitlines() or ["no error recorded"])[0]
    return f"{len(failed)} of {len(finished)} trials failed: {first}"


def _best_model(best, best_fit: studies.TrialFit | None, artifact: ModelArtifact, pipeline, dataset: Dataset, *, exact_untuned: bool):
    """The tuned model and its predictions on the splits a model step predicts: never a second, different fit.

    The untuned trial's fit is the untuned model itself (``exact_untuned``: every searched parameter
    had its untuned value in range), so that one is reused as is. Otherwise the
    best trial's own fit, or, when it was made by an earlier (interrupted) run, the same fit made
    again: one thread, same parameters, same seed, same rows.
    """
    if best.user_attrs.get(studies.UNTUNED_ATTR) and exact_untuned:
        return pipeline, dict(artifact.predictions)
    if best_fit is not None and best_fit.number == best.number:
        model, predictions = best_fit.model, dict(best_fit.predictions)
    else:
        value = studies.run_trial(artifact.config, dataset, dict(best.params))
        if isinstance(value, studies.TrialError):
            raise BondexpError(f"Fitting the best trial {best.number} again failed: {value.message}\n{value.traceback}")
        _, model, predictions, _ = value
    features = list(artifact.features)
    for split in PREDICTED_SPLITS:  # a trial predicts the validation split only
        if split not in predictions:
            predictions[split] = predict_all(model, dataset.frame(split, features))
    return model, predictions


def _tuned_artifact(
    artifact: ModelArtifact, trials, best, *, model, predictions, dataset, info, timed_out, kept_untuned: bool, ctx
) -> ModelArtifact:
    """The tuned model's artifact; ``info["tuning"]`` holds what ``tuning.json`` and the report show.

    ``trials`` are the study's counted ones (:func:`bondexp.tuning.study.counted_trials`).
    ``kept_untuned``: the model is the untuned one, which no trial beat, so its parameters are the untuned ones.
    """
    target = artifact.name
    metrics: dict[str, Any] = validation_metrics(dataset.target("validation"), predictions["validation"])
    untuned_value = float(artifact.metrics["val_rmse"])
    improved = bool(metrics["val_rmse"] < untuned_value)
    metrics.update(
        tuned_model=f"{target}_tuned",  # the model's name: bondexp.runs names it when no evaluate chose among the models
        best_value=float(best.value),
        n_trials=sum(map(studies.is_finished, trials)),
        n_failed=sum(studies.is_finished(t) and t.state == TrialState.FAIL for t in trials),
        improved=improved,
        timed_out=timed_out,
        reproducible=not timed_out,
    )
    note = _note(
        target,
        best,
        val_rmse=metrics["val_rmse"],
        untuned_value=untuned_value,
        unplaced=info.pop("unplaced"),
        timed_out=timed_out,
        kept_untuned=kept_untuned,
    )
    ctx.log.info(note)
    info["tuning"] = {
        "target": target,
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "untuned_value": untuned_value,
        "untuned_params": info["untuned_params"],
        "improved": improved,
        "kept_untuned": kept_untuned,
        "note": note,
        "trials": [_trial_record(t) for t in trials],
        "val_rmse": metrics["val_rmse"],
        "n_trials": metrics["n_trials"],
        "n_failed": metrics["n_failed"],
        "failures": failure_summary(trials),
        "timed_out": timed_out,
    }
    chosen = {} if kept_untuned else dict(best.params)
    config = {**artifact.config, "name": f"{target}_tuned", "estimator": {**artifact.config.get("estimator", {}), **chosen}}
    return ModelArtifact(
        name=f"{target}_tuned",
        group=artifact.group,
        config=config,
        features=list(artifact.features),
        predictions=predictions,
        metrics=metrics,
        info=info,
        pipeline=model,
    )


def _note(target: str, best, *, val_rmse: float, untuned_value: float, unplaced: Sequence[str], timed_out: bool, kept_untuned: bool) -> str:
    """One sentence on the outcome the report prints."""
    if kept_untuned:
        text = (
            f"No trial beat the untuned model of {target} on validation ({untuned_value:.4f}; the best trial "
            f"{float(best.value):.4f}), so the tuned model is the untuned one (the search space holds no untuned "
            f"value for {sorted(unplaced)}, so no trial had them)"
        )
    elif best.user_attrs.get(studies.UNTUNED_ATTR):
        text = f"No trial beat the untuned parameters of {target} on validation; the tuned model is the untuned one"
    else:
        text = f"Tuning {target} lowered the validation RMSE from {untuned_value:.4f} to {val_rmse:.4f}"
    if unplaced and not kept_untuned:
        text += f" (no untuned value in the search space for {sorted(unplaced)}, so the untuned trial sampled them)"
    if timed_out:
        text += "; tune.timeout stopped the study before tune.n_trials, so this result depends on the machine's speed"
    return text + "."


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Plain JSON-safe summary of a trial: value is None unless it completed."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": float(trial.value) if trial.state == TrialState.COMPLETE and trial.value is not None else None,
        "params": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in trial.params.items()},
        "untuned": bool(trial.user_attrs.get(studies.UNTUNED_ATTR, False)),
        "reused_step_fit": bool(trial.user_attrs.get(studies.REUSED_ATTR, False)),
        "error": trial.user_attrs.get("error") or (_STALE_ERROR if trial.user_attrs.get(studies.STALE_ATTR) else None),
    }


#: The ``error`` of a trial failed as stale: it showed as a failure without one.
_STALE_ERROR = "stale: a killed run left it running; not counted, and its parameters asked again"


def tuning_files(record: Mapping[str, Any]) -> dict[str, bytes]:
    """``tuning.json`` (the tuning facts) and ``plots/tuning_history.png``, rendered (path -> bytes)."""
    from bondexp.plots import tuning_history_png

    text = json.dumps(record, indent=2, default=str) + "\n"
    return {"tuning.json": text.encode(), "plots/tuning_history.png": tuning_history_png(record)}
