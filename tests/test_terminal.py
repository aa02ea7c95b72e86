"""What a person sees in a real terminal: the progress bar, and no INFO log lines over it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

QUICK = ["data=small", "model=[basic,factor]", "~steps.tune", "eval.n_bootstrap=50", "workers=2"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], *, cwd: Path, cache: Path, timeout_s: float = 300) -> tuple[int, str]:
    """Run `python -m bondexp` with stdin, stdout and stderr on a pseudo-terminal; return (exit code, screen text)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(cache), "TERM": "xterm", "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bondexp", *args], cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower, close_fds=True
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
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError("bondexp did not finish in a terminal within the time limit")
    finally:
        os.close(leader)
    code = proc.wait(timeout=30)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_terminal_shows_the_bar_and_no_info_lines(tmp_path):
    code, screen = run_in_terminal([*QUICK, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, cache=tmp_path / "cache")
    assert code == 0, screen[-4000:]
    assert re.search(r"bondexp: +\d+%\|.*\| \d+/4 steps", screen), screen[-4000:]  # the tqdm bar
    assert "[INFO]" not in screen, screen[-4000:]
    assert not re.search(r"\b(start|ran) +(basic|factor|evaluate|drift)\b", screen), screen[-4000:]
    assert "run folder:" in screen  # the end of the run still prints its table and where it wrote
    main_log = (tmp_path / "run" / "__main__.log").read_text()
    assert "start basic" in main_log  # step events go to the main log instead


def test_ctrl_c_during_start_up_prints_one_message_and_no_traceback(tmp_path):
    """Ctrl-C reaches every process of the run; while Hydra composes and the forkserver imports,
    neither may answer it with a traceback (the forkserver ignores it, the run says it stopped)."""
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bondexp", *QUICK, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    composed = tmp_path / "run" / ".hydra"
    deadline = time.monotonic() + 60
    while not composed.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, 2)  # Hydra has composed; the forkserver is still importing scikit-learn
    output, _ = proc.communicate(timeout=120)  # returns once every process holding the pipe (the forkserver too) has ended
    assert proc.returncode == 130, output
    assert "Interrupted" in output and "Traceback" not in output and "KeyboardInterrupt" not in output, output
