"""``python -m loadtest spike|verify|faults|experiments|stack``.

- ``spike --target native|compose|<url>``: the whole spike test, one command; exit status 0
  when every invariant and threshold holds, 1 when one fails, 2 when the run itself failed.
- ``verify --records DIR``: verify and report a run whose locust ran elsewhere (the compose
  ``loadtest`` profile writes its records to a shared directory).
- ``faults [--target compose] [--quick] [FAULT...]``: the fault suite
  (:mod:`loadtest.faultsuite`); exit status 0 when every fault recovered with nothing
  lost, duplicated or oversold, 1 when one did not, 2 when the suite could not run.
- ``experiments [NAME...] [--quick] [--list]``: the architecture's claims measured side by
  side (:mod:`loadtest.experiments`); exit status 1 when an experiment could not be run.
- ``stack ...``: the Docker Compose driver (:func:`loadtest.stack.main`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest.schedule import ENV_PREFIX, PRESETS, SpikeConfig
from loadtest.verifier import DEFAULT_THRESHOLDS, Sources, Threshold, Verdict, parse_threshold

DEFAULT_REPORTS = Path(__file__).with_name("reports")
SHAPE_FLAGS = (
    ("baseline_users", int),
    ("spike_users", int),
    ("baseline_seconds", float),
    ("spike_seconds", float),
    ("recovery_seconds", float),
    ("jump_seconds", float),
)


def _add_verdict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        action="append",
        default=None,
        metavar="RULE",
        help="k6-style rule, repeatable, e.g. 'p99_spike<500ms', 'error_rate<1%%', 'drain<30s',"
        " 'cache_hit_ratio>0.9' (metrics: p50|p95|p99|error_rate|rps[_baseline|_spike|"
        f"_recovery], lag_p50, lag_p99, drain, drain_final, cache_hit_ratio). Default:"
        f" {' '.join(DEFAULT_THRESHOLDS).replace('%', '%%')}",
    )
    parser.add_argument("--no-thresholds", action="store_true", help="check invariants only")
    parser.add_argument(
        "--drain-bound",
        type=float,
        default=30.0,
        metavar="S",
        help="the queue must be empty within S seconds after the spike ends (default 30)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="longest wait for accepted orders to be persisted after the load (default 120)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"report folder (default {DEFAULT_REPORTS}/<time>)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    spike = sub.add_parser("spike", help="run the spike test end to end")
    spike.add_argument(
        "--target",
        default="native",
        help="native (python -m services.stack), compose (Docker Compose) or an api URL",
    )
    spike.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"shape sizes (default: ${ENV_PREFIX}PRESET or 'default'; 'full' for big machines)",
    )
    for name, kind in SHAPE_FLAGS:
        spike.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar="N" if kind is int else "S",
            help=f"overrides the preset (env {ENV_PREFIX}{name.upper()})",
        )
    spike.add_argument(
        "--workers", type=int, default=0, help="run locust distributed: a master and N workers"
    )
    spike.add_argument("--no-reset", action="store_true", help="keep the current stock and orders")
    spike.add_argument(
        "--keep-stack", action="store_true", help="leave a stack this run started running"
    )
    _add_verdict_flags(spike)

    check = sub.add_parser("verify", help="verify and report recorded outcomes of a finished run")
    check.add_argument("--records", type=Path, required=True, help="LOADTEST_RECORD_DIR of the run")
    check.add_argument("--base-url", help="api URL, for the cache hit ratio (/metrics)")
    check.add_argument("--database-url", help="default: DATABASE_URL / settings")
    check.add_argument("--redis-url", help="state Redis; default: REDIS_URL / settings")
    check.add_argument("--redis-prefix", help="default: REDIS_PREFIX / settings")
    _add_verdict_flags(check)

    _add_faults_parser(sub)
    experiments = sub.add_parser(
        "experiments", help="run the architecture's experiments side by side, one report"
    )
    experiments.add_argument("names", nargs="*", metavar="NAME", help="default: every one")
    experiments.add_argument(
        "--quick", action="store_true", help="small sizes, under a minute each (for the tests)"
    )
    experiments.add_argument("--list", action="store_true", help="name the experiments and stop")
    experiments.add_argument(
        "--out", type=Path, help="report folder (default reports/experiments at the root)"
    )

    sub.add_parser("stack", help="the Docker Compose driver (loadtest.stack)", add_help=False)
    return parser


def _add_faults_parser(sub: Any) -> None:
    from loadtest.faults import catalog
    from loadtest.faultsuite import DEFAULT_PROJECT, DEFAULT_REPORTS

    names = list(catalog())
    faults = sub.add_parser(
        "faults",
        help="inject faults into the compose stack under load; one row per fault",
        description=f"Faults: {', '.join(names)}.",
    )
    faults.add_argument("fault", nargs="*", metavar="FAULT", help="default: every fault")
    faults.add_argument("--target", default="compose", choices=["compose"],
                        help="the stack (faults need containers: compose only)")  # fmt: skip
    faults.add_argument(
        "--quick", action="store_true", help="CI mode: a few faults, a short and light load"
    )
    faults.add_argument("--project", default=DEFAULT_PROJECT, help="compose project name")
    faults.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    faults.add_argument("--no-build", action="store_true", help="use the images as they are")
    faults.add_argument(
        "--out", type=Path, help=f"report folder (default {DEFAULT_REPORTS}/<time>)"
    )


def spike_config(args: argparse.Namespace) -> SpikeConfig:
    """Preset (flag, else ``SPIKE_PRESET``), then ``SPIKE_*`` variables, then flags."""
    environ = dict(os.environ)
    if args.preset:
        environ[ENV_PREFIX + "PRESET"] = args.preset
    config = SpikeConfig.from_env(environ)
    flags = {name: getattr(args, name) for name, _ in SHAPE_FLAGS}
    return replace(config, **{k: v for k, v in flags.items() if v is not None})


def _out_dir(args: argparse.Namespace) -> Path:
    return (args.out or DEFAULT_REPORTS / time.strftime("%Y%m%d-%H%M%S")).resolve()


def _thresholds(args: argparse.Namespace) -> list[Threshold]:
    if args.no_thresholds:
        return []
    return [parse_threshold(t) for t in (args.threshold or DEFAULT_THRESHOLDS)]


def _finish(console: Console, verdict: Verdict, report: Path) -> int:
    for check in verdict.checks:
        mark = "[green]ok[/]  " if check.passed else "[red]FAIL[/]"
        console.print(f"{mark} {check.name}: {check.detail}")
    for result in verdict.thresholds:
        mark = "[green]ok[/]  " if result.passed else "[red]FAIL[/]"
        console.print(f"{mark} {result.threshold.text} (measured {result.actual})")
    verdict_text = "[bold green]PASS[/]" if verdict.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict_text}  report folder: {report.parent}")
    return 0 if verdict.passed else 1


def cmd_spike(args: argparse.Namespace, console: Console) -> int:
    """``spike``: bring the target up if needed, run, verify, report, tear down."""
    from loadtest import runner, targets
    from services.settings import get_settings

    config = spike_config(args)
    options = runner.RunOptions(
        config=config,
        out_dir=_out_dir(args),
        thresholds=_thresholds(args),
        drain_bound_s=args.drain_bound,
        drain_timeout_s=args.drain_timeout,
        workers=args.workers,
        reset=not args.no_reset,
    )
    target = None
    try:
        if args.target == "native":
            target = targets.native_target(get_settings(), keep=args.keep_stack)
        elif args.target == "compose":
            target = targets.compose_target(keep=args.keep_stack)
        elif args.target.startswith(("http://", "https://")):
            target = targets.url_target(args.target, get_settings())
        else:
            raise runner.RunnerError(f"--target must be native, compose or a URL: {args.target!r}")
        console.print(f"[bold]spike[/] against {target.label}: {config}")
        verdict, report = runner.run_spike(target, options, console)
    except runner.RunnerError as exc:
        console.print(f"[bold red]run failed:[/] {exc}")
        return 2
    finally:
        for teardown in reversed(target.teardowns if target else []):
            with console.status("tearing down the stack this run started"):
                teardown()
    return _finish(console, verdict, report)


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    """``verify``: the verifier and report over recorded outcomes."""
    from loadtest import runner
    from loadtest.report import RunInfo, machine_description
    from services.settings import get_settings

    settings = get_settings()
    sources = Sources(
        args.database_url or settings.database_url,
        args.redis_url or settings.redis_url,
        args.redis_prefix if args.redis_prefix is not None else settings.redis_prefix,
    )
    options = runner.RunOptions(
        config=SpikeConfig.from_env(),
        out_dir=_out_dir(args),
        thresholds=_thresholds(args),
        drain_bound_s=args.drain_bound,
        drain_timeout_s=args.drain_timeout,
    )
    info = RunInfo(args.base_url or "recorded run", options.config, 0, machine_description())
    verdict, report = runner.verify_recorded(
        sources, args.records, options.out_dir, info, options, args.base_url
    )
    return _finish(console, verdict, report)


def cmd_faults(args: argparse.Namespace, console: Console) -> int:
    """``faults``: start the compose stack, run the faults, report, tear down."""
    from loadtest import faultsuite
    from loadtest.faults import QUICK_FAULTS, catalog
    from loadtest.runner import RunnerError
    from loadtest.stack import StackError

    out_dir = (args.out or faultsuite.DEFAULT_REPORTS / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if args.quick:
        options = faultsuite.SuiteOptions.quick(out_dir, args.fault or QUICK_FAULTS)
    else:
        options = faultsuite.SuiteOptions(faults=args.fault or list(catalog()), out_dir=out_dir)
    unknown = sorted(set(args.fault) - set(catalog()))
    if unknown:
        console.print(f"[bold red]unknown fault(s) {unknown}[/]; known: {', '.join(catalog())}")
        return 2
    stack = None
    try:
        stack, base_url = faultsuite.start_stack(args.project, console, not args.no_build)
        faultsuite.reset_sale(stack)
        rows = faultsuite.run_suite(stack, base_url, options, console)
    except (RunnerError, StackError) as exc:
        console.print(f"[bold red]fault suite failed to run:[/] {exc}")
        return 2
    finally:
        if stack is not None and not args.keep_stack:
            with console.status("removing the stack"):
                stack.down(volumes=True)
    report = faultsuite.write_report(rows, options, args.command_line)
    # Twelve columns do not fit the 80 a pipe or a CI log gets by default.
    (console if console.is_terminal else Console(width=160)).print(faultsuite.rich_table(rows))
    passed = all(row.passed for row in rows)
    console.print(f"{'[bold green]PASS' if passed else '[bold red]FAIL'}[/]  report: {report}")
    return 0 if passed else 1


def cmd_experiments(args: argparse.Namespace, console: Console) -> int:
    """``experiments``: list, or run and report; 1 when an experiment could not be run."""
    from loadtest.experiments import runner

    if args.list:
        console.print(runner.listing())
        return 0
    # SIGTERM unwinds like Ctrl-C, so every stack, worker and scratch database is cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcomes, _ = runner.run(
            args.names,
            args.quick,
            (args.out or runner.DEFAULT_OUT).resolve(),
            args.command_line,
            console,
        )
    except runner.UnknownExperimentError as exc:
        console.print(f"[bold red]{exc}[/]")
        return 2
    return 1 if any(o.failed for o in outcomes) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stack"]:
        from loadtest.stack import main as stack_main

        return int(stack_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["python -m loadtest", *argv])
    console = Console()
    if args.command == "spike":
        return cmd_spike(args, console)
    if args.command == "faults":
        return cmd_faults(args, console)
    if args.command == "experiments":
        return cmd_experiments(args, console)
    return cmd_verify(args, console)


if __name__ == "__main__":
    sys.exit(main())
