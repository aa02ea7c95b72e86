"""Market data in: the Market pair (bonds, curves), loading by source, and the data fingerprint.

``data_cfg`` is the ``data`` config group (see ``conf/data/*.yaml``); its ``source`` picks the
synthetic generator or a CSV/Parquet file. Whatever the source, the result is the same pair of
tables, validated once here, so nothing downstream knows where the data came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from bondexp.errors import ConfigError

if TYPE_CHECKING:  # the tables need numpy; a fingerprint, a dry run and a finished resume do not
    from bondexp.bondtable import BondTable
    from bondexp.curves import CurveTable

SOURCES = ("synthetic", "csv", "parquet")
#: Version of the synthetic generator (bondexp.data.synthetic), kept here so the data fingerprint
#: needs no numpy: bump it whenever a change there alters the generated data, so features are recomputed.
GENERATOR_VERSION = 2
_FILE_KEYS = ("path", "curve_path", "spread_path")


def check_split_fractions(split: Mapping) -> None:
    """Raise ConfigError naming the ``data.split`` key that is wrong: each fraction > 0, summing to 1.

    Needs no numpy, so the config check makes it before any work (a dry run too).
    """
    fractions = {name: split.get(name) for name in ("train", "validation", "test")}
    for name, value in fractions.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"The 'data.split.{name}' config key must be a fraction > 0. Got {value!r} instead.")
    total = sum(fractions.values())  # type: ignore[arg-type]  # each is a number by now
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"The 'data.split' fractions must sum to 1. Got {fractions} (sum {total:g}) instead.")


@dataclass(frozen=True)
class Market:
    """Bond observations and the curves that price them."""

    bonds: BondTable
    curves: CurveTable


def load_market(data_cfg: Mapping, *, seed: int, known_sectors: Sequence[str] | None = None) -> tuple[Market, dict[str, int]]:
    """Build the market that ``data_cfg`` describes.

    Parameters
    ----------
    data_cfg : mapping
        The ``data`` config: ``source`` plus that source's keys.
    seed : int
        Seed of the synthetic generator (unused for files).
    known_sectors : sequence of str, optional
        Files only: the only sectors a row may have (see :func:`bondexp.bondtable.validate`).

    Returns
    -------
    market : Market
    dropped : dict of str to int
        Rows dropped per validation problem (``on_invalid: drop``); empty for synthetic data.

    Raises
    ------
    ConfigError
        If ``source`` is unknown or a key is out of range or names a missing file.
    DataValidationError
        If file data is invalid and ``on_invalid`` is ``raise``.
    """
    cfg = _plain(data_cfg)
    source = _source(cfg)
    if source == "synthetic":
        from bondexp.data.synthetic import generate_market

        split = cfg.get("split") or {"train": 0.6, "validation": 0.2, "test": 0.2}
        market = generate_market(
            n_observations=cfg["n_observations"],
            n_months=cfg["n_months"],
            seed=seed,
            drift=cfg.get("drift", True),
            n_sectors=cfg.get("n_sectors", 8),
            noise_scale=cfg.get("noise_scale", 0.35),
            min_regime_months=cfg.get("min_regime_months", 8),
            train_fraction=split["train"],
            validation_fraction=split["validation"],
            test_fraction=split["test"],
        )
        return market, {}
    from bondexp.data.files import load_file_market

    return load_file_market(cfg, known_sectors=known_sectors)


def data_fingerprint(data_cfg: Mapping, *, seed: int) -> str:
    """A sha256 hex digest that changes whenever the loaded data would.

    For files: the config plus the bytes of every file it names, read in 1 MiB blocks. For
    synthetic data: the config, the seed and the generator's version.

    Raises
    ------
    ConfigError
        If ``source`` is unknown or a named file does not exist.
    """
    cfg = _plain(data_cfg)
    digest = hashlib.sha256()
    if _source(cfg) == "synthetic":
        digest.update(json.dumps({"config": cfg, "seed": seed, "version": GENERATOR_VERSION}, sort_keys=True).encode())
        return digest.hexdigest()
    digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for key in _FILE_KEYS:
        if cfg.get(key) is not None:
            with open(existing_path(cfg, key), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def with_absolute_paths(data_cfg: Mapping, *, base: str | Path | None = None) -> dict:
    """``data_cfg`` with its file keys made absolute against ``base`` (default: the current folder, the parent's).

    Steps on other machines (a Dask cluster) get the config as data; a relative path there
    would name a file relative to the worker's own folder. A run's saved config keeps the paths
    as given, so whoever reads it later (predict) passes the folder the run was launched from.
    """
    cfg = _plain(data_cfg)
    for key in _FILE_KEYS:
        if cfg.get(key) not in (None, "???"):
            path = Path(cfg[key]).expanduser()
            cfg[key] = str(path if path.is_absolute() else (Path(base) / path if base is not None else path.absolute()))
    return cfg


def existing_path(cfg: Mapping, key: str) -> Path:
    """The file ``data.<key>`` names, which must exist.

    Raises
    ------
    ConfigError
        Naming the key and the value, if the key is unset or the file does not exist.
    """
    value = cfg.get(key)
    if value in (None, "???"):
        raise ConfigError(f"The 'data.{key}' config key must name an existing file. Got no value; set data.{key}=<file>.")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"The 'data.{key}' config key must name an existing file. Got {value!r} instead.")
    return path


def _plain(data_cfg: Mapping) -> dict:
    if isinstance(data_cfg, DictConfig):
        from bondexp.config import plain_dict  # here: bondexp.config imports Hydra, which loading data does not need

        return plain_dict(data_cfg)
    return dict(data_cfg)


def _source(cfg: Mapping) -> str:
    source = cfg.get("source")
    if source not in SOURCES:
        raise ConfigError(f"The 'data.source' config key must be one of {list(SOURCES)}. Got {source!r} instead.")
    return source
