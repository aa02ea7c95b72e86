"""Checkpoint store: fingerprints, whole-or-nothing writes, verification, run lock, durations history."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bondexp.atomic import atomic_write_text
from bondexp.checkpoints import (
    CheckpointStore,
    DurationHistory,
    RunLock,
    fingerprint,
    in_use_elsewhere,
    sha256_file,
)

BASE = dict(target="m.f", config={"a": 1, "b": [1, 2]}, inputs={"x": "1", "y": "2"}, data="d0")


def test_fingerprint_is_canonical_and_sensitive():
    fp = fingerprint(**BASE)
    reordered = dict(target="m.f", config={"b": [1, 2], "a": 1}, inputs={"y": "2", "x": "1"}, data="d0")
    assert fingerprint(**reordered) == fp
    for change in (
        {"target": "m.g"},
        {"config": {"a": 2, "b": [1, 2]}},
        {"inputs": {"x": "1", "y": "3"}},
        {"data": "d1"},
        {"config": {"a": 1, "b": [2, 1]}},
    ):
        assert fingerprint(**{**BASE, **change}) != fp, change


def test_save_load_verify(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    artifact = {"array": np.arange(10.0), "metrics": {"rmse": 0.5}}
    manifest = store.save("basic", artifact, {"fingerprint": "abc", "duration_s": 1.5, "metrics": {"rmse": 0.5}})
    assert manifest["sha256"] == sha256_file(store.artifact_path("basic"))
    assert {"python", "numpy", "joblib"} <= set(manifest["versions"])
    on_disk = json.loads(store.manifest_path("basic").read_text())
    assert on_disk["fingerprint"] == "abc" and on_disk["duration_s"] == 1.5
    np.testing.assert_array_equal(store.load("basic")["array"], artifact["array"])
    assert store.verify("basic", "abc") is None
    assert store.verify("basic", "other") == "stale (config, inputs or data changed)"
    assert store.verify("missing", "abc") == "no checkpoint"
    # no temporary files are left behind
    assert sorted(p.name for p in store.folder.iterdir()) == ["basic.json", "basic.pkl"]


def test_flipped_bytes_are_detected(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("s", {"array": np.arange(1000.0)}, {"fingerprint": "f"})
    path = store.artifact_path("s")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.verify("s", "f") == "corrupt (sha256 mismatch)"
    store.artifact_path("s").unlink()
    assert store.verify("s", "f") == "artifact file missing"


def test_a_models_pipeline_and_files_are_kept_apart_verified_and_loaded_on_request(tmp_path):
    from bondexp.artifacts import ModelArtifact
    from bondexp.errors import CheckpointError

    store = CheckpointStore(tmp_path)
    model = ModelArtifact(
        name="m",
        group="ml",
        config={},
        features=["x"],
        predictions={"test": {"mean": np.zeros(3)}},
        metrics={"val_rmse": 0.5},
        pipeline={"fitted": np.arange(5.0)},
    )
    manifest = store.save("m", model, {"fingerprint": "f"}, files={"plots/m.png": b"png", "m.csv": b"a,b\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.files.pkl", "m.json", "m.model.pkl", "m.pkl"]
    assert manifest["pipeline_sha256"] == sha256_file(store.pipeline_path("m"))
    assert set(manifest["files"]) == {"plots/m.png", "m.csv"}
    light = store.load("m")
    assert light.pipeline is None and light.metrics == model.metrics  # what a report step gets
    np.testing.assert_array_equal(store.load("m", pipeline=True).pipeline["fitted"], np.arange(5.0))
    assert store.load_files("m") == {"plots/m.png": b"png", "m.csv": b"a,b\n"}
    assert store.verify("m", "f") is None
    with open(store.pipeline_path("m"), "ab") as fh:  # a tampered pipeline: refused, never unpickled
        fh.write(b"\0")
    assert store.verify("m", "f") == "corrupt (sha256 mismatch of the pipeline)"
    with pytest.raises(CheckpointError, match="not the .* its manifest recorded"):
        store.load_pipeline("m")
    store.files_path("m").unlink()
    store.save("r", {"metrics": {}}, {"fingerprint": "f"})
    with pytest.raises(CheckpointError, match="kept no fitted pipeline"):
        store.load_pipeline("r")


def test_a_model_artifact_kept_without_a_pipeline_loads_as_it_was_saved(tmp_path):
    from bondexp.artifacts import ModelArtifact

    store = CheckpointStore(tmp_path)
    refit = ModelArtifact(name="m@2020-01", group="ml", config={}, features=["x"], predictions={"scored": {"mean": np.ones(2)}}, metrics={})
    store.save("m@2020-01", refit, {"fingerprint": "f"})
    assert not store.pipeline_path("m@2020-01").exists()
    loaded = store.load("m@2020-01", pipeline=True)  # what the runner sends a remote dependent of a reused step
    assert loaded.pipeline is None and loaded.name == "m@2020-01"


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("s", {"v": 1}, {"fingerprint": "f"})
    before = store.artifact_path("s").read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        store.save("s", {"v": Unpicklable()}, {"fingerprint": "g"})
    assert store.artifact_path("s").read_bytes() == before
    assert store.verify("s", "f") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.pkl"]


def test_remove_temporaries(tmp_path):
    (tmp_path / ".s.pkl.abc.tmp").write_bytes(b"half")
    atomic_write_text(tmp_path / "keep.json", "{}")
    CheckpointStore(tmp_path).remove_temporaries()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_run_lock_is_held_until_its_last_holder_in_the_process_exits(tmp_path):
    """The run takes its folder before it writes anything, then the runner takes it again."""

    def held_elsewhere() -> str:  # as another process sees the folder (the refusal itself: test_runner)
        code = "import sys; from bondexp.checkpoints import in_use_elsewhere; print(in_use_elsewhere(sys.argv[1]))"
        return subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout.strip()

    assert held_elsewhere() == "False" and not (tmp_path / "run.lock").exists()  # asking creates nothing
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
        with RunLock(tmp_path):
            pass
        assert held_elsewhere() == "True"
        assert not in_use_elsewhere(tmp_path)  # this process holds it
    assert held_elsewhere() == "False"


def test_duration_history_merges(tmp_path):
    history = DurationHistory(tmp_path / "cache" / "durations.json")
    assert history.read() == {}
    history.update({"a": 1.0, "b": 2.0})
    history.update({"b": 3.0})
    assert history.read() == {"a": 1.0, "b": 3.0}
    (tmp_path / "cache" / "durations.json").write_text("not json")
    assert history.read() == {}
    assert DurationHistory(None).read() == {}


def _upgrade_scikit_learn(monkeypatch, version="99.0.0"):
    """Pretend scikit-learn was upgraded since the checkpoint was written."""
    from bondexp import checkpoints

    real = dict(checkpoints.library_versions())
    monkeypatch.setattr(checkpoints, "library_versions", lambda: {**real, "scikit-learn": version})
    return real["scikit-learn"]


def test_an_upgrade_makes_a_checkpoint_stale_and_says_which_library(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "checkpoints")
    fp = fingerprint(**BASE)
    store.save("basic", {"a": 1}, {"fingerprint": fp})
    assert store.verify("basic", fp) is None
    old = _upgrade_scikit_learn(monkeypatch)
    upgraded = fingerprint(**BASE)
    assert upgraded != fp
    assert store.verify("basic", upgraded) == f"library versions changed: scikit-learn {old} -> 99.0.0"


def test_load_verifies_the_sha256_before_unpickling(tmp_path):
    from bondexp.checkpoints import load_verified
    from bondexp.errors import CheckpointError

    store = CheckpointStore(tmp_path / "checkpoints")
    store.save("basic", {"a": 1}, {"fingerprint": "abc"})
    path = store.artifact_path("basic")
    import joblib

    joblib.dump({"a": 2}, path)  # a different, well-formed pickle in its place
    with pytest.raises(CheckpointError, match="not the .* its manifest recorded"):
        store.load("basic")
    store.manifest_path("basic").unlink()
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        store.load("basic")
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_verified(path, None)
