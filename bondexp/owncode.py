"""The user's own code a step runs: the modules its config's ``_target_`` names that no installed package versions.

A step's fingerprint holds the versions of bondexp and the libraries (:data:`bondexp.checkpoints.FINGERPRINTED`),
but a model file's ``_target_: mymodels.ShrunkRidge`` names code that has no version. Edited, it
changed nothing: a resume reused the old fit, and predict ran the edited ``predict`` on the old
fitted state and said every checkpoint verified. So a step's fingerprint also holds the sha256 of
the source of each such module (a package: all its ``.py`` files), and its manifest records them,
for predict to compare (:func:`changed`). So do the user's modules those import (``from helpers
import shrink`` in ``mymodels.py``): an edited helper changes the fit as surely. Modules are found
with :func:`importlib.util.find_spec` on the top-level name, and their imports read from the source
with :mod:`ast`; nothing is imported: the run's process never imports scikit-learn.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Versioned through the step fingerprint's package versions, even when installed editable (a checkout).
_VERSIONED_MODULES = frozenset({"bondexp"})


def own_code(config: Any) -> dict[str, str]:
    """``{top-level module: sha256 of its source}`` for every ``_target_`` in ``config`` (nested) that is the
    user's own code, and for every module of the user's own code those import, and so on.

    Imports are read from the source: ``import x``, ``from x import y``, anywhere in a file (a function's
    too). One made by name at run time (``importlib.import_module(name)``) is not seen.
    """
    code: dict[str, str] = {}
    seen: set[str] = set()
    queue = sorted(set(_targets(config)))
    while queue:
        module = queue.pop(0)
        if module in seen:
            continue
        seen.add(module)
        files = _source_files(module)
        if files is not None:
            code[module] = _digest(files)
            queue.extend(sorted(_imports(files) - seen))
    return dict(sorted(code.items()))


def changed(recorded: Mapping[str, str] | None) -> list[str]:
    """The modules of ``recorded`` (a manifest's ``code``) whose source differs now, or that no longer import."""
    return [module for module, digest in sorted((recorded or {}).items()) if module_digest(module) != digest]


def importable(module: str) -> bool:
    """Whether a top-level module is found on today's ``sys.path`` (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def module_digest(module: str) -> str | None:
    """sha256 of a top-level module's source files, or None when it is not the user's own code (or not found)."""
    files = _source_files(module)
    return None if files is None else _digest(files)


def _source_files(module: str) -> tuple[tuple[str, str, int, int], ...] | None:
    """``(name in the module, path, mtime, size)`` of a top-level module's source files, or None when it is not
    the user's own code (or not found)."""
    if module in _VERSIONED_MODULES or module in sys.builtin_module_names:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: every .py file under it
        roots = [Path(p) for p in spec.submodule_search_locations]
        if any(_installed(root) for root in roots):
            return None
        files = sorted((root, f) for root in roots for f in root.rglob("*.py") if "__pycache__" not in f.parts)
    elif spec.origin and spec.origin.endswith(".py") and not _installed(Path(spec.origin)):
        files = [(Path(spec.origin).parent, Path(spec.origin))]
    else:
        return None  # installed, built-in, frozen or compiled: versioned, or not source the user edits
    if not files:
        return None
    return tuple((str(f.relative_to(root)), str(f), *_stat(f)) for root, f in files)


def _targets(config: Any) -> Iterable[str]:
    """The top-level module of every ``_target_`` string in a nested config."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key == "_target_" and isinstance(value, str) and value.strip():
                yield value.strip().split(".", 1)[0]
            else:
                yield from _targets(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            yield from _targets(value)


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@functools.cache
def _digest(files: tuple[tuple[str, str, int, int], ...]) -> str:
    """sha256 over each file's relative name and bytes; cached by path, mtime and size (a run asks once per step)."""
    digest = hashlib.sha256()
    for relative, path, _, _ in files:
        digest.update(relative.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _imports(files: tuple[tuple[str, str, int, int], ...]) -> frozenset[str]:
    """The top-level modules the files import by absolute name; cached like :func:`_digest`.

    A relative import stays inside the module's own package, already hashed whole. A file that does
    not parse imports nothing here: its bytes are hashed all the same, and importing it will say what is wrong.
    """
    names: set[str] = set()
    for _, path, _, _ in files:
        try:
            tree = ast.parse(Path(path).read_bytes(), filename=path)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".", 1)[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".", 1)[0])
    return frozenset(names)


@functools.cache
def _library_folders() -> tuple[str, ...]:
    """Where installed packages and the standard library live."""
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _installed(path: Path) -> bool:
    return os.path.realpath(path).startswith(_library_folders())
