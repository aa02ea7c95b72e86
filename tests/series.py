"""Monthly AR(1) series for the drift and statistics tests."""

import numpy as np


def ar1(rng, n, phi):
    """A stationary AR(1) with unit variance."""
    x = np.empty(n)
    x[0] = rng.standard_normal()
    shocks = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + shocks[t]
    return x


def ar1_with_turbulence(rng, n, phi, *, start, factor):
    """An AR(1) whose innovations are ``factor`` times larger from month ``start`` on."""
    shocks = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    shocks[start:] *= factor
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for t in range(1, n):
        x[t] = phi * x[t - 1] + shocks[t]
    return x
