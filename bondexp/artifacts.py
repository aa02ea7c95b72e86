"""What steps hand each other: one :class:`ModelArtifact` per fitted model, and :class:`StepOutput` for files.

A model step (``fit_model``, the tuned model, a backtest refit) returns a :class:`ModelArtifact`; a
report step reads every model among its inputs with :func:`model_artifacts`. The runner keeps the
fitted pipeline apart from the rest (``checkpoints/<step>.model.pkl`` beside the light
``checkpoints/<step>.pkl``), so a report step loads predictions and metrics, never eight fitted
models; a step that needs a pipeline asks for it (``ctx.load_pipeline(need)``).

A step that renders report files returns ``StepOutput(artifact, files)``: ``files`` maps a path
relative to the run folder to the file's bytes. The runner writes them (only the parent writes the
run folder) and keeps them with the checkpoint, so a resume restores a missing file without
re-running the step. Standard library only: importing this costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

__all__ = ["ModelArtifact", "StepOutput", "check_files", "model_artifacts"]

#: Leaderboard rows that are references, not trained models: the DCF alone and (synthetic data) the oracle.
#: No model may take these names (the run refuses it before any work: bondexp.pipeline).
BASELINE, ORACLE = "dcf_baseline", "oracle"
REFERENCES = (BASELINE, ORACLE)
#: Run-folder paths only the runner and the app write; a step's file may not land on them.
RESERVED = ("checkpoints", "logs", ".hydra", "results.json", "report.md", "data_summary.json", "run.lock")


@dataclass(frozen=True)
class ModelArtifact:
    """A fitted model as every step after it sees it.

    Attributes
    ----------
    name : str
        The model's name (``<target>_tuned`` for the tuned model).
    group : str
        ``ml``, ``risk`` (or a user's group).
    config : dict
        The model step's config slice (``estimator``, ``features``, ``seed``, ...).
    features : list of str
        Columns the pipeline takes, in order.
    predictions : dict
        ``{split: {"mean", and as the estimator offers "lower", "upper", "level", "std", "var", "es"}}``
        (``train``/``validation``/``test``; a backtest refit has ``scored``).
    metrics : dict
        Flat scalars: they go into the manifest and results.json.
    info : dict
        Anything else worth keeping (estimator name, tuning facts, backtest rows).
    pipeline : Pipeline or None
        The fitted pipeline. The checkpoint stores it apart; artifacts loaded for a step have ``None``.
    """

    name: str
    group: str
    config: dict
    features: list
    predictions: dict
    metrics: dict
    info: dict = field(default_factory=dict)
    pipeline: Any = None

    def light(self) -> ModelArtifact:
        """This artifact without its fitted pipeline: what the light checkpoint holds."""
        return dataclasses.replace(self, pipeline=None)


@dataclass(frozen=True)
class StepOutput:
    """A step's result with the report files it rendered.

    Attributes
    ----------
    artifact : ModelArtifact or dict
        What the runner checkpoints and later steps get (its ``metrics`` go to results.json).
    files : dict of str to bytes
        Path relative to the run folder (POSIX, e.g. ``plots/drift.png``) -> the file's contents.
    warnings : tuple of str
        Lines the run prints as warnings once the step is done (the step's own log does not reach the
        terminal, and a worker must not print under the progress bar).
    """

    artifact: Any = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def model_artifacts(inputs: Mapping[str, Any]) -> dict[str, ModelArtifact]:
    """The model artifacts among a step's ``inputs``, by need name (report artifacts and skipped needs left out)."""
    return {name: value for name, value in inputs.items() if isinstance(value, ModelArtifact)}


def check_files(step: str, files: Any) -> dict[str, bytes]:
    """``files`` after checking each is a relative path inside the run folder, off the reserved names, with bytes.

    Raises
    ------
    TypeError
        ``files`` is not a dict of str to bytes.
    ValueError
        A path is absolute, climbs out with ``..``, or lands on a file only the runner writes (:data:`RESERVED`).
    """
    if not isinstance(files, Mapping):
        raise TypeError(f"The files of step {step!r} must be a dict of path -> bytes. Got {type(files).__name__} instead.")
    for path, data in files.items():
        if not isinstance(path, str) or not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"The files of step {step!r} must map a str path to bytes. Got {path!r}: {type(data).__name__} instead.")
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or parts[0] in RESERVED:
            raise ValueError(
                f"Step {step!r} returned the file {path!r}: a file's path must be relative to the run folder, "
                f"stay inside it, and not be one of {list(RESERVED)}."
            )
    return {path: bytes(data) for path, data in files.items()}
