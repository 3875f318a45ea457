"""Experiment ``swap``: a container that outgrows its memory limit with swap forbidden
against one with swap allowed, where this machine can show the difference at all.

The comparison needs a Docker engine with swap accounting *and* a host with swap: without
host swap, "swap allowed" has nothing to swap to and both containers behave alike. When it
cannot run, the outcome says exactly why, and proves the policy the compose file relies on
instead: two throw-away containers (``memswap_limit`` equal to the memory limit, and twice
it) run :func:`services.swap.swap_policy` on their own cgroup, then outgrow the limit, and
``docker inspect`` tells how each ended.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.experiments.model import Experiment, Metric, Outcome, Variant, Verdict
from loadtest.runner import ROOT

NAME = "swap"
TITLE = "Swap forbidden"
CLAIM = (
    "With swap forbidden, a container that outgrows its memory limit is killed and restarted"
    " at once instead of crawling on swap."
)
IMAGE = "debian:bookworm-slim"
MEMORY = "64m"
MEMORY_BYTES = 64 * 2**20
HOG_BYTES = 4 * MEMORY_BYTES
METRICS = [
    Metric("memory_limit_bytes", "memory limit (cgroup)", "bytes"),
    Metric("memory_and_swap_limit_bytes", "memory + swap limit (cgroup)", "bytes"),
    Metric(
        "swap_forbidden", "services.swap says forbidden (1) / allowed (0)", "flag", may_be_zero=True
    ),
    Metric("oom_killed", "OOM-killed once past the limit (1) or not (0)", "flag", may_be_zero=True),
    Metric("seconds_to_kill", "start to kill, Python start-up included", "s"),
]
_PROBE = (
    """
import json
from pathlib import Path
from services.swap import swap_policy
def read(name):
    for root in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        path = Path(root, name)
        if path.exists():
            return path.read_text().strip()
    return None
print(json.dumps({
    "policy": str(swap_policy()),
    "memory.limit_in_bytes": read("memory.limit_in_bytes") or read("memory.max"),
    "memory.memsw.limit_in_bytes": read("memory.memsw.limit_in_bytes"),
    "memory.swap.max": read("memory.swap.max"),
}), flush=True)
"""
    + (
        # Zero-filled, so every page is touched: the container outgrows its limit.
        f"hog = bytearray({HOG_BYTES})\n"
    )
)


def host_swap_bytes() -> int:
    """Swap the host has, from /proc/swaps (sizes in KiB)."""
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return sum(int(line.split()[2]) * 1024 for line in lines if line.strip())


def docker_facts() -> dict[str, Any] | str:
    """``docker info``'s memory and swap facts, or why there is no usable engine."""
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    proc = subprocess.run(
        ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        return f"docker info failed: {proc.stderr.strip()[:300]}"
    info = json.loads(proc.stdout)
    return {k: info.get(k) for k in ("ServerVersion", "CgroupVersion", "MemoryLimit", "SwapLimit")}


def _ssl_libraries() -> set[str]:
    """The shared libraries this Python's ``_ssl`` links (the slim image has no OpenSSL, and
    prometheus-client, which services.swap exports to, imports ssl)."""
    import _ssl

    proc = subprocess.run(["ldd", _ssl.__file__], capture_output=True, text=True, timeout=30)
    found = (line.split("=>", 1)[1].split()[0] for line in proc.stdout.splitlines() if "=>" in line)
    return {path for path in found if "ssl" in path or "crypto" in path}


def _mounts() -> list[str]:
    """The repository and the Python that runs it, read-only at the same paths, so the
    image needs no Python of its own and the probe is this checkout's services.swap."""
    paths = sorted({str(ROOT), sys.prefix, sys.base_prefix, *_ssl_libraries()})
    kept = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
    return [arg for p in kept for arg in ("-v", f"{p}:{p}:ro")]


def _seconds(timestamp: str) -> float:
    """Epoch seconds of Docker's RFC 3339 time (nanoseconds cut to microseconds)."""
    head, _, fraction = timestamp.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return moment.timestamp() + float(f"0.{fraction or 0}"[:8])


def probe(memswap: str) -> dict[str, Any]:
    """In a container with ``--memory 64m --memory-swap memswap``: services.swap's reading of
    its cgroup, then a 256 MiB allocation; what the container printed and how it ended."""
    name = f"experiments-swap-{uuid.uuid4().hex[:8]}"
    command = [
        "docker", "run", "--name", name, "--memory", MEMORY, "--memory-swap", memswap,
        *_mounts(), "-w", str(ROOT), "-e", "PYTHONDONTWRITEBYTECODE=1", IMAGE,
        sys.executable, "-c", _PROBE,
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        inspect = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    if not lines or inspect.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:], "command": command}
    state = json.loads(inspect.stdout)
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit_code"] = state["ExitCode"]
    result["oom_killed"] = state["OOMKilled"]
    result["seconds_to_kill"] = _seconds(state["FinishedAt"]) - _seconds(state["StartedAt"])
    return result


