"""The run folder a prediction trusts: verified checkpoints, matching library versions, the run's own data.

Nothing is unpickled before every model checkpoint of the run matches its manifest's sha256 and
was pickled with library versions that load it the same way (:data:`VERSION_PARTS`).
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bondexp.config import plain_dict, saved_launch_dir
from bondexp.errors import ConfigError, RunFolderError
from bondexp.runs import latest_record

#: and behave as they did (scikit-learn supports no cross-version unpickling; bondexp's own classes
#: are pickled; numpy and pandas break pickles across major versions).
VERSION_PARTS = {"python": 2, "bondexp": 3, "scikit-learn": 3, "numpy": 1, "scipy": 2, "pandas": 1, "joblib": 1}


@dataclass(frozen=True)
class RunModels:
    """A verified run: its folder, resolved config, own data, and the chosen model artifacts by name."""

    run_dir: Path
    config: dict[str, Any]
    dataset: Any
    artifacts: dict[str, Any]  # name -> ModelArtifact, fitted pipeline loaded
    manifests: dict[str, dict[str, Any]]
    bond_names: tuple | None = None  # the run's text bond ids by code; None when its ids are integers
    failed_models: tuple[str, ...] = ()  # the run's model steps that failed: the best model is the best of the others


def resolve_run(run: str | None, outputs: Path = Path("outputs")) -> Path:
    """The folder ``run`` names; ``last`` is the newest folder under ``outputs/`` holding checkpoints."""
    if run in (None, "???", ""):
        raise ConfigError("The 'run' config key must name a finished run folder or be 'last'. Got no value.")
    if run != "last":
        return Path(run).expanduser()
    runs = sorted(p.parent for p in outputs.glob("*/*/checkpoints") if p.is_dir())
    if not runs:
        raise ConfigError(f"The 'run' config key is 'last' but there is no run folder under {outputs.resolve()}.")
    return runs[-1]


def version_conflicts(recorded: Mapping[str, str]) -> list[str]:
    """``"<library> <then> -> <now>"`` for each library whose version differs where :data:`VERSION_PARTS` says it matters."""
    from bondexp.checkpoints import library_versions

    now = library_versions()
    conflicts = []
    for dist, parts in VERSION_PARTS.items():
        then, here = recorded.get(dist), now.get(dist)
        if _release(then)[:parts] != _release(here)[:parts]:
            conflicts.append(f"{dist} {then or 'unrecorded'} -> {here or 'absent'}")
    return conflicts


def _release(version: str | None) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version or "")[:3])


def open_run(run_dir: Path, models: Any = "all", *, cache_dir: str | Path) -> RunModels:
    """Verify a run folder and load the models asked for and the run's own data.

    Raises
    ------
    RunFolderError
        If the folder is not a finished run (an interrupted one included), a model checkpoint fails its sha256 or was pickled with
        library versions that differ (see :data:`VERSION_PARTS`) or with the user's own code since changed, or a requested model is missing.
    """
    from bondexp.checkpoints import CheckpointStore

    run_dir = Path(run_dir)
    config_path, results_path = latest_record(run_dir) / "config.yaml", run_dir / "results.json"
    if not (config_path.is_file() and results_path.is_file()):
        raise RunFolderError(
            f"The 'run' config key must name a finished run folder (with .hydra/config.yaml and results.json). "
            f"Got {str(run_dir)!r} instead."
        )
    results = json.loads(results_path.read_text())
    steps = results["steps"]
    if results.get("interrupted"):
        done = sum(s["status"] in ("ran", "reused") for s in steps.values())
        raise RunFolderError(
            f"The run {str(run_dir)!r} was interrupted ({done} of {len(steps)} steps finished): its models are not all "
            f"there, nor is the model its validation would choose. Finish it with: python -m bondexp resume={shlex.quote(str(run_dir))}"
        )
    store = CheckpointStore(run_dir / "checkpoints")
    finished = [n for n, s in steps.items() if s["status"] in ("ran", "reused")]
    manifests = {name: store.manifest(name) or {} for name in finished}
    # the steps that kept a fitted pipeline: the model steps and the tuned model
    candidates = [name for name in finished if "pipeline_sha256" in manifests[name]]
    reasons = {name: store.verify(name, manifests[name].get("fingerprint", "")) for name in candidates}
    corrupt = [f"{name} ({reason})" for name, reason in reasons.items() if reason is not None]
    if corrupt:
        raise RunFolderError(
            f"The run {str(run_dir)!r} has checkpoints that do not verify: {', '.join(corrupt)}. "
            f"Rebuild them with: python -m bondexp resume={shlex.quote(str(run_dir))}"
        )
    conflicts = sorted({c for n in candidates for c in version_conflicts(manifests[n].get("versions", {}))})
    if conflicts:
        raise RunFolderError(
            f"The run {str(run_dir)!r} pickled its models with other library versions: {', '.join(conflicts)}. "
            f"Unpickling may fail or change predictions; predict with those versions installed, or re-run the experiment here."
        )
    _check_own_code(run_dir, {name: manifests[name] for name in candidates})
    step_of = {name: name for name in candidates if name != "tune"}
    if "tune" in candidates:
        step_of[store.load("tune").name] = "tune"
    wanted = list(step_of) if models in (None, "all") else ([models] if isinstance(models, str) else list(models))
    if not step_of:
        unfinished = sorted(n for n, s in steps.items() if s["status"] not in ("ran", "reused"))
        raise RunFolderError(
            f"The run {str(run_dir)!r} has no fitted model to predict with (steps that did not finish: {unfinished}). "
            f"Finish it with: python -m bondexp resume={shlex.quote(str(run_dir))}"
        )
    if not wanted:
        raise RunFolderError(f"The 'models' config key names no model. Use models=all or some of {sorted(step_of)}.")
    missing = [name for name in wanted if name not in step_of]
    if missing:
        hints = [m for name in missing for m in difflib.get_close_matches(name, step_of, n=1)]
        raise RunFolderError(
            f"The 'models' config key names {missing}, which the run {str(run_dir)!r} lacks"
            f"{f' (did you mean {hints}?)' if hints else ''}; its models are {sorted(step_of)}. Use models=all or some of these."
        )
    artifacts = {name: store.load(step_of[name], pipeline=True) for name in wanted}
    config = plain_dict(OmegaConf.load(config_path), resolve=False)
    dataset, bond_names = _run_dataset(run_dir, config, cache_dir)
    failed = tuple(n for n in config.get("models") or {} if n in steps and steps[n]["status"] not in ("ran", "reused"))
    return RunModels(run_dir, config, dataset, artifacts, {name: manifests[step_of[name]] for name in wanted}, bond_names, failed)


def _check_own_code(run_dir: Path, manifests: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a run whose own model modules (they have no version to compare) do not import from here, or changed since.

    Both used to get one message, "code whose source has changed since, or that no longer imports",
    with a resume to refit: for a module that is only not importable from where predict runs (its
    folder is not this one, nor on PYTHONPATH) the source had not changed, and the resume failed
    the same way from here.
    """
    from bondexp.owncode import changed, importable

    differ = {name: changed(manifest.get("code")) for name, manifest in manifests.items()}
    absent = {name: [m for m in modules if not importable(m)] for name, modules in differ.items()}
    if any(absent.values()):
        which = "; ".join(f"{name}: {', '.join(modules)}" for name, modules in absent.items() if modules)
        launched = saved_launch_dir(run_dir)
        if launched is not None and launched.resolve() == Path.cwd().resolve():  # the folder is right: the module left it
            where, advice = (
                f"from the folder the run was launched in ({launched}), where predict runs",
                "put the module's folder on PYTHONPATH",
            )
        else:
            folder = f" ({launched})" if launched is not None else ""
            where, advice = (
                "from here",
                f"launch predict from the folder the run was launched in{folder}, or put the module's folder on PYTHONPATH",
            )
        raise RunFolderError(
            f"The run {str(run_dir)!r} fitted its models with your own code, which does not import {where} ({which}); {advice}."
        )
    if any(differ.values()):
        which = "; ".join(f"{name}: {', '.join(modules)}" for name, modules in differ.items() if modules)
        raise RunFolderError(
            f"The run {str(run_dir)!r} fitted its models with code whose source has changed since ({which}). Predicting would "
            f"run today's code on the old fitted state; refit them with: python -m bondexp resume={shlex.quote(str(run_dir))}"
        )


