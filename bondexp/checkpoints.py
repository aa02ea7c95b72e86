"""Checkpoints of a run folder: step fingerprints, verification, run lock, durations.

Every file is written whole through :mod:`bondexp.atomic`, so a crash at any moment leaves
either a complete checkpoint or none.
A checkpoint is reused only when its manifest's fingerprint matches the step as configured
now (config, inputs, data, the versions of bondexp and the libraries whose objects it
pickles, and the source of the user's own modules it runs) and the artifact's sha256 matches the
manifest. Every load of a pickle goes through
:func:`load_verified`, which checks the sha256 first: unpickling runs code, so a file that is not
byte for byte the one this program wrote is never unpickled. Only the parent process writes here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bondexp.artifacts import ModelArtifact
from bondexp.atomic import atomic_file, atomic_write_json
from bondexp.errors import CheckpointError, RunLockedError

MANIFEST_FORMAT = 3  # 2: a model's pipeline and a step's report files apart from the light artifact; 3: plain pickle files
_VERSIONED = ("bondexp", "numpy", "scipy", "pandas", "scikit-learn", "joblib", "optuna", "QuantLib")
#: What a step's fingerprint holds besides its config: the packages whose code made the result
#: or whose classes are in its pickle (Python's own version is recorded, not fingerprinted).
FINGERPRINTED = ("bondexp", "numpy", "scipy", "pandas", "scikit-learn", "joblib", "optuna")


def fingerprint(
    *, target: str, config: Mapping[str, Any], inputs: Mapping[str, str], data: str, code: Mapping[str, str] | None = None
) -> str:
    """Hash what determines a step's result.

    Parameters
    ----------
    target : str
        Dotted path of the step function.
    config : mapping
        The step's resolved config slice.
    inputs : mapping of str to str
        Fingerprint of each need, by need name.
    data : str
        Fingerprint of the input data.
    code : mapping of str to str, optional
        The user's own modules the step runs and their sources' sha256 (:func:`bondexp.owncode.own_code`).

    Returns
    -------
    str
        sha256 hex digest of a canonical JSON of the parts and :func:`fingerprinted_versions`.
    """
    payload = {
        "target": target,
        "config": config,
        "inputs": dict(sorted(inputs.items())),
        "data": data,
        "versions": fingerprinted_versions(),
    }
    if code:  # only then: the checkpoints of steps that run no code of the user's keep their fingerprints
        payload["code"] = dict(sorted(code.items()))
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results, read from package metadata (no imports)."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def fingerprinted_versions() -> dict[str, str]:
    """The installed versions of the :data:`FINGERPRINTED` packages (those installed)."""
    return {name: v for name, v in library_versions().items() if name in FINGERPRINTED}


def changed_versions(recorded: Mapping[str, str] | None) -> list[str]:
    """``"scikit-learn 1.5.0 -> 1.6.1"`` for each fingerprinted package whose version differs from ``recorded``."""
    recorded = recorded or {}
    now = fingerprinted_versions()
    return [
        f"{name} {recorded.get(name, 'absent')} -> {now.get(name, 'absent')}"
        for name in FINGERPRINTED
        if recorded.get(name) != now.get(name)
    ]


def load_verified(path: Path, sha256: str | None) -> Any:
    """Unpickle ``path`` only after checking that its bytes have the ``sha256`` its manifest recorded.

    Raises
    ------
    CheckpointError
        If ``sha256`` is missing or the file's digest differs (the file is then never unpickled).
    """
    if not sha256:
        raise CheckpointError(f"The checkpoint {str(path)!r} has no recorded sha256 (no manifest); it is not loaded.")
    digest = sha256_file(path)
    if digest != sha256:
        raise CheckpointError(
            f"The checkpoint {str(path)!r} has sha256 {digest[:12]}..., not the {sha256[:12]}... its manifest "
            "recorded: it changed after it was written. It is not loaded; resume to re-run that step."
        )
    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301  # only after the digest matched what this run wrote


@dataclasses.dataclass(frozen=True)
class PickledArtifact:
    """A step's artifact pickled where it was made, as its checkpoint holds it: the light part, and a model's pipeline apart.

    A pool worker hands its artifact back so, and the run's process writes these bytes without
    unpickling them: it never imports the libraries of the objects inside (scikit-learn's import
    alone is 2-3 s of CPU, which every run's parent spent beside the workers).
    """

    light: bytes
    pipeline: bytes | None = None

    @classmethod
    def of(cls, artifact: Any) -> PickledArtifact:
        pipeline = None
        if isinstance(artifact, ModelArtifact) and artifact.pipeline is not None:
            pipeline, artifact = _pickled(artifact.pipeline), artifact.light()
        return cls(_pickled(artifact), pipeline)


def _pickled(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def utc_iso(timestamp: float | None) -> str | None:
    """ISO 8601 UTC text of a POSIX timestamp (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")


class CheckpointStore:
    """The ``checkpoints/`` folder of a run: per step ``<step>.json`` (the manifest), ``<step>.pkl`` (the
    light artifact), ``<step>.model.pkl`` (a model's fitted pipeline) and ``<step>.files.pkl`` (its report files).

    The files are plain pickles (the highest protocol), written and read by Python's C pickler:
    ``joblib.dump`` pickles through the pure-Python pickler to set numpy arrays apart, 7 to 25 times
    slower for a fitted model's many small objects (0.54 s against 0.06 s for a default run's eight,
    on the parent's scheduling loop), and buys nothing here (no memory mapping, no compression).

    Parameters
    ----------
    folder : path
        The checkpoints folder; created on the first save.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def artifact_path(self, name: str) -> Path:
        return self.folder / f"{name}.pkl"

    def pipeline_path(self, name: str) -> Path:
        return self.folder / f"{name}.model.pkl"

    def files_path(self, name: str) -> Path:
        return self.folder / f"{name}.files.pkl"

    def manifest_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def save(self, name: str, artifact: Any, manifest: Mapping[str, Any], *, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Write the artifact (a model's fitted pipeline to its own file), the step's files, then the manifest.

        ``artifact`` is the step's object, or the :class:`PickledArtifact` a worker made of it. The
        manifest records each file's sha256 (the light artifact's as ``sha256``, the pipeline's as
        ``pipeline_sha256``, the bundle of report files as ``files_sha256``, and each report file's
        as ``files``). It goes last: a crash before it leaves files no manifest vouches for, which
        :meth:`verify` rejects.

        Returns
        -------
        dict
            The manifest as written.
        """
        pickled = artifact if isinstance(artifact, PickledArtifact) else PickledArtifact.of(artifact)
        extra: dict[str, Any] = {}
        if pickled.pipeline is not None:
            extra["pipeline_sha256"] = self._write(self.pipeline_path(name), pickled.pipeline)
        if files:
            extra["files_sha256"] = self._write(self.files_path(name), _pickled(dict(files)))
            extra["files"] = {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())}
        path = self.artifact_path(name)
        full = {
            "format": MANIFEST_FORMAT,
            "step": name,
            **manifest,
            "sha256": self._write(path, pickled.light),
            "size_bytes": path.stat().st_size,
            **extra,
            "versions": library_versions(),
        }
        atomic_write_json(self.manifest_path(name), full)
        return full

    @staticmethod
    def _write(path: Path, data: bytes) -> str:
        """Write the pickle ``data`` to ``path`` whole; return its sha256."""
        with atomic_file(path) as fh:
            fh.write(data)
        return hashlib.sha256(data).hexdigest()

    def load(self, name: str, *, pipeline: bool = False) -> Any:
        """Load a step's artifact after verifying its sha256 against the manifest (see :func:`load_verified`).

        A model's fitted pipeline is left out (``ModelArtifact.pipeline`` is ``None``) unless
        ``pipeline`` is true: most readers want only its predictions and metrics. With ``pipeline``
        it is loaded when the checkpoint kept one; a model artifact saved without one (a backtest's
        refits are scored, not reused) comes back as it was saved, with ``None``, just as a
        dependent gets it from a step that ran in the same run.

        Raises
        ------
        CheckpointError
            If the manifest is missing or a file's bytes differ from what it recorded.
        """
        manifest = self.manifest(name) or {}
        artifact = load_verified(self.artifact_path(name), manifest.get("sha256"))
        if pipeline and isinstance(artifact, ModelArtifact) and "pipeline_sha256" in manifest:
            artifact = dataclasses.replace(artifact, pipeline=load_verified(self.pipeline_path(name), manifest["pipeline_sha256"]))
        return artifact

    def load_pipeline(self, name: str) -> Any:
        """The fitted pipeline of model step ``name``, sha256-verified.

        Raises
        ------
        CheckpointError
            If the step kept no pipeline or the file's bytes differ from what its manifest recorded.
        """
        manifest = self.manifest(name) or {}
        if "pipeline_sha256" not in manifest:
            raise CheckpointError(f"The step {name!r} kept no fitted pipeline in {str(self.folder)!r}: it is not a model step.")
        return load_verified(self.pipeline_path(name), manifest["pipeline_sha256"])

    def load_files(self, name: str) -> dict[str, bytes]:
        """The report files step ``name`` returned (path relative to the run folder -> bytes), sha256-verified."""
        manifest = self.manifest(name) or {}
        return load_verified(self.files_path(name), manifest["files_sha256"]) if "files_sha256" in manifest else {}

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The step's manifest, or ``None`` when it is missing or unreadable."""
        try:
            return json.loads(self.manifest_path(name).read_text())
        except (OSError, ValueError):
            return None

    def verify(self, name: str, expected_fingerprint: str) -> str | None:
        """Check that a step's checkpoint can be reused.

        Returns
        -------
        str or None
            ``None`` when the manifest exists, its fingerprint equals ``expected_fingerprint``
            and the artifact's sha256 matches; otherwise the reason it cannot be reused.
        """
        manifest = self.manifest(name)
        if manifest is None:
            return "no checkpoint"
        if manifest.get("format") != MANIFEST_FORMAT:
            return f"written by another bondexp (checkpoint format {manifest.get('format')}, now {MANIFEST_FORMAT})"
        if manifest.get("fingerprint") != expected_fingerprint:
            changed = changed_versions(manifest.get("versions"))
            if changed:
                return f"library versions changed: {', '.join(changed)}"
            return "stale (config, inputs or data changed)"
        kept = (
            (self.artifact_path(name), "sha256", ""),
            (self.pipeline_path(name), "pipeline_sha256", " of the pipeline"),
            (self.files_path(name), "files_sha256", " of the report files"),
        )
        for path, key, which in kept:
            if key == "sha256" or key in manifest:
                try:
                    digest = sha256_file(path)
                except OSError:
                    return f"artifact file{which} missing"
                if digest != manifest.get(key):
                    return f"corrupt (sha256 mismatch{which})"
        return None

    def remove_temporaries(self) -> None:
        """Delete half-written temporary files a killed run left behind (call while holding the run lock)."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


#: Run folders this process holds, by the lock file's real path: [its descriptor, how many holders].
_HELD: dict[str, list[int]] = {}


class RunLock:
    """Exclusive use of a run folder for one live process: ``flock`` on ``run.lock`` holding the pid.

    The kernel drops the lock when the holder dies, so a lock left by a killed run never blocks.
    The process holding a folder may enter it again: a run takes it before it writes anything
    (:func:`bondexp.app.run`), then the runner does (:func:`bondexp.runner.run_graph`).

    Raises
    ------
    RunLockedError
        From ``__enter__`` when another live process holds the folder.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"

    def __enter__(self) -> RunLock:
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"The run folder {str(self.path.parent)!r} is in use by process {holder}. "
                f"Wait for it to finish, stop it, or choose another run folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                os.close(_HELD.pop(key)[0])  # closing the descriptor releases the flock


def in_use_elsewhere(run_dir: str | Path) -> bool:
    """Whether another live process holds the run folder (:class:`RunLock`); creates nothing to find out.

    Asked before Hydra writes a run's ``.hydra/`` (see ``bondexp.output_subdir`` in
    :mod:`bondexp.config`): a second command in a folder a run is using overwrote that run's
    config and overrides before its lock refused it, and a resume then ran the second's.
    """
    path = Path(run_dir) / "run.lock"
    if os.path.realpath(path) in _HELD:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # no lock file: no run ever held the folder
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it a lock taken to find out
    return False


class DurationHistory:
    """Step durations seen in earlier runs, kept in one small JSON file ``{key: seconds}`` (keys: :func:`bondexp.planning.history_key`).

    The runner orders ready steps longest-expected-first and estimates the ETA from these.
    Concurrent runs (a sweep) merge their updates under an ``flock`` on a side file.
    """

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)

    def read(self) -> dict[str, float]:
        """Durations by key; empty when there is no file or it is unreadable."""
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def update(self, durations: Mapping[str, float]) -> None:
        """Merge new durations into the file (no-op without a path or durations)."""
        if self.path is None or not durations:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**self.read(), **{k: round(float(v), 4) for k, v in durations.items()}}
            atomic_write_json(self.path, dict(sorted(merged.items())))
