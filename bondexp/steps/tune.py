"""The tune step: an Optuna study on one model's hyperparameters, resumable and run on the run's workers.

The objective is the mean validation RMSE over expanding-window, time-ordered folds of the latest
``max_train_rows`` training rows (fold ``k`` trains on blocks ``0..k`` and scores block ``k + 1``,
blocks cut at month boundaries), so a trial never learns from rows later than those it is scored
on. Each fold's score is reported to the pruner. The untuned parameters are enqueued as the first
trial, so the best trial is never worse than the untuned model on the objective; the best
parameters are then refit on the whole training split and scored on validation like any model.

The study lives in the run folder (an Optuna journal file, which several processes may append to)
or in a database named by ``storage``. Its name carries a hash of everything that defines the
objective (model config, search space, folds, data), so a resumed run continues the same study:
finished trials are kept and only ``n_trials`` minus them are run; trials a killed process left
RUNNING are marked failed and not counted. With ``workers > 1`` the trials run in that many
spawned processes sharing the one study; trials always fit with one BLAS/OpenMP thread.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from threadpoolctl import threadpool_limits

from bondexp.atomic import atomic_write_json
from bondexp.data.split import expanding_folds as time_folds
from bondexp.errors import BondexpError, ConfigError
from bondexp.executors import worker_label
from bondexp.features import Dataset, dataset_for
from bondexp.metrics import rmse
from bondexp.models.base import final_estimator
from bondexp.steps.train import fit_predict

#: Folder of the run holding the study's journal file.
STUDY_DIR = "tuning"
#: Trial states that count as done: a resumed study runs only ``n_trials`` minus these.
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: User attribute marking the enqueued trial that holds the model's untuned parameters.
UNTUNED_ATTR = "untuned"
#: Heartbeat of trials in a database study, so trials of a killed process are failed after a grace period.
HEARTBEAT_S = 30
#: How often a trial process checks that the process that started it is still alive (seconds).
_PARENT_POLL_S = 1.0
#: Meta columns the trial processes get (never the oracle columns).
_WINDOW_META = ("obs_date", "bond_id", "rating", "sector", "market_price", "fair_value")


# ----------------------------------------------------------------------------- the step


def tune(config: Dict[str, Any], inputs: Dict[str, Any], ctx) -> Dict[str, Any]:
    """Tune ``config["target"]`` (or the best tunable ML model) with Optuna, refit the best trial, score it.

    Parameters
    ----------
    config : dict
        The ``tune`` config slice plus ``seed``.
    inputs : dict
        ``evaluate`` and every model step's artifact.
    ctx : StepContext
        ``run_dir`` holds the study journal; ``workers`` processes run trials.

    Returns
    -------
    dict
        A model artifact named ``<target>_tuned`` (``predictions`` on validation and test) with
        ``target``, ``best_params``, ``trials``, ``untuned_value``, ``improved`` and ``note``.

    Raises
    ------
    ConfigError
        No ML model to default to, an unknown target, a target without a search space, a bad
        search space or storage, or too few training months for ``n_folds``.
    BondexpError
        Every trial of the study failed (the message carries the first failure).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    models = model_artifacts(inputs)
    target = choose_target(config.get("target"), models, config.get("search_space") or {})
    artifact = models[target]
    space = parse_search_space(config.get("search_space") or {}, target=target)
    check_estimator_params(space, artifact, target=target)
    dataset = dataset_for(ctx.shared)
    study, info = run_study(config, artifact, target=target, space=space, dataset=dataset, ctx=ctx)
    trials = study.get_trials(deepcopy=False)
    best = _best_trial(study, trials)

    started = time.perf_counter()
    fitted, predictions = fit_predict(artifact["config"], dataset, params=dict(best.params))
    info["refit_seconds"] = round(time.perf_counter() - started, 3)
    val_rmse = rmse(dataset.target("validation"), predictions["validation"]["mean"])
    untuned_value = float(artifact["metrics"]["val_rmse"])
    improved = bool(val_rmse < untuned_value)
    note = _note(target, best, val_rmse=val_rmse, untuned_value=untuned_value, unplaced=info.pop("unplaced"))
    ctx.log.info(note)
    model_config = artifact["config"]
    return {
        "name": f"{target}_tuned",
        "group": artifact["group"],
        "config": {**model_config, "name": f"{target}_tuned",
                   "estimator": {**model_config.get("estimator", {}), **best.params}},
        "model": fitted,
        "features": list(artifact["features"]),
        "predictions": predictions,
        "metrics": {
            "val_rmse": val_rmse,
            "best_value": float(best.value),
            "n_trials": sum(t.state in DONE_STATES for t in trials),
            "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "improved": improved,
        },
        "info": info,
        "target": target,
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "trials": [_trial_record(t) for t in trials],
        "untuned_value": untuned_value,
        "untuned_params": info["untuned_params"],
        "improved": improved,
        "note": note,
    }


