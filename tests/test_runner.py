"""The runner on graphs of tiny steps: scheduling, failure isolation, resume, lock, executors."""

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import joblib
import numpy as np
import pytest

import runner_steps
from bondexp.checkpoints import CheckpointStore, DurationHistory
from bondexp.errors import ConfigError, InputsLost, RunLockedError
from bondexp.executors import EXECUTORS, InlineBackend
from bondexp.graph import Step, build_graph
from bondexp.planning import dry_run_plan, expected_durations, history_key
from bondexp.runner import run_graph
from conftest import group_running

TESTS = Path(__file__).parent
MOD = runner_steps.__name__


def S(name, fn="work", needs=(), group="g", **config):
    return Step(name, f"{MOD}.{fn}", needs=tuple(needs), group=group, config=config)


def run(graph, run_dir, **kwargs):
    kwargs.setdefault("data_fingerprint", "data-v1")
    kwargs.setdefault("progress", False)
    return run_graph(graph, run_dir=run_dir, **kwargs)


def artifact(run_dir, name):
    return joblib.load(Path(run_dir) / "checkpoints" / f"{name}.pkl")


def statuses(result):
    return {name: s.status for name, s in result.steps.items()}


def subprocess_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def diamond():
    return build_graph(
        [
            S("a", value=1.0, seconds=0.05),
            S("b", needs=["a"], value=2.0, seconds=0.05),
            S("c", needs=["a"], value=3.0, seconds=0.05),
            S("d", needs=["b", "c"], group="report", value=4.0),
            S("e", value=5.0),
        ]
    )


def test_concurrency_limit_and_dependency_order(tmp_path):
    graph = build_graph(
        [
            S("fast", group="ml", seconds=0.1),
            S("slow", group="ml", seconds=1.2),
            S("m1", group="ml", seconds=0.3),
            S("m2", group="ml", seconds=0.3),
            S("evaluate", needs=["fast"], group="report", seconds=0.1),
            S("drift", needs=["evaluate", "m1"], group="report", seconds=0.1),
        ]
    )
    result = run(graph, tmp_path, workers=2)
    assert result.ok, result.summary_table()
    spans = {name: (artifact(tmp_path, name)["start"], artifact(tmp_path, name)["end"]) for name in graph.order}
    # never more than 2 steps at once, but really 2 at once
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()], key=lambda ev: (ev[0], ev[1]))
    level, peak = 0, 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert peak == 2
    # a step starts only after its needs end
    for step in graph:
        for need in step.needs:
            assert spans[step.name][0] >= spans[need][1]
    # ... and as soon as they end, not when its group's slowest member ends
    assert spans["evaluate"][0] < spans["slow"][1]
    assert len({s.worker for s in result.steps.values()}) == 2
    assert {s.worker.split("/")[0] for s in result.steps.values()} == {"w0", "w1"}


def test_pool_workers_collect_with_the_forkserver_preload_frozen(tmp_path):
    """The forkserver turns its collector off while it imports and on again after freezing: a worker collects."""
    run(build_graph([S("gc", fn="collector"), S("e", value=1.0)]), tmp_path, workers=2)
    assert artifact(tmp_path, "gc")["metrics"] == {"enabled": True, "frozen": True}


