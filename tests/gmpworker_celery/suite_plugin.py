"""pytest plugin loaded into Celery's own ``t/integration`` run by :mod:`celery_suite`.

It changes nothing in Celery's files. Two hooks:

- the session worker's pool: Celery's conftest fixes ``celery_worker_pool`` to
  ``"prefork"``; a direct parametrisation of that name (session scope, one value) takes
  precedence over any fixture, so ``CELERY_SUITE_POOL`` picks the pool of the one
  session worker every test shares;
- the selection: only tests that use that session worker run. The others start
  workers of their own (``start_worker`` with the solo pool, ``celery worker``
  subprocesses on prefork) or none, so their outcome says nothing about the pool.
"""

from __future__ import annotations

import os

import pytest

POOL_FIXTURE = "celery_worker_pool"
SESSION_WORKER = "celery_session_worker"


def selected_pool() -> str:
    """The pool under test: a Celery alias or ``module:Class``."""
    return os.environ.get("CELERY_SUITE_POOL", "prefork")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test that reaches the session worker the selected pool."""
    if POOL_FIXTURE in metafunc.fixturenames:
        # The id is fixed so that node ids are the same whichever pool runs.
        metafunc.parametrize(POOL_FIXTURE, [selected_pool()], ids=["pool"], scope="session")


@pytest.fixture(autouse=True)
def _record_pool_in_use(request: pytest.FixtureRequest) -> None:
    """Write the session worker's pool class to ``CELERY_SUITE_POOL_RECORD`` (once).

    The runner checks it, so a run can never pass while on another pool than asked.
    """
    record = os.environ.get("CELERY_SUITE_POOL_RECORD")
    if not record or SESSION_WORKER not in request.fixturenames or os.path.exists(record):
        return
    pool = type(request.getfixturevalue(SESSION_WORKER).pool)
    with open(record, "w") as out:
        out.write(f"{pool.__module__}:{pool.__qualname__}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests that do not run on the session worker's pool."""
    kept, dropped = [], []
    for item in items:
        uses_pool = SESSION_WORKER in getattr(item, "fixturenames", ())
        (kept if uses_pool else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
