"""AutoML: an Optuna search over estimator families and their hyperparameters, scored by time-ordered CV.

The budget is a number of candidates (``n_candidates``), so the same config and seed try the same
candidates on any machine under any load: the trials run one after another with a seeded sampler.
``time_limit_s`` is only a safety cap; when it stops the search early the step's metrics say so
(``automl_time_limited``) and mark the result ``reproducible: false``. Each candidate is scored on
expanding-window folds of whole months among the latest training months (train on the past,
score the next block: no shuffling), then the winner is refit on all training rows.

The folds are the rungs of a successive-halving search: after each fold a candidate whose mean
RMSE so far is worse than the median of the earlier candidates at that fold is stopped (Optuna's
``MedianPruner``; each family's first look always runs every fold). The first fold trains on the
fewest rows, so a poor candidate costs about a fifth of a full one. Trials run one after
another, so which candidates stop does not depend on the machine. Every trial is recorded with
its family, parameters, score and how many folds it ran, so the artifact says what was tried and
why the winner won.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import optuna
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from bondexp.data.split import expanding_folds, latest_months
from bondexp.models.base import (
    CompositeRegressor,
    fit_time_ordered,
    scaled,
    set_early_stopping,
)

FAMILIES = ("ridge", "boosting", "forest", "extra_trees")


def _candidate(trial: optuna.Trial, family: str, names, seed: int | None):
    """The estimator a trial proposes for ``family`` (parameters drawn from the trial)."""
    if family == "ridge":
        return scaled(Ridge(alpha=trial.suggest_float("alpha", 1e-2, 1e3, log=True)), names)
    if family == "boosting":
        mono = {"prev_residual": 1} if "prev_residual" in names else None
        return HistGradientBoostingRegressor(
            max_iter=500,
            learning_rate=trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 7, 63, log=True),
            min_samples_leaf=trial.suggest_int("min_samples_leaf", 20, 400, log=True),
            l2_regularization=trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
            monotonic_cst=mono,
            random_state=seed,
        )
    forest = RandomForestRegressor if family == "forest" else ExtraTreesRegressor
    return forest(
        n_estimators=trial.suggest_int("n_estimators", 30, 100),
        min_samples_leaf=trial.suggest_int("min_samples_leaf", 5, 100, log=True),
        max_features=trial.suggest_float("max_features", 0.2, 1.0),
        max_samples=0.3,
        bootstrap=True,
        n_jobs=1,
        random_state=seed,
    )


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A finished or pruned trial as plain data; a pruned one has no ``score``, only the mean of the folds it ran."""
    return {
        "number": trial.number,
        "family": trial.params["family"],
        "params": {k: v for k, v in trial.params.items() if k != "family"},
        "score": trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
        "score_so_far": trial.intermediate_values[max(trial.intermediate_values)],
        "folds": len(trial.intermediate_values),
        "state": trial.state.name,
    }


