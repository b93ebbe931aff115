"""The deployments users start runs from, and `alt serve`, which serves them here.

    alt serve                       # serve every deployment from this machine
    alt serve --schedule-active     # ... with the example nightly schedule switched on

Deployments (flow/deployment), each with the run configuration as its typed `config`
parameter (the UI form shows every field with its description, pre-filled from a
preset) and `preset`, the preset it was served with: a field left out of `config` (a
partial `config` from the API or `prefect deployment run --param`) keeps the preset's
value, not the model's default.

- `alt-run/alt-run`: a full run (config, run_dir); the same run_dir continues a run.
- `alt-single-iteration/alt-iteration`: one iteration k of a run folder.
- `alt-scheduled-run/alt-nightly`: a full run into a new folder, on a cron schedule
  (paused unless `--schedule-active`; switch it on in the UI).

`prefect.yaml` deploys the same flows to a work pool as `<name>-pool`, plus
`alt-shard/alt-shard`: one sampling or feedback shard, for iterations that send their
shards to GPU workers on other hosts (`deployments.shards`).

`alt serve` runs flow runs as subprocesses of this one. GPU stages of concurrent runs
then share the host through a Prefect global concurrency limit: on a GPU host it is
created (or resized) to the GPU count and named in ALT_GPU_LIMIT for the flow runs
(see `alt_core.runtime.slots`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from alt_core.config import load_config
from alt_core.runtime.slots import cuda_device_count
from deployments.setup import default_limit_name, default_slots, ensure_gpu_limit

RUN = "alt-run"
ITERATION = "alt-iteration"
NIGHTLY = "alt-nightly"
SHARD = "alt-shard"  # prefect.yaml only
POOL_SUFFIX = "-pool"  # prefect.yaml names: alt-run-pool, ...
NIGHTLY_CRON = "0 3 * * *"
NIGHTLY_TIMEZONE = "UTC"
TAGS = ["alt"]


def preset_parameters(preset: str) -> dict[str, Any]:
    """The deployments' default parameters: `preset`, which a partial `config` is merged
    over, and `config` holding the whole preset (the UI form's defaults)."""
    return {"preset": preset, "config": load_config(preset).model_dump(mode="json")}


def nightly_schedule(active: bool = False):
    """The example schedule: every night at 03:00 UTC."""
    from prefect.schedules import Cron

    return Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE, active=active)


def build_deployments(preset: str = "demo", schedule_active: bool = False) -> list[Any]:
    """The served deployments, ready for `prefect.serve` (entrypoints are module paths,
    so they load from the installed package whatever the working directory). The shard
    deployment is not among them: it is for workers (prefect.yaml)."""
    from prefect.types.entrypoint import EntrypointType

    from deployments.flows import scheduled_run, single_iteration
    from flows.run import alt_run

    params = preset_parameters(preset)
    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        alt_run.to_deployment(
            name=RUN, parameters=params, tags=TAGS, **common,
            description="A full ALT run: evaluate the initial policy, then K iterations. "
            "Set run_dir to a new folder for a new run; the same folder continues a run.",
        ),
        single_iteration.to_deployment(
            name=ITERATION, parameters=params, tags=TAGS, **common,
            description="One ALT iteration of a run folder (iteration k > 1 needs k-1 done).",
        ),
        scheduled_run.to_deployment(
            name=NIGHTLY, parameters=params, tags=[*TAGS, "scheduled"], **common,
            schedules=[nightly_schedule(schedule_active)],
            description=f"Example schedule ({NIGHTLY_CRON} {NIGHTLY_TIMEZONE}): a full run "
            "into a new folder each time. Paused unless switched on.",
        ),
    ]  # fmt: skip


def configure_gpu_limit(name: str | None = None, slots: int | None = None) -> str | None:
    """Pick, create and export (ALT_GPU_LIMIT) the limit the served runs' GPU stages use:
    the name given, else the one already in ALT_GPU_LIMIT, else one per host on a GPU
    host. On a CPU-only host with none named, stages keep process-local slots."""
    from alt_core.runtime.env import GPU_LIMIT_ENV

    name = name or os.environ.get(GPU_LIMIT_ENV) or None
    if name is None and cuda_device_count():
        name = default_limit_name()
    if name is None:
        return None
    ensure_gpu_limit(name, slots or default_slots())
    os.environ[GPU_LIMIT_ENV] = name  # inherited by the flow-run subprocesses
    return name


def serve(
    preset: str = "demo",
    gpu_limit: str | None = None,
    slots: int | None = None,
    use_gpu_limit: bool = True,
    schedule_active: bool = False,
    max_runs: int | None = None,
) -> None:
    """Serve the deployments from this process until interrupted."""
    from prefect import serve as prefect_serve

    limit = configure_gpu_limit(gpu_limit, slots) if use_gpu_limit else None
    deployments = build_deployments(preset, schedule_active)
    print(f"GPU slots: {f'global concurrency limit {limit!r}' if limit else 'process-local'}")
    prefect_serve(*deployments, limit=max_runs)


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--preset", default="demo", help="preset that pre-fills the UI form")
    parser.add_argument(
        "--gpu-limit",
        help="global concurrency limit for GPU stages (default: ALT_GPU_LIMIT, or "
        "alt-gpu-HOST on a GPU host); created or resized to --slots",
    )
    parser.add_argument("--slots", type=int, help="slots of that limit (default: the GPUs here)")
    parser.add_argument(
        "--no-gpu-limit", action="store_true", help="process-local slots only (one run at a time)"
    )
    parser.add_argument(
        "--schedule-active", action="store_true", help="switch the example schedule on"
    )
    parser.add_argument("--max-runs", type=int, help="flow runs executed at once (default: any)")
    return parser


def serve_command(args: argparse.Namespace) -> int:
    serve(
        preset=args.preset,
        gpu_limit=args.gpu_limit,
        slots=args.slots,
        use_gpu_limit=not args.no_gpu_limit,
        schedule_active=args.schedule_active,
        max_runs=args.max_runs,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m deployments.serve`: the same as `alt serve`."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="alt serve", description=__doc__))
    return serve_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
