"""`python -m bondexp` and the `bondexp` script: a thin Hydra shell around `bondexp.app.run`."""

from __future__ import annotations

import atexit
import gc
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from bondexp.executors import kill_forkserver, launch_forkserver_early
from bondexp.script import ctrl_c, interrupted_while_importing

if __name__ == "__main__":  # `python -m bondexp`: before Hydra's import (the `bondexp` script does it in bondexp.script)
    signal.signal(signal.SIGINT, interrupted_while_importing)
    launch_forkserver_early(sys.argv)

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bondexp import hydra_startup
from bondexp.config import register_configs, resolve_run_dir
from bondexp.errors import BondexpError, end_logged_output_with_its_reader, reader_went_away

hydra_startup.install()
register_configs()


def _with_resumed_overrides(argv: list[str]) -> list[str]:
    """``argv`` with a resumed run's original overrides put before today's, so Hydra composes once.

    ``resume=<folder>`` (or ``last``) continues that run with the overrides it was started with
    (``<folder>/.hydra/overrides.yaml``) and the config folders it was given (``hydra.searchpath``,
    which Hydra keeps apart, in ``hydra.yaml``); overrides given today come after them and win, and
    one today sets again (the same key, the same ``+``/``~``) is left out of the saved ones: the
    attempt's record, ``report.md`` and ``bondexp.runs`` listed ``workers=1 ... workers=2``.
    """
    resume = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not resume or resume[-1] in ("null", "None", ""):
        return argv
    from bondexp.runs import read_overrides

    saved = Path(resolve_run_dir(resume[-1])) / ".hydra"
    original = read_overrides(saved.parent)  # its latest attempt's: a resume that changed the config continues with it
    first = next(i for i, a in enumerate(argv) if i and not a.startswith("-") and ("=" in a or a.startswith("~")))
    today = {a.split("=", 1)[0] for a in argv[first:]}
    kept = [o for o in [*_saved_searchpath(saved / "hydra.yaml"), *original] if o.split("=", 1)[0] not in today]
    return [*argv[:first], *kept, *argv[first:]]


def _saved_searchpath(hydra_file: Path) -> list[str]:
    """``hydra.searchpath=[...]`` as the run was given it, relative folders made absolute from where it was launched.

    Without it the run's own "Resume with:" command failed for a model file from the user's folder:
    ``Could not find 'model/my_hgb'``.
    """
    if not hydra_file.is_file():
        return []
    saved: Any = OmegaConf.to_container(OmegaConf.load(hydra_file), resolve=False)  # as saved: nothing to resolve
    hydra = (saved.get("hydra") or {}) if isinstance(saved, dict) else {}
    paths = [str(p) for p in hydra.get("searchpath") or []]
    if not paths:
        return []
    launched_in = Path(str((hydra.get("runtime") or {}).get("cwd", ".")))
    for i, path in enumerate(paths):
        scheme, sep, rest = path.partition("://")
        if scheme == "file" and sep and not rest.startswith("/"):
            paths[i] = f"file://{launched_in / rest}"
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def _model_choice(choices: Any, overrides: list[str]) -> str | None:
    """The ``model`` group's choice: Hydra records a single option, not a list (``model=[a,b]``), so take that from the overrides."""
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "model" and "=" in o]
    return choices.get("model") or (given[-1] if given else None)


