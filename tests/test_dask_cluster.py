"""Steps on a real Dask cluster started with the `dask` command-line tools, sharing no state with the run.

One `dask scheduler` and two `dask worker` processes on 127.0.0.1, each worker in its own working
and local directory. The runner tests send tiny steps; the whole-run tests run `python -m bondexp`
against the cluster and compare with the local executor. Every process started here is stopped
(its whole process group) by the fixture's finalizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import pytest

pytest.importorskip("distributed")

import runner_steps  # noqa: E402
from bondexp.executors import cpu_count  # noqa: E402
from bondexp.graph import Step, build_graph  # noqa: E402
from bondexp.runner import run_graph  # noqa: E402
from conftest import make_toy_dataset  # noqa: E402

TESTS = Path(__file__).parent
MOD = runner_steps.__name__
DASK = Path(sys.executable).parent / "dask"
QUICK = ["data=small", "model=[basic,factor]", "tune.n_trials=3", "tune.timeout=null", "eval.n_bootstrap=50", "progress=false"]

if not DASK.exists():
    pytest.skip(f"the dask command-line tool is not installed beside {sys.executable}", allow_module_level=True)


# ----------------------------------------------------------------------------- a cluster from the command line


@dataclass
class Cluster:
    address: str
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[Path, subprocess.Popen] = field(default_factory=dict)  # local directory -> worker process
    env: dict = field(default_factory=dict)  # the environment its processes start with

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cluster: Cluster, args: list[str], *, cwd: Path, log_name: str, env: dict) -> subprocess.Popen:
    log = open(cluster.root / log_name, "wb")
    process = subprocess.Popen(
        [str(DASK), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own process group, so the finalizer stops its children
    log.close()
    cluster.processes.append(process)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with _suppress_gone():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with _suppress_gone():
        os.killpg(process.pid, signal.SIGKILL)  # the nanny's worker process too, if it outlived the nanny
    process.wait(timeout=10)


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def add_worker(cluster: Cluster, *, nthreads: int = 1) -> subprocess.Popen:
    """Start one more `dask worker` for ``cluster``, in its own working and local directory; returns without waiting for it."""
    i = len(cluster.workers)
    home = cluster.root / f"worker{i}"
    home.mkdir()
    cluster.workers[home] = _start(
        cluster,
        [
            "worker",
            cluster.address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            str(nthreads),
            "--no-dashboard",
            "--local-directory",
            str(home),
            "--death-timeout",
            "60",
        ],
        cwd=home,
        log_name=f"worker{i}.log",
        env={**cluster.env, "BONDEXP_CACHE_DIR": str(home / "cache")},
    )
    return cluster.workers[home]


@contextlib.contextmanager
def _cluster_starter(tmp_path_factory):
    """Yield ``start(n_workers=2, nthreads=1) -> Cluster``; every process it started is stopped on exit."""
    clusters: list[Cluster] = []

    def start(*, n_workers: int = 2, nthreads: int = 1) -> Cluster:
        root = tmp_path_factory.mktemp("cluster")
        port = _free_port()
        cluster = Cluster(address=f"tcp://127.0.0.1:{port}", root=root)
        clusters.append(cluster)
        # Workers import the tests' step module; they get no cache folder and no thread pin of the caller's.
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "BONDEXP_CACHE_DIR")}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
        _start(
            cluster,
            ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=root,
            log_name="scheduler.log",
            env=env,
        )
        cluster.env = env
        for _ in range(n_workers):
            add_worker(cluster, nthreads=nthreads)
        if n_workers:
            with cluster.client() as client:
                client.wait_for_workers(n_workers, timeout=120)
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            for process in reversed(cluster.processes):  # workers first, then the scheduler
                _stop(process)


@pytest.fixture
def start_cluster(tmp_path_factory):
    """A test's own clusters: ``start_cluster(n_workers=2, nthreads=1)``."""
    with _cluster_starter(tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One two-worker cluster shared by the tests that do not break it."""
    with _cluster_starter(tmp_path_factory) as start:
        yield start()


# ----------------------------------------------------------------------------- the runner on the cluster


def S(name, fn="work", needs=(), **config):
    return Step(name, f"{MOD}.{fn}", needs=tuple(needs), group="g", config=config)


def _run(graph, run_dir, cluster, **kwargs):
    kwargs.setdefault("data_fingerprint", "toy-data")
    return run_graph(graph, run_dir=run_dir, executor="dask", executor_options={"address": cluster.address}, progress=False, **kwargs)


def _artifact(run_dir, name):
    return joblib.load(Path(run_dir) / "checkpoints" / f"{name}.pkl")


def test_steps_get_data_through_dask_and_hand_back_their_files(cluster, tmp_path):
    toy = make_toy_dataset(n_bonds=20, n_months=24)
    # A step that read the cache would fail: this data config cannot be built and the folder does not exist.
    shared = {
        "data": {"source": "not-on-this-worker"},
        "seed": 0,
        "cache_dir": str(tmp_path / "no-cache"),
        "data_fingerprint": toy.fingerprint,
    }
    graph = build_graph(
        [S("rows", fn="uses_dataset"), S("counter", fn="counts_attempts"), S("total", needs=["rows", "counter"], value=0.5)]
    )
    run_dir = tmp_path / "run"
    result = _run(graph, run_dir, cluster, shared=shared, dataset=toy, workers=2)
    assert result.ok, result.summary_table()
    assert _artifact(run_dir, "rows")["value"] == len(toy.y)
    assert _artifact(run_dir, "total")["value"] == len(toy.y) + 1 + 0.5
    assert not (tmp_path / "no-cache").exists()
    # The step wrote into a scratch folder on its worker; the parent wrote the file and the log.
    scratch = Path(_artifact(run_dir, "counter")["run_dir"])
    assert scratch != run_dir and not scratch.exists()
    assert (run_dir / "notes" / "attempts.txt").read_text() == "1"
    assert "attempt 1" in (run_dir / "logs" / "counter.log").read_text()
    assert json.loads((run_dir / "logs" / "counter.files.json").read_text()) == ["notes/attempts.txt"]
    assert all(step.peak_rss_mb > 0 for step in result.steps.values())
    assert json.loads((run_dir / "checkpoints" / "rows.json").read_text())["peak_rss_mb"] > 0

    # Run again: the counter's scratch folder starts from the parent's file; the reused step's
    # artifact reaches its dependent from the parent's checkpoint.
    graph = build_graph(
        [S("rows", fn="uses_dataset"), S("counter", fn="counts_attempts"), S("total", needs=["rows", "counter"], value=0.25)]
    )
    store_before = (run_dir / "checkpoints" / "rows.json").read_text()
    result = _run(graph, run_dir, cluster, shared=shared, dataset=toy, workers=2, resume=True)
    assert result.ok, result.summary_table()
    assert {n: s.status for n, s in result.steps.items()} == {"rows": "reused", "counter": "reused", "total": "ran"}
    assert _artifact(run_dir, "total")["value"] == len(toy.y) + 1 + 0.25
    assert (run_dir / "checkpoints" / "rows.json").read_text() == store_before
    result = _run(graph, run_dir, cluster, shared=shared, dataset=toy, workers=2, resume=False)
    assert result.ok, result.summary_table()
    assert (run_dir / "notes" / "attempts.txt").read_text() == "2"
    assert "attempt 1" in (log := (run_dir / "logs" / "counter.log").read_text()) and "attempt 2" in log
    for home in cluster.workers:
        assert not list(home.rglob("attempts.txt")) and not (home / "cache").exists()


def test_a_config_error_the_check_finds_on_the_cluster_ends_the_run_before_any_step(cluster, tmp_path):
    """The check runs on a worker and returns its error: raised there, Dask logged it as a failed task with its traceback."""
    from functools import partial

    from bondexp.errors import ConfigError
    from bondexp.graph import call_target

    def failed_tasks() -> int:  # what the workers logged as "Compute Failed"
        return sum(log.read_text(errors="replace").count("Compute Failed") for log in cluster.root.glob("worker*.log"))

    graph = build_graph([S("a"), S("b", needs=["a"])])
    check = partial(call_target, f"{MOD}.refuse_config", graph.order, str(tmp_path / "checked"))
    before = failed_tasks()
    with pytest.raises(ConfigError, match="'models.x.alpah'"):
        _run(graph, tmp_path / "run", cluster, workers=2, check=check)
    assert not (tmp_path / "run" / "logs").exists()
    assert failed_tasks() == before
    assert _run(graph, tmp_path / "again", cluster, workers=2).ok  # the cluster is none the worse


def test_a_reused_model_step_that_kept_no_pipeline_feeds_its_dependent(cluster, tmp_path):
    # A backtest's refits are model artifacts kept without a fitted pipeline; a resume reuses them
    # and the parent sends them to the backtest step, which needs only their predictions.
    def graph(value):
        return build_graph([S("refit", fn="scored_refit", value=2.0), S("total", fn="sums_predictions", needs=["refit"], value=value)])

    assert _run(graph(0.5), tmp_path, cluster, workers=2).ok
    result = _run(graph(0.25), tmp_path, cluster, workers=2)
    assert result.ok, result.summary_table()
    assert {n: s.status for n, s in result.steps.items()} == {"refit": "reused", "total": "ran"}
    assert _artifact(tmp_path, "total")["value"] == 6.25


def test_a_step_gets_its_inputs_in_the_order_of_its_needs_whichever_were_reused(cluster, tmp_path):
    # The backtest step writes its rows in its inputs' order: a resume must not reorder backtest.csv.
    def graph(b):
        return build_graph([S("a"), S("b", value=b), S("c", fn="input_order", needs=["a", "b"])])

    assert _run(graph(1.0), tmp_path, cluster, workers=2).ok
    assert _artifact(tmp_path, "c")["order"] == ["a", "b"]
    result = _run(graph(2.0), tmp_path, cluster, workers=2)  # a reused (sent by the parent), b ran on the cluster
    assert {n: s.status for n, s in result.steps.items()} == {"a": "reused", "b": "ran", "c": "ran"}
    assert _artifact(tmp_path, "c")["order"] == ["a", "b"]


def test_steps_whose_inputs_the_cluster_forgot_run_again_with_them_sent_afresh(cluster, tmp_path, caplog):
    # The scheduler forgets scattered data when the worker holding its last copy dies (its Active
    # Memory Manager keeps one copy, whatever `broadcast=True` asked for) and cancels the steps needing it.
    toy = make_toy_dataset(n_bonds=20, n_months=24)
    shared = {"data": {"source": "elsewhere"}, "seed": 0, "data_fingerprint": toy.fingerprint, "gate": str(tmp_path / "gate")}
    graph = build_graph(
        [
            S("rows", fn="uses_dataset"),
            # While `held` runs, `lossy` makes the cluster forget the dataset and rows' report, then opens held's gate.
            S("lossy", fn="forgets_its_inputs_once", needs=["rows"], marker=str(tmp_path / "forgot.txt"), while_running="held"),
            S("held", fn="gated", needs=["rows"], value=0.5),
            S("later", fn="uses_dataset", needs=["lossy", "held"]),  # submitted after the loss
        ]
    )
    with caplog.at_level("WARNING", logger="bondexp"):
        result = _run(graph, tmp_path / "run", cluster, shared=shared, dataset=toy, workers=2)
    assert result.ok, result.summary_table()
    assert (tmp_path / "forgot.txt").exists()  # the first attempt did make the cluster forget
    assert {name: step.status for name, step in result.steps.items()} == dict.fromkeys(graph.order, "ran")
    assert _artifact(tmp_path / "run", "held")["value"] == len(toy.y) + 0.5
    assert _artifact(tmp_path / "run", "later")["value"] == len(toy.y)
    assert "the cluster lost the inputs of held" in caplog.text and "submitting it again" in caplog.text


def test_thread_budget_comes_from_the_workers_own_cores(start_cluster, tmp_path):
    cluster = start_cluster(n_workers=1, nthreads=2)
    graph = build_graph([S("counter", fn="counts_attempts")])
    result = _run(graph, tmp_path, cluster, workers=1)
    assert result.ok, result.summary_table()
    # Two task slots on this worker: half its cores each, whatever the parent's `workers` says.
    assert _artifact(tmp_path, "counter")["threads"] == max(1, cpu_count() // 2)


# ----------------------------------------------------------------------------- whole runs on the cluster


def _bondexp_env(cache: Path) -> dict:
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"BONDEXP_CACHE_DIR": str(cache)}


def bondexp(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "bondexp", *args], cwd=cwd, env=_bondexp_env(cache), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _metrics(run_dir: Path) -> dict:
    return {name: step["metrics"] for name, step in _results(run_dir)["steps"].items()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The reference: the same experiment on the local executor, in-process."""
    run_dir = tmp_path_factory.mktemp("local")
    bondexp(*QUICK, "workers=1", f"hydra.run.dir={run_dir}", cwd=run_dir, cache=tmp_path_factory.mktemp("cache"))
    return run_dir


def test_a_run_on_the_cluster_equals_the_local_run_and_resumes_its_study(cluster, local_run, tmp_path):
    run_dir = tmp_path / "run"
    cluster_run = [*QUICK, "executor=dask", f"executor.address={cluster.address}", f"hydra.run.dir={run_dir}"]
    bondexp(*cluster_run, cwd=tmp_path, cache=tmp_path / "cache")
    results = _results(run_dir)
    assert results["ok"] and results["executor"] == "dask"
    assert _metrics(run_dir) == _metrics(local_run)
    for name, step in results["steps"].items():
        assert step["peak_rss_mb"] > 0, name
        assert f"step {name} finished" in (run_dir / "logs" / f"{name}.log").read_text()
    assert (run_dir / "tuning" / "journal.log").is_file()  # written by the parent, from the tune step's files
    for home in cluster.workers:  # nothing of the run stayed on a worker's disk
        assert not [p for p in home.rglob("*") if p.suffix in (".log", ".pkl") and "bondexp" in str(p)]
        assert not (home / "cache").exists()

    # More trials: the tune step starts from the journal the parent sends, so the study resumes.
    bondexp(*cluster_run, "tune.n_trials=5", cwd=tmp_path, cache=tmp_path / "cache")
    steps = _results(run_dir)["steps"]
    assert steps["tune"]["status"] == "ran" and steps["basic"]["status"] == "reused"
    assert "3 trial(s) finished" in (run_dir / "logs" / "tune.log").read_text()


def _worker_running_a_step(client, run: subprocess.Popen, deadline_s: float = 300) -> str:
    """The local directory of a worker that is running a bondexp step now."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before any step was seen running"
        for address, keys in client.processing().items():
            if any(str(key).startswith("bondexp-step-") for key in keys):
                return client.scheduler_info()["workers"][address]["local_directory"]
        time.sleep(0.05)
    raise AssertionError("no step was seen running on the cluster")


def test_killing_a_worker_mid_run_loses_nothing(start_cluster, local_run, tmp_path):
    cluster = start_cluster()
    run_dir = tmp_path / "run"
    output = tmp_path / "output.txt"
    with open(output, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "bondexp", *QUICK, "executor=dask", f"executor.address={cluster.address}", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env=_bondexp_env(tmp_path / "cache"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with cluster.client() as client:
            busy = _worker_running_a_step(client, run)
        home = next(home for home in cluster.workers if busy.startswith(str(home)))
        os.killpg(cluster.workers[home].pid, signal.SIGKILL)  # the nanny and its worker, mid-step
        code = run.wait(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert code == 0, output.read_text()
    results = _results(run_dir)
    assert results["ok"] and all(step["status"] == "ran" for step in results["steps"].values())
    assert _metrics(run_dir) == _metrics(local_run)


def test_an_address_with_no_scheduler_is_named(tmp_path):
    import dask

    from bondexp.errors import ConfigError

    address = f"tcp://127.0.0.1:{_free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ConfigError, match=f"'executor.address' .* Got '{address}', which did not answer"):
            _run(build_graph([S("a")]), tmp_path, Cluster(address=address, root=tmp_path))


def _silent_port():
    """A TCP listener that accepts connections and never says a word (a dashboard, another server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    accepted = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return sock, accepted


def test_an_address_that_never_speaks_dask_is_named_within_the_connect_timeout(tmp_path):
    import dask

    from bondexp.errors import ConfigError

    sock, accepted = _silent_port()
    address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    outcome: list = []

    def run():
        try:
            _run(build_graph([S("a")]), tmp_path, Cluster(address=address, root=tmp_path))
        except BaseException as exc:
            outcome.append(exc)

    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            started = time.monotonic()
            thread = threading.Thread(target=run, daemon=True)  # before the fix it hung for ever
            thread.start()
            thread.join(timeout=20)
            elapsed = time.monotonic() - started
    finally:
        sock.close()
        for conn in accepted:
            conn.close()
    assert not thread.is_alive(), "distributed.Client waited for ever on a port that never answers"
    assert accepted and elapsed < 10
    assert isinstance(outcome[0], ConfigError), outcome
    assert f"Got '{address}', which did not answer: no Dask handshake within 2 s" in str(outcome[0])
    assert "distributed.comm.timeouts.connect" in str(outcome[0])


@pytest.mark.parametrize("address", ["notanaddress", "http://127.0.0.1:8797", "tls://127.0.0.1:8786"])
def test_a_malformed_address_is_a_config_error_naming_the_key(tmp_path, address):
    from bondexp.errors import ConfigError

    with pytest.raises(ConfigError, match=f"'executor.address' config key must be a Dask scheduler's address.* Got '{address}'"):
        _run(build_graph([S("a")]), tmp_path, Cluster(address=address, root=tmp_path))


def test_a_workers_or_nannys_address_is_named_as_such(cluster):
    """It failed inside the client with Dask's "Worker.identity() got an unexpected keyword argument 'n_workers'"."""
    from bondexp.errors import ConfigError
    from bondexp.executors import check_scheduler

    with cluster.client() as client:
        workers = client.scheduler_info()["workers"]
    worker, info = next(iter(workers.items()))
    check_scheduler(cluster.address)  # the scheduler answers as one
    for address, kind in ((worker, "Worker"), (info["nanny"], "Nanny")):
        with pytest.raises(ConfigError, match=f"must name a Dask scheduler. Got '{address}', which is a Dask {kind}: give the"):
            check_scheduler(address)


def test_a_wrong_address_stops_the_run_before_the_data_loads(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bondexp", *QUICK, "executor=dask", "executor.address=notanaddress", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=_bondexp_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "bondexp: error: The 'executor.address' config key" in proc.stderr and "Traceback" not in proc.stderr
    assert "data:" not in proc.stdout and not (tmp_path / "cache").exists()  # no data loaded, no cache built


def test_a_scheduler_without_workers_stops_the_run_after_a_bounded_wait(start_cluster, tmp_path, monkeypatch, caplog):
    from functools import partial

    from bondexp import executors
    from bondexp.errors import ConfigError
    from bondexp.graph import call_target

    cluster = start_cluster(n_workers=0)
    monkeypatch.setattr(executors, "WORKERS_WAIT_S", 2.0, raising=False)
    outcome: list = []

    def run():
        try:
            check = partial(call_target, f"{MOD}.accept_config", ["a"], str(tmp_path / "checked"))
            _run(build_graph([S("a")]), tmp_path / "run", cluster, workers=1, check=check)
        except BaseException as exc:
            outcome.append(exc)

    with caplog.at_level("WARNING", logger="bondexp"):
        thread = threading.Thread(target=run, daemon=True)  # before the fix the preflight check waited for ever
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the run waited for ever for a worker"
    assert isinstance(outcome[0], ConfigError), outcome
    assert f"'executor.address' config key names the Dask scheduler {cluster.address!r}, which has no workers" in str(outcome[0])
    assert "waiting up to 2 s for a worker" in caplog.text
    assert not (tmp_path / "run" / "logs").exists()


def test_workers_that_join_a_few_seconds_late_run_the_steps(start_cluster, tmp_path):
    cluster = start_cluster(n_workers=0)
    add_worker(cluster)  # registers a few seconds later, while the run waits
    result = _run(build_graph([S("a"), S("b", needs=["a"])]), tmp_path, cluster, workers=1)
    assert result.ok, result.summary_table()


def test_losing_every_worker_fails_the_steps_like_any_step(start_cluster, tmp_path, monkeypatch):
    import dask

    from bondexp import executors

    cluster = start_cluster(n_workers=1)
    monkeypatch.setattr(executors, "WORKERS_WAIT_S", 2.0, raising=False)
    toy = make_toy_dataset(n_bonds=20, n_months=24)
    shared = {"data": {"source": "elsewhere"}, "seed": 0, "data_fingerprint": toy.fingerprint}
    graph = build_graph([S("rows", fn="uses_dataset"), S("slow", needs=["rows"], seconds=60), S("after", needs=["slow"])])
    outcome: list = []

    def run():
        try:  # Dask's 30 s for a scatter with no worker would make this test slow before the fix
            with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
                outcome.append(_run(graph, tmp_path / "run", cluster, shared=shared, dataset=toy, workers=1))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with cluster.client() as client:
        deadline = time.monotonic() + 60
        while not any(str(key).startswith("bondexp-step-slow-") for keys in client.processing().values() for key in keys):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.05)
    for process in cluster.workers.values():
        os.killpg(process.pid, signal.SIGKILL)  # the nanny and its worker: no worker is left
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run did not end after losing every worker"
    result = outcome[0]
    assert not isinstance(result, BaseException), repr(result)
    assert not result.ok and result.steps["rows"].status == "ran"
    assert result.steps["slow"].status == "failed" and "has had no workers for 2 s" in result.steps["slow"].error
    assert result.steps["after"].status == "skipped"
