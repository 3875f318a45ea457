"""One command for the whole spike test: stack up, reset, warm, load, drain, verify, report.

Locust runs as subprocesses (one local process, or a master and ``--workers`` workers), so
gevent's monkey-patching never reaches this process, whose threads poll the queue and
the database once a second for the plot while a rich display shows the run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from loadtest.records import RECORD_DIR_ENV, Recorded, load_run, load_timeline
from loadtest.report import LOCUST_HTML, RunInfo, machine_description, write_report
from loadtest.schedule import SpikeConfig
from loadtest.verifier import (
    RunFacts,
    Sample,
    Sources,
    Threshold,
    Verdict,
    cache_delta,
    cache_lookups,
    sample_state,
    verify,
    wait_for_drain,
)

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PYTHON = sys.executable


class RunnerError(RuntimeError):
    """The run could not be carried out (stack down, locust failed...): not a verdict."""


@dataclass
class Target:
    """A stack to load: where it answers, where its state lives, how to reset it."""

    label: str
    base_url: str
    sources: Sources
    reset: Callable[[], None]
    catalog_ids: Callable[[], str]
    teardowns: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``python -m loadtest spike`` was asked to do."""

    config: SpikeConfig
    out_dir: Path
    thresholds: Sequence[Threshold]
    drain_bound_s: float = 30.0
    drain_timeout_s: float = 120.0
    workers: int = 0
    reset: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)


