"""`python -m bondexp.runs`: list and compare finished run folders, without MLflow.

One row per run folder (a `python -m bondexp` run or one job of a sweep): when it started, its
overrides, its status, wall time, data fingerprint, the best model chosen on validation and that
model's test RMSE. It reads each folder's small text files only (results.json, leaderboard.csv,
data_summary.json, .hydra/overrides.yaml), never a checkpoint, so it is fast on any number of runs.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bondexp.errors import reader_went_away

#: Leaderboard rows that are references, not trained models.
REFERENCE_ROWS = ("dcf_baseline", "oracle")
#: Step groups that train no model of their own: the report steps (``tune``'s ``val_rmse`` is its tuned
#: model's, named ``<target>_tuned``, not the step's) and the backtest refits (scored on later months).
NON_MODEL_GROUPS = ("report", "backtest")
#: Folders searched when no folder is given (Hydra's run and sweep layouts, under the current folder).
DEFAULT_ROOTS = ("outputs", "multirun")
COLUMNS = ("date", "folder", "status", "wall_s", "data", "best_model", "test_rmse", "overrides")


def best_model_on_validation(results: Mapping[str, Any], leaderboard: Sequence[Mapping[str, Any]]) -> str | None:
    """The model validation chose: evaluate's ``best_model`` when it reports one, else the leaderboard
    row with the lowest ``val_rmse``, else the model with the lowest ``val_rmse`` in results.json: a
    step outside :data:`NON_MODEL_GROUPS`, or the tune step's ``tuned_model`` (the step's name is no
    model's; predict, which counts the tuned model, named it best where this said another).

    Returns None when none of the three is available (no model finished).
    """
    steps = results.get("steps", {})
    chosen = (steps.get("evaluate", {}).get("metrics") or {}).get("best_model")
    if chosen:
        return str(chosen)
    scored = [
        (float(row["val_rmse"]), row["model"])
        for row in leaderboard
        if row.get("model") not in REFERENCE_ROWS and _is_number(row.get("val_rmse"))
    ]
    if not scored:
        scored = [
            (float(metrics["val_rmse"]), metrics.get("tuned_model") or name)
            for name, step in steps.items()
            if _is_number((metrics := step.get("metrics") or {}).get("val_rmse"))
            and (step.get("group") not in NON_MODEL_GROUPS or metrics.get("tuned_model"))
        ]
    return min(scored)[1] if scored else None


def read_leaderboard(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``leaderboard.csv`` (numbers as floats, empty cells as None); [] when there is none."""
    path = Path(run_dir) / "leaderboard.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{key: _cell(value) if key != "model" else value for key, value in row.items()} for row in csv.DictReader(handle)]


#: A resumed attempt's record, beside the run's first in ``.hydra/`` (see bondexp.config's ``output_subdir``).
RESUMED_RECORD = "resumed-"


def latest_record(run_dir: Path) -> Path:
    """The folder holding the config of the run's latest attempt: its newest ``.hydra/resumed-<time>/``, else ``.hydra/``.

    A resume may change the config (``resume=<folder> seed=5``), and the folder then holds that
    attempt's results. Reading the first attempt's config, predict refused such a run ("data
    changed"), this listing showed the first overrides, and a plain resume went back to them (a
    resume interrupted after ``resume=<folder> tune.n_trials=40``, resumed as it printed, reused
    the old 16-trial tuning). A resume stopped by bad input leaves no record (bondexp.__main__).
    """
    hydra_dir = Path(run_dir) / ".hydra"
    resumed = sorted(p for p in hydra_dir.glob(f"{RESUMED_RECORD}*") if (p / "overrides.yaml").is_file())
    return resumed[-1] if resumed else hydra_dir


def read_overrides(run_dir: Path) -> list[str]:
    """The overrides of the run's latest attempt (:func:`latest_record`), ``resume=`` left out; [] when there are none.

    As typed: a sweep's job records them as Hydra's sweeper writes them, ``~steps.tune=null`` and
    ``executor.address=tcp\\://host\\:8786``, so ``--override '~steps.tune'`` missed every job.
    """
    import yaml

    path = latest_record(run_dir) / "overrides.yaml"
    overrides = [as_typed(str(o)) for o in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]


def as_typed(override: str) -> str:
    """A sweeper's spelling of an override as a user types it (both parse alike): a deletion without ``=null``,
    a value without the backslashes before its colons."""
    if override.startswith("~") and override.endswith("=null"):
        return override[: -len("=null")]
    key, sep, value = override.partition("=")
    return key + sep + value.replace("\\:", ":")


