"""bondexp: train, compare and tune bond fair-value models as one declarative experiment."""

__version__ = "0.1.0"
