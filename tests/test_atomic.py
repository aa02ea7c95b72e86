"""Tests of bondexp.atomic: whole-file writes of text, bytes and JSON."""

from __future__ import annotations

import json

import pytest

from bondexp.atomic import atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_text_bytes_and_json_round_trip_and_create_folders(tmp_path):
    assert atomic_write_text(tmp_path / "a" / "t.txt", "héllo") == tmp_path / "a" / "t.txt"
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(tmp_path / "b.png", b"\x89PNG\x00")
    assert (tmp_path / "b.png").read_bytes() == b"\x89PNG\x00"
    atomic_write_json(tmp_path / "c.json", {"x": 1, "path": tmp_path})
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("\n") and json.loads(text) == {"x": 1, "path": str(tmp_path)}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_file(target) as fh:
            fh.write(b"half")
            raise RuntimeError("midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
