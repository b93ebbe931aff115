"""The `alt` command line: run, resume, inspect configs and presets.

    alt run --preset demo                       # the built-in CPU demo
    alt run --preset demo method=quark iterations=2
    alt run --config my.yaml --run-dir s3://bucket/runs/exp1 training.learning_rate=1e-5
    alt resume RUN_DIR                          # finish a run, redoing only what is missing
    alt status RUN_DIR                          # what is committed, stale or missing
    alt config --preset demo                    # print the resolved configuration
    alt presets                                 # list the presets
    alt report RUN_DIR                          # a self-contained HTML report with plots
    alt compare RUN_DIR RUN_DIR... [--out DIR]  # runs side by side: one HTML page + PNGs
    alt serve                                   # serve the Prefect deployments

Bad input is reported before any engine starts and before anything is written
(`alt_core.preflight`: the run folder, models, judge, prompt data), so a refused run
leaves nothing behind: one message on stderr and exit status 2; `alt --debug ...` adds
the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from alt_core import store
from alt_core.config import (
    ConfigError,
    RunConfig,
    absolute_paths,
    absolute_uri,
    dump_config,
    list_presets,
    load_config,
    load_run_config,
    validate_config,
)
from alt_core.pipeline.layout import RunLayout
from alt_core.preflight import PreflightError, checked, preflight
from alt_core.runtime import runlock
from alt_core.runtime.faults import claim_run_group


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alt", description="ALT alignment pipeline")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error too")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start (or continue) a run")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--preset", help=f"a built-in preset: {', '.join(list_presets())}")
    src.add_argument("--config", help="a YAML config file")
    run.add_argument("--run-dir", help="run folder or s3:// URI (default: ./runs/NAME-TIME)")
    run.add_argument("overrides", nargs="*", help="key=value settings, e.g. training.epochs=1")

    resume = sub.add_parser("resume", help="finish a run, redoing only what is missing")
    resume.add_argument("run_dir")

    cfg = sub.add_parser("config", help="print the resolved configuration")
    src = cfg.add_mutually_exclusive_group()
    src.add_argument("--preset")
    src.add_argument("--config")
    cfg.add_argument("overrides", nargs="*")

    status = sub.add_parser(
        "status", help="per iteration and stage: committed, stale, missing, failed, corrupt"
    )
    status.add_argument("run_dir")
    status.add_argument(
        "--verify",
        action="store_true",
        help="hash every committed file (folders are otherwise checked by size, and by hash "
        "once per process); exit 1 if any is corrupt",
    )
    status.add_argument("overrides", nargs="*", help="check against these changed settings")

    from deployments.serve import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="serve the Prefect deployments from here"))
    report = sub.add_parser("report", help="write the HTML report of a run and print its path")
    report.add_argument("run_dir")

    compare = sub.add_parser("compare", help="put finished runs of one task side by side")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", help="folder of the page and PNGs (default: RUN_DIR/compare)")
    sub.add_parser("presets", help="list the built-in presets")
    return p


def _default_run_dir(config: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join("runs", f"{config.name}-{stamp}"))


# Prefect settings for the temporary API a run starts when no PREFECT_API_URL is set, each
# unless the user set it (under either of its names). Telemetry: the server's heartbeat
# fails without network ("Failed to send telemetry") and, on a busy machine, its database
# write was the "database is locked" traceback at start-up. Timeouts: with several runs
# and engines on two cores the server took 40 s to start (Prefect's default: 20 s) and
# its sqlite writes waited on each other past 10 s.
QUIET_PREFECT = {
    ("PREFECT_SERVER_ANALYTICS_ENABLED",): "false",
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",): "120",
    ("PREFECT_SERVER_DATABASE_TIMEOUT", "PREFECT_API_DATABASE_TIMEOUT"): "60",
}


def quiet_prefect(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Set QUIET_PREFECT in `environ` where unset (the temporary server inherits it)."""
    for names, value in QUIET_PREFECT.items():
        if not any(name in environ for name in names):
            environ[names[0]] = value


def _check(config: RunConfig | None, run_dir: str, *, writes: bool) -> None:
    """Preflight (`alt_core.preflight`), its notes on stderr."""
    for note in preflight(config, run_dir, writes=writes):
        print(f"note: {note}", file=sys.stderr)


@contextlib.contextmanager
def _checked(config: RunConfig, run_dir: str) -> Iterator[None]:
    """Preflight before a run, its notes on stderr; the flow the block starts in this
    process does not check the same again (`alt_core.preflight.checked`)."""
    with checked(config, run_dir, writes=True) as notes:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        yield


def existing_config(run_dir: str) -> RunConfig | None:
    layout = RunLayout(run_dir)
    if not store.exists(layout.config):
        return None
    return load_run_config(layout.config)


def report_changed_config(run_dir: str, config: RunConfig) -> None:
    """Continuing a run with other settings is allowed: say what changed; the stages
    those settings affect are redone (their fingerprints no longer match). A recorded
    config that cannot be read is replaced by this one."""
    try:
        previous = existing_config(run_dir)
    except ConfigError as exc:
        print(f"note: {exc}\nthe settings of this run replace it.", file=sys.stderr)
        return
    if previous is None or previous == config:
        return
    old, new = previous.model_dump(mode="json"), config.model_dump(mode="json")
    changed = sorted(_diff(old, new))
    print(
        f"note: {run_dir} was run with other settings (changed: {', '.join(changed)}); "
        "stages those settings affect, and what depends on them, will be redone. "
        f"`alt status {run_dir}` shows which.",
        file=sys.stderr,
    )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.run import TABLE_COLUMNS, metrics_rows

    formatted = metrics_rows(rows)
    table = Table(title="ALT metrics per iteration (iteration 0 = initial policy)")
    for col in formatted[0] if formatted else []:
        table.add_column(col, justify="right")
    for row in formatted:
        table.add_row(*row.values())
    # Room for the toxicity task's extra columns, so no figure is cut short.
    extra = len(formatted[0]) - len(TABLE_COLUMNS) if formatted else 0
    Console(width=max(120 + 12 * extra, Console().width)).print(table)


