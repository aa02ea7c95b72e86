"""Turn the composed config into the list of steps the runner schedules.

Model files become model steps (all run by `bondexp.steps.train.fit_model`); the `steps` mapping
adds the report steps, whose ``needs: [models]`` stands for every model step chosen, a group name
(``ml``) for that group's model steps, and ``needs_if_chosen`` names steps read only when present
(``~steps.tune`` removes tune, and evaluate then runs without it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from bondexp.artifacts import REFERENCES
from bondexp.config import MODEL_STEP_KEYS, model_key, plain_dict
from bondexp.errors import ConfigError
from bondexp.graph import Step
from bondexp.tuning.space import space_key

MODEL_STEP_TARGET = "bondexp.steps.train.fit_model"
#: In a step's ``needs``, this word stands for every model step.
ALL_MODELS = "models"
#: In a step's ``needs``, a group name stands for the chosen model steps of that group; these mean none when none is chosen.
MODEL_GROUPS = ("ml", "risk")


def resolve_features(features: Any, feature_sets: Mapping[str, Sequence[str]], *, key: str) -> list[str]:
    """Expand a feature-set name or a list of features and set names into feature names, in order."""
    items = [features] if isinstance(features, str) else list(features)
    names: list[str] = []
    for item in items:
        if item in feature_sets:
            names.extend(resolve_features(list(feature_sets[item]), {k: v for k, v in feature_sets.items() if k != item}, key=key))
        else:
            names.append(item)
    if not names:
        raise ConfigError(f"The '{key}' config key must name at least one feature. Got {features!r} instead.")
    return list(dict.fromkeys(names))


def model_step(name: str, spec: Mapping[str, Any], cfg: DictConfig) -> Step:
    """The step that trains one model file: estimator params apart from the step's own keys."""
    feature_sets = plain_dict(cfg.feature_sets)
    early_stopping = {**plain_dict(cfg.early_stopping), **spec.get("early_stopping", {})}
    key = model_key(cfg, name)
    config = {
        "name": name,
        "group": spec.get("group", "ml"),
        "estimator": {k: v for k, v in spec.items() if k not in MODEL_STEP_KEYS},
        "features": resolve_features(spec.get("features", "all"), feature_sets, key=f"{key}.features"),
        "early_stopping": early_stopping,
        "seed": int(cfg.seed),
        "n_jobs": 1,
    }
    if key != f"models.{name}":  # a header-less file: its errors name the key it is set under (only then: fingerprints)
        config["key"] = key
    return Step(name=name, target=MODEL_STEP_TARGET, needs=(), group=config["group"], config=config)


def backtest_steps(cfg: DictConfig, models: dict[str, dict[str, Any]], months: Sequence[Any] | None) -> list[Step]:
    """The walk-forward backtest: a ``<model>@<YYYY-MM>`` step per model and origin (``tuned@...``
    refits the tune step's best parameters when tune runs), then the ``backtest`` step gathering them.

    Empty while ``backtest.origins`` is null. ``months`` are the data's observation months.

    Raises
    ------
    ConfigError
        From :func:`bondexp.steps.backtest.origin_months`, or a model or step named like a backtest step.
    """
    spec = plain_dict(cfg.backtest)
    if spec["origins"] is None:
        return []
    from bondexp.steps import backtest as bt  # here: it imports numpy, which a run without a backtest may not need

    if months is None:
        raise ValueError("backtest_steps needs the data's months when backtest.origins is set.")
    taken = {bt.REPORT_STEP} & (set(models) | set(cfg.steps))
    if "tune" in cfg.steps:
        taken |= {bt.TUNED} & set(models)  # its refits would be named like the tuned model's
    if taken:
        raise ConfigError(f"The backtest adds steps named after {sorted(taken)}; rename that model or step, or set backtest.origins=null.")
    shared = {"horizon": spec["horizon"], "window": spec["window"], "calibration_months": spec["calibration_months"]}
    origins = bt.origin_months(months, spec)
    refits: dict[str, tuple[dict[str, Any] | None, tuple[str, ...]]] = {
        name: (model_step(name, model, cfg).config, ()) for name, model in models.items()
    }
    if "tune" in cfg.steps:
        refits[bt.TUNED] = (None, ("tune",))
    steps = [
        Step(
            name=f"{name}@{origin}",
            target=bt.ORIGIN_TARGET,
            needs=needs,
            group="backtest",
            config={**shared, "origin": origin, "model": config},
        )
        for name, (config, needs) in refits.items()
        for origin in origins
    ]
    report = {"n_bootstrap": int(cfg.eval.n_bootstrap), "confidence": float(cfg.eval.confidence), "seed": int(cfg.seed)}
    return steps + [Step(name=bt.REPORT_STEP, target=bt.REPORT_TARGET, needs=tuple(s.name for s in steps), group="report", config=report)]