def test_the_forkserver_exits_at_once_when_the_run_does():
    """It holds the run's stdout: a reader of the run's output waited for its interpreter's teardown (0.11-0.17 s)
    after the run had exited. Its last exit handler now ends it, so none registered before it runs."""
    code = textwrap.dedent(
        """
        import multiprocessing
        from bondexp import executors
        context = multiprocessing.get_context("forkserver")
        *first, last = executors._forkserver_preload(step_libraries=False)
        context.set_forkserver_preload([*first, "forkserver_probe", last])
        with context.Pool(1) as pool:
            pool.apply(int)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["forkserver: preloaded"]


def test_the_parent_imports_the_step_libraries_beside_dask_and_nothing_of_the_forkserver():
    """Beside a Dask cluster the run's process imports the step libraries in a thread. The forkserver's first
    preload would fail there (signals belong to the main thread) and stop the import, so it is not among them."""
    code = textwrap.dedent(
        """
        import gc, signal, sys, threading
        from bondexp import executors
        executors.warm_up("dask", workers=2)
        [t.join() for t in threading.enumerate() if t.name == "bondexp-import"]
        print("sklearn.ensemble" in sys.modules, "bondexp.forkserver_first" in sys.modules, gc.isenabled(),
              signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "False", "True", "True"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("executor", "workers", "kept"), [("local", 1, False), ("dask", 2, False), ("local", 2, True)])
def test_a_forkserver_launched_before_the_config_is_killed_when_the_config_wants_no_pool(executor, workers, kept):
    """The command line said a plain run, so the server was launched early; a config file's `workers: 1`
    or Dask executor means no pool, and it would import scikit-learn for nothing."""
    code = textwrap.dedent(
        f"""
        import os
        from multiprocessing import forkserver
        from bondexp import executors
        executors.launch_forkserver_early(["bondexp"])
        pid = forkserver._forkserver._forkserver_pid
        executors.warm_up({executor!r}, workers={workers})
        try:
            state = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        print(pid is not None, state not in ("gone", "Z"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", str(kept)], proc.stderr[-2000:]


def test_killing_the_forkserver_from_a_ctrl_c_inside_its_launch_does_not_wait_for_the_launch():
    """A Ctrl-C handler calls kill_forkserver while the main thread may hold the server's lock (inside
    ensure_running); waiting for that lock would hang the Ctrl-C for good."""
    code = textwrap.dedent(
        """
        import os
        from multiprocessing import forkserver
        from bondexp import executors
        forkserver.ensure_running()
        server = forkserver._forkserver
        pid = server._forkserver_pid
        with server._lock:  # as inside ensure_running()
            executors.kill_forkserver()
        _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True"], proc.stderr[-2000:]


def test_the_forkserver_is_spawned_with_ctrl_c_blocked_and_the_run_gets_it_after(monkeypatch):
    """A Ctrl-C during the server's interpreter start-up (before forkserver_first ignores it) printed
    "Fatal Python error: init_import_site" (13 of 30 runs on a loaded machine). The server is now
    spawned with SIGINT blocked, which a child keeps through exec. CPython's resource tracker start,
    run by the server's start when no tracker runs, unblocks SIGINT after its own spawn: it comes first."""
    from multiprocessing import forkserver, resource_tracker

    from bondexp import executors

    calls = []

    def tracker() -> None:  # as CPython's: block around its own spawn, then unblock
        calls.append("tracker")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def server() -> None:
        calls.append(("server", signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())))

    monkeypatch.setattr(resource_tracker, "ensure_running", tracker)
    monkeypatch.setattr(forkserver, "ensure_running", server)
    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", forkserver._forkserver._preload_modules)  # restored after
    executors._launch_forkserver()
    assert calls == ["tracker", ("server", True)]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the run's own Ctrl-C comes through after


def test_same_artifacts_with_one_and_two_workers(tmp_path):
    graph = diamond()
    r1 = run(graph, tmp_path / "w1", workers=1)
    r2 = run(graph, tmp_path / "w2", workers=2)
    assert r1.ok and r2.ok
    for name in graph.order:
        a1, a2 = artifact(tmp_path / "w1", name), artifact(tmp_path / "w2", name)
        assert a1["value"] == a2["value"]
        np.testing.assert_array_equal(a1["array"], a2["array"])
        assert r1.steps[name].fingerprint == r2.steps[name].fingerprint
        assert r1.steps[name].metrics == r2.steps[name].metrics
    assert artifact(tmp_path / "w1", "d")["value"] == 1 + 2 + 1 + 3 + 4
    assert artifact(tmp_path / "w1", "a")["pid"] == os.getpid()  # workers=1 runs in-process
    assert artifact(tmp_path / "w2", "a")["pid"] != os.getpid()
    assert artifact(tmp_path / "w2", "a")["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def test_failure_skips_dependents_and_keeps_independent_checkpoints(tmp_path):
    graph = build_graph(
        [
            S("ok1", seconds=0.2),
            S("bad", fn="fail", message="bad config value"),
            S("needs_bad", needs=["bad"]),
            S("needs_needs_bad", needs=["needs_bad", "ok1"]),
            S("ok2", needs=["ok1"]),
            S("wrong_type", fn="not_a_dict"),
        ]
    )
    result = run(graph, tmp_path, workers=2)
    assert not result.ok
    assert statuses(result) == {
        "ok1": "ran",
        "bad": "failed",
        "needs_bad": "skipped",
        "needs_needs_bad": "skipped",
        "ok2": "ran",
        "wrong_type": "failed",
    }
    assert "ValueError: bad config value" in result.steps["bad"].error
    assert result.steps["needs_bad"].error == "needs 'bad' which failed"
    assert result.steps["needs_needs_bad"].error == "upstream step 'bad' failed"
    assert "must return a ModelArtifact, a dict or a StepOutput. Got list" in result.steps["wrong_type"].error
    assert "ValueError: bad config value" in (tmp_path / "logs" / "bad.log").read_text()
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "ok1.json").exists() and (ckpt / "ok2.json").exists()
    assert not (ckpt / "bad.pkl").exists() and not (ckpt / "needs_bad.pkl").exists()
    written = result.write()
    results = json.loads(written["results"].read_text())
    assert results["ok"] is False and results["steps"]["bad"]["status"] == "failed"
    assert results["steps"]["ok1"]["metrics"] == {"value": 1.0, "n_inputs": 0}
    assert written["timeline"].exists()
    table = result.summary_table()
    assert "FAILED" in table and "failed bad: ValueError: bad config value" in table