# --- HTTP helpers ----------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> str:
    """Body of a GET (raises ``urllib.error.URLError`` / ``HTTPError``)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def wait_ready(base_url: str, timeout_s: float = 60.0) -> None:
    """Wait for ``/readyz`` to answer 200, or raise :class:`RunnerError` with its last answer."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            http_get(f"{base_url}/readyz", timeout=2.0)
            return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RunnerError(f"{base_url}/readyz not ready after {timeout_s:.0f} s: {last}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the run ---------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Polls pending orders and persisted rows once a second until stopped."""

    def __init__(self, sources: Sources, interval_s: float = 1.0) -> None:
        super().__init__(name="loadtest-sampler", daemon=True)
        self.sources = sources
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        """Sample until :meth:`stop`; a failed poll is counted, not fatal."""
        while not self._stop_event.is_set():
            try:
                self.samples.append(sample_state(self.sources))
            except Exception:
                self.errors += 1
            self._stop_event.wait(self.interval_s)

    @property
    def latest(self) -> Sample | None:
        """The newest sample, if any."""
        return self.samples[-1] if self.samples else None

    def stop(self) -> list[Sample]:
        """Stop sampling and return the samples."""
        self._stop_event.set()
        self.join(timeout=10)
        return self.samples


def locust_commands(base_url: str, out_dir: Path, workers: int) -> list[list[str]]:
    """The locust command lines: the local/master process first, then any workers."""
    main = [
        PYTHON, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", base_url,
        "--html", str(out_dir / LOCUST_HTML), "--csv", str(out_dir / "locust"),
        "--stop-timeout", "10", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    if not workers:
        return [main]
    port = free_port()
    main += ["--master", "--master-bind-port", str(port), "--expect-workers", str(workers)]
    worker = [
        PYTHON, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
        "--master-host", "127.0.0.1", "--master-port", str(port), "--loglevel", "WARNING",
    ]  # fmt: skip
    return [main] + [worker] * workers


def _status_line(record_dir: Path, sampler: Sampler) -> str:
    ticks = load_timeline(record_dir)
    parts = []
    if ticks:
        tick = ticks[-1]
        p95 = "-" if tick.p95_ms is None else f"{tick.p95_ms:.0f} ms"
        parts.append(
            f"{tick.phase:<8} users {tick.users:>4}/{tick.target_users:<4} "
            f"{tick.rps:7.1f} req/s  fail {tick.fail_ratio * 100:5.2f}%  p95 {p95}"
        )
    sample = sampler.latest
    if sample is not None:
        parts.append(f"pending {sample.pending:>5}  persisted {sample.persisted:>6}")
    return "  |  ".join(parts) or "starting locust"


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    with progress:
        yield progress


def run_locust(
    target: Target, options: RunOptions, record_dir: Path, sampler: Sampler, console: Console
) -> float:
    """Run the spike headless with a live display; return the epoch it ended."""
    env = {
        **os.environ,
        **options.config.to_env(),
        **options.extra_env,
        RECORD_DIR_ENV: str(record_dir),
        "LOADTEST_ITEMS": target.catalog_ids(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("SPIKE_PRESET", None)  # the config above is complete; a preset would only confuse
    log_path = options.out_dir / "locust.log"
    total = options.config.total_seconds
    with ExitStack() as stack, _progress(console) as progress:
        log = stack.enter_context(log_path.open("w"))
        commands = locust_commands(target.base_url, options.out_dir, options.workers)
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            for cmd in commands
        ]
        for proc in procs:
            stack.callback(_stop_process, proc)
        task = progress.add_task("spike", total=total, status="starting locust")
        started = time.monotonic()
        while procs[0].poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > total + 120:
                raise RunnerError(
                    f"locust still running {elapsed:.0f} s after start; see {log_path}"
                )
            status = _status_line(record_dir, sampler)
            progress.update(task, completed=min(elapsed, total), status=status)
            time.sleep(0.5)
        progress.update(task, completed=total, status=_status_line(record_dir, sampler))
    if procs[0].returncode not in (0, 1):  # 1: locust saw failed requests, judged later
        raise RunnerError(f"locust exited with {procs[0].returncode}; see {log_path}")
    return time.time()


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape_cache(base_url: str) -> dict[str, float] | None:
    """The api's cache lookup counters, or ``None`` when ``/metrics`` is unreachable."""
    try:
        return cache_lookups(http_get(f"{base_url}/metrics"))
    except (urllib.error.URLError, OSError):
        return None


def run_spike(target: Target, options: RunOptions, console: Console) -> tuple[Verdict, Path]:
    """The whole run against a stack that is up: returns the verdict and the report's path."""
    record_dir = options.out_dir / "records"
    record_dir.mkdir(parents=True, exist_ok=True)
    if options.reset:
        console.print(
            "[bold]resetting the sale[/] (stock back to initial, orders cleared, cache warm)"
        )
        target.reset()
    wait_ready(target.base_url)
    cache_before = scrape_cache(target.base_url)
    load_before = os.getloadavg()[0]
    sampler = Sampler(target.sources)
    sampler.start()
    try:
        load_end = run_locust(target, options, record_dir, sampler, console)
        load_average = (load_before, os.getloadavg()[0])
        cache_after = scrape_cache(target.base_url)
        run = load_run(record_dir)
        accepted = [o.order_id for o in run.orders if o.status == 202 and o.order_id]
        with console.status(f"waiting for {len(accepted)} accepted orders to be persisted"):
            after_load = wait_for_drain(target.sources, accepted, options.drain_timeout_s)
        time.sleep(1.0)  # one more sample showing the drained queue
    finally:
        samples = sampler.stop()
    cache = (
        cache_delta(cache_before, cache_after)
        if cache_before is not None and cache_after is not None
        else None
    )
    facts = RunFacts(samples, load_end, after_load, options.drain_bound_s, cache)
    with console.status("verifying"):
        verdict = verify(target.sources, run, facts, options.thresholds)
    info = RunInfo(
        target.label, options.config, options.workers, machine_description(), load_average
    )
    return verdict, write_report(options.out_dir, verdict, info, run, samples)


def verify_recorded(
    sources: Sources,
    record_dir: Path,
    out_dir: Path,
    info: RunInfo,
    options: RunOptions,
    base_url: str | None,
) -> tuple[Verdict, Path]:
    """Verify and report a run whose locust processes ran elsewhere (e.g. the compose profile)."""
    run: Recorded = load_run(record_dir)
    accepted = [o.order_id for o in run.orders if o.status == 202 and o.order_id]
    after_load = wait_for_drain(sources, accepted, options.drain_timeout_s)
    load_end = max((t.t for t in run.timeline), default=time.time())
    cache = None
    if base_url:
        counters = scrape_cache(base_url)
        cache = None if counters is None else cache_delta({}, counters)
    facts = RunFacts([], load_end, after_load, options.drain_bound_s, cache)
    verdict = verify(sources, run, facts, options.thresholds)
    return verdict, write_report(out_dir, verdict, info, run, [])