def show_status(run_dir: str, overrides: list[str], verify: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    from alt_core.pipeline.status import run_status

    config = existing_config(run_dir)
    if config is None:
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); check the path")
    if overrides:
        from alt_core.config import apply_overrides

        config = validate_config(apply_overrides(config.model_dump(mode="json"), overrides))
    rows = run_status(run_dir, config, verify=verify)
    colours = {
        "committed": "green",
        "stale": "yellow",
        "missing": "red",
        "failed": "bold red",
        "corrupt": "bold red",
    }
    table = Table(title=f"status of {run_dir}")
    for col in ("iteration", "stage", "state", "detail"):
        table.add_column(col)
    for row in rows:
        state = f"[{colours[row['state']]}]{row['state']}[/]"
        table.add_row(str(row["iteration"]), row["stage"], state, row["detail"])
    Console(width=max(120, Console().width)).print(table)
    for row in rows:  # the problems again, whole, one line each (the table may wrap them)
        if row["state"] in ("failed", "corrupt"):
            print(f"iteration {row['iteration']} {row['stage']}: {row['state']}: {row['detail']}")
    counts = {s: sum(r["state"] == s for r in rows) for s in colours}
    print(
        ", ".join(
            f"{n} {s}" for s, n in counts.items() if n or s in ("committed", "stale", "missing")
        )
    )
    if verify and counts["corrupt"]:
        print(
            f"{counts['corrupt']} stage(s) hold damaged files (see detail); "
            f"`alt resume {run_dir}` redoes them",
            file=sys.stderr,
        )
        return 1
    return 0


def execute(config: RunConfig, run_dir: str) -> int:
    from deployments.stopping import Interrupted, run_until_stopped
    from flows.run import alt_run

    runlock.refuse_if_held(run_dir)  # a live run holds the folder: exit 2, no flow
    logging.getLogger("alt").info("run dir: %s", run_dir)
    try:
        # Ctrl-C, SIGTERM and a cancel in Prefect stop every job first (deployments.stopping).
        rows = run_until_stopped(
            lambda name: alt_run.with_options(flow_run_name=name)(config=config, run_dir=run_dir),
            config.name,
        )
    except Interrupted as stopped:
        print(f"\n{stopped.report(run_dir)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The flow's threads may still be unwinding; nothing of theirs is needed now.
        os._exit(stopped.exit_code)
    except (runlock.RunLockError, store.StoreConfigError) as exc:  # refused before any work
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - report any stage failure the same way
        print(f"\nerror: the run failed: {exc}", file=sys.stderr)
        print(f"finished work is kept; resume with: alt resume {run_dir}", file=sys.stderr)
        print(f"run dir: {run_dir}")
        return 1
    print_table(rows)
    print(f"metrics: {RunLayout(run_dir).metrics}")
    # Prefect's "stopping temporary server" line would otherwise come after ours.
    logging.getLogger("prefect").setLevel(logging.WARNING)
    print(f"run dir: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet_prefect()  # before Prefect is imported: it reads its settings once
    parser = _parser()
    # Overrides may come before or after options (`alt run --run-dir X a=1`): argparse
    # stops a positional list at the first option, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    # --debug is a top-level option, taken after the command too (`alt run --debug`).
    args.debug = args.debug or "--debug" in extra
    extra = [e for e in extra if e != "--debug"]
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    # A run folder is named by its absolute path from here on (what the run records, and
    # what a `resume` from another directory is told), whatever the command.
    if getattr(args, "run_dir", None):
        args.run_dir = absolute_uri(args.run_dir)
    # Fault injection (alt_core.runtime.faults) ends the whole run through its own process group.
    claim_run_group()
    try:
        if args.command == "presets":
            print("\n".join(list_presets()))
            return 0
        if args.command == "config":
            config = load_config(args.preset, args.config, args.overrides)
            print(dump_config(config), end="")
            return 0
        if args.command == "serve":
            from deployments.serve import serve_command

            return serve_command(args)
        if args.command == "report":
            from alt_core.report.html import write_report

            print(write_report(args.run_dir))
            return 0
        if args.command == "compare":
            from alt_core.report.compare import write_comparison

            dirs = [absolute_uri(d) for d in args.run_dirs]
            print(write_comparison(dirs, absolute_uri(args.out) if args.out else None))
            return 0
        if args.command == "status":
            _check(None, args.run_dir, writes=False)
            return show_status(args.run_dir, args.overrides, verify=args.verify)
        if args.command == "resume":
            _check(None, args.run_dir, writes=False)
            config = existing_config(args.run_dir)
            if config is None:
                raise ConfigError(f"{args.run_dir} holds no run (no config.yaml); check the path")
            config = absolute_paths(config)
            with _checked(config, args.run_dir):
                return execute(config, args.run_dir)
        preset = args.preset or (None if args.config else "demo")
        config = absolute_paths(load_config(preset, args.config, args.overrides))
        run_dir = args.run_dir or _default_run_dir(config)
        with _checked(config, run_dir):
            report_changed_config(run_dir, config)
            return execute(config, run_dir)
    except (
        ConfigError,
        PreflightError,
        ValueError,
        FileNotFoundError,
        runlock.RunLockError,
        store.StoreError,
    ) as exc:
        # Bad input: one message, what / where / the fix; the traceback only with --debug.
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