def test_crashed_worker_process_fails_only_its_step(tmp_path):
    graph = build_graph([S("crash", fn="crash"), S("after", needs=["crash"]), S("other1"), S("other2")])
    result = run(graph, tmp_path, workers=2)
    # the step in flight beside the crash is run again alone, on a fresh pool, and succeeds
    assert statuses(result) == {"crash": "failed", "after": "skipped", "other1": "ran", "other2": "ran"}
    assert "worker process died" in result.steps["crash"].error


@pytest.mark.parametrize("workers", [1, 2])
def test_optuna_logs_go_to_the_steps_log_not_the_terminal(tmp_path, capfd, workers):
    result = run(build_graph([S("study", fn="failing_trial"), S("other")]), tmp_path, workers=workers)
    assert result.ok, result.summary_table()
    log = (tmp_path / "logs" / "study.log").read_text()
    assert "Trial 0 failed" in log and "ValueError: this trial fails on purpose" in log
    assert "this trial fails on purpose" not in (tmp_path / "logs" / "other.log").read_text()
    out, err = capfd.readouterr()
    assert "Trial 0 failed" not in out + err


@pytest.mark.parametrize("workers", [1, 2])
def test_what_a_step_prints_goes_to_its_log_not_the_terminal(tmp_path, capfd, workers):
    """A verbose estimator's lines went straight to the terminal, through the bar. A pool worker's file
    descriptors go to the step's log, C stdio and child processes included; in the run's own process
    (workers=1) descriptors 1 and 2 carry the bar, so Python's streams go there instead, and come back."""
    native = workers == 2
    result = run(build_graph([S("loud", fn="chatty", native=native), S("other")]), tmp_path, workers=workers)
    assert result.ok, result.summary_table()
    out, err = capfd.readouterr()
    assert "loud" not in out + err
    log = (tmp_path / "logs" / "loud.log").read_text()
    native_lines = ["loud prints with C stdio", "loud writes to fd 1", "loud's child prints"] if native else []
    for line in ["loud prints to stdout", "loud prints to stderr", *native_lines]:
        assert line in log, log
    assert "prints" not in (tmp_path / "logs" / "other.log").read_text()
    print("the run's own output")
    assert "the run's own output" in capfd.readouterr().out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_step_that_swallows_a_ctrl_c_is_not_kept_as_having_run(tmp_path, monkeypatch, workers):
    """scikit-learn's MLP catches the KeyboardInterrupt and returns a fit cut short: a sweep's jobs checkpointed
    it as a step that ran, and their resume reused it."""
    from bondexp import script

    monkeypatch.setattr(script, "_ctrl_c_pressed", False)  # the run's handler remembers the Ctrl-C; forgotten after
    previous = signal.signal(signal.SIGINT, script.ctrl_c)  # the run's own, as bondexp.__main__ installs it
    try:
        result = run(build_graph([S("swallow", fn="swallows_ctrl_c")]), tmp_path, workers=workers)
    finally:
        signal.signal(signal.SIGINT, previous)
    step = result.steps["swallow"]
    if workers == 1:  # in the run's process: the run stops as on any Ctrl-C
        assert result.interrupted and step.status == "skipped", result.summary_table()
    else:  # only the worker got it here; with the terminal's Ctrl-C the run's process stops too
        assert step.status == "failed" and "KeyboardInterrupt" in (step.error or ""), result.summary_table()
    assert not (tmp_path / "checkpoints" / "swallow.json").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_warning_logged_while_an_in_process_step_holds_sys_stdout_clears_the_bar(capsys):
    """tqdm.write finds the bar through sys.stdout and sys.stderr, which an in-process step points at its
    log: the warning was printed over the bar's line instead of above it."""
    from bondexp.progress import Progress

    console = logging.StreamHandler(sys.stdout)
    logging.getLogger().addHandler(console)
    try:
        screen = _Terminal()
        with Progress(total=2, stream=screen):
            drawn = len(screen.getvalue())
            with contextlib.redirect_stdout(io.StringIO()):
                logging.getLogger("bondexp.test").warning("careful")
            after = screen.getvalue()[drawn:]
    finally:
        logging.getLogger().removeHandler(console)
    assert "careful" in capsys.readouterr().out
    assert after.startswith("\r") and "0/2 steps" in after  # cleared, then drawn again


