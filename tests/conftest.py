"""Shared test fixtures: the peer libraries that serve as independent references.

Several tests compare clbook with another library (lightly, POT, pytorch-metric-learning) or run
one (nbgrader). These are test requirements (``requirements.txt``, ``pip install clbook[test]``),
not dependencies of the package. A test asks for one through the ``peer`` fixture::

    def test_matches_pot(peer):
        ot = peer("ot", "pot")

and a test file that needs one throughout calls :func:`import_peer` at its top
(``from conftest import import_peer``).

Without the peer installed the test is skipped with a message naming it (``pip install pot``),
so a partial environment still runs everything else. CI sets ``CLBOOK_REQUIRE_PEERS=1``, under
which a missing peer fails the test instead: a reference comparison cannot silently disappear.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

#: Set to 1 (CI does) to make a missing peer a failure instead of a skip.
REQUIRE_PEERS = "CLBOOK_REQUIRE_PEERS"


def import_peer(module: str, package: str) -> ModuleType:
    """Import ``module`` from the peer ``package`` (its pip name), or skip (fail under CLBOOK_REQUIRE_PEERS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"peer {package} is not installed ({module}: {err}); pip install {package}"
        if os.environ.get(REQUIRE_PEERS, "") not in ("", "0"):
            pytest.fail(f"{message}; {REQUIRE_PEERS} is set, so a missing peer is an error", pytrace=False)
        pytest.skip(message, allow_module_level=True)  # in a test, or for a whole file at its top


@pytest.fixture
def peer():
    """``peer(module, package)``: the imported peer module; skips (or fails in CI) when it is missing."""
    return import_peer