def _check_model_names(cfg: DictConfig, models: Mapping[str, Any]) -> None:
    """Raise ConfigError for a model named like a row another step adds to the results.

    The tune step's model is ``<target>_tuned`` (any chosen model may be the target while
    ``tune.target`` is null), and the leaderboard's reference rows are ``dcf_baseline`` and ``oracle``:
    a model of the same name was overwritten in the leaderboard and predict with exit 0, or failed
    evaluate once every model had trained.
    """
    if "tune" in cfg.steps:
        target = cfg.get("tune", {}).get("target")
        targets = [target] if target is not None else list(models)
        clash = sorted(name for name in models if name.endswith("_tuned") and name[: -len("_tuned")] in targets)
        if clash:
            raise ConfigError(
                f"The model {clash[0]!r} has the name the tune step gives the tuned {clash[0][: -len('_tuned')]!r}; "
                "rename the model file's '# @package models.<name>', or drop tune with ~steps.tune."
            )
    if "evaluate" in cfg.steps:
        reserved = sorted(set(models) & set(REFERENCES))
        if reserved:
            raise ConfigError(f"The model {reserved[0]!r} has the name of a leaderboard reference row {list(REFERENCES)}; rename it.")


def _tunable(needs: list[str], models: Mapping[str, Mapping[str, Any]], cfg: DictConfig) -> list[str]:
    """The models among ``needs`` that the tune step may pick while ``tune.target`` is null: those with a search space.

    It tunes the best of them on validation, so it need not wait for the others (``automl``, itself a
    search, is the longest model step at most sizes): it starts as soon as the models it may tune
    have finished. When none has a space, all of ``needs``: the step then skips and names them, and
    evaluate waits for them anyway.
    """
    by_name, by_class = plain_dict(cfg.tune.search_space), plain_dict(cfg.tune.class_search_space)
    tunable = [need for need in needs if need in models and space_key(need, models[need], by_name=by_name, by_class=by_class)]
    return tunable or needs


def build_steps(cfg: DictConfig, models: dict[str, dict[str, Any]], *, months: Sequence[Any] | None = None) -> list[Step]:
    """Every step of the experiment: one per model, the report steps from ``cfg.steps``, then the backtest's.

    ``months`` (the data's observation months) place the backtest origins; only needed when
    ``backtest.origins`` is set.
    """
    _check_model_names(cfg, models)
    steps = [model_step(name, spec, cfg) for name, spec in models.items()]
    groups: dict[str, list[str]] = {}
    for step in steps:
        groups.setdefault(step.group, []).append(step.name)
    for name, decl in cfg.steps.items():
        if name in models:
            raise ConfigError(f"The step 'steps.{name}' has the name of a model; rename one of them.")
        needs: list[str] = []
        for need in decl.needs:
            if need == ALL_MODELS:
                needs.extend(models)
            elif need not in models and need not in cfg.steps and (need in groups or need in MODEL_GROUPS):
                needs.extend(groups.get(need, []))  # a group none of the chosen models is in stands for none
            else:
                needs.append(need)
        needs.extend(need for need in decl.get("needs_if_chosen", []) if need in cfg.steps or need in models)
        if name == "tune" and cfg.tune.target is None:
            needs = _tunable(needs, models, cfg)
        slice_ = plain_dict(decl.config) if decl.config is not None else {}
        slice_ = {**slice_, "seed": int(cfg.seed)}
        steps.append(Step(name=name, target=decl._target_, needs=tuple(needs), group=decl.group, config=slice_))
    return steps + backtest_steps(cfg, models, months)
