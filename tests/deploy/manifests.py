"""Reading the rendered Kubernetes manifests of deploy/kubernetes for the tests.

Rendering goes through ``scripts/k8s-render`` (what ``make k8s`` runs), so the tests see
exactly what ``kubectl apply -k`` would send.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "production", "keda")
RENDER = ROOT / "scripts" / "k8s-render"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def renderer_available() -> bool:
    """Whether kustomize or a kubectl that embeds it is installed."""
    return shutil.which("kustomize") is not None or shutil.which("kubectl") is not None


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """Every object of an overlay, as ``kubectl kustomize`` prints it."""
    proc = subprocess.run([str(RENDER), overlay], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"rendering {overlay} failed: {proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind whose name is ``name`` (or, for a generated one, starts
    with ``name-`` and a hash)."""
    for obj in objects:
        obj_name = obj["metadata"]["name"]
        if obj["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", obj_name):
            return obj
    raise AssertionError(f"no {kind} {name}")


@dataclass(frozen=True)
class Container:
    """One container of one workload's pod template."""

    workload: dict[str, Any]
    pod: dict[str, Any]
    spec: dict[str, Any]
    init: bool

    @property
    def where(self) -> str:
        """``Kind/name container`` for messages."""
        return f"{self.workload['kind']}/{self.workload['metadata']['name']} {self.spec['name']}"

    @property
    def long_running(self) -> bool:
        """A main container of a Deployment or StatefulSet (probes apply)."""
        return self.workload["kind"] in LONG_RUNNING_KINDS and not self.init

    def security(self, field: str) -> Any:
        """A security setting: the container's, else the pod's."""
        own = self.spec.get("securityContext", {})
        return own[field] if field in own else self.pod.get("securityContext", {}).get(field)


def containers(objects: tuple[dict[str, Any], ...]) -> Iterator[Container]:
    """Every container and init container of every workload."""
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        for init, key in ((True, "initContainers"), (False, "containers")):
            for spec in pod.get(key, []):
                yield Container(obj, pod, spec, init)


# --- the compose healthchecks, in the form of a Kubernetes probe --------------------------------

_DURATION = re.compile(r"(\d+)s")


def seconds(duration: str) -> int:
    """Compose's ``5s`` as 5."""
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(match.group(1))


_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def compose_services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's services with every ``${VAR:-default}`` at its default (as an
    unconfigured ``docker compose`` reads them; anchors and merge keys resolved by PyYAML)."""
    text = _DEFAULTED.sub(r"\1", (ROOT / "docker-compose.yml").read_text())
    return dict(yaml.safe_load(text)["services"])


_TCP_CONNECT = re.compile(r"exec 3<>/dev/tcp/127\.0\.0\.1/(\d+)")


def compose_check(test: list[str]) -> tuple[str, Any]:
    """A compose healthcheck ``test`` as ``("http", (port, path))``, ``("tcp", port)`` or
    ``("exec", argv)``.

    The HTTP checks (``healthcheck http URL``, ``wget -q -O /dev/null URL``) become the
    kubelet's own GET of the same port and path, a bare TCP connect (bash's
    ``/dev/tcp``) the kubelet's TCP check; the rest run as they are.
    """
    form, *argv = test
    if form == "CMD-SHELL":
        return "exec", ["sh", "-c", *argv]
    if argv[:2] == ["bash", "-c"] and (tcp := _TCP_CONNECT.fullmatch(argv[2])):
        return "tcp", int(tcp.group(1))
    url = None
    if argv[:2] == ["healthcheck", "http"]:
        url = argv[2]
    elif argv[:4] == ["wget", "-q", "-O", "/dev/null"]:
        url = argv[4]
    if url is not None:
        parts = urlsplit(url)
        return "http", (parts.port, parts.path)
    return "exec", argv


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def probe_check(container: dict[str, Any], probe: dict[str, Any]) -> tuple[str, Any]:
    """A Kubernetes probe in :func:`compose_check`'s form (named ports resolved)."""
    if "httpGet" in probe:
        return "http", (_port_number(container, probe["httpGet"]["port"]), probe["httpGet"]["path"])
    if "exec" in probe:
        return "exec", probe["exec"]["command"]
    return "tcp", _port_number(container, probe["tcpSocket"]["port"])
