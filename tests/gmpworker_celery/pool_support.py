"""A real ``celery worker`` subprocess on the gmpworker pool, for the pool contract tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kombu import Connection

from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


APP = "tests.gmpworker_celery.testapp"
POOL = "gmpworker.celery:GMPPool"


@dataclass
class PoolWorker:
    """``celery -A testapp worker`` on the gmpworker pool, started by one of two routes.

    ``route="custom"``: ``CELERY_CUSTOM_WORKER_POOL=gmpworker.celery:GMPPool -P custom``;
    ``route="conf"``: ``worker_pool`` in the app's config, no ``-P`` at all.
    """

    env: dict[str, str]
    workdir: Path
    concurrency: int = 8
    procs: int = 1
    prefetch_multiplier: int = 1
    route: str = "custom"
    queue: str = "celery"
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    name: str = field(default_factory=lambda: f"gmp-{uuid.uuid4().hex[:8]}")

    @property
    def log(self) -> Path:
        """This start's output."""
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        """Start the worker and wait until it answers ``inspect ping``."""
        self.starts += 1
        env = {
            **os.environ,
            **self.env,
            "GMP_MAXPROCS": str(self.procs),
            "GMP_POOL_ROUTE": self.route,
            "CELERY_CUSTOM_WORKER_POOL": POOL,
        }
        command = [
            sys.executable, "-m", "celery", "-A", APP, "worker", "--loglevel=INFO",
            "--without-mingle", "--without-gossip", "-c", str(self.concurrency),
            "-n", f"{self.name}@%h", "-Q", self.queue,
            "--prefetch-multiplier", str(self.prefetch_multiplier),
        ]  # fmt: skip
        if self.route == "custom":
            command += ["-P", "custom"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(lambda: "ready." in self._output(), 40, f"the worker to start ({self.log})")

    def _output(self) -> str:
        assert self.proc is not None
        text = self.log.read_text(errors="replace")
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited {self.proc.returncode}:\n{text[-3000:]}")
        return text

    def stop(self, timeout: float = 30, how: signal.Signals = signal.SIGTERM) -> int | None:
        """Warm shutdown (SIGTERM; SIGQUIT for a cold one) and wait; SIGKILL if it lingers.
        The exit code (negative: the signal that ended it)."""
        if self.proc is None:
            return None
        self.proc.send_signal(how)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: nothing runs, unacknowledged messages return to the queue."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def ready_messages(broker_url: str, queue: str = "celery") -> int:
    """Messages ready (not delivered, not unacked) in ``queue``."""
    with Connection(broker_url) as conn:
        _, count, _ = conn.default_channel.queue_declare(queue, passive=True)
        return int(count)


def events(client: redis.Redis, prefix: str) -> list[str]:
    """What the test app's tasks recorded, in order."""
    return [e.decode() for e in client.lrange(f"{prefix}events", 0, -1)]