def run_study(
    config: Mapping[str, Any], artifact: Mapping[str, Any], *, target: str, space: Mapping[str, BaseDistribution],
    dataset: Dataset, ctx,
) -> Tuple[optuna.Study, Dict[str, Any]]:
    """Open (or resume) the target's study, enqueue the untuned trial and run the trials still missing.

    Returns
    -------
    (study, info)
        The study with every trial, and plain facts about it: ``study_name``, ``storage``,
        ``n_folds``, ``window_rows``, ``stale_trials_failed``, ``study_seconds``,
        ``untuned_params`` and ``unplaced`` (searched parameters with no untuned value in range).
    """
    window = tuning_window(dataset, max_train_rows=int(config["max_train_rows"]), n_folds=int(config["n_folds"]),
                           seed=int(config.get("seed", 0)))
    folds = time_folds(window.meta["obs_date"], n_folds=int(config["n_folds"]))
    untuned, unplaced = untuned_params(artifact, space)
    storage_spec = storage_spec_for(config.get("storage"), run_dir=Path(ctx.run_dir))
    name = study_name(target, artifact["config"], config, dataset.fingerprint)
    seed, pruner = int(config.get("seed", 0)), config["pruner"]
    study = _study(name, storage_spec, seed=seed, pruner=pruner, create=True)
    n_stale = fail_stale_trials(study, storage_spec)
    n_existing = len(study.get_trials(deepcopy=False))
    enqueue_untuned(study, untuned)
    n_done = len(study.get_trials(deepcopy=False, states=DONE_STATES))
    n_todo = max(0, int(config["n_trials"]) - n_done)
    ctx.log.info(
        "tuning %s: study %s, %d trial(s) done, %d to run on %d worker(s), %d stale trial(s) failed",
        target, name, n_done, n_todo, min(ctx.workers, max(n_todo, 1)), n_stale,
    )
    started = time.perf_counter()
    if n_todo:
        objective = FoldObjective(model_config=artifact["config"], window=window, folds=folds, space=dict(space))
        run_trials(objective, study_name=name, storage_spec=storage_spec, n_trials=n_todo,
                   timeout=config.get("timeout"), workers=ctx.workers, seed=seed, pruner=pruner,
                   n_existing=n_existing)
    info = {
        "study_name": name,
        "storage": _storage_label(storage_spec),
        "n_folds": len(folds),
        "window_rows": len(window.y),
        "stale_trials_failed": n_stale,
        "study_seconds": round(time.perf_counter() - started, 3),
        "untuned_params": untuned,
        "unplaced": unplaced,
    }
    return _study(name, storage_spec, seed=seed, pruner=pruner, create=False), info


def write_outputs(artifact: Dict[str, Any], run_dir) -> None:
    """Write ``tuning.json`` (atomically) and ``plots/tuning_history.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    keys = ("target", "best_params", "best_value", "untuned_value", "untuned_params", "improved", "note", "trials")
    record = {key: artifact[key] for key in keys}
    record["val_rmse"] = artifact["metrics"]["val_rmse"]
    atomic_write_json(run_dir / "tuning.json", record)
    (run_dir / "plots").mkdir(exist_ok=True)
    plot_history(artifact, run_dir / "plots" / "tuning_history.png")


# ----------------------------------------------------------------------------- choosing what to tune


def model_artifacts(inputs: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The model steps among ``inputs``: artifacts carrying ``group``, ``config`` and ``metrics``."""
    return {
        name: art for name, art in inputs.items()
        if isinstance(art, Mapping) and {"group", "config", "metrics", "predictions"} <= art.keys()
    }


