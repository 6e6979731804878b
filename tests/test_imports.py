"""Module hygiene: no private names cross modules, no import cycles inside den_jax.

Both checks read the source with ``ast`` (nothing is imported):

* no ``from den_jax... import _name`` and no ``module._name`` on a den_jax module or name
  imported from den_jax, in ``den_jax/`` and ``experiments/``;
* the graph of den_jax modules, with every import (module level and inside functions),
  has no cycle.

Each check also runs on a small synthetic package, so the detectors themselves are tested.
"""

from __future__ import annotations

import ast
import os
import tempfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "den_jax"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _py_files(root: str, top: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, top)):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module name of an ``ImportFrom`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_crossings(root: str, tops: list[str], package: str = PACKAGE) -> list[str]:
    """``file:line: what`` for every private name taken from another module of ``package``."""
    problems = []
    for top in tops:
        for path in _py_files(root, top):
            module = _module_name(root, path)
            is_pkg = path.endswith("__init__.py")
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            imported: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    src = _absolute(module, node, is_pkg)
                    if src.split(".")[0] != package:
                        continue
                    for alias in node.names:
                        imported.add(alias.asname or alias.name)
                        if _private(alias.name):
                            problems.append(f"{path}:{node.lineno}: from {src} import {alias.name}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] == package:
                            imported.add(alias.asname or alias.name.split(".")[0])
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and _private(node.attr)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in imported
                ):
                    problems.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    return problems


def import_graph(root: str, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules it imports`` (all imports, also inside functions) within ``package``."""
    paths = {_module_name(root, p): p for p in _py_files(root, package)}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        is_pkg = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(module, node, is_pkg)
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    targets.append(sub if sub in paths else src)
            for target in targets:
                if target in paths and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_private_names_cross_modules():
    problems = private_crossings(ROOT, [PACKAGE, "experiments"])
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _fake_package(files: dict[str, str]) -> str:
    root = tempfile.mkdtemp()
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
    return root


def test_detectors_find_what_they_look_for():
    root = _fake_package(
        {
            "den_jax/__init__.py": "",
            "den_jax/a.py": "from den_jax.b import _helper\n",
            "den_jax/b.py": (
                "def _helper():\n    pass\n\ndef f():\n    from den_jax import c\n    return c\n"
            ),
            "den_jax/c.py": "from den_jax import a\n\nx = a._thing\n",
            "den_jax/d.py": "from . import _private_mod\nimport den_jax.b as bb\ny = bb.__name__\n",
            "den_jax/_private_mod.py": "",
            "experiments/e.py": "from den_jax import b\nb._helper()\n",
        }
    )
    problems = private_crossings(root, ["den_jax", "experiments"])
    assert len(problems) == 4, problems
    assert any("from den_jax.b import _helper" in p for p in problems)
    assert any("a._thing" in p for p in problems)
    assert any("from den_jax import _private_mod" in p for p in problems)
    assert any("b._helper" in p and "e.py" in p for p in problems)
    cycle = find_cycle(import_graph(root))  # a -> b -> (inside a function) c -> a
    assert cycle is not None and cycle[0] == cycle[-1], cycle
    assert set(cycle) == {"den_jax.a", "den_jax.b", "den_jax.c"}


@pytest.mark.parametrize("edges", [{"x": {"y"}, "y": set()}, {"x": set()}])
def test_acyclic_graphs_pass(edges):
    assert find_cycle(edges) is None
