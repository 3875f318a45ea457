"""Guards shared by the gmpworker tests (imported by each test module; not a conftest,
so the root ``conftest`` module stays importable as ``conftest``).

Every module sets ``pytestmark = pytest.mark.timeout(...)`` so a hung scheduler fails
the test instead of hanging CI, and imports ``no_leaked_threads`` (autouse): a test
must leave no gmpworker thread behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest


def gmp_threads() -> list[threading.Thread]:
    """Live threads started by gmpworker (Ms and sysmon are named ``gmp-...``)."""
    return [t for t in threading.enumerate() if t.name.startswith("gmp-")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if gmpworker threads are still alive shortly after it ends."""
    yield
    deadline = time.monotonic() + 3.0
    while gmp_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gmp_threads() == [], "gmpworker left threads behind"