def choose_target(
    target: Optional[str], models: Mapping[str, Mapping[str, Any]], search_space: Mapping[str, Any]
) -> str:
    """``target`` itself, or when None the ML model (group ``ml``) with a search space and the lowest
    validation RMSE. Models without a search space (an AutoML search, a user's Lasso) are left out:
    there is nothing declared to tune in them.

    Raises
    ------
    ConfigError
        ``target`` is not a trained model, or it is None and no ML model with a search space was trained.
    """
    if target is not None:
        if target not in models:
            raise ConfigError(
                f"The 'tune.target' config key must name a trained model, one of {sorted(models)}. "
                f"Got {target!r} instead."
            )
        return target
    scores = {
        name: float(art["metrics"]["val_rmse"]) for name, art in models.items()
        if art["group"] == "ml" and search_space.get(name)
        and np.isfinite(art["metrics"].get("val_rmse", np.nan))
    }
    if not scores:
        raise ConfigError(
            "The 'tune.target' config key is null, which tunes the best ML model with a search space, but "
            f"no model of group 'ml' with one and a validation RMSE was trained (models: {sorted(models)}; "
            f"search spaces: {sorted(k for k, v in search_space.items() if v)}). Name one in tune.target."
        )
    return min(scores, key=scores.__getitem__)


def parse_search_space(search_space: Mapping[str, Any], *, target: str) -> Dict[str, BaseDistribution]:
    """Turn ``tune.search_space.<target>`` into Optuna distributions, one per estimator parameter.

    A parameter is ``{"low", "high", "log": bool, "type": "int" | "float"}`` (type defaults to int
    when both bounds are integers) or ``{"choices": [...]}``.

    Raises
    ------
    ConfigError
        The target has no search space, or a parameter's spec is malformed; the message names the key.
    """
    key = f"tune.search_space.{target}"
    params = search_space.get(target)
    if not params:
        raise ConfigError(
            f"The '{key}' config key must map parameters of model {target!r} to ranges "
            f"({{low, high, log}} or {{choices}}) to tune it. Got {params!r} instead; models with a search "
            f"space: {sorted(k for k, v in search_space.items() if v)}."
        )
    return {name: _distribution(spec, key=f"{key}.{name}") for name, spec in params.items()}


def check_estimator_params(space: Mapping[str, BaseDistribution], artifact: Mapping[str, Any], *, target: str) -> None:
    """Raise ConfigError for a searched name the target's estimator does not take, before any trial fails on it."""
    estimator = final_estimator(artifact["model"])
    known = estimator.get_params(deep=False)
    for name in space:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"The 'tune.search_space.{target}.{name}' config key must name a parameter of "
                f"{type(estimator).__name__}. Got {name!r} instead.{hint}"
            )


def _distribution(spec: Any, *, key: str) -> BaseDistribution:
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
    artifact: Mapping[str, Any], space: Mapping[str, BaseDistribution]
) -> Tuple[Dict[str, Any], List[str]]:
    """The model's own values of the searched parameters, and the names whose value the space cannot hold.

    A value comes from the model file (``config["estimator"]``), else from the fitted estimator's
    own ``get_params()`` (its default; the pipeline's preprocessing is not searched). A value
    outside its range (or a ``None`` default of a numeric range) is left out: Optuna samples it
    even in the untuned trial.
    """
    estimator_cfg = artifact["config"].get("estimator", {})
    defaults = final_estimator(artifact["model"]).get_params(deep=False)
    values: Dict[str, Any] = {}
    unplaced: List[str] = []
    for name, dist in space.items():
        value = estimator_cfg.get(name, defaults.get(name))
        if _holds(dist, value):
            values[name] = value.item() if isinstance(value, np.generic) else value
        else:
            unplaced.append(name)
    return values, unplaced


