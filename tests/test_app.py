"""Whole runs of `python -m bondexp` as subprocesses on the tiny market, the way a user runs them."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import group_running

QUICK = ["data=small", "tune.n_trials=3", "eval.n_bootstrap=50", "progress=false"]


class Started:
    """A `python -m bondexp` (or ``module``) subprocess started now and waited for later (``result``), so a test can run
    several independent runs at once: a small run mostly waits on its processes starting, and two cores
    overlap that. Its output goes to unnamed temporary files, not pipes, so an unread run never blocks."""

    def __init__(self, *args: str, cwd: Path, cache: Path, env: dict | None = None, module: str = "bondexp"):
        # without a thread pin of the caller's, so the run's own thread budget is what is tested
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"BONDEXP_CACHE_DIR": str(cache)} | (env or {})
        self.args = [sys.executable, "-m", module, *args]
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        # its own process group, so stopping it stops its workers too
        self.process = subprocess.Popen(self.args, cwd=cwd, env=env, stdout=self._out, stderr=self._err, start_new_session=True)

    def result(self, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Wait for the run (killed after ``timeout`` seconds, as ``subprocess.run`` would); with ``check``,
        a non-zero exit raises with both outputs."""
        try:
            code = self.process.wait(timeout=timeout)
        except BaseException:  # the timeout, or Ctrl-C
            self.stop()
            raise
        outputs = []
        for handle in (self._out, self._err):
            handle.seek(0)
            outputs.append(handle.read())
            handle.close()
        proc = subprocess.CompletedProcess(self.args, code, *outputs)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._out.close()  # a no-op once ``result`` has read them
        self._err.close()

    def stop(self) -> None:
        """Kill the run and its workers if it is still going (a test failed before it waited)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def bondexp(*args: str, cwd: Path, cache: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return Started(*args, cwd=cwd, cache=cache, env=env).result(check=check)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache) -> Path:
    """One run of two models plus the report steps, on two workers."""
    run_dir = tmp_path_factory.mktemp("run")
    bondexp(*QUICK, "model=[enhanced,bayesian]", "workers=2", f"hydra.run.dir={run_dir}", cwd=run_dir, cache=cache)
    return run_dir


def test_run_writes_every_documented_output(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["ok"] is True
    assert {name: s["status"] for name, s in results["steps"].items()} == {
        "enhanced": "ran",
        "bayesian": "ran",
        "evaluate": "ran",
        "drift": "ran",
        "tune": "ran",
    }
    for step in results["steps"].values():
        assert step["duration_s"] > 0 and step["worker"]
    rows = list(csv.DictReader((finished_run / "leaderboard.csv").open()))
    models = {r["model"] for r in rows}
    assert {"dcf_baseline", "oracle", "enhanced", "bayesian", "enhanced_tuned"} <= models
    assert [float(r["rmse"]) for r in rows] == sorted(float(r["rmse"]) for r in rows)
    for name in (
        "leaderboard.md",
        "report.md",
        "drift.json",
        "tuning.json",
        "data_summary.json",
        "plots/timeline.png",
        "checkpoints/enhanced.pkl",
        "checkpoints/enhanced.json",
        "logs/enhanced.log",
        ".hydra/config.yaml",
    ):
        assert (finished_run / name).exists(), name
    drift = json.loads((finished_run / "drift.json").read_text())
    assert {"psi", "ks_pvalue", "status"} <= set(drift["features"]["time_to_maturity"])
    assert "enhanced_tuned" in drift["models"]  # drift covers the tuned model
    report = (finished_run / "report.md").read_text()
    assert "enhanced_tuned" in report and "timeline.png" in report


def test_resume_of_a_finished_run_reuses_every_step(finished_run, cache):
    before = json.loads((finished_run / "results.json").read_text())
    plot = finished_run / "plots" / "rmse_ci.png"
    drawn = plot.stat().st_mtime_ns
    proc = bondexp(f"resume={finished_run}", cwd=finished_run, cache=cache)
    after = json.loads((finished_run / "results.json").read_text())
    assert {s["status"] for s in after["steps"].values()} == {"reused"}
    assert {n: s["metrics"] for n, s in after["steps"].items()} == {n: s["metrics"] for n, s in before["steps"].items()}
    assert "reused" in proc.stdout
    assert plot.stat().st_mtime_ns == drawn  # the same checkpoints: report files kept, not redrawn
    plot.unlink()
    bondexp(f"resume={finished_run}", cwd=finished_run, cache=cache)
    assert plot.is_file()  # a missing report file is written again
    configs = sorted(p.name for p in (finished_run / ".hydra").iterdir())
    plan = bondexp(f"resume={finished_run}", "dry_run=true", cwd=finished_run, cache=cache)
    assert "reusable" in plan.stdout
    assert sorted(p.name for p in (finished_run / ".hydra").iterdir()) == configs  # a plan adds no resumed-<time>/


def test_a_command_that_runs_no_step_leaves_no_run_folder(tmp_path, cache):
    """A dry run and bad input each left outputs/<date>/<time>/ with a log (and .hydra/): nothing to list or
    resume, one more folder per attempt. Another run's folder beside them, and a run's own, stay."""
    other = tmp_path / "outputs" / "2026-01-02" / "03-04-05"
    (other / "logs").mkdir(parents=True)
    bondexp("data=small", "dry_run=true", cwd=tmp_path, cache=cache)
    refused = bondexp("data=small", "eval.sample_pct=0", cwd=tmp_path, cache=cache, check=False)
    assert refused.returncode == 2 and "eval.sample_pct" in refused.stderr
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "outputs").rglob("*"))] == [
        "outputs/2026-01-02",
        "outputs/2026-01-02/03-04-05",
        "outputs/2026-01-02/03-04-05/logs",
    ]
    (tmp_path / "kept").mkdir()
    bondexp("data=small", "dry_run=true", cwd=tmp_path / "kept", cache=cache)
    assert not (tmp_path / "kept" / "outputs").exists()  # the first command under a folder: not even outputs/ stays


def test_model_files_of_a_pkg_or_a_relative_search_path_are_seen_by_the_checks(tmp_path, cache):
    """The model-file checks looked in bondexp's conf and absolute file:// folders only: a space named after a model file
    of a pkg:// source was refused as a typo of a chosen model (every job of a sweep over them failed), and with a relative
    file:// folder and hydra.job.chdir=true a space was refused and a file shadowing bondexp's basic.yaml passed."""
    package = tmp_path / "mypkg" / "conf" / "model"
    for folder in (package, tmp_path / "my_conf" / "model"):
        folder.mkdir(parents=True)
        for name, alpha in (("my_lasso", 0.01), ("my_lasso_strong", 0.5)):
            (folder / f"{name}.yaml").write_text(f"# @package models.{name}\n_target_: sklearn.linear_model.Lasso\nalpha: {alpha}\n")
    for init in (tmp_path / "mypkg" / "__init__.py", tmp_path / "mypkg" / "conf" / "__init__.py"):
        init.write_text("")
    (tmp_path / "my_conf" / "model" / "basic.yaml").write_text("_target_: sklearn.linear_model.Lasso\n")
    space = "+tune.search_space.my_lasso_strong={alpha: {low: 0.1, high: 1}}"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for search in ("hydra.searchpath=[pkg://mypkg.conf]", "hydra.searchpath=[file://my_conf]"):
        plan = bondexp(
            "data=small", "model=my_lasso", search, space, "hydra.job.chdir=true", "dry_run=true", cwd=tmp_path, cache=cache, env=env
        )
        assert "my_lasso" in plan.stdout
    refused = bondexp(
        "data=small", "model=basic", "hydra.searchpath=[file://my_conf]", "hydra.job.chdir=true", cwd=tmp_path, cache=cache, check=False
    )
    assert refused.returncode == 2 and "The 'model' option basic is a file in more than one config folder" in refused.stderr


