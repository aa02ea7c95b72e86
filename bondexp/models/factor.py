"""Factor model: PCA factors of the bonds and of the market state, and a ridge on their exposures.

A residual desk thinks in factors: a few bond characteristics (size, duration, credit) and a few
market moves (curve level, spreads). PCA finds each set's main directions; the ridge prices the
bond factors, the market factors, their products (a factor whose price moves with the market) and
the previous residual with its market products (the persistent residual, shrunk by the market).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from bondexp.feature_names import CATEGORICAL_FEATURES
from bondexp.models.base import CompositeRegressor, make_preprocessor, market_columns

#: Features that carry the residual's own history, kept out of PCA as direct exposures.
RESIDUAL_FEATURES = ("prev_residual", "has_prev_residual")


class FactorRegressor(CompositeRegressor):
    """PCA bond and market factors, their interactions and a ridge on the exposures.

    Parameters
    ----------
    n_bond_factors : int
        Principal components of the standardised bond features (one-hot categories included).
    n_market_factors : int
        Principal components of the standardised market state (0 or no market features: none).
    interactions : bool
        Add bond x market factor products and previous residual x market factor products.
    random_state : int, optional

    Attributes
    ----------
    bond_pca_, market_pca_ : PCA
    ridge_ : RidgeCV
    info_ : dict
        Explained variance ratio per factor and the chosen ridge penalty.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "curve_level", "prev_residual"])
    >>> model = FactorRegressor(n_bond_factors=1, n_market_factors=1).fit(X, X["a"])
    >>> len(model.info_["bond_explained_variance"])
    1
    """

    _parameter_constraints: dict = {
        "n_bond_factors": [Interval(Integral, 1, None, closed="left")],
        "n_market_factors": [Interval(Integral, 0, None, closed="left")],
        "interactions": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_bond_factors: int = 8,
        n_market_factors: int = 2,
        interactions: bool = True,
        random_state: int | None = None,
    ):
        self.n_bond_factors = n_bond_factors
        self.n_market_factors = n_market_factors
        self.interactions = interactions
        self.random_state = random_state

    def _design(self, X):
        """Exposures: bond factors, market factors, their products, previous residual (and its products)."""
        parts = [self.bond_pca_.transform(self.bond_prep_.transform(X[self.bond_features_]))]
        resid = X[self.residual_features_].to_numpy(dtype=np.float64)
        if self.market_pca_ is not None:
            market = self.market_pca_.transform(self.market_prep_.transform(X[self.market_features_]))
            parts.append(market)
            if self.interactions:
                parts.append(np.einsum("ij,ik->ijk", parts[0], market).reshape(len(X), -1))
                parts.append(np.einsum("ij,ik->ijk", resid, market).reshape(len(X), -1))
        parts.append(resid)
        return np.column_stack(parts)

    def fit(self, X, y):
        """Fit the two PCAs and the ridge on the exposures.

        Returns
        -------
        self
        """
        X, y, _ = self._fit_data(X, y)
        names = self.columns_
        self.market_features_ = market_columns(names)
        self.residual_features_ = [n for n in names if n in RESIDUAL_FEATURES]
        self.bond_features_ = [n for n in names if n not in self.market_features_ and n not in RESIDUAL_FEATURES]
        self.bond_prep_ = make_preprocessor(self.bond_features_, categorical=CATEGORICAL_FEATURES).fit(X[self.bond_features_])
        bond = self.bond_prep_.transform(X[self.bond_features_])
        self.bond_pca_ = PCA(min(self.n_bond_factors, bond.shape[1]), random_state=self.random_state).fit(bond)
        self.market_pca_ = None
        if self.market_features_ and self.n_market_factors > 0:
            self.market_prep_ = make_preprocessor(self.market_features_, categorical=()).fit(X[self.market_features_])
            market = self.market_prep_.transform(X[self.market_features_])
            k = min(self.n_market_factors, market.shape[1])
            self.market_pca_ = PCA(k, random_state=self.random_state).fit(market)
        self.ridge_ = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(self._design(X), y)
        self.info_ = {
            "bond_explained_variance": [float(v) for v in self.bond_pca_.explained_variance_ratio_],
            "market_explained_variance": (
                [float(v) for v in self.market_pca_.explained_variance_ratio_] if self.market_pca_ is not None else []
            ),
            "ridge_alpha": float(self.ridge_.alpha_),
        }
        self.metrics_ = {
            "bond_factors_explained": float(np.sum(self.bond_pca_.explained_variance_ratio_)),
            "market_factors_explained": float(np.sum(self.info_["market_explained_variance"])),
        }
        return self

    def predict(self, X):
        """The ridge's prediction from each row's factor exposures."""
        check_is_fitted(self, "ridge_")
        return self.ridge_.predict(self._design(self._frame(X)))
