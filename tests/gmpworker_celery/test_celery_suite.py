"""Celery's own integration tests on GMPPool beside prefork (a bounded subset).

The whole of ``t/integration`` runs with ``scripts/celery-integration`` (about an hour
for both pools); this test runs the part that exercises the pool itself: the task
tests (results, failures, retries, time limits, ``expires``, revoke, ETA) and the
remote-control inspection tests. Every one that passes on prefork must pass on
GMPPool, except the documented divergences.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.gmpworker_celery.celery_suite import KNOWN_DIVERGENCES, PASSED, celery_tests, compare
from tests.support import require

SUBSET = ["t/integration/test_tasks.py::test_tasks", "t/integration/test_inspect.py"]
# Tasks that wait for a slot while the others run: test_expired failed on GMPPool
# before the pool used the worker's semaphore (the expired task ran).
SLOT_WAIT_TESTS = (
    "t/integration/test_tasks.py::test_tasks::test_expired[pool]",
    "t/integration/test_tasks.py::test_tasks::test_revoked[pool]",
)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_celery_integration_subset_passes_on_gmppool_as_on_prefork(tmp_path: Path) -> None:
    try:
        suite = celery_tests()
    except subprocess.CalledProcessError as exc:
        require(False, f"could not fetch the Celery sdist (PyPI unreachable?): {exc}")
        raise
    result = compare(suite, tmp_path, redis_db=13, select=SUBSET)
    report = result.summary()
    assert not result.wrong_pools(), report
    assert result.prefork.counts()[PASSED] >= 40, report  # the subset really ran
    assert result.unexplained() == {}, report
    passed_on_both = {
        node
        for node, outcome in result.prefork.outcomes.items()
        if outcome == PASSED and result.gmp.outcomes.get(node) == PASSED
    }
    for node in SLOT_WAIT_TESTS:
        assert node in passed_on_both or node in KNOWN_DIVERGENCES, report
