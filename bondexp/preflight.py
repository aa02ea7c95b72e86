"""What only the step libraries can check, checked where the steps run, before the first step starts.

The run's process never imports scikit-learn (2-3 s of every run's start), so it cannot tell that
a model file's ``_target_`` does not import or is no regressor, that the estimator takes no
parameter the file gives, that a model lists a feature the data lacks, or that a search space
names a parameter its model does not have, nor whether Optuna can open the ``tune.storage``
database from where the steps run (its driver installed there, the server reachable, the SQLite
folder there). Those failed as the steps ran: a model step once the
data had loaded, beside the other models training, and the tune step only after every model had
trained, each with a resume command that could only fail again. The runner has a worker run
:func:`config_error` before it submits any step (``run_graph(check=...)``), so they stop the run
as a bad config value does: one message naming the key, exit code 2, nothing begun. It costs one
worker about 0.2 s, mostly importing the estimators' modules, which that worker's steps import anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from bondexp.errors import ConfigError
from bondexp.feature_names import CATEGORICAL_FEATURES, FEATURES
from bondexp.models.base import final_estimator
from bondexp.pipeline import MODEL_STEP_TARGET
from bondexp.steps.train import build_model
from bondexp.tuning.space import check_estimator_params, search_space, space_key


@dataclass(frozen=True)
class _Columns:
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]


#: The tune step's target, whose search spaces are checked here (the model steps' is MODEL_STEP_TARGET).
TUNE_STEP = "bondexp.tuning.step.tune"


def check_steps(steps: Mapping[str, tuple[str, Mapping[str, Any]]], pending: Collection[str] | None = None) -> None:
    """Build every model step's estimator, check every search space the tune step may use, and open its storage.

    Parameters
    ----------
    steps : mapping
        ``{step name: (target, config)}`` of the run's graph.
    pending : collection of str, optional
        The steps that will run (default: all). A tune step reused from its checkpoint needs no
        storage: a resume of a finished study's run does not wait on its database.

    Raises
    ------
    ConfigError
        Naming the model file or config key at fault (see :func:`bondexp.steps.train.build_model`
        and :func:`bondexp.tuning.space.search_space`).
    """
    columns = _Columns(FEATURES, CATEGORICAL_FEATURES)  # what every dataset has, synthetic or read from files
    models = {name: config for name, (target, config) in steps.items() if target == MODEL_STEP_TARGET}
    estimators = {name: final_estimator(build_model(config, dataset=columns)) for name, config in models.items()}
    for name, (target, config) in steps.items():
        if target == TUNE_STEP:
            _check_search_spaces(config, models, estimators)
            if config.get("storage") is not None and (pending is None or name in pending):
                _check_storage(config["storage"])


def config_error(steps: Mapping[str, tuple[str, Mapping[str, Any]]], pending: Collection[str] | None = None) -> ConfigError | None:
    """:func:`check_steps`'s error, returned rather than raised: what the runner calls on a worker.

    Raised on a Dask worker, it was logged there as a failed task with its traceback ("Compute
    Failed"), printed above the run's one message.
    """
    try:
        check_steps(steps, pending)
    except ConfigError as err:
        return err
    return None


def _check_search_spaces(tune_config: Mapping[str, Any], models: Mapping[str, Any], estimators: Mapping[str, Any]) -> None:
    """Every chosen model's space (by name or by class), as the tune step would read it were the model its target."""
    by_name, by_class = tune_config.get("search_space") or {}, tune_config.get("class_search_space") or {}
    for name, config in models.items():
        estimator_config = config.get("estimator", {})
        if space_key(name, estimator_config, by_name=by_name, by_class=by_class) is None:
            continue  # not tunable: the config check already requires a space of a named tune.target
        key, space = search_space(name, estimator_config, by_name=by_name, by_class=by_class)
        check_estimator_params(space, estimators[name], key=key)


def _check_storage(storage: str) -> None:
    """Open the tune step's database storage as the step will (creating its tables, as the step would first).

    A storage that could not open was found only when tune ran, after every model had trained.
    """
    from bondexp.tuning.study import open_storage  # Optuna's import, only for a run that tunes into a database

    open_storage(storage)  # raises the ConfigError naming tune.storage