def _limit(value: str | None) -> float:
    return float(value) if value and value.isdigit() else 0.0


def _variant(key: str, label: str, found: dict[str, Any]) -> Variant:
    memory = _limit(found.get("memory.limit_in_bytes"))
    memsw = _limit(found.get("memory.memsw.limit_in_bytes"))
    if not memsw and found.get("memory.swap.max") is not None:  # cgroup v2: swap alone
        memsw = memory + _limit(found.get("memory.swap.max"))
    figures = {
        "memory_limit_bytes": memory,
        "memory_and_swap_limit_bytes": memsw,
        "swap_forbidden": 1.0 if found.get("policy") == "forbidden" else 0.0,
        "oom_killed": 1.0 if found.get("oom_killed") else 0.0,
        "seconds_to_kill": float(found.get("seconds_to_kill", 0.0)),
    }
    return Variant(key, label, {k: v for k, v in figures.items() if "error" not in found})


def why_not_run(facts: dict[str, Any] | str, swap: int) -> str | None:
    """Why the comparison cannot run here, or ``None`` when it could."""
    if isinstance(facts, str):
        return f"no Docker engine: {facts}"
    if not facts.get("SwapLimit"):
        return "the Docker engine has no swap accounting (docker info: SwapLimit false)"
    if swap == 0:
        return (
            "the host has no swap (/proc/swaps lists no device), so a container allowed to"
            " swap has nothing to swap to and is OOM-killed just like one that is forbidden"
            " (both below): there is no crawling-on-swap side to compare with. The engine"
            f" does account swap (SwapLimit true, cgroup v{facts.get('CgroupVersion')})."
        )
    return None


def run(quick: bool, workdir: Path) -> Outcome:
    """Decide whether the comparison can run; prove the swap policy in containers."""
    del quick  # two containers take seconds either way
    facts, swap = docker_facts(), host_swap_bytes()
    reason = why_not_run(facts, swap) or (
        "the host has swap, but the memory-hog comparison (kill, restart, nothing lost) is"
        " not implemented yet: only the policy proof below ran"
    )
    proof: dict[str, Any] = {"host_swap_bytes": swap, "docker": facts}
    variants = []
    if not isinstance(facts, str):
        forbidden, allowed = probe(MEMORY), probe(f"{2 * MEMORY_BYTES}")
        proof["containers"] = {"forbidden": forbidden, "allowed": allowed}
        variants = [
            _variant("forbidden", f"--memory {MEMORY} --memory-swap {MEMORY} (compose)", forbidden),
            _variant("allowed", f"--memory {MEMORY} --memory-swap {2 * MEMORY_BYTES}", allowed),
        ]
    (workdir / "swap.json").write_text(json.dumps(proof, indent=2))
    return Outcome(
        name=EXPERIMENT.name,
        title=EXPERIMENT.title,
        claim=EXPERIMENT.claim,
        method=(
            "Decided from `docker info` (SwapLimit) and /proc/swaps. The proof: two"
            f" containers of {IMAGE} with {MEMORY} of memory, one with memory+swap equal to"
            " it (what the compose file sets, memswap_limit == mem_limit) and one with twice"
            " it, each running services.swap.swap_policy() on its own cgroup, then allocating"
            " 256 MiB: how each ended (docker inspect: OOMKilled, start and finish) shows"
            " what swap changes, or not, on this host."
        ),
        metrics=METRICS,
        variants=variants,
        verdict=Verdict.NOT_RUN,
        why=reason,
        proof=proof,
    )


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