def _holds(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return False
    if isinstance(dist, IntDistribution) and value != int(value):
        return False
    return bool(dist.low <= value <= dist.high)


# ----------------------------------------------------------------------------- folds and objective


def tuning_window(dataset: Dataset, *, max_train_rows: int, n_folds: int, seed: int = 0) -> Dataset:
    """The latest training months holding at most ``max_train_rows`` rows, as a small Dataset of their own.

    Whole months, never part of one, and at least ``2 * (n_folds + 1)`` of them, so the folds have
    months to cut; when those months hold more than ``max_train_rows`` rows (a large market, where
    one month alone may), a seeded uniform sample of their rows bounds each trial's cost instead.
    The trial processes get this window (not the whole dataset), so shipping it to them is cheap.
    """
    if max_train_rows < 1:
        raise ConfigError(f"The 'tune.max_train_rows' config key must be at least 1. Got {max_train_rows!r} instead.")
    train = np.asarray(dataset.splits["train"])
    train = train[np.argsort(dataset.meta["obs_date"][train], kind="stable")]
    month = dataset.meta["obs_date"][train].astype("datetime64[M]")
    months, starts = np.unique(month, return_index=True)
    rows_from = len(train) - starts  # rows in month i and every later one
    fits = np.flatnonzero(rows_from <= max_train_rows)
    first = min(fits[0] if len(fits) else len(months) - 1, max(len(months) - 2 * (n_folds + 1), 0))
    train = train[starts[first]:]
    if len(train) > max_train_rows:
        keep = np.random.default_rng([seed, max_train_rows]).choice(len(train), max_train_rows, replace=False)
        train = train[np.sort(keep)]
    everything = np.arange(len(train))
    return Dataset(
        fingerprint=f"{dataset.fingerprint}-tune-{max_train_rows}-{n_folds}-{seed}",
        feature_names=dataset.feature_names,
        X=np.ascontiguousarray(dataset.X[train]),
        y=np.asarray(dataset.y[train]),
        splits={"train": everything, "validation": everything, "test": everything},
        meta={k: np.asarray(dataset.meta[k][train]) for k in _WINDOW_META if k in dataset.meta},
        sectors=dataset.sectors,
    )


@dataclasses.dataclass(frozen=True)
class FoldObjective:
    """Mean fold RMSE of one trial's parameters; picklable, so spawned trial processes get it whole."""

    model_config: Dict[str, Any]
    window: Dataset
    folds: List[Tuple[np.ndarray, np.ndarray]]
    space: Dict[str, BaseDistribution]

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_label())
        params = {name: _suggest(trial, name, dist) for name, dist in self.space.items()}
        scores = []
        for k, (train_rows, val_rows) in enumerate(self.folds):
            fold = dataclasses.replace(self.window, splits={"train": train_rows, "validation": val_rows, "test": val_rows})
            _, predictions = fit_predict(self.model_config, fold, params=params)
            scores.append(rmse(self.window.y[val_rows], predictions["validation"]["mean"]))
            trial.report(scores[-1], step=k)
            if k < len(self.folds) - 1 and trial.should_prune():  # after the last fold, finishing is free
                raise optuna.TrialPruned(f"fold {k} RMSE {scores[-1]:.6g}")
        return float(np.mean(scores))


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


# ----------------------------------------------------------------------------- the study


def storage_spec_for(storage: Optional[str], *, run_dir: Path) -> str:
    """The study's storage as text: the database URL, or ``journal:<path>`` in the run folder when None.

    Raises
    ------
    ConfigError
        ``storage`` is not a URL (``sqlite:///...``, ``postgresql://...``).
    """
    if storage is None:
        path = Path(run_dir) / STUDY_DIR / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"journal:{path}"
    if not isinstance(storage, str) or "://" not in storage:
        raise ConfigError(
            "The 'tune.storage' config key must be null (a journal file in the run folder) or a database URL "
            f"such as 'sqlite:///tuning.db' or 'postgresql://user@host/db'. Got {storage!r} instead."
        )
    return storage


def _storage(spec: str) -> optuna.storages.BaseStorage:
    """Build the storage a spec names (in each process: storages are not shared across processes)."""
    if spec.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(spec[len("journal:"):])
        return optuna.storages.JournalStorage(backend)
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental", and the only way to fail dead trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(spec, heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S)
    except Exception as exc:  # a missing driver or an unreachable server: say which key to fix
        raise ConfigError(f"The 'tune.storage' config key names a database Optuna cannot open ({spec!r}): {exc}") from exc


