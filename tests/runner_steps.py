"""Tiny importable step functions for the runner tests: sleep, burn CPU, fail, crash, record times."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np


def work(config, inputs, ctx):
    """Sleep and/or burn CPU, then return a value built from the config and the inputs, with times.

    ``value`` = config value + the sum of the inputs' values, so a graph's artifacts are deterministic.
    """
    start = time.time()
    if config.get("seconds"):
        time.sleep(config["seconds"])
    acc = 0
    for i in range(int(config.get("iterations", 0))):
        acc += i % 7
    value = float(config.get("value", 1.0)) + sum(art["value"] for art in inputs.values())
    ctx.log.info("work step %s computed %s", ctx.name, value)
    return {
        "value": value,
        "array": np.arange(5) * value,
        "burn": acc,
        "start": start,
        "end": time.time(),
        "pid": os.getpid(),
        "threads": ctx.threads,
        "shared": dict(ctx.shared),
        "metrics": {"value": np.float64(value), "n_inputs": len(inputs)},
    }


def report_file(config, inputs, ctx):
    """Render a small text file from the inputs' values and return it for the runner to write."""
    from bondexp.artifacts import StepOutput

    text = f"value {sum(art['value'] for art in inputs.values())}\n"
    files = {config.get("path", "plots/r.txt"): text.encode()}
    return StepOutput({"metrics": {"n_inputs": len(inputs)}}, files, warnings=tuple(config.get("warnings", ())))


def fail(config, inputs, ctx):
    """Raise, as a buggy step would."""
    raise ValueError(config.get("message", "this step always fails"))


def crash(config, inputs, ctx):
    """Kill the worker process outright, as a segfault in native code would."""
    time.sleep(config.get("seconds", 0.0))
    os._exit(13)


def not_a_dict(config, inputs, ctx):
    """Return something that is not an artifact dict."""
    return [1, 2, 3]


def _child(queue):
    queue.put(os.getpid())


def spawn_child(config, inputs, ctx):
    """Start a process from inside the step, as the Optuna tuning step does."""
    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()
    child = mp.Process(target=_child, args=(queue,))
    child.start()
    child_pid = queue.get(timeout=60)
    child.join()
    return {"value": 0.0, "child_pid": child_pid, "exitcode": child.exitcode, "metrics": {}}


def gated(config, inputs, ctx):
    """Wait until the file named by ``ctx.shared['gate']`` exists: a step a test can hold open."""
    gate = Path(ctx.shared["gate"])
    deadline = time.monotonic() + 60
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)
    return work(config, inputs, ctx)


NOT_CALLABLE = 42  # a target that imports but cannot be called


def uses_dataset(config, inputs, ctx):
    """Read the run's dataset the way model steps do; return its row count."""
    from bondexp.features import dataset_for

    dataset = dataset_for(ctx.shared)
    return {"value": float(len(dataset.y)), "metrics": {"rows": len(dataset.y)}}


def forgets_its_inputs_once(config, inputs, ctx):
    """On a Dask worker, the first time: wait until step ``config['while_running']`` runs, then make the
    cluster forget this step's inputs (the dataset and its needs' reports), as when the worker holding
    their only copy dies, and open the gate that step waits for. Return the dataset's row count."""
    marker = Path(config["marker"])
    if not marker.exists():
        from distributed import Future, get_client, get_worker

        marker.write_text("forgot")
        client = get_client()
        deadline, prefix = time.monotonic() + 60, f"bondexp-step-{config['while_running']}-"
        while not any(str(key).startswith(prefix) for keys in client.processing().values() for key in keys):
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {config['while_running']} never ran")
            time.sleep(0.02)
        worker = get_worker()
        inputs_keys = [dep.key for dep in worker.state.tasks[worker.get_current_task()].dependencies]
        client.cancel([Future(key, client) for key in inputs_keys], force=True)
        Path(ctx.shared["gate"]).touch()
    return uses_dataset(config, inputs, ctx)