def _run_dataset(run_dir: Path, config: Mapping[str, Any], cache_dir) -> tuple:
    """The run's own data (from the feature cache when it is there), which must still be what the run saw,
    and its text bond ids (None for integer ids)."""
    from bondexp.data import data_fingerprint, with_absolute_paths
    from bondexp.data.files import bond_id_names
    from bondexp.features import load_dataset

    # The run fingerprinted its files by absolute path, made from the folder it was launched in
    # (Hydra's runtime.cwd); its config keeps the paths as given (`data.path=bonds.csv`).
    data_cfg, seed = with_absolute_paths(config["data"], base=saved_launch_dir(run_dir)), int(config.get("seed", 0))
    recorded = json.loads((run_dir / "data_summary.json").read_text()).get("fingerprint")
    try:
        fingerprint = data_fingerprint(data_cfg, seed=seed)
    except ConfigError as err:
        raise RunFolderError(f"The run's own data is needed (bond sectors, previous residuals) but cannot be read: {err}") from None
    if fingerprint != recorded:
        raise RunFolderError(
            f"The run's own data changed since the run (data fingerprint {fingerprint[:12]}, the run saw {recorded[:12]}); "
            "its sectors and previous residuals would not be the ones the models learned from."
        )
    dataset, _ = load_dataset(data_cfg, seed=seed, cache_dir=cache_dir, fingerprint=fingerprint)
    return dataset, (None if data_cfg["source"] == "synthetic" else bond_id_names(data_cfg))


