"""Is this process allowed to swap? Read from its cgroup, not from ``/proc/meminfo``.

A host without swap says nothing about the container: the cgroup limit does. Swap is
forbidden when ``memory.swap.max`` is 0 (cgroup v2) or when ``memory.memsw.limit_in_bytes``
equals ``memory.limit_in_bytes`` (cgroup v1, Compose's ``memswap_limit == mem_limit``).
Every Python service calls :func:`enforce_no_swap` at start.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from services.metrics import SWAP_FORBIDDEN
from services.settings import Settings

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


class SwapPolicy(enum.StrEnum):
    """What the cgroup says about swap."""

    FORBIDDEN = "forbidden"
    ALLOWED = "allowed"
    UNKNOWN = "unknown"


_GAUGE_VALUE = {SwapPolicy.FORBIDDEN: 1, SwapPolicy.ALLOWED: 0, SwapPolicy.UNKNOWN: -1}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dir(root: Path, controller: str) -> Path:
    """This process's directory under ``root`` (from /proc/self/cgroup), else ``root`` itself.

    ``controller`` is ``""`` for the v2 unified line (``0::/path``), ``"memory"`` for v1.
    """
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == controller or controller in controllers.split(","):
            candidate = root / path.lstrip("/")
            if candidate.is_dir():
                return candidate
    return root


_UNLIMITED = 1 << 62
"""v1 reports "no limit" as a page-rounded 2**63 - 1: anything this large is unlimited."""


def swap_policy(root: Path = CGROUP_ROOT) -> SwapPolicy:
    """Read the swap limit of this process's cgroup (v2 first, then v1)."""
    v2 = _read(_own_cgroup_dir(root, "") / "memory.swap.max")
    if v2 is not None:
        return SwapPolicy.FORBIDDEN if v2 == "0" else SwapPolicy.ALLOWED
    v1 = _own_cgroup_dir(root / "memory", "memory")
    for directory in (v1, root / "memory"):
        memsw = _read(directory / "memory.memsw.limit_in_bytes")
        mem = _read(directory / "memory.limit_in_bytes")
        if memsw is not None and mem is not None:
            # Equal but unlimited means nothing bounds swap.
            if memsw == mem and int(mem) < _UNLIMITED:
                return SwapPolicy.FORBIDDEN
            return SwapPolicy.ALLOWED
    return SwapPolicy.UNKNOWN


def check_swap(root: Path = CGROUP_ROOT) -> SwapPolicy:
    """Read the policy, export it as ``container_swap_forbidden`` and log it."""
    policy = swap_policy(root)
    SWAP_FORBIDDEN.set(_GAUGE_VALUE[policy])
    log.info("cgroup swap policy: %s", policy)
    return policy


def enforce_no_swap(settings: Settings, root: Path = CGROUP_ROOT) -> SwapPolicy:
    """Check the policy; exit the process if swap is allowed while ``require_no_swap`` is set."""
    policy = check_swap(root)
    if settings.require_no_swap and policy is SwapPolicy.ALLOWED:
        raise SystemExit(
            "REQUIRE_NO_SWAP is set but this cgroup allows swap: give the container "
            "memswap_limit equal to its memory limit (Compose) or run it on a node without swap"
        )
    return policy
