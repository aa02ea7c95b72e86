"""What a person sees in a real terminal: the progress bar, and no INFO log lines over it."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import group_running

QUICK = ["data=small", "model=[basic,factor]", "~steps.tune", "eval.n_bootstrap=50", "workers=2"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], *, cwd: Path, cache: Path, timeout_s: float = 300, ctrl_c_at: str | None = None) -> tuple[int, str]:
    """Run `python -m bondexp` with stdin, stdout and stderr on a pseudo-terminal; return (exit code, screen text).

    With ``ctrl_c_at``, press Ctrl-C (SIGINT to the process group) once the screen shows that text.
    """
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    # PYTHONFAULTHANDLER: a run that hangs is sent SIGABRT, and every thread's stack lands on the screen
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache), "TERM": "xterm", "COLUMNS": "160", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bondexp", *args],
        cwd=cwd,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
        start_new_session=ctrl_c_at is not None,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed: every writer has exited
                    break
                if not data:
                    break
                chunks.append(data)
                if ctrl_c_at is not None and ctrl_c_at in ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")):
                    os.killpg(proc.pid, 2)
                    ctrl_c_at = None
            elif proc.poll() is not None:
                break
        else:
            stacks = _stacks_of_hung(proc, leader)
            raise AssertionError(f"bondexp did not finish in a terminal within the time limit; its threads:\n{stacks}")
    finally:
        os.close(leader)
    code = proc.wait(timeout=30)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def _stacks_of_hung(proc: subprocess.Popen, leader: int) -> str:
    """Abort a hung run and return what its fault handler printed: the stack of every thread, where it hung."""
    proc.send_signal(signal.SIGABRT)
    printed = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and select.select([leader], [], [], 0.5)[0]:
        try:
            printed.append(os.read(leader, 65536))
        except OSError:
            break
    proc.kill()
    return b"".join(printed).decode("utf-8", "replace")[:10000]  # the main thread first


def test_terminal_shows_the_bar_and_no_info_lines(tmp_path):
    code, screen = run_in_terminal([*QUICK, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, cache=tmp_path / "cache")
    assert code == 0, screen[-4000:]
    assert re.search(r"bondexp: +\d+%\|.*\| \d+/4 steps", screen), screen[-4000:]  # the tqdm bar
    assert "[INFO]" not in screen, screen[-4000:]
    assert not re.search(r"\b(start|ran) +(basic|factor|evaluate|drift)\b", screen), screen[-4000:]
    assert "run folder:" in screen  # the end of the run still prints its table and where it wrote
    main_log = (tmp_path / "run" / "__main__.log").read_text()
    assert "start basic" in main_log  # step events go to the main log instead


def test_a_parallel_sweep_prints_labelled_lines_not_bars(tmp_path):
    """Two jobs at once share the terminal: their bars overwrote each other mid-line. Each job now
    prints lines labelled with its number, and its table in one piece under its overrides."""
    sweep = ["-m", "data=small", "model=factor", "~steps.tune", "eval.n_bootstrap=50", "workers=2", "seed=0,1"]
    code, screen = run_in_terminal([*sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, cache=tmp_path / "cache")
    assert code == 0, screen[-4000:]
    assert "steps [" not in screen, screen[-4000:]  # no bar
    # the launcher's lines fit 100 columns (its first listed eleven joblib settings in 230 characters) and say the
    # overrides as typed (not `~steps.tune=null`)
    launch = [line for line in screen.splitlines() if "[HYDRA]" in line]
    assert launch[0].endswith("[HYDRA] Joblib is launching 2 jobs, 2 at a time (hydra.launcher.n_jobs)"), launch
    assert launch[2].endswith("[HYDRA]   #0 : data=small model=factor ~steps.tune eval.n_bootstrap=50 workers=2 seed=0"), launch
    assert len(launch[0]) <= 100 and "=null" not in screen, launch
    for job, seed in (("#0", 0), ("#1", 1)):
        assert re.search(rf"\[bondexp {job} \d\d:\d\d\] ran +factor in", screen), screen[-4000:]
        assert f"{job} data: 3,000 observations" in screen
        # the job's line as Hydra's launch line has it, the overrides as typed (Hydra's says `~steps.tune=null`), at a
        # line's start; its table follows, nothing between
        head = re.search(rf"^{job} : data=small model=factor ~steps.tune eval.n_bootstrap=50 workers=2 seed={seed}\r?\n", screen, re.M)
        assert head, screen[-4000:]
        table = screen[head.end() :]
        assert table.startswith("step "), screen[-4000:]
        assert f"sweep/{job[1:]}/report.md" in table.partition("from the last step's end")[0]


def test_a_verbose_estimators_lines_go_to_its_steps_log_not_under_the_bar(tmp_path):
    """GradientBoosting with verbose=1 printed its table through the bar: the model step's, then the tune
    step's and its trial process's interleaved, one line torn by the bar's carriage return."""
    model = tmp_path / "myconf" / "model" / "loud.yaml"
    model.parent.mkdir(parents=True)
    model.write_text("_target_: sklearn.ensemble.GradientBoostingRegressor\nverbose: 1\nn_estimators: 20\n")
    run_dir = tmp_path / "run"
    args = ["data=small", "model=loud", "tune.n_trials=2", "tune.batch_size=2", "~steps.drift", "eval.n_bootstrap=50", "workers=2"]
    args += [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", f"hydra.run.dir={run_dir}"]
    code, screen = run_in_terminal(args, cwd=tmp_path, cache=tmp_path / "cache")
    assert code == 0, screen[-4000:]
    assert "Train Loss" not in screen, screen[-4000:]
    assert re.search(r"bondexp: +100%\|.*\| 3/3 steps", screen) and "run folder:" in screen, screen[-4000:]
    for step in ("loud", "tune"):
        assert "Train Loss" in (run_dir / "logs" / f"{step}.log").read_text()


@pytest.mark.parametrize("moment", ["running: ", "1/5 steps"])  # as the first step is submitted; once one has ended
def test_ctrl_c_leaves_the_bar_as_it_stood_then_the_warning_and_the_table(tmp_path, moment):
    args = [*QUICK, "model=[basic,factor,automl]", f"hydra.run.dir={tmp_path / 'run'}"]
    code, screen = run_in_terminal(args, cwd=tmp_path, cache=tmp_path / "cache", ctrl_c_at=moment)
    assert code == 130, screen[-4000:]
    before, warning, after = screen.partition("interrupted: stopping workers")
    assert warning and "steps [" in before, screen[-4000:]
    assert "steps [" not in after, screen[-4000:]  # the bar was not drawn again under the warning
    assert "wall " in after and "Interrupted. Finished steps are checkpointed" in after
    assert "from the last step's end" not in after  # it would count the time the interrupted steps ran


def test_a_ctrl_c_after_the_last_step_lets_the_outputs_and_tracking_finish(tmp_path):
    """A Ctrl-C while a finished run wrote its outputs gave exit 130 and "resume with" beside a results.json that
    said ok (or none at all), and no MLflow run: logging one takes seconds."""
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    args = [*QUICK, "tracking=mlflow", f"tracking.uri=sqlite:///{tmp_path / 'ml.db'}", f"hydra.run.dir={run_dir}"]
    code, screen = run_in_terminal(args, cwd=tmp_path, cache=tmp_path / "cache", ctrl_c_at="4/4 steps")
    assert code == 0, screen[-4000:]
    # a Ctrl-C while the outputs are written prints why it waits; one just before (as the loop ends) needs no wait
    assert "Interrupted" not in screen and "wall " in screen, screen[-4000:]
    assert "The Ctrl-C came after the last step: the run finished, and its outputs are written." in screen, screen[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["ok"] and not results["interrupted"]
    assert (run_dir / "mlflow_run.json").is_file() and "## Tracking" in (run_dir / "report.md").read_text()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


@pytest.mark.parametrize("moment", ["importing", "composed"])
@pytest.mark.parametrize("command", [[sys.executable, "-m", "bondexp"], [str(Path(sys.executable).with_name("bondexp"))]])
def test_ctrl_c_during_start_up_prints_one_message_and_leaves_nothing_running(tmp_path, moment, command):
    """Ctrl-C reaches every process of the run. While Python imports Hydra (the forkserver has just been
    launched) or once Hydra has composed (the forkserver still imports scikit-learn), the run answers
    with one message and no traceback, and its forkserver does not outlive it; the `bondexp` script as
    `python -m bondexp` (it launched the forkserver only after Hydra's import, and printed a traceback
    for a Ctrl-C during it)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(tmp_path / "cache")}
    with open(tmp_path / "output.txt", "w") as out:
        proc = subprocess.Popen(
            [*command, *QUICK, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    composed = tmp_path / "run" / ".hydra"
    deadline = time.monotonic() + 60
    while not (_children(proc.pid) if moment == "importing" else composed.exists()) and proc.poll() is None:
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.01)
    os.killpg(proc.pid, 2)
    try:
        code = proc.wait(timeout=120)
        left = group_running(proc.pid)
    finally:
        os.killpg(proc.pid, 9) if group_running(proc.pid) else None
    output = (tmp_path / "output.txt").read_text()
    assert code == 130, output
    assert "Interrupted" in output and "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert not left, left
    if not (tmp_path / "run" / "logs").exists():  # no step began: nothing to resume, and no resume command
        assert "resume with" not in output, output
