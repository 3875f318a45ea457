"""Drive the Docker Compose stack from Python (python-on-whales).

``python -m loadtest.stack up|down|status|logs|build|urls|config`` (also reachable as
``python -m loadtest stack ...``), or :class:`ComposeStack` from code (the load test,
the compose tests).

- ``build``: prepare the wheelhouse (``scripts/wheelhouse.sh``) and build every image with
  the package index switched off (``--online`` builds from the index instead).
- ``up``: build what is missing, start, wait until every service is healthy (or, for the
  one-shot ``migrate``, exited 0), print the URLs. ``--profile monitoring|loadtest``.
- ``down``: stop and remove every service of every profile (``-v``: the volumes too).

The datastores publish no port (so they never shadow a local Redis/PostgreSQL/RabbitMQ).
``--expose-datastores`` adds ``docker/compose.datastores.yml``, which publishes PostgreSQL
and the state Redis on free loopback ports, for tools that read them from the host (the
load test's verifier); :meth:`ComposeStack.urls` then lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from python_on_whales import DockerClient, DockerException

from services import admin_token
from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DATASTORES_FILE = ROOT / "docker" / "compose.datastores.yml"
WHEELHOUSE_SCRIPT = ROOT / "scripts" / "wheelhouse.sh"
DEFAULT_PROJECT = "flashsale"
PROFILES = ("monitoring", "loadtest")
ONE_SHOT_SERVICES = frozenset({"migrate"})
UP_TIMEOUT_S = 600

# Published endpoints: name -> (service, container port, URL template over host:port).
HTTP_ENDPOINTS: dict[str, tuple[str, int, str]] = {
    "api": ("api", 8000, "http://{}"),
    "dashboard": ("api", 8000, "http://{}/dashboard"),
    "prometheus": ("prometheus", 9090, "http://{}"),
    "grafana": ("grafana", 3000, "http://{}"),
    "locust": ("locust-master", 8089, "http://{}"),
}

# Read inside a container: "v2 <memory.swap.max>" or "v1 <memory limit> <memory+swap limit>".
_SWAP_PROBE = (
    "if [ -f /sys/fs/cgroup/memory.swap.max ]; then"
    " echo v2 $(cat /sys/fs/cgroup/memory.swap.max);"
    " else echo v1 $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
    " $(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo none); fi"
)
_V1_UNLIMITED = 1 << 62  # v1 says "no limit" with a page-rounded 2**63 - 1


class StackError(RuntimeError):
    """The stack could not be built, started or inspected; the message says why."""


@dataclass(frozen=True)
class ServiceState:
    """One container of the stack as ``docker compose ps`` sees it."""

    service: str
    container: str
    status: str  # created, running, exited...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    exit_code: int

    @property
    def ok(self) -> bool:
        """Running and healthy, or a one-shot service that exited 0."""
        if self.service in ONE_SHOT_SERVICES:
            return self.status == "exited" and self.exit_code == 0
        return self.status == "running" and self.health in (None, "healthy")


@dataclass(frozen=True)
class SwapCheck:
    """A container's cgroup swap limit, read inside it."""

    service: str
    raw: str

    @property
    def forbidden(self) -> bool:
        """True when the cgroup allows no swap at all."""
        version, *values = self.raw.split()
        if version == "v2":
            return values == ["0"]
        limit, limit_with_swap = values
        return limit == limit_with_swap and int(limit) < _V1_UNLIMITED


