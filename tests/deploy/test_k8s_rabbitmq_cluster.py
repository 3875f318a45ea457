"""The production overlay's RabbitMQ, run in Docker as the StatefulSet runs it: three
containers of flashsale/rabbitmq:local, each prepared by the init container's setup.sh with
the manifest's environment, started read-only with the pod's uid, gid, capabilities and
memory limit, named as their pods' DNS names. They must form one cluster, and the order
queue, declared by the services' own code with ``ORDER_QUEUE_TYPE=quorum``, must get a
member on each node.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from services.messaging import routing_config
from services.settings import Settings
from tests.deploy.manifests import find, render, renderer_available
from tests.support import docker_image_present, require, wait_until

NAMESPACE = "flashsale"
SECRETS = {
    "RABBITMQ_DEFAULT_PASS": "test-password",
    "RABBITMQ_ERLANG_COOKIE": "test-cookie-shared-by-the-nodes",
}
IMAGE = "flashsale/rabbitmq:local"


def _docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr}")
    return proc.stdout


_UNITS = {"Mi": 1024**2, "Gi": 1024**3}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


def _literal_env(pod_spec: dict[str, Any], container: dict[str, Any], pod: str) -> dict[str, str]:
    """A container's environment as the kubelet would give it to ``pod``: literal values,
    the Secret keys from SECRETS, the downward API's fields and limits, and ``$(VAR)``
    references expanded."""
    env: dict[str, str] = {}
    downward = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    limits = {c["name"]: c["resources"]["limits"] for c in pod_spec["containers"]}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "secretKeyRef" in source:
            value = SECRETS[var["name"]]
        elif "fieldRef" in source:
            value = downward[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["resourceFieldRef"]
            value = str(_bytes(limits[ref["containerName"]][ref["resource"].split(".")[1]]))
        env[var["name"]] = value
    return env


def _run_args(pod_spec: dict[str, Any], container: dict[str, Any], pod: str) -> list[str]:
    """``docker run`` options for a container of the pod: its uid and gid, a read-only
    root, no capabilities, its memory limit, its environment."""
    security = pod_spec["securityContext"]
    memory = _bytes(container["resources"]["limits"]["memory"])
    args = [
        "--read-only",
        "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--memory", str(memory),
    ]  # fmt: skip
    for name, value in _literal_env(pod_spec, container, pod).items():
        args += ["-e", f"{name}={value}"]
    return args


@pytest.fixture
def cluster(compose_images: None, tmp_path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(network, container names, node 0's loopback AMQP port) of a running 3-node cluster."""
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    assert docker_image_present(IMAGE), f"{IMAGE} is not among the compose build's images"
    statefulset = find(render("production"), "StatefulSet", "rabbitmq")
    replicas = statefulset["spec"]["replicas"]
    pod_spec = statefulset["spec"]["template"]["spec"]
    (setup,) = pod_spec["initContainers"]
    (server,) = pod_spec["containers"]
    config = Path(__file__).resolve().parents[2] / "deploy/kubernetes/base/rabbitmq"
    tag = uuid.uuid4().hex[:8]
    network, names = f"k8stest-{tag}", []
    _docker("network", "create", network)
    try:
        for i in range(replicas):
            pod = f"rabbitmq-{i}"
            dirs = {d: tmp_path / f"{pod}-{d}" for d in ("etc", "data", "logs", "tmp")}
            for path in dirs.values():
                path.mkdir()
                path.chmod(0o777)  # an emptyDir's mode; the volume's fsGroup in a cluster
            mounts = [
                *("-v", f"{dirs['etc']}:/etc/rabbitmq"),
                *("-v", f"{dirs['data']}:/var/lib/rabbitmq"),
            ]
            entrypoint, *command = setup["command"]
            _docker(
                "run", "--rm", *_run_args(pod_spec, setup, pod), *mounts,
                "-v", f"{config}:/config:ro", "--entrypoint", entrypoint, IMAGE, *command,
            )  # fmt: skip
            host = f"{pod}.{statefulset['spec']['serviceName']}.{NAMESPACE}"
            name = f"k8stest-{tag}-{pod}"
            published = ["-p", "127.0.0.1::5672"] if i == 0 else []
            _docker(
                "run", "-d", "--name", name, "--network", network, "--hostname", host,
                "--network-alias", host, *published,
                *_run_args(pod_spec, server, pod),
                "-v", f"{dirs['etc']}:/etc/rabbitmq:ro", "-v", f"{dirs['data']}:/var/lib/rabbitmq",
                "-v", f"{dirs['logs']}:/var/log/rabbitmq", "-v", f"{dirs['tmp']}:/tmp", IMAGE,
            )  # fmt: skip
            names.append(name)
        port = int(_docker("port", names[0], "5672/tcp").split(":")[-1])
        yield network, names, port
    finally:
        for name in names:
            _docker("rm", "-f", name, check=False)
        _docker("network", "rm", network, check=False)


def _running_nodes(name: str) -> list[str]:
    out = _docker(
        "exec", name, "rabbitmqctl", "-q", "cluster_status", "--formatter", "json", check=False
    )
    try:
        return list(json.loads(out)["running_nodes"])
    except (ValueError, KeyError):
        return []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_production_rabbitmq_forms_a_cluster_and_replicates_the_order_queue(
    cluster: tuple[str, list[str], int],
) -> None:
    _, names, port = cluster
    wait_until(lambda: len(_running_nodes(names[0])) == len(names), 300, "three running nodes")
    settings = Settings(
        broker_url=f"amqp://flashsale:{SECRETS['RABBITMQ_DEFAULT_PASS']}@127.0.0.1:{port}//",
        order_queue_type="quorum",
    )
    with Connection(settings.broker_url) as conn:
        for queue in routing_config(settings)["task_queues"]:
            queue(conn.channel()).declare()
    listed = _docker(
        "exec", names[-1], "rabbitmqctl", "-q", "list_queues", "name", "type", "members",
        "--formatter", "json",
    )  # fmt: skip
    queues = {q["name"]: q for q in json.loads(listed)}
    order_queue = queues[settings.order_queue]
    assert order_queue["type"] == "quorum"
    assert sorted(order_queue["members"]) == sorted(_running_nodes(names[0]))
    assert len(order_queue["members"]) == len(names)
