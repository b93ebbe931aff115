"""The artifact store: one run folder on any fsspec filesystem (local path or s3://).

Every stage output is committed: the data is written first (to a temporary name, then
moved into place), then a small manifest `<name>.commit.json` records its row count,
size and content hash. Readers trust only committed outputs, so a half-written Parquet
file is never read, and a corrupted one is detected by its hash.

Folders (model checkpoints) are committed the same way with `_COMMIT.json` inside them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COMMIT_SUFFIX = ".commit.json"
DIR_COMMIT = "_COMMIT.json"


class ArtifactError(RuntimeError):
    """An artifact is missing, uncommitted or corrupt."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _retrying(fn, *args, attempts: int = 5, **kwargs):
    """Object stores drop connections; retry I/O a bounded number of times with backoff."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except (OSError, ConnectionError, TimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


def write_bytes_atomic(uri: str, data: bytes) -> None:
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    if not is_remote(uri):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:
        # An S3 PUT is atomic for readers: the object appears whole or not at all.
        _retrying(fs.pipe_file, path, data)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    return _retrying(fs.cat_file, path)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return bool(_retrying(fs.exists, path))


def remove(uri: str) -> None:
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_json(uri: str, obj: Any) -> str:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
    return uri


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def _commit_record(data: bytes, rows: int | None, meta: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "sha256": _sha256(data),
        "bytes": len(data),
        "rows": rows,
        "meta": meta or {},
        "committed_at": time.time(),
    }


def write_table(uri: str, table: pa.Table | pd.DataFrame, meta: dict[str, Any] | None = None) -> str:
    """Write a Parquet table and commit it; returns the URI."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    write_bytes_atomic(uri, data)
    write_json(uri + COMMIT_SUFFIX, _commit_record(data, table.num_rows, meta))
    return uri


def commit_info(uri: str) -> dict[str, Any] | None:
    marker = uri + COMMIT_SUFFIX
    if not exists(marker):
        return None
    try:
        return read_json(marker)
    except (json.JSONDecodeError, OSError):
        return None


def is_committed(uri: str, verify: bool = False) -> bool:
    info = commit_info(uri)
    if info is None or not exists(uri):
        return False
    if verify:
        return _sha256(read_bytes(uri)) == info["sha256"]
    fs, path = _fs(uri)
    return int(fs.size(path)) == int(info["bytes"])


def read_table(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a committed table; raises ArtifactError if it is uncommitted or corrupt."""
    info = commit_info(uri)
    if info is None:
        raise ArtifactError(f"{uri} is not committed (the stage that writes it did not finish)")
    data = read_bytes(uri)
    if _sha256(data) != info["sha256"]:
        raise ArtifactError(f"{uri} does not match its commit hash: the file is corrupt")
    return pq.read_table(io.BytesIO(data), columns=columns).to_pandas()


def read_tables(uris: Iterable[str]) -> pd.DataFrame:
    frames = [read_table(u) for u in uris]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def put_dir(local_dir: str | Path, uri: str, meta: dict[str, Any] | None = None) -> str:
    """Copy a local folder to `uri` and commit it with a per-file hash manifest."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != DIR_COMMIT)
    manifest = {
        "files": {str(p.relative_to(local_dir)): _hash_file(p) for p in files},
        "meta": meta or {},
        "committed_at": time.time(),
    }
    if not (is_remote(uri) or Path(uri).resolve() == local_dir.resolve()):
        dest = Path(uri)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(local_dir, dest)
    elif is_remote(uri):
        fs, path = _fs(uri)
        for p in files:
            _retrying(fs.put_file, str(p), f"{path}/{p.relative_to(local_dir)}")
    write_json(join(uri, DIR_COMMIT), manifest)
    return uri


def dir_committed(uri: str) -> bool:
    return exists(join(uri, DIR_COMMIT))


def local_dir(uri: str, scratch: str | None = None) -> Path:
    """A local path holding the committed folder at `uri` (downloaded if remote)."""
    if not dir_committed(uri):
        raise ArtifactError(f"{uri} is not a committed folder")
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    manifest = read_json(join(uri, DIR_COMMIT))
    key = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:16]
    root = Path(scratch or Path(tempfile.gettempdir()) / "alt-scratch") / key
    if (root / DIR_COMMIT).exists():
        return root
    tmp = root.with_name(root.name + f".tmp-{uuid.uuid4().hex[:6]}")
    fs, path = _fs(uri)
    for rel, digest in manifest["files"].items():
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _retrying(fs.get_file, f"{path}/{rel}", str(dest))
        if _hash_file(dest) != digest:
            raise ArtifactError(f"{uri}/{rel} does not match its commit hash")
    (tmp / DIR_COMMIT).write_text(json.dumps(manifest))
    if root.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(root)
    return root


class RunLayout:
    """Deterministic URIs of a run's artifacts."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir.rstrip("/")

    def iteration(self, k: int) -> str:
        return join(self.run_dir, f"iter_{k:03d}")

    def stage(self, k: int, stage: str) -> str:
        return join(self.iteration(k), stage)

    def shard(self, k: int, stage: str, shard: int) -> str:
        return join(self.stage(k, stage), f"shard_{shard:03d}.parquet")

    def table(self, k: int, stage: str, name: str) -> str:
        return join(self.stage(k, stage), f"{name}.parquet")

    def policy(self, k: int) -> str:
        return join(self.iteration(k), "policy")

    @property
    def config(self) -> str:
        return join(self.run_dir, "config.yaml")

    @property
    def metrics(self) -> str:
        return join(self.run_dir, "metrics.json")
