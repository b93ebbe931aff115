"""The artifact store: one run folder on any fsspec filesystem (local path or s3://).

Every stage output is committed: the data is written first (to a temporary name, then
moved into place), then a small manifest `<name>.commit.json` records its row count,
size and content hash. Readers trust only committed outputs, so a half-written Parquet
file is never read, and a corrupted one is detected by its hash.

Folders (model checkpoints) are committed the same way with `_COMMIT.json` inside them.

Object stores (s3://) take endpoint, region and credentials from the environment or the
standard AWS configuration, never from arguments. Transient errors (connection refused
or reset, timeouts, 5xx answers) are retried with backoff for at most RETRY_BUDGET_S,
then raise `StoreUnavailableError`; errors a retry cannot fix are raised at once: a
missing object as FileNotFoundError, a store that cannot be used as it is configured (no
such bucket, credentials missing or refused) as `StoreConfigError` naming the fix.
`check_writable` finds the latter before a run starts.

The budget holds for every operation: the store's retry is the only one (botocore and
s3fs each retried on their own, and their retries multiplied past any budget: an
s3fs filesystem made here tries each request once, with connect and read timeouts), and
an operation that moves no file is cut at what is left of the budget. A transfer
(`put_dir`, `local_dir`) goes on while bytes flow, and fails READ_TIMEOUT_S after they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.asyn import AsyncFileSystem

COMMIT_SUFFIX = ".commit.json"
DIR_COMMIT = "_COMMIT.json"
# One operation keeps retrying a store that does not answer for this long (an S3 server
# restart takes seconds; SeaweedFS took 1 to 15 s here), waiting 0.5, 1, 2, 4, 4, ... s.
RETRY_BUDGET_S = 30.0
RETRY_MAX_WAIT_S = 4.0
# One try of an s3:// request: a host that does not take the connection, or a server
# that goes silent, fails the try after this long (the retry above decides what next).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
# Operations that move a file: not cut at the budget (a large checkpoint takes longer).
_TRANSFERS = ("upload", "download")

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """An artifact is missing, uncommitted or corrupt."""


class StoreError(RuntimeError):
    """The run folder's store cannot be used; the message names the URI and the fix.

    Not an OSError on purpose: code that treats a missing file as "not there yet" must
    never mistake an unusable store for a missing artifact.
    """


class StoreConfigError(StoreError):
    """The store answered, and will answer the same until something is fixed: a bucket
    that does not exist, a local folder that cannot be written."""


class StoreAccessError(StoreConfigError, PermissionError):
    """Credentials missing or refused, or no rights on the bucket (a PermissionError too,
    as access denied always was)."""


class StoreUnavailableError(StoreError):
    """The store did not answer after the bounded retries (server down, network cut)."""


# OSErrors a retry cannot fix: the store answered, and would answer the same again.
_PERMANENT = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `uri` as the store uses it, and the path on it."""
    if uri.startswith(("s3://", "s3a://")):
        # A new dict each time: botocore writes into the one it is given.
        config = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"total_max_attempts": 1},
        }
        fs, path = fsspec.core.url_to_fs(uri, config_kwargs=config)
        fs.retries = 1  # s3fs's own retry loop (5 tries by default): the store's is enough
        return fs, path
    return fsspec.core.url_to_fs(uri)


@functools.cache
def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth a retry. botocore's connection errors are not OSErrors and s3fs lets
    them through (connection refused, reset, read timeout), so they are named here, with
    what s3fs would have retried itself (a cut response, an unreadable answer)."""
    import http.client

    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, http.client.HTTPException]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
        from botocore.parsers import ResponseParserError
    except ImportError:  # no object-store client installed: local folders only
        pass
    else:
        errors += [BotoConnectionError, HTTPClientError, ResponseParserError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientPayloadError

        errors.append(ClientPayloadError)
    return tuple(errors)


def _error_code(exc: BaseException) -> str:
    """The S3 error code behind an error s3fs translated ("" for none)."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def endpoint(uri: str) -> str:
    """The endpoint an s3:// URI is reached at, for messages."""
    fs, _ = filesystem(uri)
    try:
        return str(fs.s3.meta.endpoint_url)
    except Exception:  # noqa: BLE001 - a message must not fail for want of its endpoint
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL", "the default AWS endpoint"
        )


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def _answered(op: str, uri: str, exc: BaseException) -> BaseException | None:
    """The error to raise at once for an answer a retry would only get again, or None."""
    if not is_remote(uri):
        return None
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return _no_bucket(uri)
    if type(exc).__name__ == "NoCredentialsError":  # botocore's, not imported at top level
        return StoreAccessError(
            f"{op} {uri}: the store has no credentials. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment of every process "
            "of the run, or give the host an instance role"
        )
    if isinstance(exc, PermissionError):
        return StoreAccessError(
            f"{op} {uri}: access denied at {endpoint(uri)} ({exc}). Check the credentials "
            "the store gets from the environment (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY) or the AWS configuration, and their rights on bucket "
            f"{_bucket(uri)}"
        )
    if code in ("PreconditionFailed", "412"):  # a conditional write found another version
        return FileExistsError(f"{op} {uri}: the object changed (conditional write refused)")
    return None