def test_dry_run_prints_the_plan_and_does_nothing(tmp_path, cache):
    proc = bondexp("data=small", "model=[basic,factor]", "dry_run=true", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, cache=cache)
    for word in ("basic", "factor", "evaluate", "drift", "tune"):
        assert word in proc.stdout
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.sample_pct=0", "'eval.sample_pct' config key must be a percentage in (0, 100]. Got 0"),
        ("tune.target=bayesian", "'tune.search_space.bayesian' config key must map parameters of model 'bayesian'"),
        # Hydra's own seven lines (exit 1) suggested +modle=enhanced, which bondexp then refused in turn (the
        # message's other cases: test_config.py)
        ("modle=enhanced", "bondexp: error: The 'modle' config key does not exist. Did you mean 'model'?\n"),
        # Hydra's options list under its config search path, exit 1 (a wrong type's case: test_config.py)
        ("model=enhancd", "bondexp: error: model=enhancd: the 'model' config group has no option 'enhancd'. Did you mean 'enhanced'?"),
    ],
)
def test_bad_config_value_fails_before_any_work(tmp_path, cache, override, message):
    proc = bondexp("data=small", override, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, cache=cache, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize(
    "model_file, overrides, message",
    [
        ("alpah: 0.01", [], "The 'model.alpah' config key must name a parameter of Lasso. Got 'alpah' instead. Did you mean"),
        ("features: [coupon_rate, modified_duraton]", [], "'model.features' config key names ['modified_duraton'], which the data"),
        ("", ["model=[enhanced]", "+tune.search_space.enhanced={learnig_rate: {low: 0.01, high: 0.2}}"], "Did you mean 'learning_rate'?"),
        (  # its trials failed one by one (14 of 16) and the run ended ok
            "",
            ["model=[enhanced]", "+tune.search_space.enhanced={learning_rate: {low: -1, high: 0.1}}"],
            "The 'tune.search_space.enhanced.learning_rate' config key reaches -1.0, which HistGradientBoostingRegressor rejects:",
        ),
        (  # the regime model's mixture clusters the spread, a market feature: it failed as its step ran
            "",
            ["model=[regime]", "models.regime.features=bond"],
            "The 'models.regime.state_features' config key (a parameter of RegimeSwitchingRegressor) must name columns among",
        ),
        (  # it failed in fit with scikit-learn's "monotonic_cst contains 1 unexpected feature names", naming no key
            "",
            ["model=[enhanced]", "models.enhanced.features=market"],
            "The 'models.enhanced.monotonic_cst' config key names ['prev_residual'], which are not among the model's features",
        ),
        (  # its error named models.mine.alpah, a key Hydra refuses for a file without its header
            "",
            ["+models.mine.alpah=1"],
            "The model file mine has no '# @package models.mine' header, so its keys are set as model.<key> (model.alpah)",
        ),
        (  # found only when tune ran, after every model had trained
            "",
            ["tune.storage=sqlite:///no/such/folder/study.db"],
            "The 'tune.storage' config key names a database Optuna cannot open ('sqlite:///",
        ),
        ("_target_: sklearn.linear_model.Lassso", [], "'sklearn.linear_model' has no 'Lassso'. Did you mean 'Lasso'?"),
        ("_target_: sklaern.linear_model.Lasso", [], "on PYTHONPATH). Did you mean 'sklearn'?"),
        (  # the user's own module, not beside the command: it was "Did you mean 'pytest'?", a guess among installed modules
            "_target_: my_est.MyShrink",
            [],
            "no module 'my_est' is installed or beside the command (your own module: run the command from its folder, "
            "or put that folder on PYTHONPATH).",
        ),
        (  # it failed in fit once the data had loaded ("Unknown label type: continuous"), exit 1, with a resume command
            "_target_: sklearn.linear_model.LogisticRegression",
            [],
            "The 'model._target_' config key must name a regressor: a scikit-learn estimator with fit and predict",
        ),
        ("alpha: abc", [], "The 'model.alpha' config key (a parameter of Lasso) must be a float in the range [0.0, inf). Got 'abc'"),
        (  # bondexp's own estimators declare constraints too (those they pass on are their members' own)
            "_target_: bondexp.models.stacking.StackedRegressor\nforest_n_estimators: abc",
            [],
            "The 'model.forest_n_estimators' config key (a parameter of StackedRegressor) must be an int in the range [1, inf).",
        ),
    ],
)
def test_what_only_the_estimators_can_check_fails_before_any_step(tmp_path, cache, model_file, overrides, message):
    """A model file's parameter or feature, or a search space's parameter, used to fail as its step ran: the tune
    step's only after every model had trained, each with a resume command that could only fail again."""
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    lasso = "" if model_file.startswith("_target_") else "_target_: sklearn.linear_model.Lasso\n"
    (tmp_path / "myconf" / "model" / "mine.yaml").write_text(f"{lasso}{model_file}\n")
    run_dir = tmp_path / "r"
    args = [*QUICK, "model=mine", *overrides, f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", f"hydra.run.dir={run_dir}"]
    proc = bondexp(*args, cwd=tmp_path, cache=cache, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"bondexp: error: {message}" in proc.stderr if message.startswith("The") else message in proc.stderr
    if "my_est" in model_file:  # no guess among the installed modules for the user's own
        assert "Did you mean" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one message: no logged error of Hydra's above it
    assert "Resume with" not in proc.stderr + proc.stdout
    assert not (run_dir / "logs").exists() and not (run_dir / "checkpoints").exists()  # no step began


def test_with_one_worker_a_steps_warnings_go_to_its_log_not_the_terminal(tmp_path, cache):
    """In-process steps printed scikit-learn's ConvergenceWarnings under the bar; pool workers logged them."""
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mine.yaml").write_text("_target_: sklearn.linear_model.Lasso\nalpha: 1.0e-6\nmax_iter: 2\n")
    run_dir = tmp_path / "r"
    args = [*QUICK, "model=mine", "~steps.tune", "~steps.drift", "workers=1", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"]
    proc = bondexp(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    assert "ConvergenceWarning" not in proc.stderr, proc.stderr
    assert "ConvergenceWarning" in (run_dir / "logs" / "mine.log").read_text()


@pytest.mark.parametrize("validation, months", [(0.03, 1), (0.05, 2)])
def test_tail_risk_calibrates_on_a_validation_split_of_one_or_two_months(tmp_path, cache, validation, months):
    """tail_risk's out-of-sample check splits the calibration months in two: with one validation month,
    or two (the held-out scores calibrate a copy on the first), its step failed and evaluate was skipped."""
    split = ["data.split.train=0.9", f"data.split.validation={validation}", f"data.split.test={0.1 - validation:.2f}"]
    run_dir = tmp_path / "r"
    bondexp(
        *QUICK, *split, "model=tail_risk", "~steps.tune", "~steps.drift", "workers=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache
    )
    summary = json.loads((run_dir / "data_summary.json").read_text())["splits"]["validation"]
    assert summary["first_date"][:7] != summary["last_date"][:7] if months == 2 else summary["first_date"] == summary["last_date"]
    metrics = json.loads((run_dir / "results.json").read_text())["steps"]["tail_risk"]["metrics"]
    assert ("val_kupiec_pvalue" in metrics) == (months == 2) and ("val_coverage" in metrics) == (months == 2), metrics
    assert (run_dir / "leaderboard.csv").exists()


def test_relative_paths_are_the_launch_folders_with_hydra_job_chdir_and_on_resume_from_elsewhere(tmp_path, cache):
    """Relative data paths and a relative SQLite ``tune.storage`` name files in the folder the run was first launched in.

    With hydra.job.chdir=true the run works in its own folder, and an existing data.path given relative to
    the launch folder was refused: "must be an existing file". Resumed from another folder, the data path
    was refused again, and the storage was opened there: a new, empty study beside the old one.
    """
    from bondexp.data.files import write_market
    from bondexp.data.synthetic import generate_market

    files = write_market(generate_market(n_observations=1500, n_months=24, seed=3, min_regime_months=4), tmp_path / "data")
    relative = [f"data.{key}=data/{path.name}" for key, path in files.items()]
    run_dir, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    tune = ["model=enhanced", "tune.n_trials=1", "tune.batch_size=1", "tune.storage=sqlite:///studies.db", "~steps.drift"]
    args = ["data=csv", *relative, *tune, "hydra.job.chdir=true", f"hydra.run.dir={run_dir}"]
    bondexp(*args, "progress=false", "eval.n_bootstrap=20", cwd=tmp_path, cache=cache)
    assert (run_dir / "leaderboard.csv").exists()
    assert (tmp_path / "studies.db").is_file() and not (run_dir / "studies.db").exists()

    elsewhere.mkdir()
    bondexp(f"resume={run_dir}", "tune.n_trials=2", "progress=false", cwd=elsewhere, cache=cache)  # tune runs again
    assert not list(elsewhere.rglob("studies.db"))
    assert "1 trial(s) finished" in (run_dir / "logs" / "tune.log").read_text()  # the study of the first attempt
    assert json.loads((run_dir / "tuning.json").read_text())["n_trials"] == 2


def test_a_resume_that_changed_the_config_is_the_runs_config_from_then_on(tmp_path, cache):
    """``resume=<folder> seed=5`` re-ran the run on seed 5's data, but its folder still read as seed 0's: predict refused
    it ("data changed"), ``bondexp.runs`` listed the first overrides, and a plain resume went back to seed 0. A resume
    stopped by bad input (``workers=0``) left a record a plain resume would then have continued with."""
    from bondexp.predict.runfolder import open_run
    from bondexp.runs import read_overrides

    run_dir = tmp_path / "r"
    quick = ["data=small", "model=factor", "~steps.tune", "~steps.drift", "eval.n_bootstrap=20", "progress=false"]
    bondexp(*quick, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    refused = bondexp(f"resume={run_dir}", "workers=0", cwd=tmp_path, cache=cache, check=False)
    assert refused.returncode == 2 and not list((run_dir / ".hydra").glob("resumed-*"))
    bondexp(f"resume={run_dir}", "seed=5", cwd=tmp_path, cache=cache)
    assert read_overrides(run_dir)[-1] == "seed=5"
    assert int(open_run(run_dir, models=["factor"], cache_dir=cache).config["seed"]) == 5  # not refused as changed data
    plan = bondexp(f"resume={run_dir}", "dry_run=true", cwd=tmp_path, cache=cache).stdout
    assert "0 to run" in plan.splitlines()[0], plan

    # a command with bad input into the folder (not a resume) overwrote the run's .hydra/, and its resume failed alike
    record = {path.name: path.read_bytes() for path in (run_dir / ".hydra").iterdir() if path.is_file()}
    refused = bondexp(*quick, "workers=0", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache, check=False)
    assert refused.returncode == 2 and record == {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir() if p.is_file()}
    assert read_overrides(run_dir)[-1] == "seed=5"


def test_a_custom_model_runs_from_yaml_alone(tmp_path, cache):
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "my_lasso.yaml").write_text("_target_: sklearn.linear_model.Lasso\nalpha: 0.01\n")
    run_dir = tmp_path / "r"
    bondexp(*QUICK, "model=my_lasso", "hydra.searchpath=[file://myconf]", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"]["my_lasso"]["status"] == "ran"
    assert results["steps"]["tune"]["status"] == "ran"  # through the default space of its class, Lasso
    assert "my_lasso_tuned" in (run_dir / "leaderboard.csv").read_text()
    # its resume, from another folder, finds the model file (it failed: "Could not find 'model/my_lasso'")
    bondexp(f"resume={run_dir}", cwd=run_dir, cache=cache)
    assert {s["status"] for s in json.loads((run_dir / "results.json").read_text())["steps"].values()} == {"reused"}

    # In a list, Hydra merges header-less files into one `model` key (the last one's values win) and
    # records no choice for the group: the list comes from the command line, and the run stops there.
    (tmp_path / "myconf" / "model" / "my_ridge.yaml").write_text("_target_: sklearn.linear_model.Ridge\nalpha: 1.0\n")
    for models in ("[my_lasso,my_ridge]", "[enhanced,my_lasso]"):
        search = f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"
        proc = bondexp(*QUICK, f"model={models}", search, f"hydra.run.dir={tmp_path / 'list'}", cwd=tmp_path, cache=cache, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"The 'model' choice {models} lists a model file without a '# @package models.<name>' header" in proc.stderr
        assert not (tmp_path / "list" / "checkpoints").exists()


USER_STEP = """
from bondexp.artifacts import ModelArtifact, StepOutput, model_artifacts


def model_table(config, inputs, ctx):
    models = model_artifacts(inputs)
    assert models and all(isinstance(a, ModelArtifact) and a.pipeline is None for a in models.values())
    rows = [f"{a.name},{a.metrics['val_rmse']:.{config['digits']}f},{len(a.predictions['test']['mean'])}" for a in models.values()]
    text = "model,val_rmse,n_test\\n" + "\\n".join(rows) + "\\n"
    return StepOutput({"metrics": {"n_models": len(models)}}, {"mine/models.csv": text.encode()})
"""


def readme_block(marker: str) -> str:
    """The README's fenced block holding ``marker``: what a user copies, tested as written."""
    blocks = re.findall(r"```\w*\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), flags=re.S)
    return next(block for block in blocks if marker in block)


# Its header once came second, after a comment: Hydra then ignored it ("Key 'experiment' not in 'BondexpConf'").
USER_STEP_YAML = readme_block("# conf/experiment/mine.yaml")


def test_a_users_report_step_from_yaml_and_one_function_writes_its_file(tmp_path, cache):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_report.py").write_text(USER_STEP)
    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "experiment" / "mine.yaml").write_text(USER_STEP_YAML)
    run_dir = tmp_path / "r"
    bondexp(
        *QUICK,
        "model=[basic,factor]",
        "~steps.tune",
        "~steps.drift",
        "~steps.evaluate",
        "+experiment=mine",
        "workers=2",
        f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        cache=cache,
        env={"PYTHONPATH": str(tmp_path / "code")},
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"]["model_table"]["status"] == "ran" and results["steps"]["model_table"]["metrics"] == {"n_models": 2}
    rows = list(csv.DictReader((run_dir / "mine" / "models.csv").open()))
    assert [r["model"] for r in rows] == ["basic", "factor"]
    assert float(rows[0]["val_rmse"]) == pytest.approx(results["steps"]["basic"]["metrics"]["val_rmse"], abs=1e-4)


USER_MODEL = """
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge


class ShrunkRidge(RegressorMixin, BaseEstimator):
    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def fit(self, X, y):
        self.ridge_ = Ridge(alpha=self.alpha).fit(X, y)
        return self

    def predict(self, X):
        return 0.5 * self.ridge_.predict(X)
"""


def test_a_models_own_code_edited_after_the_run_is_refit_on_resume_and_refused_by_predict(tmp_path, cache, monkeypatch):
    """Edited, a user's module changed nothing: a resume reused the old fit, and predict ran the edited
    ``predict`` on it (test RMSE 1.64 -> 5.60) saying every checkpoint verified. A helper module it
    imports was not hashed at all."""
    from bondexp.errors import RunFolderError
    from bondexp.predict.runfolder import open_run

    (tmp_path / "code").mkdir()
    module, helper = tmp_path / "code" / "mymodels.py", tmp_path / "code" / "shrinkage.py"
    module.write_text("from shrinkage import FACTOR\n" + USER_MODEL.replace("0.5 *", "FACTOR *"))
    helper.write_text("FACTOR = 0.5\n")
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "shrunk.yaml").write_text("_target_: mymodels.ShrunkRidge\nalpha: 1.0\n")
    run_dir, env = tmp_path / "r", {"PYTHONPATH": str(tmp_path / "code")}
    args = [*QUICK, "model=shrunk", "~steps.tune", "~steps.drift", "workers=1", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"]
    bondexp(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache, env=env)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    assert list(open_run(run_dir, "shrunk", cache_dir=cache).artifacts) == ["shrunk"]

    helper.write_text("FACTOR = 0.6\n")
    plan = bondexp(f"resume={run_dir}", "dry_run=true", cwd=tmp_path, cache=cache, env=env).stdout
    assert "shrunk    needs -; run: the code it runs changed: shrinkage" in plan, plan
    with pytest.raises(RunFolderError, match=r"code whose source has changed since \(shrunk: shrinkage\)\. .* resume="):
        open_run(run_dir, "shrunk", cache_dir=cache)
    helper.write_text("FACTOR = 0.5\n")  # back as it was: the run's code again
    assert list(open_run(run_dir, "shrunk", cache_dir=cache).artifacts) == ["shrunk"]
    module.write_text(module.read_text().replace("FACTOR *", "0.6 * FACTOR *"))
    plan = bondexp(f"resume={run_dir}", "dry_run=true", cwd=tmp_path, cache=cache, env=env).stdout
    assert "shrunk    needs -; run: the code it runs changed: mymodels" in plan, plan
    with pytest.raises(RunFolderError, match=r"code whose source has changed since \(shrunk: mymodels\)\. .* resume="):
        open_run(run_dir, "shrunk", cache_dir=cache)


def test_predict_says_a_models_own_module_does_not_import_from_here_and_suggests_no_resume(tmp_path, cache, monkeypatch):
    """Run from a folder where the module is not importable, predict said its source "has changed since, or
    no longer imports" and suggested a resume, which failed the same way from there."""
    from bondexp.errors import RunFolderError
    from bondexp.predict.runfolder import open_run

    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "mymodels.py").write_text(USER_MODEL)  # beside the command: python -m puts it on sys.path
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "shrunk.yaml").write_text("_target_: mymodels.ShrunkRidge\nalpha: 1.0\n")
    run_dir = tmp_path / "r"
    args = [*QUICK, "model=shrunk", "~steps.tune", "~steps.drift", "workers=1", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"]
    bondexp(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path / "launch", cache=cache)
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)  # not importable in this process: not on its sys.path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFolderError) as err:
        open_run(run_dir, "shrunk", cache_dir=cache)
    assert str(err.value) == (
        f"The run {str(run_dir)!r} fitted its models with your own code, which does not import from here (shrunk: mymodels); "
        f"launch predict from the folder the run was launched in ({tmp_path / 'launch'}), or put the module's folder on PYTHONPATH."
    )
    (tmp_path / "launch" / "mymodels.py").rename(tmp_path / "mymodels.py")  # moved away from the folder the run was launched in
    monkeypatch.chdir(tmp_path / "launch")
    with pytest.raises(RunFolderError, match=r"does not import from the folder the run was launched in .*, where predict runs \(shrunk: "):
        open_run(run_dir, "shrunk", cache_dir=cache)


def test_sweep_runs_each_job_and_writes_one_summary(tmp_path, cache):
    sweep_dir = tmp_path / "sweep"
    bondexp("-m", *QUICK, "model=factor", "~steps.tune", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, cache=cache)
    summary = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [row["job"] for row in summary] == ["0", "1"]
    assert all(row["best_model"] == "factor" for row in summary)
    assert "seed=1" in summary[1]["overrides"]
    # two jobs share the machine: each runs its steps on its share of the cores, not on all of them
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"{expected} thread(s)" in (sweep_dir / "0" / "logs" / "factor.log").read_text()


def test_a_sweep_job_with_bad_input_ends_alone(tmp_path, cache):
    """A job's config error (exit 2 for a run) used to exit the job's process: joblib then killed its
    siblings mid-run and the sweep wrote no summary. The job now ends alone; the sweep says so in its
    summary and its exit code."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *QUICK, "model=factor", "~steps.tune", "eval.sample_pct=150,50", f"hydra.sweep.dir={sweep_dir}"]
    proc = bondexp(*args, cwd=tmp_path, cache=cache, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "#0 bondexp: error: The 'eval.sample_pct' config key must be a percentage" in proc.stderr
    summary = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [row["status"] for row in summary] == ["not run", "ok"]
    assert summary[0]["note"].startswith("error: The 'eval.sample_pct' config key must be a percentage")  # why, after the screen scrolled
    assert not summary[1]["note"]
    assert "| not run |" in (sweep_dir / "summary.md").read_text()
    assert "sweep summary (2 jobs: 1 ok, 1 not run)" in proc.stdout


def test_ctrl_c_stops_a_parallel_sweeps_jobs_as_runs_and_starts_no_other(tmp_path, cache):
    """The first Ctrl-C reaches every process of the sweep: the running jobs stop as a run does (their
    tables, their finished steps kept), the queued one does not start, the summary is written and the
    sweep prints how to resume it. joblib used to kill the jobs mid-write (a table or two missing,
    leaked-semaphore warnings)."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *QUICK, "model=[basic,automl]", "seed=0,1,2", "workers=2", f"hydra.sweep.dir={sweep_dir}"]

    def began(job: str) -> bool:
        return any((sweep_dir / job / "logs").glob("*.log"))

    def finished(job: str) -> list[Path]:
        return sorted((sweep_dir / job / "checkpoints").glob("*.json"))

    with Started(*args, cwd=tmp_path, cache=cache) as sweep:
        deadline = time.monotonic() + 120
        while not (began("0") and began("1") and (finished("0") or finished("1"))):  # each job takes seconds more
            assert sweep.process.poll() is None and time.monotonic() < deadline, "the jobs never got going"
            time.sleep(0.05)
        kept = finished("0") + finished("1")
        os.killpg(sweep.process.pid, signal.SIGINT)
        proc = sweep.result(check=False, timeout=120)
        left = group_running(sweep.process.pid)
    assert proc.returncode == 130, proc.stderr
    assert left == []
    for job in ("#0", "#1"):
        assert f"{job} Interrupted. Finished steps are checkpointed." in proc.stderr
        assert f"{job} : " in proc.stdout  # its table
    assert "#2 not started: the sweep was interrupted" in proc.stderr
    stopping = [line for line in (proc.stdout + proc.stderr).splitlines() if "interrupted: stopping workers" in line]
    assert sorted(line[:3] for line in stopping) == ["#0 ", "#1 "]  # whose warning is whose
    resume = shlex.join(["python", "-m", "bondexp", *args[:-1], f"hydra.sweep.dir={sweep_dir}"])
    assert f"resume the sweep with:\n  {resume}" in proc.stderr
    assert "leaked" not in proc.stderr and "Traceback" not in proc.stderr
    summary = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [row["status"] for row in summary] == ["interrupted", "interrupted", "not run"]
    assert summary[2]["note"] == "not started: the sweep was interrupted"
    assert all(path.exists() for path in kept) and not (sweep_dir / ".interrupted").exists()


@pytest.mark.parametrize(
    "statuses, interrupted, code",
    [
        (["ok", "ok"], False, 0),
        (["ok", "failed"], False, 1),
        (["failed", "not run"], False, 2),  # bad input outranks a failed step
        (["ok", "not run"], True, 130),  # not started after the Ctrl-C
        (["interrupted", "ok"], False, 130),
    ],
)
def test_a_sweeps_exit_code_comes_from_its_jobs(statuses, interrupted, code):
    from bondexp.sweep import sweep_exit_code

    assert sweep_exit_code([{"status": s} for s in statuses], interrupted=interrupted) == code


def test_a_sweep_summary_notes_why_a_job_did_not_run_or_which_steps_failed(tmp_path):
    from bondexp import sweep

    for job in ("0", "1", "2"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
    steps = {"basic": {"status": "ran"}, "automl": {"status": "failed"}, "tune": {"status": "skipped"}}
    (tmp_path / "0" / "results.json").write_text(json.dumps({"ok": False, "wall_s": 3.0, "interrupted": False, "steps": steps}))
    sweep.note_not_run(tmp_path / "1", "error: The 'workers' config key must be at least 1.\nmore")
    sweep.note_not_run(tmp_path / "2", "error: an earlier run's reason")
    sweep.note_not_run(tmp_path / "2", None)  # the job ran when the sweep was resumed
    rows = sweep.summarize_sweep(tmp_path)
    assert [(r["status"], r["note"]) for r in rows] == [
        ("failed", "failed: automl"),
        ("not run", "error: The 'workers' config key must be at least 1."),
        ("not run", None),
    ]


def test_a_parallel_sweep_jobs_terminal_log_lines_carry_its_label(tmp_path):
    import io
    import logging

    from bondexp.sweep import label_console_logs

    root = logging.getLogger()
    console, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "job.log")
    for handler in (console, file):
        handler.setFormatter(logging.Formatter("[%(levelname)s] - %(message)s"))
        root.addHandler(handler)
    try:
        label_console_logs("#0")
        label_console_logs("#2")  # the next job of the same process
        logging.getLogger("bondexp.runner").warning("interrupted: stopping workers")
    finally:
        for handler in (console, file):
            root.removeHandler(handler)
            handler.close()
    assert console.stream.getvalue() == "#2 [WARNING] - interrupted: stopping workers\n"
    assert (tmp_path / "job.log").read_text() == "[WARNING] - interrupted: stopping workers\n"


def test_a_sweep_killed_by_a_second_ctrl_c_still_gets_its_summary(tmp_path, monkeypatch, capsys):
    from bondexp import sweep

    sweep_dir = tmp_path / "sweep"
    for job, began in (("0", True), ("1", False)):
        (sweep_dir / job / ".hydra").mkdir(parents=True)
        (sweep_dir / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        if began:
            (sweep_dir / job / "logs").mkdir()  # killed mid-run: no results.json
    monkeypatch.setattr(sweep, "_running", sweep_dir)
    monkeypatch.setattr(sys, "argv", ["bondexp", "-m", "seed=0,1"])
    assert sweep.wrap_up_killed() is True
    assert sweep.wrap_up_killed() is False  # once
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [row["status"] for row in rows] == ["interrupted", "not run"]
    err = capsys.readouterr().err
    assert f"resume the sweep with:\n  python -m bondexp -m seed=0,1 hydra.sweep.dir={sweep_dir}" in err
    assert not (sweep_dir / ".interrupted").exists()


def test_a_sweep_killed_before_any_job_began_prints_no_summary(tmp_path, monkeypatch, capsys):
    from bondexp import sweep

    (tmp_path / "sweep").mkdir()
    monkeypatch.setattr(sweep, "_running", tmp_path / "sweep")
    assert sweep.wrap_up_killed() is True
    assert capsys.readouterr().out == "" and not (tmp_path / "sweep" / "summary.md").exists()


def test_the_data_lines_fit_an_80_column_terminal():
    """Each split's line was about 105 characters and wrapped mid-number in an 80-column terminal."""
    from bondexp.app import format_data_summary

    split = {"first_date": "2015-01-31", "last_date": "2098-12-31", "residual_mean": -12.3456, "residual_std": 10.5}
    split |= {"residual_p05": -99.999, "residual_p95": 99.999}
    summary = {"n_rows": 1_000_000, "cache_hit": False, "load_seconds": 123.456, "dropped_rows": {}}
    summary["splits"] = {"train": {**split, "rows": 600_000}, "validation": {**split, "rows": 200_000}, "test": {**split, "rows": 0}}
    lines = format_data_summary(summary).splitlines()
    assert len(lines) == 5 and max(map(len, lines)) <= 80, lines
    assert lines[2].split() == ["train", "600,000", "2015-01-31..2098-12-31", "-12.346", "10.500", "-99.999", "+99.999"]
    assert lines[1].split()[-4:] == ["mean", "sd", "p05", "p95"] and lines[4].split() == ["test", "0"]
