"""The study: its storage and name, resume, and trials asked in fixed batches and told back in order.

Determinism: the trials of a batch are asked one after another from a TPE sampler seeded by the
run's seed and the number of trials already finished, run at once, and told back in trial-number
order once the whole batch is done. So the sampler sees the same history whatever order the fits
finish in, with one trial process or many, in-process or not, and a resumed study (whose
unfinished batch is asked again) proposes what an uninterrupted one would. There is no pruning:
a trial is one fit on the whole training split, so there is nothing cheaper to stop it on, and
pruning inside a batch would depend on finishing order. ``timeout`` is only a safety cap checked
between batches: a batch starts only when, taking as long as the last one, it would end within
the cap (at a million rows one batch of ``advanced`` took 456 s, and the next one, started
before 600 s, would have doubled the step). When it binds the outcome says so (``timed_out``),
since the study then depends on the machine's speed.

The objective is the validation RMSE of a fit on the whole training split: the fit the tuned
model keeps, so trial fits see the data the tuned model sees, and the untuned parameters (trial
0) score exactly what the untuned model scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend  # a submodule `optuna.storages` does not export
from optuna.trial import TrialState

from bondexp.errors import ConfigError, hide_passwords
from bondexp.executors import worker_label
from bondexp.features import Dataset
from bondexp.script import ctrl_c_held
from bondexp.steps.train import fit_predict, one_thread

#: Folder of the run holding the study's journal file.
STUDY_DIR = "tuning"
#: Optuna's lock file beside a journal file (``optuna.storages.journal._file.LOCK_FILE_SUFFIX``, not exported).
JOURNAL_LOCK_SUFFIX = ".lock"
#: User attribute marking the enqueued trial that holds the model's untuned parameters.
UNTUNED_ATTR = "untuned"
#: User attribute marking the untuned trial told from the model step's own fit instead of fitted again.
REUSED_ATTR = "reused_step_fit"
#: User attribute marking a trial a killed process left RUNNING (failed on resume, asked again).
STALE_ATTR = "stale"
#: How many times a database's storage is opened when another process is creating its tables at that moment.
_SCHEMA_RACE_TRIES = 5
#: How often a trial process checks that the process that started it is still alive (seconds).
_PARENT_POLL_S = 1.0


@dataclasses.dataclass
class TrialFit:
    """A finished trial's fit, kept in the parent so the tuned model is the best trial's own fit.

    ``predictions`` holds the validation split's only: a trial is judged on it, and only the best
    trial's model predicts the other splits (16 trials' test predictions were 8% of tune's CPU).
    """

    number: int
    value: float
    model: Any
    predictions: dict[str, dict[str, Any]]


@dataclasses.dataclass
class TrialError:
    """A failed trial's error as text: an exception a trial process sends back arrives without its traceback."""

    message: str  # ``<type>: <message>``, what ``tuning.json`` records
    traceback: str


# ----------------------------------------------------------------------------- storage and name


