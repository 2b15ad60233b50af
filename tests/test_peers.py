"""The peer libraries the tests compare with: asked for one way, skipped by name, required in CI."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REQUIRE_PEERS, import_peer

ROOT = Path(__file__).resolve().parents[1]
# Libraries the tests compare with or run (module -> pip name): test requirements, not clbook's dependencies.
PEERS = {"lightly": "lightly", "ot": "pot", "pytorch_metric_learning": "pytorch-metric-learning",
         "nbgrader": "nbgrader"}


def test_a_missing_peer_is_skipped_with_its_name(monkeypatch):
    monkeypatch.delenv(REQUIRE_PEERS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="peer no-such-peer is not installed.*pip install no-such-peer"):
        import_peer("clbook_no_such_module", "no-such-peer")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_peer_fails_when_peers_are_required(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_PEERS, value)
    with pytest.raises(pytest.fail.Exception, match=f"peer no-such-peer is not installed.*{REQUIRE_PEERS}"):
        import_peer("clbook_no_such_module", "no-such-peer")


def test_an_installed_peer_is_returned(monkeypatch):
    monkeypatch.setenv(REQUIRE_PEERS, "1")
    assert import_peer("json", "json").dumps([1]) == "[1]"


def test_ci_requires_the_peers():
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert f"export {REQUIRE_PEERS}=1" in lines
    assert lines[-1] == "exec python -m pytest"  # the README's test command, last


def requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_every_peer_is_a_pinned_test_requirement():
    pinned = requirement_names((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    extra = requirement_names(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
                              ["project"]["optional-dependencies"]["test"])
    for package in PEERS.values():
        assert package in pinned, f"{package} is not pinned in requirements.txt"
        assert package in extra, f"{package} is not in pyproject.toml's test extra"


def test_tests_import_peers_only_through_the_fixture():
    """A direct import fails a whole file without its peer, and importorskip hides a reference in silence."""
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                if isinstance(node, ast.Attribute) and node.attr == "importorskip":
                    pytest.fail(f"{path.name}:{node.lineno} uses importorskip; ask the peer fixture instead")
                continue
            for name in names:
                assert name.split(".")[0] not in PEERS, f"{path.name}:{node.lineno} imports {name}; use peer(...)"


def test_a_test_file_that_needs_a_peer_throughout_is_skipped_whole(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    (tmp_path / "test_needs.py").write_text("from conftest import import_peer\n"
                                            "thing = import_peer('clbook_no_such_module', 'no-such-peer')\n"
                                            "def test_a():\n    pass\n")
    for required, outcome in (("", "1 skipped"), ("1", "1 error")):
        env = {**os.environ, REQUIRE_PEERS: required}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                               "-rs", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert outcome in done.stdout and "no-such-peer" in done.stdout, done.stdout
