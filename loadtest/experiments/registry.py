"""Every experiment, in the report's order (a module apart from the package, so that
``python -m loadtest.experiments.micro`` does not import every experiment first)."""

from __future__ import annotations

from loadtest.experiments import cache, handoff, pools, swap, switch_cost, sync_write, warm_cache

EXPERIMENTS = tuple(
    module.EXPERIMENT
    for module in (switch_cost, cache, warm_cache, sync_write, pools, handoff, swap)
)
"""Every experiment, in the report's order."""
BY_NAME = {e.name: e for e in EXPERIMENTS}
