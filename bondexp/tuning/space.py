"""Search spaces: which parameters of which model are searched, as Optuna distributions.

A model's space is ``tune.search_space.<model name>`` when given, else the default space of its
estimator class, ``tune.class_search_space.<class name>`` (the ``search_space`` config group,
``conf/search_space/default.yaml``). The class is the last part of the model file's ``_target_``,
so the check needs no import and runs before any work (numpy and Optuna are imported where a
value or a distribution is read: the graph's build reads :func:`space_key` on every run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bondexp.errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # Optuna is imported where a distribution is built: the config check needs only space_key
    from optuna.distributions import BaseDistribution


def class_name(estimator_config: Mapping[str, Any]) -> str:
    """The estimator class a model file names: the last part of its ``_target_``."""
    return str(estimator_config.get("_target_", "")).rpartition(".")[2]


def space_key(name: str, estimator_config: Mapping[str, Any], *, by_name: Mapping[str, Any], by_class: Mapping[str, Any]) -> str | None:
    """The config key holding model ``name``'s search space, or None when it has none.

    ``tune.search_space.<name>`` wins over ``tune.class_search_space.<class>``.
    """
    if by_name.get(name):
        return f"tune.search_space.{name}"
    cls = class_name(estimator_config)
    if by_class.get(cls):
        return f"tune.class_search_space.{cls}"
    return None


def search_space(
    name: str, estimator_config: Mapping[str, Any], *, by_name: Mapping[str, Any], by_class: Mapping[str, Any]
) -> tuple[str, dict[str, BaseDistribution]]:
    """``(config key, {parameter: distribution})`` of model ``name``.

    Raises
    ------
    ConfigError
        The model has no space by name or by class, or a parameter's spec is malformed; the
        message names the key.
    """
    key = space_key(name, estimator_config, by_name=by_name, by_class=by_class)
    if key is None:
        raise ConfigError(
            f"The 'tune.search_space.{name}' config key must map parameters of model {name!r} to ranges "
            f"({{low, high, log}} or {{choices}}) to tune it, since its class {class_name(estimator_config)!r} has no "
            f"default space in tune.class_search_space (classes: {sorted(k for k, v in by_class.items() if v)})."
        )
    params = by_name.get(name) or by_class[class_name(estimator_config)]
    return key, {param: distribution(spec, key=f"{key}.{param}") for param, spec in params.items()}


def check_estimator_params(space: Mapping[str, BaseDistribution], estimator, *, key: str) -> None:
    """Raise ConfigError for a searched name ``estimator`` does not take, or a bound or choice its own constraints
    reject (a learning rate from -1), before any trial fails on it: such trials failed one by one, the study went on,
    and the run ended 'ok'."""
    known = estimator.get_params(deep=False)
    for name in space:
        if name not in known:
            raise ConfigError(
                f"The '{key}.{name}' config key must name a parameter of {type(estimator).__name__}. "
                f"Got {name!r} instead.{did_you_mean(name, known)}"
            )
    if not hasattr(estimator, "_parameter_constraints"):
        return
    from sklearn.base import clone
    from sklearn.utils._param_validation import InvalidParameterError

    for name, dist in space.items():
        for value in _extremes(dist):
            try:
                clone(estimator).set_params(**{name: value})._validate_params()
            except InvalidParameterError as err:
                rejects = f"which {type(estimator).__name__} rejects: {err}"
                raise ConfigError(f"The '{key}.{name}' config key reaches {value!r}, {rejects}") from None


def _extremes(dist: BaseDistribution) -> list[Any]:
    """The values a distribution's constraint check needs: its bounds, or every choice."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    return [dist.low, dist.high]  # type: ignore[attr-defined]  # Int- and FloatDistribution


def distribution(spec: Any, *, key: str) -> BaseDistribution:
    """One parameter's distribution: ``{low, high, log, type}`` (type int when both bounds are ints) or ``{choices}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def fail(expected: str) -> None:
        raise ConfigError(f"The '{key}' config key must be {expected}. Got {spec!r} instead.")

    if not isinstance(spec, Mapping):
        fail("a mapping {low, high, log, type} or {choices}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            fail("{choices: [a non-empty list of values]} and nothing else")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            fail("choices of null, bool, int, float or str (Optuna stores nothing else)")
        return CategoricalDistribution(list(choices))
    unknown = set(spec) - {"low", "high", "log", "type"}
    if unknown or not {"low", "high"} <= set(spec):
        fail("a mapping with 'low' and 'high' and optionally 'log' and 'type'")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        fail("numeric bounds with low < high")
    if log and low <= 0:
        fail("a range with low > 0 when log is true")
    kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind == "int":
        if low != int(low) or high != int(high):
            fail("integer bounds for type int")
        return IntDistribution(int(low), int(high), log=log)
    if kind != "float":
        fail("a range whose 'type' is 'int' or 'float'")
    return FloatDistribution(float(low), float(high), log=log)


def untuned_params(
    estimator_config: Mapping[str, Any], estimator, space: Mapping[str, BaseDistribution]
) -> tuple[dict[str, Any], list[str]]:
    """The model's own values of the searched parameters, and the names whose value the space cannot hold.

    A value comes from the model file, else from the fitted ``estimator``'s ``get_params()`` (its
    default). A value outside its range (or a ``None`` default of a numeric range) is left out:
    Optuna samples it even in the untuned trial, which then is not quite the untuned model.
    """
    import numpy as np

    defaults = estimator.get_params(deep=False)
    values: dict[str, Any] = {}
    unplaced: list[str] = []
    for name, dist in space.items():
        value = estimator_config.get(name, defaults.get(name))
        if _holds(dist, value):
            values[name] = value.item() if isinstance(value, np.generic) else value
        else:
            unplaced.append(name)
    return values, unplaced


def _holds(dist: BaseDistribution, value: Any) -> bool:
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if not isinstance(dist, (IntDistribution, FloatDistribution)):
        raise TypeError(
            f"unexpected Optuna distribution {type(dist).__name__}: the search space builds only int, float and categorical ones"
        )
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return False
    if isinstance(dist, IntDistribution) and value != int(value):
        return False
    return bool(dist.low <= value <= dist.high)
