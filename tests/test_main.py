"""The entry point: a resumed run's overrides go before today's, and a run composes its config once."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bondexp.__main__ import _with_resumed_overrides
from bondexp.config import resolve_run_dir
from bondexp.errors import ConfigError


def test_resumed_overrides_come_first_and_options_keep_their_values(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- data=small\n- workers=1\n")
    argv = ["bondexp", "--cfg", "job", f"resume={tmp_path}", "seed=3"]
    assert _with_resumed_overrides(argv) == ["bondexp", "--cfg", "job", "data=small", "workers=1", f"resume={tmp_path}", "seed=3"]


def test_an_override_given_again_on_resume_replaces_the_saved_one(tmp_path):
    """The resumed attempt's record, report.md and bondexp.runs listed `workers=1 progress=false workers=2 progress=false`.
    A saved `+key` stays beside today's plain `key`: without its `+` today's would name a key the config lacks."""
    (tmp_path / ".hydra").mkdir()
    saved = "- data=small\n- workers=1\n- ~steps.tune\n- '+tune.search_space.basic={a: 1}'\n- model=basic\n"
    (tmp_path / ".hydra" / "overrides.yaml").write_text(saved)
    argv = ["bondexp", f"resume={tmp_path}", "workers=2", "~steps.tune", "tune.search_space.basic={a: 2}", "model=[basic,enhanced]"]
    assert _with_resumed_overrides(argv) == ["bondexp", "data=small", "+tune.search_space.basic={a: 1}", *argv[1:]]


def test_a_resume_continues_with_the_overrides_of_the_latest_attempt(tmp_path):
    """After ``resume=<folder> tune.n_trials=40`` was interrupted, the printed ``resume=<folder>`` went back to 16 trials."""
    (tmp_path / ".hydra" / "resumed-20261130-101500").mkdir(parents=True)
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- data=small\n")
    (tmp_path / ".hydra" / "resumed-20261130-101500" / "overrides.yaml").write_text(
        f"- data=small\n- resume={tmp_path}\n- tune.n_trials=40\n"
    )
    (tmp_path / ".hydra" / "resumed-20261130-111500").mkdir()  # a resume that bad input stopped: no overrides.yaml
    argv = ["bondexp", f"resume={tmp_path}"]
    assert _with_resumed_overrides(argv) == ["bondexp", "data=small", "tune.n_trials=40", f"resume={tmp_path}"]


def test_a_resume_keeps_the_config_folders_the_run_was_given(tmp_path):
    """The run's own "Resume with:" failed for a model file from the user's folder: `Could not find 'model/my_hgb'`."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=my_hgb\n")
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  searchpath:\n  - file:///abs/conf\n  - file://myconf\n  - pkg://other.conf\n  runtime:\n    cwd: /launch\n"
    )
    argv = ["bondexp", f"resume={tmp_path}"]
    expected = "hydra.searchpath=[file:///abs/conf,file:///launch/myconf,pkg://other.conf]"
    assert _with_resumed_overrides(argv) == ["bondexp", expected, "model=my_hgb", f"resume={tmp_path}"]


def test_a_fresh_run_is_left_alone():
    argv = ["bondexp", "model=enhanced", "resume=null"]
    assert _with_resumed_overrides(argv) == argv


def test_resume_last_without_runs_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="resume"):
        _with_resumed_overrides(["bondexp", "resume=last"])


def test_resume_of_a_folder_that_does_not_exist_is_a_config_error(tmp_path):
    # Hydra would create it and the command would run the whole experiment afresh there.
    with pytest.raises(ConfigError, match=r"The 'resume' config key must be a run folder or 'last'\. Got '.*nope' instead"):
        _with_resumed_overrides(["bondexp", f"resume={tmp_path / 'nope'}"])
    assert not (tmp_path / "nope").exists()