@hydra.main(version_base="1.3", config_path="pkg://bondexp.conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    """Run the experiment; exit with 2 on bad input, 1 when a step failed, 130 on Ctrl-C.

    A sweep's job returns instead: exiting would end its siblings, and the sweep's summary, with it.
    The sweep's exit code comes from the jobs' folders (:mod:`bondexp.sweep`).
    """
    from bondexp import sweep

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN and sweep.was_interrupted(Path(hc.sweep.dir)):
        print(f"#{hc.job.num} not started: the sweep was interrupted", file=sys.stderr)
        sweep.note_not_run(Path(hc.runtime.output_dir), "not started: the sweep was interrupted")
        return
    if sweep.IN_JOB_PROCESS:  # a joblib worker ignores Ctrl-C between jobs and answers it during one
        signal.signal(signal.SIGINT, ctrl_c)  # the run's handler: a Ctrl-C library code swallows is raised again
    try:
        code = _run(cfg, hc)
    finally:
        if sweep.IN_JOB_PROCESS:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code and hc.mode != RunMode.MULTIRUN:
        sys.exit(code)


def _run(cfg: DictConfig, hc: Any) -> int:
    """Run the experiment of ``cfg``, print how it ended; return the exit code."""
    # imported here, not at the top: `--help` and `--cfg job` never get this far and need none of it
    from bondexp.app import resume_command, run
    from bondexp.config import NEW_RUN_DIRS
    from bondexp.runs import as_typed, discard_unused  # as_typed: a sweep's job gets its overrides as its sweeper spells them
    from bondexp.sweep import label_console_logs, note_not_run

    overrides = [as_typed(o) for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") != "resume"]
    run_dir = Path(hc.runtime.output_dir)
    workers, job, progress_label = None, None, None
    if hc.mode == RunMode.MULTIRUN:
        # sweep jobs share the machine: each runs its steps on its share of the workers
        n_jobs = OmegaConf.select(hc.launcher, "n_jobs", default=1) or 1
        workers = max(1, int(cfg.workers) // max(1, int(n_jobs)))
        job = f"#{hc.job.num}"  # as Hydra's launch lines name the jobs
        if int(n_jobs) != 1:  # and the terminal, shared: labelled lines instead of a bar, labelled warnings
            progress_label = job
            label_console_logs(job)
        # A launcher's worker process (joblib's loky) ends with a full interpreter teardown, which
        # collected what the jobs imported object by object while the sweep waited: as main() does.
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)
        note_not_run(run_dir, None)  # a resumed sweep's job that runs now
    try:
        result = run(
            cfg,
            run_dir=run_dir,
            model_choice=_model_choice(hc.runtime.choices, overrides),
            overrides=overrides,
            workers=workers,
            job=job,
            progress_label=progress_label,
        )
    except BondexpError as err:
        label = "" if job is None else f"{job} "
        print(f"{label}bondexp: error: {err}", file=sys.stderr)
        if job is not None:
            note_not_run(run_dir, f"error: {err}")
        else:
            discard_unused(run_dir, made_here=NEW_RUN_DIRS)
        _forget_resumed_record(run_dir, hc.output_subdir)
        return 2
    except KeyboardInterrupt:
        result = None
        interrupted = True
    except BrokenPipeError:  # the reader of the output stopped reading (`| head`)
        if job is None:  # `dry_run=true | head -3`, or bad input: no step began, nothing to keep
            discard_unused(run_dir, made_here=NEW_RUN_DIRS)
        return reader_went_away()
    else:
        interrupted = result is not None and result.interrupted  # the runner stopped its workers and kept what finished
        if result is None and job is None:  # a dry run: the plan is printed, the folder Hydra made for it is not needed
            discard_unused(run_dir, made_here=NEW_RUN_DIRS)
    if interrupted:
        from bondexp.runs import steps_began
        from bondexp.sweep import mark_interrupted

        kill_forkserver()  # it may still be importing: it would hold the output open and fork a worker no one wants
        label = "" if job is None else f"{job} "
        if not steps_began(run_dir):  # Ctrl-C while the data loaded: a folder with nothing to resume
            message = f"{label}Interrupted before any step began."
            if job is not None:
                note_not_run(run_dir, "interrupted before any step began")
            else:
                discard_unused(run_dir, made_here=NEW_RUN_DIRS)
        elif job is not None:  # the sweep says how to resume all of its jobs (bondexp.sweep)
            message = f"{label}Interrupted. Finished steps are checkpointed."
        else:
            message = f"Interrupted. Finished steps are checkpointed; resume with:\n  {resume_command(run_dir)}"
        if job is not None:
            mark_interrupted(Path(hc.sweep.dir))
        print(f"\n{message}", file=sys.stderr)
        return 130
    if result is not None and not result.ok:
        return 1
    return 0


def _forget_resumed_record(run_dir: Path, output_subdir: str | None) -> None:
    """Remove the ``.hydra/resumed-<time>/`` Hydra wrote for a later attempt in a run's folder that bad input stopped.

    The run's latest attempt is its newest record (:func:`bondexp.runs.latest_record`): a plain
    resume after ``resume=<folder> workers=0`` would have continued with ``workers=0``.
    """
    from bondexp.runs import RESUMED_RECORD

    if output_subdir and Path(output_subdir).parent.name == ".hydra" and Path(output_subdir).name.startswith(RESUMED_RECORD):
        shutil.rmtree(run_dir / output_subdir, ignore_errors=True)


def main() -> None:
    """Console-script entry point.

    However it ends, the objects left are frozen before the interpreter exits (``gc.freeze``):
    everything is written by then, and collecting scikit-learn, SciPy and pandas object by object
    took 0.7 s of every run's end for memory the process hands back anyway. Exit handlers still run.
    """
    launch_forkserver_early(sys.argv)  # a no-op when `python -m bondexp` or the `bondexp` script launched it already
    try:
        signal.signal(signal.SIGINT, ctrl_c)  # from here on the handlers below answer Ctrl-C
        try:
            sys.argv = _with_resumed_overrides(sys.argv)
        except BondexpError as err:
            print(f"bondexp: error: {err}", file=sys.stderr)
            sys.exit(2)
        end_logged_output_with_its_reader(sys.argv)
        _main()
        from bondexp import sweep

        if sweep.exit_code:  # a sweep whose every job has ended, and its summary is written
            sys.exit(sweep.exit_code)
    except BrokenPipeError:  # `--help | head`, `--info | head`: Hydra's own output (a run's is answered in _run)
        sys.exit(reader_went_away())
    except KeyboardInterrupt:  # before the run began (once it has, _main says how to resume), or a sweep's second Ctrl-C
        from bondexp import sweep

        kill_forkserver()
        if not sweep.wrap_up_killed():  # a sweep's wrap-up says it was interrupted, and how to resume it
            print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
