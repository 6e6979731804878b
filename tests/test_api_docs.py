"""docs/api.md lists every public name; every library module declares its public names."""

import ast
import importlib.util
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_module_has_all():
    missing = []
    for path in sorted((ROOT / "den_jax").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)}  # fmt: skip
        if "__all__" not in names:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without __all__: {missing}"


def test_api_md_is_current():
    expected = _generator().render()
    got = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert got == expected, "docs/api.md is stale: run `python docs/gen_api.py`"
    assert os.path.getsize(ROOT / "docs" / "api.md") > 1000
