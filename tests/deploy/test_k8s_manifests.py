"""deploy/kubernetes, checked without a cluster: every overlay renders, every object is
valid against the Kubernetes OpenAPI schemas (kubernetes-validate), and every container
follows the stack's rules (memory limit == request, a CPU request, non-root, read-only
root filesystem, no privilege, probes taken from docker-compose.yml's healthchecks).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.settings import Settings
from tests.deploy.manifests import (
    KEDA_KINDS,
    OVERLAYS,
    ROOT,
    Container,
    compose_check,
    compose_services,
    containers,
    find,
    probe_check,
    render,
    renderer_available,
    seconds,
)
from tests.support import docker_image_present, require

# Oldest release the manifests target (topologySpreadConstraints' matchLabelKeys is on by
# default from 1.27; 1.29 is the oldest kubernetes-validate and the providers still ship).
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")
APP_SECRET = "flashsale-app-secrets"
DATASTORE_SECRET = "flashsale-datastore-secrets"
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "emptyDir",
    "secret",
    "persistentVolumeClaim",
    "downwardAPI",
    "projected",
}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    """The rendered objects of each overlay in turn."""
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    return render(request.param)


def test_every_object_is_valid_against_the_openapi_schemas(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    # strict: a misspelt or misplaced field fails instead of being ignored by the cluster.
    for obj in overlay:
        if obj["kind"] in KEDA_KINDS:
            continue  # a CRD: no schema ships with Kubernetes (checked below instead)
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_catches_a_wrong_field() -> None:
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    api = find(render("dev"), "Deployment", "api")
    broken = {**api, "spec": {**api["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)


def test_every_namespaced_object_lands_in_the_flashsale_namespace(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "flashsale", obj["metadata"]["name"]


def _policy_violations(container: Container) -> list[str]:
    spec, found = container.spec, []
    resources = spec.get("resources", {})
    memory = resources.get("limits", {}).get("memory")
    if memory is None or memory != resources.get("requests", {}).get("memory"):
        found.append("memory limit missing or != request")
    if "cpu" not in resources.get("requests", {}):
        found.append("no CPU request")
    if container.security("runAsNonRoot") is not True:
        found.append("runAsNonRoot not set")
    if not isinstance(container.security("runAsUser"), int) or container.security("runAsUser") in (
        0,
        None,
    ):
        found.append("no numeric non-zero runAsUser (the images name their users)")
    if container.security("privileged") is True:
        found.append("privileged")
    if container.security("allowPrivilegeEscalation") is not False:
        found.append("allowPrivilegeEscalation not false")
    if container.security("readOnlyRootFilesystem") is not True:
        found.append("root filesystem writable")
    if "ALL" not in (container.security("capabilities") or {}).get("drop", []):
        found.append("capabilities not dropped")
    if container.long_running and not (spec.get("readinessProbe") and spec.get("livenessProbe")):
        found.append("long-running without readiness and liveness probes")
    return found


def test_every_container_follows_the_policy(overlay: tuple[dict[str, Any], ...]) -> None:
    violations = {c.where: found for c in containers(overlay) if (found := _policy_violations(c))}
    assert not violations


def test_the_policy_flags_each_rule() -> None:
    """The policy check itself: a container breaking each rule is caught."""
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    good = next(c for c in containers(render("dev")) if c.spec["name"] == "api")
    assert _policy_violations(good) == []
    spec = good.spec
    broken = {
        **spec,
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {"privileged": True, "runAsNonRoot": False},
        "livenessProbe": None,
    }
    found = _policy_violations(Container(good.workload, {}, broken, init=False))
    assert found == [
        "memory limit missing or != request",
        "no CPU request",
        "runAsNonRoot not set",
        "no numeric non-zero runAsUser (the images name their users)",
        "privileged",
        "allowPrivilegeEscalation not false",
        "root filesystem writable",
        "capabilities not dropped",
        "long-running without readiness and liveness probes",
    ]


def test_pods_pass_the_restricted_pod_security_standard(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    namespace = find(overlay, "Namespace", "flashsale")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for c in containers(overlay):
        assert c.security("seccompProfile") == {"type": "RuntimeDefault"}, c.where
        assert not c.pod.get("hostNetwork") and not c.pod.get("hostPID"), c.where
        for volume in c.pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, (c.where, volume)


def test_readiness_probes_are_the_compose_healthchecks(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    """Each long-running service named as in docker-compose.yml probes what its compose
    healthcheck tests, on the same schedule (interval, timeout, retries)."""
    compose = compose_services()
    checked = set()
    for c in containers(overlay):
        service = compose.get(c.workload["metadata"]["name"])
        if not c.long_running or service is None:
            continue
        health = service["healthcheck"]
        probe = c.spec["readinessProbe"]
        assert probe_check(c.spec, probe) == compose_check(health["test"]), c.where
        assert probe["periodSeconds"] == seconds(health["interval"]), c.where
        assert probe["timeoutSeconds"] == seconds(health["timeout"]), c.where
        assert probe["failureThreshold"] == health["retries"], c.where
        checked.add(c.workload["metadata"]["name"])
    assert {"api", "worker", "reconciler", "postgres", "rabbitmq"} <= checked
    assert {"redis-state", "redis-cache", "prometheus"} <= checked


def test_images_are_the_compose_builds(overlay: tuple[dict[str, Any], ...]) -> None:
    built = {s["image"] for s in compose_services().values() if "grafana" not in s["image"]}
    assert {c.spec["image"] for c in containers(overlay)} == built


def test_api_and_workers_have_disruption_budgets_and_the_api_an_autoscaler(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    for name in ("api", "worker"):
        labels = find(overlay, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        budget = find(overlay, "PodDisruptionBudget", name)["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["maxUnavailable"] == 1
    hpa = find(overlay, "HorizontalPodAutoscaler", "api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def _redis_container(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    return dict(find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0])


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit in ("Gi", "gb") else 1)


def test_redis_roles_keep_their_policies(overlay: tuple[dict[str, Any], ...]) -> None:
    """redis-state: noeviction + AOF everysec on a volume; redis-cache: allkeys-lru, no
    volume; maxmemory under the memory limit in every overlay."""
    roles = {
        ("StatefulSet", "redis-state"): ("state.conf", "noeviction"),
        ("Deployment", "redis-cache"): ("cache.conf", "allkeys-lru"),
    }
    for (kind, name), (conf, policy) in roles.items():
        container = _redis_container(overlay, kind, name)
        args = container["args"]
        assert args[0] == f"/etc/redis/roles/{conf}"
        text = (ROOT / "docker" / "redis" / conf).read_text()
        assert f"maxmemory-policy {policy}" in text
        maxmemory = _mebibytes(args[args.index("--maxmemory") + 1])
        assert maxmemory <= 0.7 * _mebibytes(container["resources"]["limits"]["memory"])
    state = find(overlay, "StatefulSet", "redis-state")["spec"]
    assert "appendfsync everysec" in (ROOT / "docker/redis/state.conf").read_text()
    assert [t["metadata"]["name"] for t in state["volumeClaimTemplates"]] == ["data"]


def _references(objects: tuple[dict[str, Any], ...]) -> set[tuple[str, str, str | None]]:
    """(kind, name, key) of every ConfigMap and Secret the pod templates read."""
    found: set[tuple[str, str, str | None]] = set()
    for c in containers(objects):
        for source in c.spec.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in source:
                    found.add((kind, source[field]["name"], None))
        for env in c.spec.get("env", []):
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if field in env.get("valueFrom", {}):
                    ref = env["valueFrom"][field]
                    found.add((kind, ref["name"], ref["key"]))
        for volume in c.pod.get("volumes", []):
            if "configMap" in volume:
                found.add(("ConfigMap", volume["configMap"]["name"], None))
    return found


def _keys(obj: dict[str, Any]) -> set[str]:
    return set(obj.get("data", {})) | set(obj.get("stringData", {}))


def test_dev_references_resolve_to_its_own_objects() -> None:
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    objects = render("dev")
    for kind, name, key in _references(objects):
        target = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
        assert key is None or key in _keys(target), (kind, name, key)


def test_production_brings_no_secret_and_needs_only_the_documented_keys() -> None:
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    production, dev = render("production"), render("dev")
    assert not [o for o in production if o["kind"] == "Secret"]
    secrets = {(n, k) for kind, n, k in _references(production) if kind == "Secret"}
    assert {n for n, _ in secrets} == {APP_SECRET, DATASTORE_SECRET}
    readme = (ROOT / "deploy/kubernetes/README.md").read_text()
    for name, key in secrets:
        # The dev overlay generates every key production expects; the README says how
        # to create them.
        assert key is None or key in _keys(find(dev, "Secret", name)), (name, key)
        assert key is None or key in readme, key
    for key in _keys(find(dev, "Secret", APP_SECRET)):
        assert key in readme, key


def test_keda_scales_the_workers_on_the_order_queue() -> None:
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    objects = render("keda")
    scaled = find(objects, "ScaledObject", "worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert find(objects, target["kind"], target["name"])["metadata"]["name"] == "worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == Settings.model_fields["order_queue"].default
    assert scaled["spec"]["minReplicaCount"] >= 1
    auth = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert ref["key"] in _keys(find(render("dev"), "Secret", ref["name"]))


def test_the_order_queue_is_declared_quorum() -> None:
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    for name in OVERLAYS:
        config = find(render(name), "ConfigMap", "flashsale-app")["data"]
        assert Settings(order_queue_type=config["ORDER_QUEUE_TYPE"]).order_queue_type == "quorum"


def _run_setup(tmp_path: Path, replicas: int) -> tuple[str, Path]:
    config = ROOT / "deploy/kubernetes/base/rabbitmq"
    out, data = tmp_path / "etc", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "SETUP_CONFIG_DIR": str(config),
        "SETUP_OUTPUT_DIR": str(out),
        "SETUP_DATA_DIR": str(data),
        "RABBITMQ_DEFAULT_PASS": "s3cret",
        "RABBITMQ_ERLANG_COOKIE": "cookie",
        "RABBITMQ_REPLICAS": str(replicas),
        "MEMORY_LIMIT_BYTES": str(2 * 1024**3),
        "POD_NAMESPACE": "shop",
    }
    subprocess.run(["sh", str(config / "setup.sh")], env=env, check=True)
    return (out / "rabbitmq.conf").read_text(), data / ".erlang.cookie"


def test_rabbitmq_setup_writes_credentials_members_and_cookie(tmp_path: Path) -> None:
    conf, cookie = _run_setup(tmp_path, replicas=3)
    assert "default_pass = s3cret" in conf
    assert "vm_memory_high_watermark.absolute = 1073741824" in conf
    members = re.findall(r"^cluster_formation\.classic_config\.nodes\.(\d) = (\S+)$", conf, re.M)
    assert members == [(str(i + 1), f"rabbit@rabbitmq-{i}.rabbitmq-nodes.shop") for i in range(3)]
    assert cookie.read_text() == "cookie"
    assert cookie.stat().st_mode & 0o777 == 0o400


def test_rabbitmq_members_match_the_replicas(overlay: tuple[dict[str, Any], ...]) -> None:
    """setup.sh lists RABBITMQ_REPLICAS members: it must equal the StatefulSet's replicas,
    and the node names must be what the server container calls itself."""
    rabbit = find(overlay, "StatefulSet", "rabbitmq")["spec"]
    (setup,) = rabbit["template"]["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in setup["env"]}
    assert int(env["RABBITMQ_REPLICAS"]) == rabbit["replicas"]
    server = rabbit["template"]["spec"]["containers"][0]
    nodename = next(e["value"] for e in server["env"] if e["name"] == "RABBITMQ_NODENAME")
    assert nodename == f"rabbit@$(POD_NAME).{rabbit['serviceName']}.$(POD_NAMESPACE)"
    assert rabbit["podManagementPolicy"] == "Parallel"


def test_prometheus_config_is_valid_for_the_image_s_prometheus(tmp_path: Path) -> None:
    """promtool of Debian's Prometheus (the image's): its build has no Kubernetes service
    discovery, which is why the config finds pods by DNS."""
    require(shutil.which("promtool"), "promtool is not installed (make system-deps)")
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    config = find(render("dev"), "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
    path = tmp_path / "prometheus.yml"
    path.write_text(config)
    proc = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_finds_every_pod_of_each_job(overlay: tuple[dict[str, Any], ...]) -> None:
    """Each DNS-discovered job names a headless Service that selects its pods, on a port
    their container listens on."""
    config = yaml.safe_load(
        find(overlay, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"api", "worker", "reconciler", "rabbitmq"} <= {
        name for name, job in jobs.items() if "dns_sd_configs" in job
    }
    for name, job in jobs.items():
        for sd in job.get("dns_sd_configs", []):
            (service_name,) = sd["names"]
            service = find(overlay, "Service", service_name)["spec"]
            assert service["clusterIP"] == "None", service_name
            workload = next(
                o
                for o in overlay
                if o["kind"] in {"Deployment", "StatefulSet"}
                and service["selector"].items()
                <= o["spec"]["template"]["metadata"]["labels"].items()
            )
            ports = {
                p["containerPort"]
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert sd["port"] in ports, (name, sd["port"])
            assert workload["metadata"]["name"] == name


def test_autoscaled_deployments_leave_the_count_to_the_autoscaler(
    overlay: tuple[dict[str, Any], ...],
) -> None:
    """A replica count in the manifest of an autoscaled Deployment would reset the
    autoscaler's count on every ``kubectl apply``."""
    targets = [
        o["spec"]["scaleTargetRef"]["name"]
        for o in overlay
        if o["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
    ]
    assert "api" in targets
    for name in targets:
        assert "replicas" not in find(overlay, "Deployment", name)["spec"], name


def _image_ids(image: str) -> tuple[int, int]:
    """uid and gid the image's processes run as (its USER)."""
    proc = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", "id -u; id -g"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    uid, gid = proc.stdout.split()
    return int(uid), int(gid)


def test_pods_run_as_the_images_own_users(compose_images: None) -> None:
    """runAsUser/runAsGroup (and fsGroup, which makes volumes writable) are the numeric ids
    of each image's USER, read from the built images: Debian's packages (and useradd's
    group) pick them when an image is built, so the manifests must follow the images."""
    require(renderer_available(), "kustomize or kubectl is not installed (make system-deps)")
    objects = render("production")
    images = sorted({c.spec["image"] for c in containers(objects)})
    missing = [image for image in images if not docker_image_present(image)]
    assert not missing, f"the manifests name images the compose build does not make: {missing}"
    expected = {image: _image_ids(image) for image in images}
    for c in containers(objects):
        uid, gid = expected[c.spec["image"]]
        assert (c.security("runAsUser"), c.security("runAsGroup")) == (uid, gid), c.where
        assert c.pod["securityContext"].get("fsGroup", gid) == gid, c.where
