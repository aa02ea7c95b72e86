"""The predict command's work: check the run and the new file, predict every batch, move the outputs into place.

`predict(cfg, out_dir=...)` does the work and is what tests call; ``bondexp.predict.__main__`` is the Hydra shell.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from bondexp.config import launch_dir, plain_dict
from bondexp.data import with_absolute_paths
from bondexp.errors import ConfigError, DataValidationError
from bondexp.predict.batches import check_source, csv_bytes, load_new_bonds, predict_batches, read_new_bonds
from bondexp.predict.runfolder import best_model, check_spreads, open_run, resolve_run
from bondexp.predict.summary import Scores, concat, ranking_columns, render_markdown
from bondexp.predict.workers import forking, leave_ctrl_c_to_the_parent


@dataclass
class PredictConf:
    run: str = MISSING  # a finished run folder, or `last` (the newest run under outputs/)
    data: Any = MISSING  # the new bonds: the data group, csv or parquet
    models: Any = "all"  # all | a list of the run's model names (`<model>_tuned` included)
    batch_rows: int = 65_536  # rows priced and predicted at once: memory follows this, not the file
    workers: int = 2  # processes pricing and predicting batches at once (forked); 1 runs in this process
    n_ranked: int = 20  # cheapest and richest bonds listed in predictions.md
    progress: bool = True  # a tqdm bar over the rows
    cache_dir: str = "~/.cache/bondexp"  # the feature cache holding the run's own data


def register_configs() -> None:
    """Register the predict schema beside bondexp's (the data group's schemas come from there)."""
    from hydra.core.config_store import ConfigStore

    from bondexp.config import register_configs as register_bondexp

    register_bondexp()
    ConfigStore.instance().store(name="predict_schema", node=PredictConf)


OUTPUT_FILES = ("predictions.parquet", "predictions.csv", "predictions.md")


def predict(cfg: DictConfig, *, out_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Check the run and the new file, predict every batch, then move the three output files into ``out_dir``.

    Returns the paths written. Raises a :class:`~bondexp.errors.BondexpError` (nothing written) when
    the config, the run folder or the data is wrong.
    """
    for key, low in (("batch_rows", 1), ("workers", 1), ("n_ranked", 0)):
        if int(cfg[key]) < low:
            raise ConfigError(f"The '{key}' config key must be an integer >= {low}. Got {cfg[key]!r} instead.")
    models = OmegaConf.to_container(cfg.models) if isinstance(cfg.models, ListConfig) else cfg.models
    # Relative paths are the launch folder's, with hydra.job.chdir=true too (the data files were refused as missing)
    launched_in = launch_dir()
    data_cfg = with_absolute_paths(plain_dict(cfg.data), base=launched_in)
    check_source(data_cfg)
    run_dir = launched_in / resolve_run(None if OmegaConf.is_missing(cfg, "run") else cfg.run, outputs=launched_in / "outputs")
    check_spreads(run_dir, data_cfg)
    wall = time.perf_counter()
    # The new file is read and validated while this thread opens the run (mostly scikit-learn's
    # import): about 2 and 3 s of CPU at 1M rows.
    with _reader(int(cfg.workers)) as reader:
        with forking():
            read = reader.submit(_cpu_timed, read_new_bonds, data_cfg)
        clock = time.thread_time()
        run = open_run(run_dir, models, cache_dir=Path(cfg.cache_dir).expanduser())
        times = {"open the run": time.thread_time() - clock}
        try:
            new, times["read and validate"] = read.result()
        except DataValidationError:
            if data_cfg.get("on_invalid", "raise") == "raise":
                # Read again knowing the run's sectors: one error lists every problem, sectors the
                # run never saw among them, where it used to come in a second round once the rest was fixed.
                read_new_bonds(data_cfg, known_sectors=run.dataset.sectors)
            raise
    clock = time.process_time()
    market, dropped, bond_names = load_new_bonds(data_cfg, run.dataset.sectors, read=new)
    times["read and validate"] += time.process_time() - clock
    notes = [n for n in [market.curves.past_longest_tenor(market.bonds["obs_date"], market.bonds["maturity_date"])] if n]
    if run.failed_models:
        notes.append(f"the run's model steps {list(run.failed_models)} failed: the best model is the best of the others")
    for note in notes:
        print(textwrap.fill(f"note: {note}.", width=80, subsequent_indent="  "), file=sys.stderr)
    best = best_model(run.artifacts)
    latest = market.bonds["obs_date"].max()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = {name: out_dir / name for name in OUTPUT_FILES}
    temporary = {name: out_dir / f".{name}.tmp" for name in OUTPUT_FILES}
    scores = Scores(list(run.artifacts))
    try:
        batches = predict_batches(
            run,
            market,
            batch_rows=int(cfg.batch_rows),
            bond_names=bond_names,
            progress=bool(cfg.progress),
            workers=int(cfg.workers),
            times=times,
        )
        ranked = _write_tables(batches, temporary, scores=scores, latest=latest, best=best, times=times)
        text = render_markdown(
            run,
            best=best,
            scores=scores,
            ranked=concat(ranked),
            data_cfg=data_cfg,
            dropped=dropped,
            notes=notes,
            n_rows=len(market.bonds),
            n_ranked=int(cfg.n_ranked),
            overrides=overrides,
            times=times,
            wall=time.perf_counter() - wall,
            workers=int(cfg.workers),
        )
        temporary["predictions.md"].write_text(text)
        for name in OUTPUT_FILES:
            os.replace(temporary[name], final[name])
    finally:
        for path in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return final


def _reader(workers: int) -> Executor:
    """Where the new file is read: a forked process when the batches go to worker processes (the
    read then has the other core to itself, where a thread would wait on the imports' GIL), else a thread."""
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"), initializer=leave_ctrl_c_to_the_parent)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bondexp-read")


def _cpu_timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the CPU seconds this thread spent on it."""
    clock = time.thread_time()
    return fn(*args), time.thread_time() - clock


def _write_tables(
    batches: Iterable[tuple[dict[str, np.ndarray], bytes]],
    temporary: Mapping[str, Path],
    *,
    scores: Scores,
    latest: Any,
    best: str,
    times: dict[str, float],
) -> list[dict[str, np.ndarray]]:
    """Write each batch to the temporary parquet and CSV files as it comes and score it; return the latest date's rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ranked: list[dict[str, np.ndarray]] = []
    parquet = csv = None
    try:
        for columns, csv_rows in batches:
            clock = time.process_time()
            table = pa.table(columns)
            if parquet is None or csv is None:
                # dictionary-encode the ids, dates and labels only: trying it on unique floats costs 10x the write
                labels = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
                parquet = pq.ParquetWriter(temporary["predictions.parquet"], table.schema, use_dictionary=labels)
                csv = open(temporary["predictions.csv"], "wb")  # closed below
                csv.write(csv_bytes({name: values[:0] for name, values in columns.items()}, header=True))
            parquet.write_table(table)
            csv.write(csv_rows)
            scores.add(columns)
            today = columns["obs_date"] == latest
            ranked.append({k: v[today] for k, v in columns.items() if k in ranking_columns(best)})
            times["write"] = times.get("write", 0.0) + time.process_time() - clock
    finally:
        for writer in (parquet, csv):
            if writer is not None:
                writer.close()
    return ranked
