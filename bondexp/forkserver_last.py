"""Imported last by the worker processes' forkserver: move what its preload created out of the collector's reach.

The forkserver imports the step libraries once, so every worker forks with them loaded.
``gc.freeze()`` after that import is what Python's ``gc`` documentation advises before ``fork()``:
the workers' collections no longer touch those objects, so their pages stay shared instead of
being copied; and the server, which ends when the run does, exits in milliseconds instead of
collecting scikit-learn, SciPy and pandas object by object for about 0.7 s while the run's output
pipe stays open. The collector, off since :mod:`bondexp.forkserver_first`, is then on again, for
the server and every worker it forks.
"""

import gc

gc.freeze()
gc.enable()
