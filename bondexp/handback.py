"""The log text and files a remote step hands back (executors without a shared disk), kept in the run folder.

Only the parent process writes the run folder: it writes what a Dask step handed back, records
the files' paths in ``logs/<step>.files.json``, and gives them back to the next attempt at the step
(a resume, or a re-run after its inputs changed) in its scratch folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bondexp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["keep_handed_back", "step_files"]


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
    for relative, data in files.items():
        atomic_write_bytes(_inside_run_dir(run_dir, name, relative), data)
    if files:
        index_path, names = _files_index(run_dir, name)
        atomic_write_json(index_path, sorted(set(names) | set(files)))


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