def test_with_one_worker_the_bar_keeps_ticking_while_a_step_runs(tmp_path, monkeypatch):
    """An in-process step runs inside the loop's submit, and the bar's clock stood still until it ended."""
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr("bondexp.runner._TICK_S", 0.01)
    gate, redrawn = tmp_path / "gate", threading.Event()

    def open_the_gate_once_redrawn() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not redrawn.is_set():
            if screen.getvalue().count("running: a") >= 3:  # drawn as it started, then twice while it ran
                redrawn.set()
            time.sleep(0.01)
        gate.touch()

    watcher = threading.Thread(target=open_the_gate_once_redrawn)
    watcher.start()
    result = run(build_graph([S("a", fn="gated")]), tmp_path / "run", workers=1, progress=True, shared={"gate": str(gate)})
    watcher.join()
    assert result.ok, result.summary_table()
    assert redrawn.is_set(), screen.getvalue()
    assert not [t for t in threading.enumerate() if t.name == "bondexp-bar"]


class _ForgetfulCluster(InlineBackend):
    """In-process steps, except that the cluster "loses the inputs" of step ``lossy`` on its first ``losses`` submits."""

    losses = 0

    def submit(self, task, **kwargs):
        if task.name == "lossy" and _ForgetfulCluster.losses > 0:
            _ForgetfulCluster.losses -= 1
            future = Future()
            future.set_exception(InputsLost("lossy cancelled for reason: lost dependencies."))
            return future
        return super().submit(task, **kwargs)


@pytest.mark.parametrize(("losses", "status"), [(3, "ran"), (4, "failed")])
def test_a_step_whose_inputs_a_cluster_lost_is_submitted_again_three_times(tmp_path, monkeypatch, losses, status):
    monkeypatch.setitem(EXECUTORS, "forgetful", _ForgetfulCluster)
    monkeypatch.setattr(_ForgetfulCluster, "losses", losses)
    graph = build_graph([S("lossy"), S("after", needs=["lossy"])])
    result = run(graph, tmp_path, executor="forgetful")
    assert statuses(result) == {"lossy": status, "after": "ran" if status == "ran" else "skipped"}
    if status == "failed":
        assert "InputsLost: lossy cancelled for reason: lost dependencies." in result.steps["lossy"].error


def test_a_steps_returned_files_are_written_kept_with_its_checkpoint_and_restored_on_reuse(tmp_path):
    graph = build_graph([S("a", value=1.0), S("r", fn="report_file", needs=["a"], group="report")])
    result = run(graph, tmp_path, workers=2)
    assert result.ok, result.to_dict()
    assert (tmp_path / "plots" / "r.txt").read_text() == "value 1.0\n"
    assert set(json.loads((tmp_path / "checkpoints" / "r.json").read_text())["files"]) == {"plots/r.txt"}
    (tmp_path / "plots" / "r.txt").unlink()
    again = run(graph, tmp_path, workers=2)
    assert statuses(again) == {"a": "reused", "r": "reused"}  # restored from the checkpoint, not re-run
    assert (tmp_path / "plots" / "r.txt").read_text() == "value 1.0\n"


def test_a_steps_warnings_are_logged_by_the_run_not_printed_by_its_worker(tmp_path, caplog):
    """The run's logger prints above the progress bar; the step's own log goes to its file only."""
    graph = build_graph([S("r", fn="report_file", warnings=["3 of 4 trials failed: ValueError: no"])])
    with caplog.at_level(logging.WARNING, logger="bondexp"):
        assert run(graph, tmp_path, workers=1).ok
    assert [r.getMessage() for r in caplog.records if r.name == "bondexp"] == ["r: 3 of 4 trials failed: ValueError: no"]


@pytest.mark.parametrize(
    ("path", "message"),
    [("../out.txt", "must be relative to the run folder"), ("results.json", "not be one of"), ("/tmp/x", "must be relative")],
)
def test_a_file_path_outside_the_run_folder_fails_the_step(tmp_path, path, message):
    result = run(build_graph([S("r", fn="report_file", path=path)]), tmp_path)
    assert statuses(result) == {"r": "failed"} and message in result.steps["r"].error
    assert not (tmp_path.parent / "out.txt").exists()