def run_row(run_dir: Path) -> dict[str, Any]:
    """One comparison row for the run folder ``run_dir``."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    leaderboard = read_leaderboard(run_dir)
    best = best_model_on_validation(results, leaderboard)
    test_rmse = next((row.get("rmse") for row in leaderboard if row.get("model") == best), None)
    status = run_status(results)
    started = run_dir / ".hydra" / "overrides.yaml"
    stamp = (started if started.is_file() else run_dir / "results.json" if results else run_dir).stat().st_mtime
    return {
        "date": datetime.fromtimestamp(stamp),
        "folder": str(run_dir),
        "status": status,
        "wall_s": results.get("total_wall_s", results.get("wall_s")),  # every attempt's, a resume's included
        "data": (read_json(run_dir / "data_summary.json").get("fingerprint") or "")[:12],
        "best_model": best,
        "test_rmse": test_rmse,
        "overrides": read_overrides(run_dir),
    }


def run_status(results: Mapping[str, Any]) -> str:
    """``ok``, ``failed``, ``interrupted`` (a Ctrl-C stopped it), or ``unfinished`` (no results.json yet) from results.json."""
    if results.get("interrupted"):
        return "interrupted"
    ok = results.get("ok")
    return "unfinished" if ok is None else "ok" if ok else "failed"


def steps_began(folder: Path) -> bool:
    """Whether a run's steps began in ``folder``: the runner made its ``logs/`` or ``checkpoints/``.

    Hydra also leaves a folder, holding only ``.hydra/``, for a ``dry_run`` and for a command that
    stopped on a config error: no run to list or resume.
    """
    return (folder / "logs").is_dir() or (folder / "checkpoints").is_dir()


#: What a command that ended before any step began leaves in its folder: Hydra's record and log, the
#: data summary, the run lock.
_LEFT_BEFORE_STEPS = {".hydra", "__main__.log", "data_summary.json", "invalid_rows.json", "run.lock"}
_HYDRA_RECORD = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def discard_unused(folder: Path, *, made_here: Mapping[Path, Path]) -> bool:
    """Remove ``folder`` when this command made it (a key of ``made_here``) and it holds only what a
    command that ended before any step began leaves; then the folders above it that this left empty,
    up to ``made_here[folder]`` (``outputs/``).

    A dry run, bad input and a Ctrl-C before the first step left ``outputs/<date>/<time>/`` with a log
    (and ``.hydra/``): nothing to list or resume, one more folder for every attempt. Anything else in
    it (a step's ``logs/``, a file of yours) keeps it. Returns whether it was removed.
    """
    import logging
    import shutil

    folder = Path(folder).resolve()
    if folder not in made_here or not folder.is_dir() or steps_began(folder):
        return False
    entries = {p.name for p in folder.iterdir()}
    hydra = folder / ".hydra"
    if not entries <= _LEFT_BEFORE_STEPS or (hydra.is_dir() and not {p.name for p in hydra.iterdir()} <= _HYDRA_RECORD):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's log file in the folder: closed before it is removed
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(folder, ignore_errors=True)
    top = made_here[folder]
    for parent in folder.parents:  # outputs/<date>, then outputs/, when this left them empty
        if parent != top and top not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
    return not folder.exists()


def find_run_folders(paths: Iterable[Path]) -> list[Path]:
    """Every run folder at or below ``paths``: a folder holding results.json, or where steps began (a run killed before its end)."""
    found = set()
    for path in map(Path, paths):
        if _is_run_folder(path):
            found.add(path)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob("results.json"))
            found.update(p.parent for name in ("logs", "checkpoints") for p in path.rglob(name) if p.is_dir() and steps_began(p.parent))
    return sorted(found)


def select(rows: Iterable[dict[str, Any]], *, since: datetime | None = None, patterns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows started at or after ``since`` whose overrides match every pattern (fnmatch: ``model=enhanced``,
    ``seed=*``), oldest first."""
    kept = [
        row
        for row in rows
        if (since is None or row["date"] >= since)
        and all(any(fnmatch.fnmatchcase(o, pattern) for o in row["overrides"]) for pattern in patterns)
    ]
    return sorted(kept, key=lambda row: (row["date"], row["folder"]))


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an aligned text table."""
    cells = [[_show(key, row[key]) for key in COLUMNS] for row in rows]
    widths = [max([len(key)] + [len(line[i]) for line in cells]) for i, key in enumerate(COLUMNS)]
    lines = ["  ".join(key.ljust(w) for key, w in zip(COLUMNS, widths, strict=True)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bondexp.runs",
        description="List and compare bondexp run folders (default: everything under outputs/ and multirun/).",
    )
    parser.add_argument("folders", nargs="*", type=Path, help="run folders, or folders to search for runs")
    parser.add_argument("--since", type=_date, help="only runs started on or after this date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only runs with an override matching PATTERN, e.g. model=enhanced or 'seed=*' (repeatable)",
    )
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    args = parser.parse_args(argv)
    roots = args.folders or [Path(root) for root in DEFAULT_ROOTS if Path(root).is_dir()]
    missing = [str(p) for p in args.folders if not p.exists()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    folders = find_run_folders(roots)
    rows = select((run_row(folder) for folder in folders), since=args.since, patterns=args.override)
    if not rows:
        where = ", ".join(map(str, roots)) or "outputs/ or multirun/"
        print(
            f"no run folders found under {where}"
            if not folders
            else f"none of the {len(folders)} run folders under {where} matches --since/--override",
            file=sys.stderr,
        )
        return 1
    try:
        if args.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows([_show(key, row[key]) for key in COLUMNS] for row in rows)
        else:
            print(format_table(rows))
        sys.stdout.flush()
    except BrokenPipeError:  # `python -m bondexp.runs | head`
        return reader_went_away()
    return 0


def _is_run_folder(path: Path) -> bool:
    return (path / "results.json").is_file() or steps_began(path)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> Any:
    """A CSV cell as a float when it is one, None when empty, else the text."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _show(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "date":
        return value.strftime("%Y-%m-%d %H:%M")
    if key == "overrides":
        return " ".join(value)
    if key == "wall_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 2026-11-29 or 2026-11-29T10:00, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
