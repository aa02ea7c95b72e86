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


def test_the_users_modules_a_module_imports_are_hashed_too(tmp_path, monkeypatch):
    """A helper module that the model's module imports was not hashed: edited, a resume reused the old fit."""
    monkeypatch.syspath_prepend(str(tmp_path))
    source = "import json\nimport numpy as np\nfrom helpers.maths import shrink\n\n\ndef late():\n    import scaler\n"
    (tmp_path / "mymodels.py").write_text(source)
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("from . import maths\n")  # relative: inside the package, hashed whole
    (tmp_path / "helpers" / "maths.py").write_text("import mymodels  # a cycle ends\n\n\ndef shrink(x):\n    return 0.5 * x\n")
    (tmp_path / "scaler.py").write_text("def broken(:\n")  # does not parse: hashed, its imports unread
    code = own_code({"estimator": {"_target_": "mymodels.ShrunkRidge"}})
    assert sorted(code) == ["helpers", "mymodels", "scaler"] and changed(code) == []

    (tmp_path / "helpers" / "maths.py").write_text("import mymodels\n\n\ndef shrink(x):\n    return 0.6 * x\n")
    assert changed(code) == ["helpers"]
    (tmp_path / "other.py").write_text("X = 1\n")
    (tmp_path / "scaler.py").write_text("import other\n")  # parses now: its import joins the code
    assert sorted(own_code({"_target_": "mymodels.ShrunkRidge"})) == ["helpers", "mymodels", "other", "scaler"]