def test_corrupted_checkpoint_reruns_it_and_downstream_only(tmp_path):
    graph = diamond()
    assert run(graph, tmp_path, workers=1).ok
    path = tmp_path / "checkpoints" / "b.pkl"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run(graph, tmp_path, workers=1)
    assert statuses(result) == {"a": "reused", "b": "ran", "c": "reused", "d": "ran", "e": "reused"}
    assert artifact(tmp_path, "d")["value"] == 11.0
    # changed config makes only that step and its downstream stale
    changed = build_graph([s if s.name != "c" else S("c", needs=["a"], value=30.0) for s in graph])
    plan = dry_run_plan(changed, run_dir=tmp_path, data_fingerprint="data-v1")
    assert "c  needs a; run: stale (config, inputs or data changed)" in plan
    result = run(changed, tmp_path, workers=1)
    assert statuses(result) == {"a": "reused", "b": "reused", "c": "ran", "d": "ran", "e": "reused"}
    # another data fingerprint invalidates everything; resume=False re-runs everything
    assert set(statuses(run(changed, tmp_path, data_fingerprint="data-v2")).values()) == {"ran"}
    assert set(statuses(run(changed, tmp_path, data_fingerprint="data-v2", resume=False)).values()) == {"ran"}


def test_dry_run_does_no_work(tmp_path):
    graph = diamond()
    plan = dry_run_plan(graph, run_dir=tmp_path / "fresh", shared={"seed": 3}, data_fingerprint="data-v1")
    assert not (tmp_path / "fresh").exists()
    assert "5 steps, 0 reusable, 5 to run" in plan and "[report]" in plan and "seed=3" in plan
    assert "d  needs b, c; run: no checkpoint" in plan
    run(graph, tmp_path / "done", workers=1, durations_path=tmp_path / "durations.json")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")}
    plan = dry_run_plan(graph, run_dir=tmp_path / "done", data_fingerprint="data-v1", durations_path=tmp_path / "durations.json")
    assert "5 reusable, 0 to run" in plan and "reuse checkpoint  ~0.0" in plan
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")} == before
    history = json.loads((tmp_path / "durations.json").read_text())
    assert set(history) == {history_key(graph[name]) for name in graph.order} and history[history_key(graph["a"])] >= 0.05


def test_ready_steps_go_longest_expected_first(tmp_path):
    graph = build_graph([S("short", seconds=0.02), S("long", seconds=0.3), S("mid", seconds=0.1)])
    durations = tmp_path / "durations.json"
    run(graph, tmp_path / "first", workers=1, durations_path=durations)
    run(graph, tmp_path / "second", workers=1, durations_path=durations)
    starts = {n: artifact(tmp_path / "second", n)["start"] for n in graph.order}
    assert sorted(starts, key=starts.get) == ["long", "mid", "short"]