def _storage_label(spec: str) -> str:
    """The spec without a password, for the artifact and the logs."""
    if spec.startswith("journal:"):
        return spec
    scheme, _, rest = spec.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if "@" in rest else spec


def study_name(target: str, model_config: Mapping[str, Any], config: Mapping[str, Any], data_fingerprint: str) -> str:
    """``<target>-<hash>``: the hash covers what defines the objective, not the budget (``n_trials``, ``timeout``)."""
    defining = {
        "model": model_config,
        "space": (config.get("search_space") or {}).get(target),
        "n_folds": config["n_folds"],
        "max_train_rows": config["max_train_rows"],
        "data": data_fingerprint,
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{target}-{digest}"


def _study(name: str, spec: str, *, seed: int, pruner: str, create: bool) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed)
    chosen = optuna.pruners.MedianPruner(n_startup_trials=5) if pruner == "median" else optuna.pruners.NopPruner()
    storage = _storage(spec)
    if create:
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=chosen,
                                   direction="minimize", load_if_exists=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=chosen)


def fail_stale_trials(study: optuna.Study, spec: str) -> int:
    """Mark trials a killed process left RUNNING as failed; return how many.

    Only for the run folder's journal: the run lock guarantees no other process is tuning in it.
    A database study may be shared with live processes elsewhere, so there Optuna's heartbeat
    fails a dead process's trials after its grace period instead.
    """
    if not spec.startswith("journal:"):
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    storage = _storage(spec)
    for trial in stale:
        # FrozenTrial has no public storage id; Optuna's own fail_stale_trials uses the same one.
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def enqueue_untuned(study: optuna.Study, params: Mapping[str, Any]) -> bool:
    """Enqueue the untuned parameters unless the study already ran or queued them; return whether enqueued."""
    kept = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    if any(t.user_attrs.get(UNTUNED_ATTR) for t in study.get_trials(deepcopy=False, states=kept)):
        return False
    study.enqueue_trial(dict(params), user_attrs={UNTUNED_ATTR: True})
    return True


def run_trials(
    objective: FoldObjective, *, study_name: str, storage_spec: str, n_trials: int, timeout: Optional[float],
    workers: int, seed: int, pruner: str, n_existing: int,
) -> None:
    """Run ``n_trials`` more trials: in this process when ``workers == 1``, else on spawned processes.

    The trials are tickets the processes take one at a time, so a process whose trials were pruned
    early takes more instead of idling while another finishes a fixed share; no new trial starts
    after ``timeout`` seconds. Each worker's sampler seed mixes ``seed``, the trials already in the
    study (``n_existing``) and the worker's index: parallel samplers do not propose the same points,
    a resumed study does not replay its first random points, and with one worker the same seed
    gives the same trials.
    """
    n_workers = max(1, min(workers, n_trials))
    seeds = np.random.SeedSequence([seed, n_existing]).generate_state(n_workers)
    deadline = None if timeout is None else time.time() + float(timeout)
    # spawn: safe from a runner worker (itself a pool process) and from a parent with threads.
    context = multiprocessing.get_context("spawn")
    tickets = context.Value("i", n_trials)
    jobs = [dict(study_name=study_name, storage_spec=storage_spec, deadline=deadline, objective=objective,
                 seed=int(seed_i), pruner=pruner) for seed_i in seeds]
    if n_workers == 1:
        _optimize(tickets=tickets, **jobs[0])
        return
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context, initializer=_init_trial_process,
                             initargs=(tickets, os.getpid())) as pool:
        for future in [pool.submit(_optimize_worker, **job) for job in jobs]:
            future.result()


#: The trial tickets shared by the trial processes of one study (set by :func:`_init_trial_process`).
_TICKETS = None


