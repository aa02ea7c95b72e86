"""Hyperparameter tuning: the search space (:mod:`.space`), the study (:mod:`.study`) and the step (:mod:`.step`).

The step function the config names is ``bondexp.tuning.step.tune``.
"""