def _no_bucket(uri: str) -> StoreConfigError:
    bucket, where = _bucket(uri), endpoint(uri)
    return StoreConfigError(
        f"bucket {bucket} does not exist at endpoint {where}; create it (e.g. `aws s3 mb "
        f"s3://{bucket} --endpoint-url {where}`) or fix the run folder ({uri})"
    )


def retrying(op: str, uri: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn(*args, **kwargs)`, an operation `op` on `uri`. Object stores drop
    connections and restart: transient errors are retried with backoff for at most
    RETRY_BUDGET_S seconds, then fail with a message that says what to do; an answer a
    retry cannot change is raised at once (see the module docstring)."""
    began = time.monotonic()
    # `fn` is a method of the filesystem of `uri`; an async filesystem's calls take a
    # timeout that cancels them (fsspec's `sync`).
    bounded = (
        is_remote(uri) and op not in _TRANSFERS and isinstance(filesystem(uri)[0], AsyncFileSystem)
    )
    for attempt in itertools.count(1):
        if bounded:
            kwargs["timeout"] = max(RETRY_BUDGET_S - (time.monotonic() - began), 1.0)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if (answer := _answered(op, uri, exc)) is not None:
                raise answer from exc
            if isinstance(exc, _PERMANENT) or not isinstance(exc, _transient_errors()):
                raise
            elapsed = time.monotonic() - began
            cause = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, asyncio.TimeoutError):
                cause = f"no answer in {kwargs.get('timeout', READ_TIMEOUT_S):.0f} s"
            delay = min(0.5 * 2 ** (attempt - 1), RETRY_MAX_WAIT_S)
            if elapsed + delay > RETRY_BUDGET_S:
                where = f"the endpoint {endpoint(uri)}" if is_remote(uri) else "the folder"
                raise StoreUnavailableError(
                    f"{op} {uri} failed {attempt} times over {elapsed:.0f} s ({cause}). "
                    f"Check that the store is reachable ({where}; for s3:// it comes from "
                    "AWS_ENDPOINT_URL or the AWS configuration), then run the same command "
                    "again: committed work is kept"
                ) from exc
            log.warning(
                "%s %s failed (%s); retry %d in %.1f s (gives up after %.0f s)",
                op, uri, cause, attempt, delay, RETRY_BUDGET_S,
            )  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")


# Run folders this process holds (`alt_core.runtime.runlock`), each with the check that
# every write or removal under it passes first (it raises once the folder is lost).
_FENCES: dict[str, Callable[[], None]] = {}


def set_fence(root: str, check: Callable[[], None] | None) -> None:
    """Call `check()` before every write or removal under the folder `root` from now on
    (None: no longer)."""
    if check is None:
        _FENCES.pop(root.rstrip("/"), None)
    else:
        _FENCES[root.rstrip("/")] = check


def _fenced(uri: str) -> None:
    for root, check in list(_FENCES.items()):
        if uri == root or uri.startswith(root + "/"):
            check()


# Kernel filesystems: writable-looking, but nothing written there is stored.
_NOT_STORAGE = ("/proc", "/sys", "/dev")


def check_writable(run_dir: str) -> None:
    """Raise StoreConfigError (StoreUnavailableError for a store that does not answer)
    unless a run can write in `run_dir`: a local folder can be created and written (it is
    left as it was found); for s3:// the bucket exists, the credentials are accepted, and
    an object can be written and deleted. The message names the folder, what is wrong and
    the fix."""
    if is_remote(run_dir):
        _check_remote(run_dir)
    else:
        _check_local(Path(run_dir.removeprefix("file://")).absolute())


def _check_local(path: Path) -> None:
    for top in _NOT_STORAGE:
        if path == Path(top) or Path(top) in path.parents:
            raise StoreConfigError(
                f"run folder {path} is under {top}, a kernel filesystem that stores nothing: "
                "choose a folder on a disk"
            )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StoreConfigError(
            f"run folder {path} cannot be created: {existing} is a file, not a folder; "
            "choose another run folder or move the file"
        )
    created = [p for p in (path, *path.parents) if p not in (existing, *existing.parents)]
    probe = path / f".alt-write-check-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreConfigError(
            f"run folder {path} is not writable ({exc.strerror or exc}): choose a folder "
            f"this user ({os.getuid()}) can write, or fix the rights on {existing}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            for folder in created:  # deepest first: only what this check made
                folder.rmdir()


def _check_remote(run_dir: str) -> None:
    fs, path = filesystem(run_dir)
    if hasattr(fs, "call_s3"):  # S3: a missing bucket is named as such, not as a path
        try:
            retrying(
                "check the bucket of", run_dir, fs.call_s3, "head_bucket", Bucket=_bucket(run_dir)
            )
        except FileNotFoundError as exc:
            raise _no_bucket(run_dir) from exc
    probe = f"{path.rstrip('/')}/.alt-write-check-{uuid.uuid4().hex[:8]}"
    retrying("test write in", run_dir, fs.pipe_file, probe, b"")
    retrying("test delete in", run_dir, fs.rm_file, probe)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    _fenced(uri)
    fs, path = filesystem(uri)
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
        retrying("write", uri, fs.pipe_file, path, data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return retrying("read", uri, fs.cat_file, path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(retrying("check", uri, fs.exists, path))


def remove(uri: str) -> None:
    _fenced(uri)
    fs, path = filesystem(uri)
    if retrying("check", uri, fs.exists, path):
        retrying("remove", uri, fs.rm, path, recursive=True)


def _uncommit(marker: str) -> None:
    """Drop a commit marker before its output is replaced, so that a reader never pairs
    the old marker with new data (a rewrite interrupted half-way reads as uncommitted)."""
    _fenced(marker)
    fs, path = filesystem(marker)
    with contextlib.suppress(FileNotFoundError):  # nothing committed yet
        retrying("uncommit", marker, fs.rm_file, path)


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


def write_table(
    uri: str, table: pa.Table | pd.DataFrame, meta: dict[str, Any] | None = None
) -> str:
    """Write a Parquet table and commit it; returns the URI."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    _uncommit(uri + COMMIT_SUFFIX)
    write_bytes_atomic(uri, data)
    write_json(uri + COMMIT_SUFFIX, _commit_record(data, table.num_rows, meta))
    return uri


def commit_info(uri: str) -> dict[str, Any] | None:
    """The commit record of `uri`, or None if it has none (or a torn one).

    An unreachable store raises StoreUnavailableError: it never reads as "not committed".
    """
    try:
        info = read_json(uri + COMMIT_SUFFIX)
    except (FileNotFoundError, ValueError):  # ValueError: a torn or corrupt marker
        return None
    return info if isinstance(info, dict) and "sha256" in info else None


def is_committed(uri: str, verify: bool = False) -> bool:
    info = commit_info(uri)
    if info is None:
        return False
    try:
        if verify:
            return _sha256(read_bytes(uri)) == info["sha256"]
        fs, path = filesystem(uri)
        return int(retrying("check", uri, fs.size, path)) == int(info["bytes"])
    except FileNotFoundError:  # a marker whose data was deleted
        return False


def read_table(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a committed table; raises ArtifactError if it is uncommitted or corrupt."""
    info = commit_info(uri)
    if info is None:
        raise ArtifactError(f"{uri} is not committed (the stage that writes it did not finish)")
    try:
        data = read_bytes(uri)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{uri} is committed but its data is missing: redo its stage") from exc
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
    """Copy a local folder to `uri` and commit it with a per-file manifest of hashes and
    sizes."""
    _fenced(uri)
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != DIR_COMMIT)
    manifest = {
        "files": {str(p.relative_to(local_dir)): _hash_once(p, full=True) for p in files},
        "sizes": {str(p.relative_to(local_dir)): p.stat().st_size for p in files},
        "meta": meta or {},
        "committed_at": time.time(),
    }
    if not (is_remote(uri) or Path(uri).resolve() == local_dir.resolve()):
        dest = Path(uri)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(local_dir, dest)
    elif is_remote(uri):
        _uncommit(join(uri, DIR_COMMIT))
        fs, path = filesystem(uri)
        for p in files:
            rel = p.relative_to(local_dir).as_posix()
            retrying("upload", join(uri, rel), fs.put_file, str(p), f"{path}/{rel}")
    write_json(join(uri, DIR_COMMIT), manifest)
    return uri


def dir_committed(uri: str) -> bool:
    return exists(join(uri, DIR_COMMIT))


# Local files whose full hash this process computed, by (path, size, mtime, inode): a
# committed folder is hashed once per process (or when its files change), and after that
# only its sizes are checked. `put_dir` seeds it with the hashes it commits.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def _file_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _hash_once(path: Path, full: bool) -> str:
    key = _file_key(path)
    if full or key not in _HASHED:
        _HASHED[key] = _hash_file(path)
    return _HASHED[key]


def _local_problem(root: Path, manifest: dict[str, Any], full: bool) -> str | None:
    sizes = manifest.get("sizes") or {}  # folders committed before sizes were recorded
    for rel, digest in manifest["files"].items():
        path = root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if rel in sizes and size != sizes[rel]:
            return f"{rel} has {size} bytes, {sizes[rel]} were committed"
        if _hash_once(path, full) != digest:
            return f"{rel} does not match its commit hash"
    return None


def _remote_problem(uri: str, manifest: dict[str, Any], full: bool) -> str | None:
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    listed = retrying("list", uri, fs.find, path, detail=True)
    found = {
        PurePosixPath(p).relative_to(path.rstrip("/")).as_posix(): i for p, i in listed.items()
    }
    sizes = manifest.get("sizes") or {}
    for rel, digest in manifest["files"].items():
        if rel not in found:
            return f"{rel} is missing"
        size = int(found[rel].get("size") or 0)
        if rel in sizes and size != sizes[rel]:
            return f"{rel} has {size} bytes, {sizes[rel]} were committed"
        if full and _sha256(read_bytes(join(uri, rel))) != digest:
            return f"{rel} does not match its commit hash"
    return None


def verify(uri: str, full: bool = False) -> str | None:
    """Why the committed table or folder at `uri` cannot be trusted, or None when it is
    intact. A table's bytes are always checked against its commit hash. A folder's files
    are checked against its manifest: sizes always; local files' hashes once per process
    (every time with `full`); a remote folder's hashes only with `full` (otherwise when
    `local_dir` downloads it, which checks every file)."""
    info = commit_info(uri)
    if info is not None:
        try:
            data = read_bytes(uri)
        except FileNotFoundError:
            return "its data is missing"
        return None if _sha256(data) == info["sha256"] else "it does not match its commit hash"
    try:
        manifest = read_json(join(uri, DIR_COMMIT))
    except FileNotFoundError:
        return "it is not committed"
    except ValueError:
        return "its commit manifest is torn"
    if is_remote(uri):
        return _remote_problem(uri, manifest, full)
    return _local_problem(Path(uri.removeprefix("file://")), manifest, full)


def local_dir(uri: str, scratch: str | None = None) -> Path:
    """A local path holding the committed folder at `uri` (downloaded if remote), its
    files checked against the commit manifest first (`verify`)."""
    if not dir_committed(uri):
        raise ArtifactError(f"{uri} is not a committed folder")
    if not is_remote(uri):
        if problem := verify(uri):
            raise ArtifactError(
                f"{uri} is damaged: {problem}. Rerun the run (`alt resume`): the stage that "
                "committed it is redone"
            )
        return Path(uri.removeprefix("file://"))
    manifest = read_json(join(uri, DIR_COMMIT))
    key = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:16]
    root = Path(scratch or Path(tempfile.gettempdir()) / "alt-scratch") / key
    if (root / DIR_COMMIT).exists():
        if _local_problem(root, manifest, full=False) is None:
            return root  # the same files (the key is their hashes), downloaded before
        log.warning("the local copy %s of %s is damaged; downloading it again", root, uri)
        shutil.rmtree(root, ignore_errors=True)
    return get_dir(uri, root, manifest)


def get_dir(uri: str, dest: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """Download the committed folder at `uri` into `dest`, every file checked against its
    commit hash. `dest` appears complete or not at all: the files land in a temporary
    folder beside it that is renamed when they are all there (a download that fails
    leaves nothing behind; one that loses a race to a concurrent download of the same
    files yields to it)."""
    dest = Path(dest)
    manifest = manifest or read_json(join(uri, DIR_COMMIT))
    tmp = dest.with_name(dest.name + f".tmp-{uuid.uuid4().hex[:6]}")
    try:
        _download(uri, manifest["files"], tmp)
        (tmp / DIR_COMMIT).write_text(json.dumps(manifest))
        if not dest.exists():
            tmp.rename(dest)
    except OSError:
        if not (dest / DIR_COMMIT).exists():  # not a concurrent download that won
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_names(uri: str) -> list[str]:
    """Names of the entries directly under the folder `uri` (none when it does not exist)."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)  # s3fs caches listings; another process may have written
    if not retrying("check", uri, fs.exists, path):
        return []
    entries = retrying("list", uri, fs.ls, path, detail=False)
    return sorted(PurePosixPath(str(e)).name for e in entries)


def _download(uri: str, files: dict[str, str], dest_dir: Path) -> None:
    """Download the manifest's files of the folder `uri`, checking each file's hash."""
    fs, path = filesystem(uri)
    for rel, digest in files.items():
        dest = dest_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            retrying("download", join(uri, rel), fs.get_file, f"{path}/{rel}", str(dest))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{join(uri, rel)} is committed but missing") from exc
        if _hash_file(dest) != digest:
            raise ArtifactError(f"{join(uri, rel)} does not match its commit hash: it is corrupt")
