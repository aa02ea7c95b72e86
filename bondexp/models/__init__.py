"""bondexp's own estimators, one module per family; every one follows scikit-learn's conventions.

Model files name them by import path (``_target_: bondexp.models.stacking.StackedRegressor``);
`bondexp.steps.train` builds, fits and calibrates them like any scikit-learn estimator.
"""