def storage_spec_for(storage: str | None, *, run_dir: Path) -> str:
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


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """Build the storage a spec names."""
    if spec.startswith("journal:"):
        path = spec[len("journal:") :]
        # The run folder's journal is this run's alone (run.lock): a lock file beside it was left by a run that a
        # Ctrl-C or a kill stopped as it wrote, and Optuna waited 30 s on it before breaking it, the bar standing still.
        Path(path + JOURNAL_LOCK_SUFFIX).unlink(missing_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as exc:
            from sqlalchemy.exc import IntegrityError  # Optuna's RDBStorage is built on SQLAlchemy

            attempt += 1
            if isinstance(exc, IntegrityError) and attempt < _SCHEMA_RACE_TRIES:
                # Runs started together on a new database each create Optuna's tables, and all but one failed on
                # `UNIQUE constraint failed: alembic_version.version_num`: the tables are there now.
                time.sleep(0.1 * attempt)
                continue
            # A missing driver or an unreachable server: say which key to fix, on one line with the cause
            # (SQLAlchemy ends its message with a "Background on this error" link, which the terminal showed
            # alone), no password, and no chained traceback: a driver's own message may quote the URL.
            raise ConfigError(
                f"The 'tune.storage' config key names a database Optuna cannot open ({storage_label(spec)!r}): {_cause(exc)}"
            ) from None


def _cause(exc: BaseException) -> str:
    """``exc``'s message on one line, SQLAlchemy's link line left out, with the exception it came from; passwords hidden."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("(Background on this error")]
    text = " ".join(lines) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return hide_passwords(text)


def storage_label(spec: str) -> str:
    """The spec with its password shown as ``***`` (the user kept), for the artifact, the logs and messages."""
    return spec if spec.startswith("journal:") else hide_passwords(spec)


def study_name(target: str, *, model_config: Mapping[str, Any], space_spec: Any, batch_size: int, seed: int, data_fingerprint: str) -> str:
    """``<target>-<hash>``: the hash covers what defines the trials, not the budget (``n_trials``, ``timeout``)."""
    defining = {"model": model_config, "space": space_spec, "batch_size": batch_size, "seed": seed, "data": data_fingerprint}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{target}-{digest}"


def open_study(name: str, spec: str) -> optuna.Study:
    """Create or load the study (the sampler is replaced per batch by :func:`batch_sampler`)."""
    return optuna.create_study(
        study_name=name, storage=open_storage(spec), direction="minimize", load_if_exists=True, pruner=optuna.pruners.NopPruner()
    )


def fail_stale_trials(study: optuna.Study, spec: str) -> int:
    """Mark trials a killed process left RUNNING as failed (and stale); return how many.

    Only for the run folder's journal: the run lock guarantees no other process is tuning in it.
    A database study may be shared with live processes elsewhere, so its RUNNING trials are left
    alone; they are not counted as finished, so a resume still runs ``n_trials``.
    """
    if not spec.startswith("journal:"):
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        # FrozenTrial has no public storage id; Optuna's own fail_stale_trials uses the same one.
        study._storage.set_trial_user_attr(trial._trial_id, STALE_ATTR, True)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Told back (complete, or failed by the objective), not failed as stale: what ``n_trials`` counts."""
    return trial.state in (TrialState.COMPLETE, TrialState.FAIL) and not trial.user_attrs.get(STALE_ATTR)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials (:func:`is_finished`), in number order."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)) if is_finished(t)]


def counted_trials(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """The study's trials up to its ``n_trials``-th finished one, in number order: what a study of ``n_trials`` holds.

    A study is named by what defines its trials, not by ``n_trials`` (see :func:`study_name`), so a
    run folder or a shared storage may hold more finished trials than this run asks for: a run
    with ``tune.n_trials=40`` before, in the same folder. The best of all of them made the same
    command's tuned model depend on what ran before it. Trials are asked in batches seeded by
    the trials finished before them, so the first ``n_trials`` are the ones a study of
    ``n_trials`` alone would have run. Trials that never finished (stale, or left running) come
    along when numbered among them, as a study of ``n_trials`` would list them.
    """
    finished = finished_trials(study)
    if len(finished) <= n_trials:
        return study.get_trials(deepcopy=False)
    last = finished[n_trials - 1].number
    return [t for t in study.get_trials(deepcopy=False) if t.number <= last]


def enqueue_untuned(study: optuna.Study, params: Mapping[str, Any]) -> bool:
    """Enqueue the untuned parameters unless the study already finished or queued them; return whether enqueued.

    An untuned trial still RUNNING does not count: in a database study a killed process leaves it
    so for good (see :func:`fail_stale_trials`), and the resumed study never scored the untuned
    parameters, so its tuned model could be worse on validation than the untuned one.
    """
    done_or_queued = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING))
    if any(t.user_attrs.get(UNTUNED_ATTR) and not t.user_attrs.get(STALE_ATTR) for t in done_or_queued):
        return False
    study.enqueue_trial(dict(params), user_attrs={UNTUNED_ATTR: True})
    return True


def batch_sampler(seed: int, n_finished: int, lane: int = 0) -> optuna.samplers.BaseSampler:
    """A TPE sampler seeded by the run's seed and the trials finished so far: same history, same proposals.

    ``lane`` (see :func:`ask_batch`) is 0 for a run alone in its study, and then leaves the seed as it was.
    """
    state = np.random.SeedSequence([seed, n_finished] if lane == 0 else [seed, n_finished, lane]).generate_state(1)[0]
    return optuna.samplers.TPESampler(seed=int(state))