def test_the_durations_history_is_kept_per_step_config_not_per_name(tmp_path):
    """After a run where `tune` took 6 s (one Lasso to tune), the default suite's `tune` (30 s) was expected
    to take 6 s. A step is known by its name, target, config (the seed aside) and needs' names."""
    durations = tmp_path / "durations.json"
    first = build_graph([S("a", seconds=0.05, seed=1), S("b", needs=["a"], seconds=0.05)])
    run(first, tmp_path / "first", workers=1, durations_path=durations)
    store = CheckpointStore(tmp_path / "fresh" / "checkpoints")
    reseeded = build_graph([S("a", seconds=0.05, seed=2), S("b", needs=["a"], seconds=0.05)])
    assert all(expected_durations(reseeded, store, DurationHistory(durations)).values())
    changed = build_graph([S("a", seconds=0.3, seed=1), S("b", needs=["a", "c"], seconds=0.05), S("c", seconds=0.01)])
    assert expected_durations(changed, store, DurationHistory(durations)) == {"a": None, "c": None, "b": None}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_ctrl_c_whose_exception_library_code_swallowed_still_interrupts_the_run(tmp_path, monkeypatch, workers):
    """CPython 3.11 can drop a signal handler's KeyboardInterrupt raised inside `int(text)` under `except ValueError`,
    as OmegaConf's YAML dump runs for every string Hydra saves: the run went on to its end. The handler's
    flag stops it before its first step, or at the scheduler's next tick."""
    from bondexp import runner, script

    monkeypatch.setattr(script, "_ctrl_c_pressed", False)  # restored after the test
    with pytest.raises(KeyboardInterrupt):
        script.ctrl_c(signal.SIGINT, None)
    assert script._ctrl_c_pressed  # what the handler leaves behind, whoever caught its exception
    graph = build_graph([S("a"), S("b", needs=["a"])])
    with pytest.raises(KeyboardInterrupt):  # as a Ctrl-C during the config check: nothing has begun
        run(graph, tmp_path / "before", workers=workers)
    assert not (tmp_path / "before" / "logs").exists() and not list((tmp_path / "before" / "checkpoints").glob("*.pkl"))

    monkeypatch.setattr(script, "_ctrl_c_pressed", False)
    collect = runner._Scheduler._collect

    def collect_then_lose_a_ctrl_c(self, future):
        collect(self, future)
        script._ctrl_c_pressed = True  # a Ctrl-C whose exception was swallowed while step a was collected

    monkeypatch.setattr(runner._Scheduler, "_collect", collect_then_lose_a_ctrl_c)
    result = run(graph, tmp_path / "during", workers=workers)
    assert result.interrupted
    assert {n: s.status for n, s in result.steps.items()} == {"a": "ran", "b": "skipped"}


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    graph = build_graph([S("a"), S("b", needs=["a"])])
    run(graph, tmp_path, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "start  a" in err and "ran    b in" in err and "(2/2)" in err
    run(graph, tmp_path, workers=1, progress=True)
    assert "reusing 2 of 2 checkpoints" in capsys.readouterr().err


def test_a_labelled_progress_prints_labelled_lines_even_on_a_terminal():
    import io

    from bondexp.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(total=1, stream=Terminal()).mode == "bar"
    screen = Terminal()
    with Progress(total=1, stream=screen, label="#3") as bar:
        assert bar.mode == "lines"
        bar.started("a", running=["a"], eta_s=None)
        bar.finished("a", status="ran", duration_s=0.5, running=[], eta_s=None)
    assert re.fullmatch(r"\[bondexp #3 00:00\] start  a\n\[bondexp #3 00:00\] ran    a in 0.50 s \(1/1\)\n", screen.getvalue())


def test_the_bar_leaves_room_for_the_terminals_ctrl_c_echo_and_is_not_redrawn_after_it():
    """A terminal echoes Ctrl-C as ^C at the cursor, the bar's end: past a full-width bar it wrapped.
    After a Ctrl-C the bar is left as it stood and what follows starts on a new line."""
    import io

    from bondexp.progress import Progress, _bar_class

    bar = _bar_class()(total=4, file=io.StringIO(), ncols=80, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}")
    bar.update(1)
    assert bar.format_dict["ncols"] == 78 and len(str(bar)) == 78
    bar.close()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = Progress(total=4, stream=screen)
    progress.finished("a", status="ran", duration_s=0.1, running=["b"], eta_s=1.0)
    drawn = screen.getvalue()
    progress.interrupted()
    after = screen.getvalue()[len(drawn) :]
    assert after.startswith("\n") and "steps" not in after  # a new line, and the bar not drawn again


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor": "ray"}, r"Unknown executor 'ray'. Supported executors: \['dask', 'local', 'serial'\]"),
        ({"workers": 0}, "The 'workers' parameter of run_graph must be an int >= 1. Got 0"),
        ({"executor_options": {"adress": "x"}}, r"Unknown option\(s\) \['adress'\] for the 'local' executor"),
        ({"workers": 2, "executor_options": {"start_method": "fork"}}, "must be 'forkserver' or 'spawn'"),
        ({"data_fingerprint": None}, "'data_fingerprint' parameter of run_graph must be a str"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run(diamond(), tmp_path, **kwargs)
    assert not (tmp_path / "checkpoints").exists()


def test_the_run_writes_a_pool_workers_artifact_without_unpickling_it(tmp_path):
    """Workers hand artifacts back pickled, so the run's process never imports what they hold (scikit-learn)."""
    readers = tmp_path / "readers.txt"
    result = run(build_graph([S("t", fn="traced", path=str(readers)), S("e", value=1.0)]), tmp_path / "run", workers=2)
    assert statuses(result) == {"t": "ran", "e": "ran"}
    assert not readers.exists() or str(os.getpid()) not in readers.read_text().split()
    assert isinstance(artifact(tmp_path / "run", "t")["tracer"], runner_steps.UnpickleTracer)  # the checkpoint holds it
    assert str(os.getpid()) in readers.read_text().split()  # and the tracer does report a reader


def test_pool_workers_may_start_processes(tmp_path):
    result = run(build_graph([S("child", fn="spawn_child"), S("x")]), tmp_path, workers=2)
    assert result.ok, result.summary_table()
    assert artifact(tmp_path, "child")["exitcode"] == 0


def _script(tmp_path, workers):
    script = tmp_path / "run_it.py"
    script.write_text(
        textwrap.dedent(f"""
        import json
        import signal
        import sys
        from bondexp.graph import Step, build_graph
        from bondexp.runner import run_graph

        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            M = "{MOD}"
            graph = build_graph([
                Step("q1", M + ".work", config={{"value": 1.0}}),
                Step("q2", M + ".work", config={{"value": 2.0}}),
                Step("g1", M + ".gated", needs=("q1",), config={{"value": 3.0}}),
                Step("g2", M + ".gated", config={{"value": 4.0}}),
                Step("tail", M + ".work", needs=("g1", "q2")),
            ])
            result = run_graph(graph, run_dir=sys.argv[1], workers={workers}, data_fingerprint="data-v1",
                               shared={{"gate": sys.argv[2]}}, progress=False)
            print(json.dumps(result.to_dict()))
            sys.exit(0 if result.ok else 1)
    """)
    )
    return script


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_sigkill_mid_run_then_resume_reruns_only_unfinished_steps(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path, 2)), str(run_dir), str(gate)], env=subprocess_env(), start_new_session=True
    )
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "q1.json").exists() and (run_dir / "checkpoints" / "q2.json").exists())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "checkpoints" / "g1.json").exists()
    gate.touch()
    graph = build_graph(
        [
            S("q1", value=1.0),
            S("q2", value=2.0),
            S("g1", fn="gated", needs=["q1"], value=3.0),
            S("g2", fn="gated", value=4.0),
            S("tail", needs=["g1", "q2"]),
        ]
    )
    result = run(graph, run_dir, workers=2, shared={"gate": str(gate)})
    assert statuses(result) == {"q1": "reused", "q2": "reused", "g1": "ran", "g2": "ran", "tail": "ran"}
    assert artifact(run_dir, "tail")["value"] == 1 + (3 + 1) + 2  # tail + g1 (+ q1) + q2
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_pool_workers_exit_when_the_run_is_killed(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path, 2)), str(run_dir), str(gate)], env=subprocess_env(), start_new_session=True
    )
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "q1.json").exists() and (run_dir / "checkpoints" / "q2.json").exists())
        workers = {artifact(run_dir, name)["pid"] for name in ("q1", "q2")}
        proc.kill()  # SIGKILL of the run alone: it cannot stop its pool, whose workers wait on the gate
        proc.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _alive(pid):
    """Running (not exited, nor a zombie waiting for its parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_ctrl_c_stops_workers_and_keeps_finished_checkpoints(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path, 2)), str(run_dir), str(gate)],
        env=subprocess_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "q1.json").exists() and (run_dir / "checkpoints" / "q2.json").exists())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    result = json.loads(out)
    assert proc.returncode == 1 and result["interrupted"] and not result["ok"]
    assert {n: s["status"] for n, s in result["steps"].items()} == {
        "q1": "ran",
        "q2": "ran",
        "g1": "skipped",
        "g2": "skipped",
        "tail": "skipped",
    }
    assert "interrupted" in result["steps"]["g1"]["error"]
    # the workers are gone (the process group empties), and the folder is free to resume
    _wait_for(lambda: _group_gone(proc.pid), timeout=10)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def _group_gone(pgid):
    return not group_running(pgid)


def test_ctrl_c_while_the_forkserver_imports_leaves_nothing_behind(tmp_path):
    """A Ctrl-C in a run's first seconds interrupts a worker's start while the forkserver still imports. The
    server used to outlive the run, holding its output open, then fork that worker, which failed with a
    FileNotFoundError traceback printed after the run's own message."""
    run_dir, gate = tmp_path / "run", tmp_path / "preload-gate"
    script = tmp_path / "run_it.py"
    script.write_text(
        textwrap.dedent(f"""
        import multiprocessing, signal, sys
        from multiprocessing import forkserver
        from bondexp import executors
        from bondexp.graph import Step, build_graph
        from bondexp.runner import run_graph

        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            *first, last = executors._forkserver_preload(step_libraries=False)
            multiprocessing.get_context("forkserver").set_forkserver_preload([*first, "gated_preload", last])
            forkserver.ensure_running()
            graph = build_graph([Step("a", "{MOD}.work"), Step("b", "{MOD}.work")])
            result = run_graph(graph, run_dir=sys.argv[1], workers=2, data_fingerprint="data-v1", progress=False)
            print("interrupted" if result.interrupted else "finished", flush=True)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)],
        env={**subprocess_env(), "BONDEXP_TEST_PRELOAD_GATE": str(gate)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (run_dir / "logs").exists())  # the run has begun: its first submit waits for the server
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while not (group_gone := _group_gone(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gate.touch()  # let a server that outlived the run finish its imports, fork, and show what it prints
        time.sleep(1.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert out.strip() == "interrupted", err
    assert group_gone, "a process of the run outlived it"
    assert "Traceback" not in err, err


def test_run_lock_rejects_a_second_concurrent_run(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, 1)), str(run_dir), str(gate)], env=subprocess_env())
    try:
        lock = run_dir / "run.lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(proc.pid))
        with pytest.raises(RunLockedError, match=f"{run_dir}' is in use by process {proc.pid}"):
            run(diamond(), run_dir)
        gate.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert run(diamond(), run_dir).ok  # free again once the holder has exited


def test_dask_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    graph = build_graph([*diamond(), S("child", fn="spawn_child")])
    result = run(graph, tmp_path, workers=2, executor="dask")
    assert result.ok, result.summary_table()
    assert artifact(tmp_path, "d")["value"] == 11.0
    assert artifact(tmp_path, "child")["exitcode"] == 0  # dask workers are started non-daemonic
    assert artifact(tmp_path, "a")["pid"] != os.getpid()


def test_every_step_records_its_peak_memory(tmp_path):
    result = run(diamond(), tmp_path, workers=2)
    assert result.ok, result.summary_table()
    for name, step in result.to_dict()["steps"].items():
        manifest = json.loads((tmp_path / "checkpoints" / f"{name}.json").read_text())
        assert step["peak_rss_mb"] == manifest["peak_rss_mb"] > 0
    reused = run(diamond(), tmp_path, workers=2)
    assert reused.to_dict()["steps"]["a"]["peak_rss_mb"] == result.to_dict()["steps"]["a"]["peak_rss_mb"]


def test_thread_budget_honours_the_share_a_launcher_gave(monkeypatch):
    from bondexp.executors import cpu_count, threads_per_worker

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (cpu_count(), threads_per_worker(2)) == (8, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what joblib's loky gives each of 4 sweep jobs on 8 cores
    assert (cpu_count(), threads_per_worker(1), threads_per_worker(4)) == (2, 2, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a pin above the machine does not add cores
    assert cpu_count() == 8


def test_a_library_upgrade_reruns_every_step_and_the_plan_says_why(tmp_path, monkeypatch):
    from bondexp import checkpoints

    graph = diamond()
    results = run(graph, tmp_path, workers=1).to_dict()
    assert all(step["reproducible"] for step in results["steps"].values())
    real = dict(checkpoints.library_versions())
    monkeypatch.setattr(checkpoints, "library_versions", lambda: {**real, "scikit-learn": "99.0.0"})
    plan = dry_run_plan(graph, run_dir=tmp_path, data_fingerprint="data-v1")
    assert "0 reusable, 5 to run" in plan
    assert f"a  needs -; run: library versions changed: scikit-learn {real['scikit-learn']} -> 99.0.0" in plan


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_config_check_ends_the_run_before_any_step_begins(tmp_path, workers):
    from functools import partial

    from bondexp.graph import call_target

    graph = diamond()
    where = tmp_path / "checked"
    check = partial(call_target, f"{MOD}.refuse_config", graph.order, str(where))
    with pytest.raises(ConfigError, match="'models.x.alpah'"):
        run(graph, tmp_path / "run", workers=workers, check=check)
    assert not (tmp_path / "run" / "logs").exists() and not (tmp_path / "run" / "checkpoints").exists()  # no step began
    checker = int(where.read_text())
    assert (checker == os.getpid()) == (workers == 1)  # where the steps run: a pool worker for 2
    if workers > 1:  # the pool is stopped: its worker is gone (or a zombie for init to reap)
        stat = Path(f"/proc/{checker}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert run(graph, tmp_path / "run", workers=workers, check=partial(call_target, f"{MOD}.accept_config", [], str(where))).ok
    where.unlink()
    assert run(graph, tmp_path / "run", workers=workers, check=check).ok  # every step reused: nothing to check
    assert not where.exists()