def test_resume_last_skips_folders_where_no_step_began(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for stamp, made in [("10-00-00", "logs"), ("11-00-00", ".hydra"), ("12-00-00", ".hydra")]:
        (tmp_path / "outputs" / "2026-11-30" / stamp / made).mkdir(parents=True)  # 11 and 12: a dry run, a config error
    (tmp_path / "outputs" / "2026-11-30" / "10-00-00" / ".hydra" / "overrides.yaml").parent.mkdir()
    (tmp_path / "outputs" / "2026-11-30" / "10-00-00" / ".hydra" / "overrides.yaml").write_text("- data=small\n")
    assert _with_resumed_overrides(["bondexp", "resume=last"]) == ["bondexp", "data=small", "resume=last"]
    assert resolve_run_dir("last") == str(Path("outputs/2026-11-30/10-00-00"))


def _main_hydra():
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path

    return Hydra.create_main_hydra2(
        task_name="bondexp", config_search_path=create_automatic_config_search_path(None, None, "pkg://bondexp.conf")
    )


@pytest.mark.parametrize("overrides", [["data=small", "model=[basic,factor]", "seed=3"], ["+experiment=quick", "hydra.verbose=true"]])
def test_a_run_composes_its_config_once_and_gets_what_two_composes_gave(overrides, monkeypatch):
    """Hydra checks the mode with one compose and runs with another; the run now reuses the first, unchanged."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from bondexp.hydra_startup import install

    try:
        hydra = _main_hydra()
        twice = hydra.compose_config("config", [*overrides, "hydra.mode=RUN"], run_mode=RunMode.RUN)
        composes = []
        impl = ConfigLoaderImpl._load_configuration_impl
        monkeypatch.setattr(ConfigLoaderImpl, "_load_configuration_impl", lambda *a, **k: composes.append(1) or impl(*a, **k))
        install()
        argv = list(overrides)
        assert hydra.get_mode("config", argv) is None
        argv.append("hydra.mode=RUN")  # what Hydra's run does when the config names no mode
        once = hydra.compose_config("config", argv, run_mode=RunMode.RUN)
        assert len(composes) == 1
        assert OmegaConf.to_yaml(once) == OmegaConf.to_yaml(twice)
        hydra.compose_config("config", argv, run_mode=RunMode.RUN)  # a later compose (a sweep job's) composes
        assert len(composes) == 2
    finally:
        GlobalHydra.instance().clear()


def test_a_sweep_value_without_multirun_keeps_hydras_message(tmp_path):
    env = {**os.environ, "BONDEXP_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "bondexp", "data=small", "seed=1,2", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Ambiguous value for argument 'seed=1,2'" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("template", [None, "$APP_CONFIG_GROUPS\n--\n$HYDRA_CONFIG_GROUPS\n--\n$FLAGS_HELP\n$CONFIG"])
def test_help_lists_the_groups_hydra_lists(template):
    """--help fills only the placeholders its template uses, with what Hydra's own get_help puts there."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bondexp.hydra_startup import _HYDRA_GET_HELP, install

    install()
    try:
        hydra = _main_hydra()
        full = hydra.compose_config("config", [], run_mode=RunMode.RUN)
        help_cfg, cfg = full.hydra.help, hydra.get_sanitized_cfg(copy.deepcopy(full), "job")  # as Hydra's app_help
        if template is not None:
            help_cfg.template = template
        ours = Hydra.get_help(hydra, help_cfg, cfg, get_args_parser(), resolve=False)
        assert ours == _HYDRA_GET_HELP(hydra, help_cfg, cfg, get_args_parser(), resolve=False)
        assert "model: advanced, all, automl" in ours
        assert "data: csv, parquet, small, synthetic\n" in ours  # the data schemas are no data to choose
        assert ("hydra/launcher:" in ours) == (template is not None)
    finally:
        GlobalHydra.instance().clear()


def test_predicts_help_lists_only_the_data_it_takes():
    """Hydra's template listed every group of the search path (model, executor, tracking, data=small), which predict refuses."""
    proc = subprocess.run([sys.executable, "-m", "bondexp.predict", "--help"], capture_output=True, text=True, check=True)
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert [line for line in groups.splitlines() if ":" in line] == ["data: csv, parquet"], proc.stdout
    assert "\nrun: ???\n" in proc.stdout and "batch_rows: 65536" in proc.stdout


def test_the_libyaml_loader_reads_every_config_file_as_omegaconfs_loader_does():
    from pathlib import Path

    import hydra
    import yaml
    from omegaconf._utils import get_yaml_loader

    import bondexp
    from bondexp.hydra_startup import libyaml_loader

    files = [*Path(bondexp.__file__).parent.joinpath("conf").rglob("*.yaml"), *Path(hydra.__file__).parent.rglob("*.yaml")]
    assert len(files) > 30
    for path in files:
        text = path.read_text()
        assert repr(yaml.load(text, Loader=libyaml_loader())) == repr(yaml.load(text, Loader=get_yaml_loader())), path  # noqa: S506
    # YAML 1.1 floats without a dot, no timestamps: OmegaConf's rules, not libyaml's defaults
    assert yaml.load("a: 1e3\nb: 2020-01-31\nc: .inf\n", Loader=libyaml_loader()) == {"a": 1000.0, "b": "2020-01-31", "c": float("inf")}  # noqa: S506


@pytest.mark.parametrize(("text", "message"), [("a: 1\na: 2\n", "found duplicate key a"), ("a: [1,\n", "expected the node content")])
def test_the_libyaml_loader_rejects_what_omegaconf_rejects_with_its_message(text, message):
    import yaml

    from bondexp.hydra_startup import libyaml_loader

    with pytest.raises(yaml.YAMLError, match=message) as caught:
        yaml.load(text, Loader=libyaml_loader())  # noqa: S506
    assert "^" in str(caught.value)  # the line is quoted with a caret under the place


def test_a_model_file_that_is_not_yaml_is_named_with_its_line_and_no_traceback(tmp_path):
    """It printed two chained tracebacks (about 120 lines) naming "<unicode string>", not the file."""
    model = tmp_path / "conf" / "model" / "bad_yaml.yaml"
    model.parent.mkdir(parents=True)
    model.write_text("# @package models.bad_yaml\n_target_: sklearn.linear_model.Lasso\nalpha: [0.01\ngroup: ml\n")
    args = ["model=bad_yaml", "data=small", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={tmp_path / 'r'}"]
    proc = subprocess.run([sys.executable, "-m", "bondexp", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"The config file {model} is not valid YAML:\n"), proc.stderr
    assert f'in "{model}", line 3, column 8:\n    alpha: [0.01\n' in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 15, proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["bondexp", "dry_run=true", "data=small"],
        ["bondexp", "--help"],
        ["bondexp.predict", "--help"],
        ["bondexp", "--info", "all"],
        ["bondexp.predict", "--info", "all"],
    ],
    ids=["dry run", "help", "predict help", "info", "predict info"],
)
def test_output_read_by_a_reader_that_stops_early_ends_quietly(tmp_path, args):
    """`python -m bondexp dry_run=true | head -3`: the pipe closes while the plan prints. Hydra's own
    `--help` printed a BrokenPipeError traceback and exited 1; its `--info`, which it logs line by
    line, printed a "--- Logging error ---" traceback for each of about 150 lines and exited 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Error executing job" not in err, err


def test_a_command_refused_by_the_run_lock_leaves_the_run_folder_as_it_was(tmp_path):
    """A second run in a folder a run was using overwrote that run's .hydra/ config and overrides and its
    data_summary.json before the lock refused it (exit 2): a resume then ran the second's config."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    kept = {".hydra/overrides.yaml": "- data=small\n", ".hydra/config.yaml": "seed: 0\n", "data_summary.json": '{"fingerprint": "a"}'}
    for name, text in kept.items():
        (run_dir / name).write_text(text)
    hold = "import sys,time; from bondexp.checkpoints import RunLock as L; L(sys.argv[1]).__enter__(); print(1, flush=True); time.sleep(99)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        proc = subprocess.run(
            [sys.executable, "-m", "bondexp", "data=small", "seed=5", "model=basic", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    assert f"The run folder '{run_dir}' is in use by process {holder.pid}" in proc.stderr
    assert {name: (run_dir / name).read_text() for name in kept} == kept
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "overrides.yaml"]
