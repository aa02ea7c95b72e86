"""The files a step hands back, kept in the run folder: report files every step may return, and the log
text and scratch files of a remote step (executors without a shared disk).

Only the parent process writes the run folder: it writes what a Dask step handed back, records
the files' paths in ``logs/<step>.files.json``, and gives them back to the next attempt at the step
(a resume, or a re-run after its inputs changed) in its scratch folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bondexp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from bondexp.checkpoints import CheckpointStore

__all__ = ["keep_handed_back", "restore_step_files", "step_files", "write_step_files"]


def keep_handed_back(run_dir: Path, name: str, report: Mapping[str, Any]) -> None:
    """Write the log text and files step ``name`` handed back into ``run_dir`` (whole, atomically).

    Does nothing for a shared-disk worker's report (it wrote both itself). Raises ValueError
    when a file's path would leave the run folder.
    """
    if "log_text" not in report:
        return
    log_path = run_dir / "logs" / f"{name}.log"
    before = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
    atomic_write_text(log_path, before + report["log_text"])
    files = report.get("files") or {}
    write_step_files(run_dir, name, files)
    if files:
        index_path, names = _files_index(run_dir, name)
        atomic_write_json(index_path, sorted(set(names) | set(files)))


def write_step_files(run_dir: Path, name: str, files: Mapping[str, bytes]) -> None:
    """Write each of step ``name``'s files (path relative to ``run_dir`` -> bytes) whole; ValueError for a path outside."""
    for relative, data in files.items():
        atomic_write_bytes(_inside_run_dir(run_dir, name, relative), data)


def restore_step_files(run_dir: Path, name: str, store: CheckpointStore) -> list[str]:
    """Write back the report files a reused step returned when it ran, where they are missing or changed.

    The files come from the step's verified checkpoint (``store.load_files``); returns their paths.
    """
    recorded = (store.manifest(name) or {}).get("files") or {}
    stale = [path for path, digest in recorded.items() if not _holds(run_dir / path, digest)]
    if stale:
        kept = store.load_files(name)
        write_step_files(run_dir, name, {path: kept[path] for path in stale})
    return stale


def _holds(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def step_files(run_dir: Path, name: str) -> dict[str, bytes]:
    """The files step ``name`` handed back in earlier attempts, as they are now in the run folder."""
    files = {}
    for relative in _files_index(run_dir, name)[1]:
        path = _inside_run_dir(run_dir, name, relative)
        if path.is_file():
            files[relative] = path.read_bytes()
    return files


def _files_index(run_dir: Path, name: str) -> tuple[Path, list[str]]:
    """``logs/<step>.files.json`` and the relative paths recorded in it so far (none if missing or unreadable)."""
    path = run_dir / "logs" / f"{name}.files.json"
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        names = []
    return path, [n for n in names if isinstance(n, str)]


def _inside_run_dir(run_dir: Path, name: str, relative: str) -> Path:
    """``run_dir / relative``; raise ValueError when a step's file path would leave the run folder."""
    path = (run_dir / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(run_dir):
        raise ValueError(f"Step {name!r} handed back the file {relative!r}, which is outside the run folder.")
    return path