class AutoMLRegressor(CompositeRegressor):
    """Search estimator families and hyperparameters with Optuna's TPE sampler, then refit the winner.

    Parameters
    ----------
    families : sequence of str
        Families searched, from ``ridge``, ``boosting``, ``forest``, ``extra_trees``.
    n_candidates : int
        Trials in the search, the budget (the first trial of each family uses its defaults' region).
    time_limit_s : float, optional
        Safety cap: after the first trial, no trial starts once this many seconds have passed
        (None: no cap). When it binds the search depends on the machine's speed, and the metrics
        say so.
    n_folds : int
        Expanding-window folds of whole months for each trial's score.
    max_search_rows : int
        The search uses the latest whole training months holding at most this many rows, and
        at least ``n_folds + 1`` months: where those hold more rows, a seeded sample of them.
    early_stopping : dict, optional
    random_state : int, optional

    Attributes
    ----------
    best_ : dict
        ``family``, ``params``, ``score`` (mean fold RMSE) of the winner.
    trials_ : list of dict
        Every finished or pruned trial: ``number``, ``family``, ``params``, ``score`` (None when
        pruned), ``score_so_far`` (mean RMSE of the folds it ran), ``folds``, ``state`` (enqueued
        trials the time cap left unstarted are not listed).
    members_ : dict
        ``best``: the winner refit on all rows.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = pd.DataFrame({"a": np.random.default_rng(0).normal(size=300)})
    >>> model = AutoMLRegressor(families=["ridge"], n_candidates=2, random_state=0).fit(X, 2 * X["a"])
    >>> model.best_["family"]
    'ridge'
    """

    _parameter_constraints: dict = {
        "families": ["array-like"],
        "n_candidates": [Interval(Integral, 1, None, closed="left")],
        "time_limit_s": [Interval(Real, 0, None, closed="neither"), None],
        "n_folds": [Interval(Integral, 1, None, closed="left")],
        "max_search_rows": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": [dict, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        families=FAMILIES,
        n_candidates: int = 12,
        time_limit_s: float | None = 600.0,
        n_folds: int = 3,
        max_search_rows: int = 15000,
        early_stopping: dict[str, Any] | None = None,
        random_state: int | None = None,
    ):
        self.families = families
        self.n_candidates = n_candidates
        self.time_limit_s = time_limit_s
        self.n_folds = n_folds
        self.max_search_rows = max_search_rows
        self.early_stopping = early_stopping
        self.random_state = random_state

    def _validate_params(self) -> None:
        """scikit-learn's check of the constraints, and that ``families`` names known families (a constraint
        can say "array-like", not "a list of these names"), in the same error, which the preflight reads."""
        super()._validate_params()
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise InvalidParameterError(
                f"The 'families' parameter of {type(self).__name__} must be a non-empty list of names among {list(FAMILIES)}. "
                f"Got {list(self.families)!r} instead."
            )

    @staticmethod
    def _score(trial: optuna.Trial, estimator, X, y, months, folds) -> float:
        """Mean RMSE over the expanding-window folds (train on the earlier months, score the next block).

        The running mean is reported after each fold; raises ``optuna.TrialPruned`` when the pruner
        stops the candidate there.
        """
        scores = []
        for step, (train, test) in enumerate(folds):
            fit_time_ordered(estimator, X.iloc[train], y[train], groups=months[train])
            scores.append(float(np.sqrt(np.mean((y[test] - estimator.predict(X.iloc[test])) ** 2))))
            trial.report(float(np.mean(scores)), step)
            if step < len(folds) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    def fit(self, X, y, groups=None):
        """Run the search on the latest training months and refit the winner on all rows.

        Parameters
        ----------
        groups : array-like, optional
            Each row's observation date (month label), so folds fall between whole months;
            None: rows in time order, each its own month.

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            A parameter breaks its constraint, or ``families`` names an unknown family.
        ConfigError
            If the search months cannot fill ``n_folds`` folds.
        """
        X, y, months = self._fit_data(X, y, groups)
        names = self.columns_
        recent = latest_months(months, max_rows=self.max_search_rows, min_months=self.n_folds + 1)
        if len(recent) > self.max_search_rows:
            # the fewest months the folds need hold more rows than the budget (a month of a
            # million-row market holds 14,000): the search sees a seeded sample of their rows
            sample = np.random.default_rng(self.random_state).choice(len(recent), size=self.max_search_rows, replace=False)
            recent = recent[np.sort(sample)]
        Xs, ys, ms = X.iloc[recent], y[recent], months[recent]
        folds = expanding_folds(ms, n_folds=self.n_folds, key="models.automl.n_folds")
        settings = self._early_stopping()

        def objective(trial: optuna.Trial) -> float:
            family = trial.suggest_categorical("family", list(self.families))
            estimator = _candidate(trial, family, names, self.random_state)
            set_early_stopping(estimator, settings)
            return self._score(trial, estimator, Xs, ys, ms, folds)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Successive halving over the folds: the families' first looks set the bar, then the median rule.
        pruner = optuna.pruners.MedianPruner(n_startup_trials=len(self.families), n_warmup_steps=0)
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=self.random_state), pruner=pruner)
        for family in self.families:  # every family gets one look before TPE narrows down
            study.enqueue_trial({"family": family})
        n_trials = max(self.n_candidates, len(self.families))
        study.optimize(objective, n_trials=1)  # the first candidate always runs, whatever the cap
        study.optimize(objective, n_trials=n_trials - 1, timeout=self.time_limit_s)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        time_limited = len(study.trials) < n_trials
        self.trials_ = [_trial_record(t) for t in sorted([*done, *pruned], key=lambda t: t.number)]
        best = study.best_trial
        params = {k: v for k, v in best.params.items() if k != "family"}
        self.best_ = {"family": best.params["family"], "params": params, "score": best.value}
        by_family = {f: min((t.value for t in done if t.params["family"] == f), default=None) for f in self.families}
        runner_up = sorted((v, f) for f, v in by_family.items() if v is not None and f != self.best_["family"])
        reason = f"{self.best_['family']} had the lowest mean time-ordered CV RMSE ({best.value:.4f})"
        if runner_up:
            reason += f", {runner_up[0][0] - best.value:.4f} below the best {runner_up[0][1]} trial ({runner_up[0][0]:.4f})"
        winner = _candidate(optuna.trial.FixedTrial(best.params), self.best_["family"], names, self.random_state)
        set_early_stopping(winner, settings)
        self.members_ = {"best": fit_time_ordered(winner, X, y, groups=months)}
        self.info_ = {"trials": self.trials_, "best": self.best_, "best_by_family": by_family, "why": reason}
        self.metrics_ = {
            "automl_family": self.best_["family"],
            "automl_trials": len(done),
            "automl_pruned": len(pruned),
            "automl_cv_rmse": float(best.value),
            "automl_time_limited": time_limited,
        }
        if time_limited:  # how many trials ran depended on the machine's speed and load
            self.metrics_["reproducible"] = False
        return self

    def predict(self, X):
        """The refit winner's prediction."""
        check_is_fitted(self, "members_")
        return self.members_["best"].predict(self._frame(X))
