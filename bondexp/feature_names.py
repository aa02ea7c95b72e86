"""The names of the features every dataset has, synthetic or read from files, apart from the arrays.

Their own module, free of numpy, so that the config check names a feature the data does not have
before any data loads (and a dry run imports no numpy).
"""

#: Static and pricing features of each observation (one value per row).
BOND_FEATURES = (
    "coupon_rate",
    "frequency",
    "day_count",
    "rating",
    "sector",
    "log_issue_size",
    "time_to_maturity",
    "age",
    "fair_value",
    "yield_at_fair",
    "modified_duration",
    "convexity",
    "credit_spread",
    "prev_residual",
    "has_prev_residual",
)
#: Market-state features (one value per observation month, shared by every bond that month).
MARKET_FEATURES = ("curve_level", "curve_slope", "curve_curvature", "market_credit_spread")
#: Features holding category codes rather than quantities.
CATEGORICAL_FEATURES = ("frequency", "day_count", "rating", "sector")
FEATURES = BOND_FEATURES + MARKET_FEATURES
