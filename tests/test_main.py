"""The resume shortcut of the entry point: a resumed run's overrides go before today's on the command line."""

from __future__ import annotations

import pytest

from bondexp.__main__ import _with_resumed_overrides
from bondexp.errors import ConfigError


def test_resumed_overrides_come_first_and_options_keep_their_values(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- data=small\n- workers=1\n")
    argv = ["bondexp", "--cfg", "job", f"resume={tmp_path}", "seed=3"]
    assert _with_resumed_overrides(argv) == ["bondexp", "--cfg", "job", "data=small", "workers=1", f"resume={tmp_path}", "seed=3"]


def test_a_fresh_run_is_left_alone():
    argv = ["bondexp", "model=enhanced", "resume=null"]
    assert _with_resumed_overrides(argv) == argv


def test_resume_last_without_runs_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="resume"):
        _with_resumed_overrides(["bondexp", "resume=last"])
