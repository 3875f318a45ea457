"""The faults the fault suite injects into a Docker Compose stack, and how.

Each :class:`Fault` acts on one service of a running :class:`~loadtest.stack.ComposeStack`
and returns when the fault is over (the moment the stack is on its own again):

- ``kill-<service>``: SIGKILL of the container's main process *from the host*
  (``kill -9`` of ``State.Pid``), a crash. ``docker kill`` would not do: Docker counts it
  as a manual stop and the restart policy ignores it.
- ``stop-<service>``: ``docker compose stop`` for ``outage_s`` (10 s), then ``start``.
- ``disconnect-worker``: the worker's container is taken off the compose network for
  ``outage_s``, then put back (its broker connection is cut without a FIN).
- ``memory-worker``: memory hogs in the worker's container, each smaller than the worker
  process, until the container reaches its memory limit: the kernel's OOM killer picks
  the largest process, the worker, as it would for a leak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from python_on_whales import DockerException

from loadtest.stack import ComposeStack

KILLED_SERVICES = (
    "api",
    "worker",
    "reconciler",
    "postgres",
    "redis-state",
    "redis-cache",
    "rabbitmq",
)
STOPPED_SERVICES = ("rabbitmq", "postgres", "redis-state", "redis-cache")
OUTAGE_S = 10.0
HOG_CHUNK_MIB = 4
# A hog holds this share of the worker's resident memory, so it never outweighs the
# worker when the OOM killer compares them.
HOG_SHARE_OF_WORKER = 0.6


class FaultError(RuntimeError):
    """A fault could not be injected (the container is missing, Docker refused...)."""


@dataclass(frozen=True)
class Fault:
    """One fault: its name, the service it hits, and the function that injects it."""

    name: str
    service: str
    description: str
    inject: Callable[[ComposeStack, float], None]

    def run(self, stack: ComposeStack, outage_s: float = OUTAGE_S) -> None:
        """Inject the fault; returns when it is over."""
        self.inject(stack, outage_s)


def container_of(stack: ComposeStack, service: str) -> str:
    """The name of ``service``'s (first) container in the project."""
    for state in stack.status():
        if state.service == service:
            return state.container
    raise FaultError(f"project {stack.project} has no {service} container")


def main_pid(stack: ComposeStack, service: str) -> int:
    """Host PID of ``service``'s container's main process (0 when it is not running)."""
    container = stack.docker.container.inspect(container_of(stack, service))
    return int(container.state.pid or 0)


def kill_main_process(stack: ComposeStack, service: str, _outage_s: float = 0.0) -> None:
    """SIGKILL the container's main process from the host, as a crash would end it.

    Returns once Docker has seen that process die (until then the container still looks
    running and healthy), whether or not it restarts the container.
    """
    pid = main_pid(stack, service)
    if not pid:
        raise FaultError(f"{service} is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while main_pid(stack, service) == pid:
        if time.monotonic() > deadline:
            raise FaultError(f"Docker still shows {service}'s killed process {pid} after 30 s")
        time.sleep(0.05)


def stop_then_start(stack: ComposeStack, service: str, outage_s: float) -> None:
    """Stop ``service`` (gracefully, as an operator would), wait, start it again."""
    stopped_at = time.monotonic()
    stack.docker.compose.stop(service, timeout=10)
    time.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
    stack.docker.compose.start(service)


def network_of(stack: ComposeStack) -> str:
    """The project's default network (where the services reach each other)."""
    return f"{stack.project}_default"


def disconnect_for(stack: ComposeStack, service: str, outage_s: float) -> None:
    """Take ``service``'s container off the project's network for ``outage_s``."""
    container = container_of(stack, service)
    network = network_of(stack)
    stack.docker.network.disconnect(network, container)
    try:
        time.sleep(outage_s)
    finally:
        stack.docker.network.connect(network, container, alias=service)


def _resident_mib(host_pid: int) -> float:
    """Resident memory of a process, read from the host's /proc."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise FaultError(f"no VmRSS for pid {host_pid}")


def _largest_child(host_pid: int) -> int:
    """The largest child of ``host_pid`` (under docker-init: the service's own process)."""
    children = Path(f"/proc/{host_pid}/task/{host_pid}/children").read_text().split()
    if not children:
        raise FaultError(f"process {host_pid} has no child")
    return max((int(child) for child in children), key=_resident_mib)


HOG_PROGRAM = (
    "import sys, time\n"
    "mib = int(sys.argv[1])\n"
    # Written, not just reserved: untouched pages would not count against the limit.
    "held = [bytearray(b'\\x01') * (1 << 20) for _ in range(mib)]\n"
    "time.sleep(600)\n"
)


def push_to_memory_limit(stack: ComposeStack, service: str, _outage_s: float = 0.0) -> None:
    """Fill ``service``'s container with hogs until the OOM killer ends its main process.

    Returns once the process was killed (Docker's restart count went up).
    """
    container = container_of(stack, service)
    inspected = stack.docker.container.inspect(container)
    limit_mib = (inspected.host_config.memory or 0) / 2**20
    if not limit_mib:
        raise FaultError(f"{service} has no memory limit to push against")
    restarts = int(inspected.restart_count or 0)
    worker_mib = _resident_mib(_largest_child(main_pid(stack, service)))
    hog_mib = max(HOG_CHUNK_MIB, int(worker_mib * HOG_SHARE_OF_WORKER))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = stack.docker.container.inspect(container)
        if int(current.restart_count or 0) > restarts or not current.state.running:
            return
        # The container may be dying under us: the check above decides.
        with contextlib.suppress(DockerException):
            stack.docker.container.execute(
                container, ["python", "-c", HOG_PROGRAM, str(hog_mib)], detach=True
            )
        time.sleep(0.5)
    raise FaultError(f"{service} was not OOM-killed within 120 s (limit {limit_mib:.0f} MiB)")


def _bind(
    action: Callable[[ComposeStack, str, float], None], service: str
) -> Callable[[ComposeStack, float], None]:
    def inject(stack: ComposeStack, outage_s: float) -> None:
        action(stack, service, outage_s)

    return inject


def catalog() -> dict[str, Fault]:
    """Every fault by name, in the order the suite runs them."""
    faults = [
        Fault(
            f"kill-{service}",
            service,
            f"SIGKILL of {service}'s main process from the host",
            _bind(kill_main_process, service),
        )
        for service in KILLED_SERVICES
    ]
    faults += [
        Fault(
            f"stop-{service}",
            service,
            f"{service} stopped for {OUTAGE_S:g} s, then started",
            _bind(stop_then_start, service),
        )
        for service in STOPPED_SERVICES
    ]
    faults.append(
        Fault(
            "disconnect-worker",
            "worker",
            f"worker taken off the network for {OUTAGE_S:g} s",
            _bind(disconnect_for, "worker"),
        )
    )
    faults.append(
        Fault(
            "memory-worker",
            "worker",
            "worker's container filled to its memory limit (OOM kill)",
            _bind(push_to_memory_limit, "worker"),
        )
    )
    return {fault.name: fault for fault in faults}


QUICK_FAULTS = ("kill-api", "kill-worker", "stop-rabbitmq", "disconnect-worker")
"""The subset the CI test runs: a crash of each stateless kind, the broker outage that
used to wedge the worker, and the network cut."""
