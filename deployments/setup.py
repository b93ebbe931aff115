"""Server-side objects a host needs before it runs ALT work: a work pool and the global
concurrency limit its GPU stages take slots from. Idempotent, safe to run at every start.

    python -m deployments.setup --pool alt-gpu --gpu-limit alt-gpu-$(hostname) --slots 8 \
        [--bucket alt-runs]

then, on that host:

    ALT_GPU_LIMIT=alt-gpu-$(hostname) prefect worker start --pool alt-gpu
"""

from __future__ import annotations

import argparse
import socket
import sys

from alt_core.runtime.slots import cuda_device_count

DEFAULT_POOL = "alt-gpu"


def default_limit_name() -> str:
    """One limit per host: it counts the GPUs of that host only."""
    return f"alt-gpu-{socket.gethostname().split('.')[0].lower()}"


def default_slots() -> int:
    """The host's GPUs; 1 on a CPU-only host (its core groups are handed out locally)."""
    return cuda_device_count() or 1


def ensure_gpu_limit(name: str, slots: int) -> str:
    """Create the global concurrency limit `name` with `slots` slots, or resize it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if slots < 1:
        raise ValueError(f"a GPU limit needs at least one slot (got {slots})")
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
                return name
            except ObjectAlreadyExists:  # created by another process meanwhile
                found = client.read_global_concurrency_limit_by_name(name)
        if found.limit != slots or not found.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
            )
    return name


def ensure_work_pool(name: str, pool_type: str = "process") -> str:
    """Create the work pool `name` if it does not exist (an existing one is kept as is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
    return name


def ensure_bucket(bucket: str) -> str:
    """Create the S3 bucket for run folders if it does not exist (endpoint and credentials
    come from the standard AWS variables, as for the store)."""
    import s3fs

    fs = s3fs.S3FileSystem()
    name = bucket.removeprefix("s3://").split("/", 1)[0]
    if not fs.exists(name):
        fs.mkdir(name)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--pool", default=DEFAULT_POOL, help="work pool to create (process type)")
    p.add_argument("--gpu-limit", default=default_limit_name(), help="limit name (per host)")
    p.add_argument("--slots", type=int, default=default_slots(), help="the host's GPUs")
    p.add_argument("--bucket", help="S3 bucket for run folders, created if missing")
    args = p.parse_args(argv)
    if args.bucket:
        ensure_bucket(args.bucket)
    ensure_work_pool(args.pool)
    ensure_gpu_limit(args.gpu_limit, args.slots)
    print(f"work pool {args.pool!r} and limit {args.gpu_limit!r} ({args.slots} slots) ready")
    print(f"start the worker with: ALT_GPU_LIMIT={args.gpu_limit} prefect worker start "
          f"--pool {args.pool}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