class ComposeStack:
    """The compose project of this repository, under ``project`` (several can coexist).

    ``env`` sets variables the compose file interpolates (``FLASHSALE_API_PORT``,
    ``POSTGRES_PASSWORD``...), over ``.env``; the calling process's environment wins over
    both, as with ``docker compose`` itself.
    """

    def __init__(
        self,
        project: str | None = None,
        env: Mapping[str, str] | None = None,
        expose_datastores: bool = False,
    ) -> None:
        self.project = project or os.environ.get("COMPOSE_PROJECT_NAME") or DEFAULT_PROJECT
        self.env = dict(env or {})
        self.compose_files = [COMPOSE_FILE] + ([DATASTORES_FILE] if expose_datastores else [])
        self._env_file = Path(tempfile.gettempdir()) / f"flashsale-compose-{self.project}.env"
        self._admin_token: admin_token.AdminToken | None = None
        self.docker = self.client()

    def client(self, profiles: Sequence[str] = ()) -> DockerClient:
        """A python-on-whales client for this project with ``profiles`` enabled."""
        return DockerClient(
            compose_files=list(self.compose_files),
            compose_project_name=self.project,
            compose_project_directory=ROOT,
            compose_env_files=self._env_files(),
            compose_profiles=list(profiles),
        )

    def _env_files(self) -> list[str | Path]:
        """``.env`` (--env-file replaces the default one) and ``env``, written out (again)."""
        files: list[str | Path] = [ROOT / ".env"] if (ROOT / ".env").is_file() else []
        if self.env:
            # 0600: it may hold the admin token.
            fd = os.open(self._env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{k}={v}\n" for k, v in self.env.items()))
            files.append(self._env_file)
        return files

    def ensure_admin_token(self) -> admin_token.AdminToken:
        """Give the api an admin token: ``env``'s, the environment's or ``.env``'s
        ``ADMIN_TOKEN``, else the one kept in ``.run/admin-token`` (created when missing).
        Decided once per stack object."""
        if self._admin_token is None:
            given = self.env.get("ADMIN_TOKEN")
            setting = SecretStr(given) if given else Settings(_env_file=ROOT / ".env").admin_token
            self._admin_token = admin_token.for_launcher(setting, RUN_DIR)
            self.env["ADMIN_TOKEN"] = self._admin_token.value
            self.docker = self.client()
        return self._admin_token

    # --- lifecycle ---------------------------------------------------------------------------

    def build(self, offline: bool = True) -> None:
        """Build every image; ``offline``: from a freshly checked wheelhouse, index off."""
        if offline:
            subprocess.run([str(WHEELHOUSE_SCRIPT)], cwd=ROOT, check=True)
        args = {"REQUIRE_WHEELHOUSE": "1"} if offline else {}
        try:
            self.docker.compose.build(build_args=args)
        except DockerException as exc:
            raise StackError(f"docker compose build failed: {_stderr(exc)}") from exc

    def up(
        self,
        wait: bool = True,
        profiles: Sequence[str] = (),
        build: bool = False,
        timeout_s: int = UP_TIMEOUT_S,
    ) -> None:
        """Start the stack (and ``profiles``); with ``wait``, return once all are healthy.

        Images that do not exist yet are built (with ``build``: all of them are rebuilt).
        The api gets an admin token (:meth:`ensure_admin_token`).
        """
        self.ensure_admin_token()
        try:
            self.client(profiles).compose.up(
                detach=True, wait=wait, wait_timeout=timeout_s if wait else None, build=build
            )
        except DockerException as exc:
            raise StackError(
                f"docker compose up failed: {_stderr(exc)}\n{self.describe_failures()}"
            ) from exc

    def down(self, volumes: bool = False) -> None:
        """Stop and remove every container of every profile (and the volumes if asked)."""
        self.client(["*"]).compose.down(volumes=volumes, remove_orphans=True, timeout=10)
        self._env_file.unlink(missing_ok=True)

    # --- inspection --------------------------------------------------------------------------

    def status(self) -> list[ServiceState]:
        """Every container of the project, running or not, by service name."""
        states = []
        for container in self.client(["*"]).compose.ps(all=True):
            state = container.state
            states.append(
                ServiceState(
                    service=(container.config.labels or {}).get("com.docker.compose.service", "?"),
                    container=container.name,
                    status=str(state.status),
                    health=str(state.health.status) if state.health else None,
                    exit_code=int(state.exit_code or 0),
                )
            )
        return sorted(states, key=lambda s: (s.service, s.container))

    def describe_failures(self, tail: int = 30) -> str:
        """The services that are not ok, each with the end of its log."""
        parts = []
        for state in self.status():
            if not state.ok:
                parts.append(
                    f"--- {state.service}: {state.status} health={state.health}"
                    f" exit={state.exit_code}\n{self.logs(state.service, tail=tail)}"
                )
        return "\n".join(parts) or "(every container is ok)"

    def published(self, service: str, port: int) -> str | None:
        """``host:port`` where ``service``'s container ``port`` is published, if it is."""
        try:
            host, host_port = self.client(["*"]).compose.port(service, port)
        except (DockerException, ValueError):
            return None
        return f"{host}:{host_port}" if host_port else None

    def urls(self) -> dict[str, str]:
        """The published endpoints of running services (the datastores too when exposed)."""
        urls = {}
        for name, (service, port, template) in HTTP_ENDPOINTS.items():
            address = self.published(service, port)
            if address:
                urls[name] = template.format(address)
        if DATASTORES_FILE in self.compose_files:
            password = self._variable("POSTGRES_PASSWORD", "flashsale")
            if address := self.published("postgres", 5432):
                urls["database"] = f"postgresql://flashsale:{password}@{address}/flashsale"
            if address := self.published("redis-state", 6379):
                urls["redis"] = f"redis://{address}/0"
        return urls

    def _variable(self, name: str, default: str) -> str:
        return os.environ.get(name) or self.env.get(name) or default

    def logs(self, service: str, tail: int = 200) -> str:
        """The last ``tail`` lines of ``service``'s log."""
        return str(self.client(["*"]).compose.logs(service, tail=str(tail)))

    def exec(self, service: str, command: Sequence[str]) -> str:
        """Run ``command`` in ``service``'s running container; its standard output."""
        return str(self.client(["*"]).compose.execute(service, list(command), tty=False))

    def swap_check(self, service: str) -> SwapCheck:
        """Read ``service``'s cgroup swap limit from inside its container."""
        return SwapCheck(service, self.exec(service, ["sh", "-c", _SWAP_PROBE]).strip())

    def config_json(self) -> dict[str, Any]:
        """The resolved compose file, every profile included.

        From ``config(return_json=True)``: python-on-whales' ``ComposeConfig`` model drops
        ``mem_limit``, ``memswap_limit``, ``healthcheck`` and ``profiles``.
        """
        return dict(self.client(["*"]).compose.config(return_json=True))


def _stderr(exc: DockerException) -> str:
    return (exc.stderr or str(exc)).strip()[-3000:]


# --- command line ----------------------------------------------------------------------------


def _print_status(stack: ComposeStack) -> int:
    states = stack.status()
    if not states:
        print(f"project {stack.project}: no containers")
        return 1
    for state in states:
        # Docker keeps a stopped container's last health: only a running one's means anything.
        health = (state.health if state.status == "running" else None) or "-"
        print(f"{state.service:18} {state.status:10} {health:10} {'ok' if state.ok else 'NOT OK'}")
    return 0 if all(state.ok for state in states) else 1


def _print_urls(stack: ComposeStack) -> None:
    for name, url in stack.urls().items():
        print(f"{name:11} {url}")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--project", help=f"compose project name (default {DEFAULT_PROJECT})")
    parser.add_argument(
        "--expose-datastores",
        action="store_true",
        help="also publish PostgreSQL and the state Redis on free loopback ports",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="wheelhouse + every image, package index off")
    build.add_argument("--online", action="store_true", help="install from the package index")
    up = sub.add_parser("up", help="build, start, wait until healthy, print the URLs")
    up.add_argument("--profile", action="append", default=[], choices=PROFILES)
    up.add_argument("--no-build", action="store_true", help="skip the (cached) image build")
    up.add_argument("--timeout", type=int, default=UP_TIMEOUT_S, help="seconds to wait")
    down = sub.add_parser("down", help="remove every container of every profile")
    down.add_argument("-v", "--volumes", action="store_true", help="remove the volumes too")
    sub.add_parser("status", help="each container's state; exit 1 unless all are ok")
    logs = sub.add_parser("logs", help="a service's log")
    logs.add_argument("service")
    logs.add_argument("--tail", type=int, default=200)
    sub.add_parser("urls", help="the published endpoints")
    sub.add_parser("config", help="the resolved compose file as JSON, every profile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (0 ok, 1 failed)."""
    args = build_parser().parse_args(argv)
    stack = ComposeStack(args.project, expose_datastores=args.expose_datastores)
    try:
        if args.command == "build":
            stack.build(offline=not args.online)
        elif args.command == "up":
            if not args.no_build:
                stack.build()
            stack.up(profiles=args.profile, timeout_s=args.timeout)
            _print_urls(stack)
            print(f"{'admin token':11} {stack.ensure_admin_token().where}")
        elif args.command == "down":
            stack.down(volumes=args.volumes)
        elif args.command == "status":
            return _print_status(stack)
        elif args.command == "logs":
            print(stack.logs(args.service, tail=args.tail))
        elif args.command == "urls":
            _print_urls(stack)
        elif args.command == "config":
            print(json.dumps(stack.config_json(), indent=2))
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
