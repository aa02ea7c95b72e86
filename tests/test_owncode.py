"""Which modules count as the user's own code, and when their source has changed (bondexp.owncode)."""

from __future__ import annotations

from bondexp.owncode import changed, module_digest, own_code


def test_installed_and_bondexps_own_modules_are_not_the_users_code():
    assert [module_digest(m) for m in ("sklearn", "numpy", "json", "math", "bondexp", "no_such_module_here")] == [None] * 6


def test_a_module_and_a_package_are_hashed_by_their_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mine.py").write_text("X = 1\n")
    (tmp_path / "mypkg" / "sub").mkdir(parents=True)
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "sub" / "models.py").write_text("Y = 1\n")
    config = {
        "estimator": {"_target_": "mine.Thing"},
        "steps": [{"_target_": "mypkg.sub.models.Other"}, {"_target_": "sklearn.linear_model.Ridge"}],
    }
    code = own_code(config)
    assert sorted(code) == ["mine", "mypkg"] and changed(code) == []

    (tmp_path / "mypkg" / "sub" / "models.py").write_text("Y = 22\n")  # a file deep in the package
    assert changed(code) == ["mypkg"]
    (tmp_path / "mine.py").unlink()
    assert changed(code) == ["mine", "mypkg"]  # gone: no longer imports