def ask_batch(study: optuna.Study, space: Mapping[str, Any], *, seed: int, n_done: int, size: int) -> list[optuna.Trial]:
    """Ask a batch of ``size`` trials from :func:`batch_sampler`, in its lane.

    The lane is how many trials, asked before this batch's first one, are neither finished nor
    stale: those of other runs sharing the study in a database (``tune.storage``), which ask while
    this one fits. It is 0 for a run alone (the run folder's journal, or a database study nobody
    else uses), whose proposals stay what they were. Two runs sharing a study, seeded alike since
    the seed names the study, asked the same parameters in lockstep: twice the work for the trials
    of one. A trial a killed process left running in a database looks like another run's, so a
    resume after that proposes other parameters than an uninterrupted study would.
    """
    first = study.ask()  # the lane needs its number: a trial is numbered when it is created
    lane = sum(1 for t in study.get_trials(deepcopy=False) if t.number < first.number and not t.user_attrs.get(STALE_ATTR)) - n_done
    study.sampler = batch_sampler(seed, n_done, max(lane, 0))
    for name, distribution in space.items():
        _suggest(first, name, distribution)
    return [first, *(study.ask(dict(space)) for _ in range(size - 1))]


def _suggest(trial: optuna.Trial, name: str, distribution: Any) -> None:
    """``trial.suggest_*`` for an Optuna distribution: what ``study.ask(fixed_distributions)`` does for each."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        trial.suggest_categorical(name, distribution.choices)
    elif isinstance(distribution, optuna.distributions.IntDistribution):
        trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    else:
        trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


# ----------------------------------------------------------------------------- the batches


def run_study(
    study: optuna.Study,
    *,
    model_config: Mapping[str, Any],
    dataset: Dataset,
    space: Mapping[str, Any],
    n_trials: int,
    batch_size: int,
    timeout: float | None,
    workers: int,
    seed: int,
    threads: int,
    log: logging.Logger,
    untuned_result: Any = None,
) -> tuple[TrialFit | None, bool]:
    """Run batches until ``n_trials`` trials are finished; return the best fit made here and whether the cap bound.

    A batch's trials run ``min(workers, batch_size)`` at a time, on this process and trial processes, or one after another in
    this process when ``workers == 1`` or this process is daemonic (a Dask worker, whose children
    would be killed with it and which may not start any): the batch design makes both identical.
    ``threads`` is the BLAS/OpenMP budget this process's steps ran under (see :func:`trial_start_method`).
    Each failed trial is logged to ``log`` (the step's), with its traceback the first time its error appears.
    ``untuned_result``, when given, is told for the untuned trial instead of fitting it: a
    :func:`run_trial` result the caller already has, the model step's own fit (see
    :func:`bondexp.tuning.step.reusable_untuned_result`).
    """
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    best: TrialFit | None = None
    last_batch_s = 0.0  # the next batch is expected to take as long as the last one
    errors_logged: set[str] = set()  # 15 trials failing the same way need one traceback
    with _TrialPool(model_config, dataset, workers=min(workers, batch_size), threads=threads) as run_batch:
        while (n_done := len(finished_trials(study))) < n_trials:
            if deadline is not None and time.monotonic() + last_batch_s > deadline:
                return best, True
            asked = ask_batch(study, space, seed=seed, n_done=n_done, size=min(batch_size, n_trials - n_done))
            known = [untuned_result is not None and bool(trial.user_attrs.get(UNTUNED_ATTR)) for trial in asked]
            started = time.monotonic()
            fitted = iter(run_batch([dict(trial.params) for trial, skip in zip(asked, known, strict=True) if not skip]))
            results = [untuned_result if skip else next(fitted) for skip in known]
            last_batch_s = time.monotonic() - started
            # Told in trial-number order, and whole: a Ctrl-C among the tells left the batch's first trials finished
            # and the rest stale, so the resume asked with one more finished trial, other proposals, another tuned model.
            with ctrl_c_held():
                for trial, result, skip in zip(asked, results, known, strict=True):
                    if skip:
                        trial.set_user_attr(REUSED_ATTR, True)
                    best = _tell(study, trial, result, best, log=log, errors_logged=errors_logged)
    return best, False


def _tell(
    study: optuna.Study, trial: optuna.Trial, result: Any, best: TrialFit | None, *, log: logging.Logger, errors_logged: set[str]
) -> TrialFit | None:
    """Tell ``result`` to the study; return the best fit so far. A failure is logged: ``tuning.json`` alone hid it."""
    if isinstance(result, TrialError):
        trial.set_user_attr("error", result.message)
        study.tell(trial, state=TrialState.FAIL)
        if result.message in errors_logged:
            log.warning("trial %d failed with parameters %s: %s (traceback above)", trial.number, trial.params, result.message)
        else:
            errors_logged.add(result.message)
            log.warning("trial %d failed with parameters %s: %s\n%s", trial.number, trial.params, result.message, result.traceback.rstrip())
        return best
    value, model, predictions, worker = result
    trial.set_user_attr("worker", worker)
    study.tell(trial, value)
    if best is None or value < best.value:
        return TrialFit(trial.number, value, model, predictions)
    return best


def trial_start_method(threads: int) -> str:
    """How trial processes start: forked from this process when its steps ran on one thread, else spawned.

    A forked process has the libraries and the data already (a spawned one costs an interpreter,
    scikit-learn's import and the dataset's pickle: about 3 s of CPU, on the critical path of a run).
    But GNU OpenMP is not fork-safe: once this process has run a parallel region on more than one
    thread, a forked child's first region hangs, even on one thread (tested with
    HistGradientBoosting). A step budget of one thread means no such region ever ran here.
    """
    return "fork" if threads <= 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"


class _TrialPool:
    """Context manager giving a function that runs one batch of parameter sets and returns their results in order."""

    def __init__(self, model_config: Mapping[str, Any], dataset: Dataset, *, workers: int, threads: int):
        self.in_process = workers <= 1 or multiprocessing.current_process().daemon
        self.args = (dict(model_config), dataset)
        self.workers = workers
        self.start_method = trial_start_method(threads)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self):
        if self.in_process:
            return lambda batch: [run_trial(*self.args, params) for params in batch]
        # This process fits trials too: it has the libraries loaded and would otherwise only wait, so
        # `workers` trials run at once on `workers - 1` new processes and this one.
        self.pool = ProcessPoolExecutor(
            max_workers=self.workers - 1,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_init_trial_process,
            initargs=(*self.args, os.getpid()),
        )
        return self._run_batch

    def _run_batch(self, batch: list[Mapping[str, Any]]) -> list[Any]:
        """The results of ``batch`` in its order; the next trial goes to whichever of the pool and this process is free."""
        assert self.pool is not None  # __enter__ starts the pool before it returns this method
        results: list[Any] = [None] * len(batch)
        queue = list(range(len(batch)))
        running: dict[Future, int] = {}
        while queue or running:
            while queue and len(running) < self.workers - 1:
                index = queue.pop(0)
                running[self.pool.submit(_run_trial_here, batch[index])] = index
            if queue:
                index = queue.pop(0)
                results[index] = run_trial(*self.args, batch[index])
            else:
                wait(running, return_when=FIRST_COMPLETED)
            for future in [f for f in running if f.done()]:
                results[running.pop(future)] = future.result()
        return results

    def __exit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def run_trial(model_config: Mapping[str, Any], dataset: Dataset, params: Mapping[str, Any]) -> Any:
    """``(validation RMSE, fitted model, its validation predictions, worker label)`` of one parameter set, or its :class:`TrialError`.

    One BLAS/OpenMP thread, in-process too: the same arithmetic wherever a trial runs.
    """
    try:
        with one_thread():
            model, predictions = fit_predict(model_config, dataset, params=params, splits=("validation",))
        return objective(dataset, predictions), model, predictions, worker_label()
    except Exception as exc:  # a trial that fails is recorded FAIL and the study goes on
        return TrialError(f"{type(exc).__name__}: {exc}", traceback.format_exc())


def objective(dataset: Dataset, predictions: Mapping[str, Mapping[str, Any]]) -> float:
    """The value a trial is judged by: the validation RMSE of its predictions.

    Raises
    ------
    ValueError
        The RMSE is not finite.
    """
    truth = dataset.target("validation")
    value = float(np.sqrt(np.mean((np.asarray(predictions["validation"]["mean"], dtype=np.float64) - truth) ** 2)))
    if not np.isfinite(value):
        raise ValueError(f"the validation RMSE is {value}")
    return value


#: The model config and dataset a trial process fits on (set once by :func:`_init_trial_process`).
_TRIAL_ARGS: tuple[Mapping[str, Any], Dataset] | None = None


def _init_trial_process(model_config: Mapping[str, Any], dataset: Dataset, parent: int) -> None:
    """Initializer of a trial process: keep the data, exit with the parent, Optuna's logs off, Ctrl-C ignored.

    A terminal's Ctrl-C reaches every process of the run: an idle trial process answered it with a
    ``KeyboardInterrupt`` traceback from its queue read. The run stops the tune step's process,
    and its trial processes end with it.
    """
    global _TRIAL_ARGS
    _TRIAL_ARGS = (model_config, dataset)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def watch() -> None:  # a killed run must not leave trial processes fitting on as orphans
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_trial_here(params: Mapping[str, Any]) -> Any:
    if _TRIAL_ARGS is None:
        raise RuntimeError("a trial process runs trials only after _init_trial_process has set its model and data")
    return run_trial(*_TRIAL_ARGS, params)