def check_spreads(run_dir: Path, data_cfg: Mapping[str, Any]) -> None:
    """Refuse new files with spreads for a run whose data had none, or without them for one whose data had them.

    The models learned the residual over a DCF priced with each rating's credit spread, or with none.
    New data priced the other way moves every fair value, and every prediction with it: the README's
    Parquet example, which gave no spreads, put the DCF's error against the market at 65.5 (2.1 with
    them), and a run trained without spreads predicting with them scored -619% against the DCF. Both
    printed their tables with exit 0. Synthetic data always has spreads.
    """
    config_path = latest_record(run_dir) / "config.yaml"
    if data_cfg.get("source") == "synthetic" or not config_path.is_file():
        return  # a folder without its config is refused by open_run
    run_data = OmegaConf.select(OmegaConf.load(config_path), "data", default=None) or {}
    had = run_data.get("source") == "synthetic" or run_data.get("spread_path") is not None
    if had and data_cfg.get("spread_path") is None:
        raise ConfigError(
            "The 'data.spread_path' config key is null, but the run's data had credit spreads "
            f"({'synthetic' if run_data.get('source') == 'synthetic' else run_data.get('spread_path')}): its models learned "
            "the residual over a DCF with spreads, and without them every fair value would come off the curve alone. "
            "Give the new data's spreads (date, rating, spread): data.spread_path=<file>."
        )
    if not had and data_cfg.get("spread_path") is not None:
        raise ConfigError(
            f"The 'data.spread_path' config key names {data_cfg['spread_path']!r}, but the run's data had no spreads: its "
            "models learned the residual over a DCF without them, and with them every fair value would move. "
            "Predict without spreads (data.spread_path=null), or train a run on data with them."
        )


def best_model(artifacts: Mapping[str, Any]) -> str:
    """The model with the lowest validation RMSE: the run's own rule for its best model (never the test split)."""
    return min(artifacts, key=lambda name: float(artifacts[name].metrics["val_rmse"]))