def _init_trial_process(tickets, parent: int) -> None:
    """Initializer of a trial process: the shared tickets, exit with the parent, Optuna's per-trial logs off."""
    global _TICKETS
    _TICKETS = tickets
    _exit_with_parent(parent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _optimize_worker(**job: Any) -> None:
    """Entry point of a trial process."""
    _optimize(tickets=_TICKETS, **job)


def _exit_with_parent(parent: int) -> None:
    """End this trial process soon after its parent dies (a killed run), instead of tuning on as an orphan.

    The trial it was running stays RUNNING in the journal; the resumed run marks it failed.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _take_ticket(tickets) -> bool:
    """Take one trial from the shared count; False when none is left."""
    with tickets.get_lock():
        if tickets.value <= 0:
            return False
        tickets.value -= 1
        return True


def _optimize(*, tickets, study_name: str, storage_spec: str, deadline: Optional[float],
              objective: FoldObjective, seed: int, pruner: str) -> None:
    """Run trials while tickets last and the deadline has not passed, with one BLAS/OpenMP thread, also
    in-process: trial fits are small, and on a busy machine OpenMP threads spin-waiting for a core
    cost far more than a second thread gains (a 15k-row HistGradientBoosting fit measured 0.24 s on
    one thread, 13-25 s on two, under load)."""
    study = _study(study_name, storage_spec, seed=seed, pruner=pruner, create=False)
    # A trial that raises is recorded FAILED and the study goes on; all failing is reported afterwards.
    with threadpool_limits(limits=1):
        while (deadline is None or time.time() < deadline) and _take_ticket(tickets):
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)


def _best_trial(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    if any(t.state == TrialState.COMPLETE for t in trials):
        return study.best_trial
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reason = failed[0].system_attrs.get("fail_reason", "unknown") if failed else "no trial ran (timeout too short?)"
    raise BondexpError(
        f"The tuning study {study.study_name!r} has no complete trial ({len(failed)} failed). First failure: {reason}"
    )


def _note(target: str, best, *, val_rmse: float, untuned_value: float, unplaced: Sequence[str]) -> str:
    """One sentence on the outcome the report prints, honest when tuning did not help."""
    if best.user_attrs.get(UNTUNED_ATTR):
        text = f"The untuned parameters of {target} scored best on the tuning folds; the refit is the untuned model"
    elif val_rmse < untuned_value:
        text = f"Tuning {target} lowered the validation RMSE from {untuned_value:.4f} to {val_rmse:.4f}"
    else:
        text = (f"Tuning {target} did not help: the best trial's refit has validation RMSE {val_rmse:.4f} "
                f"against {untuned_value:.4f} untuned; keep the untuned model")
    if unplaced:
        text += f" (no untuned value in the search space for {sorted(unplaced)}, so the untuned trial sampled them)"
    return text + "."


def _trial_record(trial: optuna.trial.FrozenTrial) -> Dict[str, Any]:
    """Plain JSON-safe summary of a trial: value is None unless it completed."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": float(trial.value) if trial.state == TrialState.COMPLETE else None,
        "params": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in trial.params.items()},
        "fold_values": [float(trial.intermediate_values[k]) for k in sorted(trial.intermediate_values)],
        "untuned": bool(trial.user_attrs.get(UNTUNED_ATTR, False)),
    }


# ----------------------------------------------------------------------------- the plot


def plot_history(artifact: Mapping[str, Any], path: Path) -> None:
    """Objective per complete trial, the running best, the untuned trial's value and where trials were pruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = artifact["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if done:
        numbers = np.array([t["number"] for t in done])
        values = np.array([t["value"] for t in done])
        ax.scatter(numbers, values, s=22, color="tab:blue", label="complete trial (mean fold RMSE)")
        ax.step(numbers, np.minimum.accumulate(values), where="post", color="tab:green", label="best so far")
    if pruned:  # a pruned trial has no mean over all folds: mark it along the bottom edge
        ax.scatter([t["number"] for t in pruned], np.full(len(pruned), 0.03), s=22, marker="x", color="tab:gray",
                   transform=ax.get_xaxis_transform(), label="pruned trial")
    untuned = [t for t in done if t["untuned"]]
    if untuned:
        ax.axhline(untuned[0]["value"], color="tab:orange", linestyle="--", label="untuned parameters")
    if trials:  # the pruned marks use axes coordinates for y, which autoscaling ignores
        ax.set_xlim(-0.5, max(t["number"] for t in trials) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective: mean fold RMSE")
    ax.set_title(f"Tuning {artifact['target']}: best {artifact['best_value']:.4f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
