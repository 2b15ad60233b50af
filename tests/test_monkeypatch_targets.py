"""Every name a test monkeypatches in clbook is one the code still reads, at call time.

A move can silently disable a test: if ``supcon.py`` copies a threshold with ``from ._tiled import
X`` at import time, patching ``_tiled.X`` changes nothing the loss reads, and a test that "forces
the tiled path" goes on passing without ever taking it. This test reads every
``monkeypatch.setattr(<clbook module>, "<name>", ...)`` in tests/ and checks that clbook reads
``<name>`` through that module when it runs: the module's own code uses the name, or some clbook
function imports it from the module inside its body (after the patch), or reads ``module.name``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clbook"


def _patched_targets() -> list[tuple[str, str, str]]:
    """(test file, module, name) of every monkeypatch.setattr on a clbook module."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("clbook"):
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clbook"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    try:
                        importlib.import_module(full)
                        aliases[a.asname or a.name] = full
                    except ImportError:
                        pass  # a function or class, not a module
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "setattr" and getattr(node.func.value, "id", "") == "monkeypatch"):
                continue
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                target = ast.unparse(args[0])
                module = aliases.get(target)
                if module is None and target.startswith("clbook."):
                    module = target
                if module is not None:
                    found.append((path.name, module, args[1].value))
            elif args and isinstance(args[0], ast.Constant) and str(args[0].value).startswith("clbook."):
                module, _, name = args[0].value.rpartition(".")
                found.append((path.name, module, name))
    return found


def _reads(module: str, name: str) -> bool:
    own = PACKAGE.joinpath(*module.split(".")[1:])
    own = own / "__init__.py" if own.is_dir() else own.with_suffix(".py")
    tree = ast.parse(own.read_text())
    if any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load) for n in ast.walk(tree)):
        return True
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(fn):
                if isinstance(n, ast.ImportFrom) and n.module == module and any(a.name == name for a in n.names):
                    return True
                if isinstance(n, ast.Attribute) and n.attr == name and ast.unparse(n.value).endswith(module.rpartition(".")[2]):
                    return True
    return False


TARGETS = _patched_targets()


def test_the_tests_do_patch_clbook():
    assert len(TARGETS) >= 5  # the parser finds the patches (a broken parser would check nothing)


@pytest.mark.parametrize("test_file, module, name", TARGETS)
def test_a_patched_name_is_read_by_the_code(test_file, module, name):
    assert _reads(module, name), (f"{test_file} patches {module}.{name}, but no clbook code reads {name} through "
                                  f"{module} at call time: the patch changes nothing")