def counts_attempts(config, inputs, ctx):
    """Keep a file in the run folder counting this step's attempts, as the tuning step keeps its journal."""
    path = Path(ctx.run_dir) / "notes" / "attempts.txt"
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(attempts))
    ctx.log.info("attempt %d", attempts)
    return {"value": float(attempts), "run_dir": str(ctx.run_dir), "threads": ctx.threads, "metrics": {}}


class UnpickleTracer:
    """Appends the pid of every process that unpickles it to ``path``: who read an artifact?"""

    def __init__(self, path):
        self.path = str(path)

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.path, "a") as fh:
            fh.write(f"{os.getpid()}\n")


def traced(config, inputs, ctx):
    """Return an artifact holding an :class:`UnpickleTracer` writing to ``config['path']``."""
    return {"value": 1.0, "tracer": UnpickleTracer(config["path"]), "metrics": {}}


def environment(config, inputs, ctx):
    """Report the step process's value of the environment variable ``config['name']`` (``unset`` when it has none)."""
    return {"metrics": {"value": os.environ.get(config["name"], "unset")}}


def collector(config, inputs, ctx):
    """Report the step process's garbage collector: on, and whether anything is frozen (the forkserver's preload)."""
    import gc

    return {"metrics": {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0}}


def failing_trial(config, inputs, ctx):
    """Run a one-trial Optuna study whose trial fails: Optuna logs a warning with the traceback."""
    import optuna

    def objective(trial):
        raise ValueError("this trial fails on purpose")

    study = optuna.create_study()
    study.optimize(objective, n_trials=1, catch=(ValueError,))
    return {"value": 1.0, "metrics": {"trials": len(study.trials)}}


def refuse_config(steps, where, pending):
    """A config check that finds an error, recording the process it ran in (``where``: a file)."""
    from bondexp.errors import ConfigError

    Path(where).write_text(str(os.getpid()))
    return ConfigError(f"The 'models.x.alpah' config key must name a parameter. Got {sorted(steps)}")


def accept_config(steps, where, pending):
    """A config check that passes, recording the process it ran in."""
    Path(where).write_text(str(os.getpid()))


def scored_refit(config, inputs, ctx):
    """A model artifact without a fitted pipeline, as a backtest's refit returns one."""
    from bondexp.artifacts import ModelArtifact

    value = float(config.get("value", 1.0))
    return ModelArtifact(
        name=ctx.name, group="g", config={}, features=["x"], predictions={"scored": {"mean": np.full(3, value)}}, metrics={"value": value}
    )


def sums_predictions(config, inputs, ctx):
    """The sum of its model inputs' scored predictions, plus ``value``."""
    value = float(config.get("value", 0.0)) + sum(float(art.predictions["scored"]["mean"].sum()) for art in inputs.values())
    return {"value": value, "metrics": {"value": value}}


def input_order(config, inputs, ctx):
    """The names of its inputs, in the order the step got them."""
    return {"order": list(inputs), "metrics": {}}


def _print_from_child(text):
    print(text, flush=True)


def chatty(config, inputs, ctx):
    """Print as a verbose estimator does: Python's print to stdout and stderr and, with ``native``,
    C stdio, a raw write to fd 1 and a child process (as the tuning step's trial processes)."""
    import sys

    print(f"{ctx.name} prints to stdout")
    print(f"{ctx.name} prints to stderr", file=sys.stderr)
    if config.get("native"):
        import ctypes

        ctypes.CDLL(None).puts(f"{ctx.name} prints with C stdio".encode())
        os.write(1, f"{ctx.name} writes to fd 1\n".encode())
        child = multiprocessing.get_context("spawn").Process(target=_print_from_child, args=(f"{ctx.name}'s child prints",))
        child.start()
        child.join()
    return work(config, inputs, ctx)


def swallows_ctrl_c(config, inputs, ctx):
    """Catch the Ctrl-C that reaches this process and return, as scikit-learn's MLP does ("Training interrupted by user")."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises in here
    except KeyboardInterrupt:
        pass
    return work(config, inputs, ctx)
