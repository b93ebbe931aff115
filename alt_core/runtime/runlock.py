"""One run per folder: a lease `<run_dir>/.lock.json` held while a flow runs over it.

    with RunLock(run_dir):      # RunLockedError if a live run holds the folder
        ...                     # every store write under run_dir checks the lease first

`refuse_if_held(run_dir)` gives a command line the same refusal before it starts a flow.

The lease names its holder (host, pid, a run id) and when it was taken, renewed and
expires. A background thread renews it every third of its length (ALT_RUN_LEASE_S in
`runtime.env`, default 60 s). It is taken over when it has expired, or at once on the
same host when its pid is no longer alive (a run killed with SIGKILL); a lease file that
is not a lease is refused with a message, never taken over. It is released on leaving
the block, on an exception or a Ctrl-C too.

How each change is made safe against a second process doing the same at the same time:

- local folder: every read-decide-write of the lease holds an exclusive `flock` on the
  run folder itself (released by the kernel if the process dies, so it is never stale),
  and a new lease appears whole with `os.link` (which fails if the file exists).
  Exact on one host; on NFS the link is still atomic, the flock as good as the server's
  locking.
- s3://: a new lease is written with `If-None-Match: *` (create only if absent), a
  takeover and a renewal with `If-Match: <the ETag read>` (replace only the version that
  was judged), so of two concurrent writers one is refused. AWS S3, MinIO and SeaweedFS
  (tested) honour both. Every acquisition is read back after SETTLE_S and must hold this
  run's id: on a server that ignored the headers, two racing writers then resolve to the
  last one written (read-after-write consistency assumed). Expiry compares the hosts'
  clocks: they must agree to well within a lease.

Lost lease (this process was frozen, or cut off from the store, past the expiry and
another run took over): the renewal thread sees another holder, logs an error, and
every later write or removal under the folder from this process raises RunLockLostError
(the store's fence, `store.set_fence`), so the stage fails before it commits more. A
write also renews at once when less than a sixth of the lease is left (the thread was
late). A job already running in a child process may still commit its own output; a
committed output is checked against its hash when read, so a clash reads as corrupt and
is redone, never as good data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alt_core import store
from alt_core.runtime.env import lease_seconds

LOCK_NAME = ".lock.json"
# s3://: how long after writing a lease it is read back (see the module docstring).
SETTLE_S = 0.5

log = logging.getLogger(__name__)

# Run ids of the leases this process holds: a lease with this process's pid and another
# id was left by an earlier process that had the same pid.
_HELD: set[str] = set()


class RunLockError(RuntimeError):
    """The run folder's lock cannot be used (it is held, or its file is not a lease)."""


class RunLockedError(RunLockError):
    """Another live run holds the folder."""


class RunLockLostError(RunLockError):
    """This process's lease expired and another run took the folder over."""


@dataclasses.dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    run_id: str
    started: float
    renewed: float
    expires: float

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> Lease:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON {type(raw).__name__}, not an object")
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                run_id=str(raw["run_id"]),
                **{key: float(raw[key]) for key in ("started", "renewed", "expires")},
            )
        except (ValueError, TypeError, KeyError) as exc:  # UnicodeDecodeError: a ValueError
            raise RunLockError(
                f"{where} is not a run lock ({type(exc).__name__}: {str(exc)[:120]}); if no "
                "run is using this folder, delete the file and start again"
            ) from exc

    def describe(self, run_dir: str, now: float) -> str:
        since = dt.datetime.fromtimestamp(self.started).isoformat(sep=" ", timespec="seconds")
        return (
            f"{run_dir} is held by a live run: host {self.host}, pid {self.pid}, since "
            f"{since} (lease renewed {now - self.renewed:.0f} s ago, expires in "
            f"{self.expires - now:.0f} s); wait for it to finish, or stop it (kill "
            f"{self.pid} on {self.host}); a lock left by a dead run is taken over after "
            "its lease expires"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale_because(lease: Lease, now: float) -> str | None:
    """Why `lease` may be taken over now, or None while its holder may be alive."""
    if lease.host == socket.gethostname():
        if lease.pid == os.getpid() and lease.run_id not in _HELD:
            return f"pid {lease.pid} is this process, which does not hold it (a reused pid)"
        if lease.pid != os.getpid() and not _pid_alive(lease.pid):
            return f"pid {lease.pid} on this host has exited"
    if now > lease.expires:
        return f"its lease expired {now - lease.expires:.0f} s ago"
    return None


def refuse_if_held(run_dir: str) -> None:
    """Raise RunLockedError when a live run holds the folder (RunLockError for a lock
    file that is not a lease): a command line's answer before it starts a flow, whose
    `RunLock` is what decides."""
    lease = _RemoteLease(run_dir) if store.is_remote(run_dir) else _LocalLease(run_dir)
    data, _ = lease.read()
    if data is None:
        return
    held, now = Lease.decode(data, lease.uri), time.time()
    if _stale_because(held, now) is None:
        raise RunLockedError(held.describe(run_dir.rstrip("/"), now))


class _LocalLease:
    """The lease file in a local folder; `guard` serializes changes on this host."""

    def __init__(self, run_dir: str):
        self.dir = Path(run_dir.removeprefix("file://"))
        self.path = self.dir / LOCK_NAME
        self.uri = str(self.path)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> tuple[bytes | None, Any]:
        try:
            return self.path.read_bytes(), None
        except FileNotFoundError:
            return None, None

    def _staged(self, data: bytes) -> Path:
        tmp = self.dir / f"{LOCK_NAME}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, data: bytes) -> Any:
        tmp = self._staged(data)
        try:
            os.link(tmp, self.path)  # FileExistsError when another run was first
        finally:
            tmp.unlink()

    def replace(self, data: bytes, token: Any) -> Any:
        os.replace(self._staged(data), self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class _RemoteLease:
    """The lease object in an object store: conditional writes on its ETag."""

    def __init__(self, run_dir: str):
        self.uri = store.join(run_dir, LOCK_NAME)
        self.fs, self.path = store.filesystem(self.uri)

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def read(self) -> tuple[bytes | None, Any]:
        self.fs.invalidate_cache(self.path)
        try:
            # The ETag first: a write based on it is refused if the object changed since.
            etag = store.retrying("read the lock", self.uri, self.fs.info, self.path)["ETag"]
            return store.retrying("read the lock", self.uri, self.fs.cat_file, self.path), etag
        except FileNotFoundError:
            return None, None

    def create(self, data: bytes) -> Any:
        out = store.retrying(
            "take the lock", self.uri, self.fs.pipe_file, self.path, data, mode="create"
        )
        return (out or {}).get("ETag")

    def replace(self, data: bytes, token: Any) -> Any:
        out = store.retrying(
            "take the lock", self.uri, self.fs.pipe_file, self.path, data, IfMatch=token
        )
        return (out or {}).get("ETag")

    def delete(self) -> None:
        store.retrying("release the lock", self.uri, self.fs.rm_file, self.path)


class RunLock:
    """The lease on one run folder, held by this process while in the `with` block."""

    def __init__(self, run_dir: str, lease_s: float | None = None):
        self.run_dir = run_dir.rstrip("/")
        self.lease_s = lease_s or lease_seconds()
        self.run_id = uuid.uuid4().hex
        self.uri = store.join(self.run_dir, LOCK_NAME)
        self._lease = _RemoteLease(run_dir) if store.is_remote(run_dir) else _LocalLease(run_dir)
        self.expires = 0.0
        self.started = 0.0
        self.lost: str | None = None  # why the lease was lost, once it is
        self._renewing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _new(self, now: float) -> Lease:
        return Lease(
            host=socket.gethostname(),
            pid=os.getpid(),
            run_id=self.run_id,
            started=self.started or now,
            renewed=now,
            expires=now + self.lease_s,
        )

    def acquire(self) -> None:
        """Take the lease, or raise RunLockedError naming its live holder. (Whether the
        store can hold the run at all is the caller's preflight: `store.check_writable`.)"""
        _HELD.add(self.run_id)  # before it is written: a thread of this process may look
        try:
            self._take()
        except BaseException:
            _HELD.discard(self.run_id)
            raise
        store.set_fence(self.run_dir, self.check)
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"alt-lease-{self.run_id[:6]}", daemon=True
        )
        self._thread.start()

    def _take(self) -> None:
        for _ in range(3):  # a race lost to a run that then ended: try again
            now = time.time()
            lease = self._new(now)
            with self._lease.guard():
                data, token = self._lease.read()
                try:
                    if data is None:
                        self._lease.create(lease.encode())
                    else:
                        held = Lease.decode(data, self.uri)
                        if (why := _stale_because(held, now)) is None:
                            raise RunLockedError(held.describe(self.run_dir, now))
                        log.warning(
                            "taking over the lock of %s from host %s, pid %d: %s",
                            self.run_dir, held.host, held.pid, why,
                        )  # fmt: skip
                        self._lease.replace(lease.encode(), token)
                except FileExistsError:  # another run wrote it between our read and write
                    continue
            if self._confirmed():
                break
        else:
            data, _ = self._lease.read()
            if data is None:
                raise RunLockError(f"{self.uri} could not be taken: try again")
            raise RunLockedError(Lease.decode(data, self.uri).describe(self.run_dir, time.time()))
        self.started, self.expires = lease.started, lease.expires

    def _confirmed(self) -> bool:
        """Whether the lease just written is the one in the store (see SETTLE_S)."""
        if isinstance(self._lease, _LocalLease):
            return True
        time.sleep(SETTLE_S)
        data, _ = self._lease.read()
        return data is not None and Lease.decode(data, self.uri).run_id == self.run_id

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this run's. A store that
        cannot be reached then leaves it to expire (logged, never raised)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        store.set_fence(self.run_dir, None)
        _HELD.discard(self.run_id)
        if self.lost or not self.expires:
            return
        try:
            with self._renewing, self._lease.guard():
                data, _ = self._lease.read()
                if data is not None and Lease.decode(data, self.uri).run_id == self.run_id:
                    self._lease.delete()
        except (store.StoreError, OSError, RunLockError) as exc:
            log.warning(
                "could not release the lock of %s (%s): it expires within %.0f s",
                self.run_dir, exc, self.lease_s,
            )  # fmt: skip
        self.expires = 0.0

    def check(self) -> None:
        """The store's fence: raise RunLockLostError once the lease is lost; renew first
        when little of it is left."""
        if self.lost is None and self.expires - time.time() < self.lease_s / 6:
            self.renew()
        if self.lost is not None:
            raise RunLockLostError(self.lost)

    def renew(self) -> None:
        """Extend the lease if it is still this run's; otherwise mark it lost."""
        with self._renewing:
            if self.lost is not None or self._stop.is_set():
                return
            now = time.time()
            lease = self._new(now)
            with self._lease.guard():
                data, token = self._lease.read()
                held = Lease.decode(data, self.uri) if data is not None else None
                if held is None or held.run_id != self.run_id:
                    return self._lose(held, now)
                try:
                    self._lease.replace(lease.encode(), token)
                except FileExistsError:  # changed between our read and write: by whom?
                    data, _ = self._lease.read()
                    held = Lease.decode(data, self.uri) if data is not None else None
                    return self._lose(held, now)
            self.expires = lease.expires

    def _lose(self, held: Lease | None, now: float) -> None:
        who = f"host {held.host}, pid {held.pid}" if held else "nobody (the lock was deleted)"
        why = (
            f"this run's lease expired {now - self.expires:.0f} s ago (the process was "
            "stopped or cut off from the store for longer than the lease)"
            if now > self.expires
            else "its lock file was replaced or deleted while this run held it"
        )
        self.lost = (
            f"the lock of {self.run_dir} is now held by {who}: {why}; this run stops before "
            "it writes more; let the other run finish, then `alt resume` if needed"
        )
        log.error("%s", self.lost)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except (store.StoreError, OSError, RunLockError) as exc:
                log.warning("could not renew the lock of %s: %s", self.run_dir, exc)
                if time.time() > self.expires and self.lost is None:
                    self.lost = (
                        f"the lease on {self.run_dir} expired: it could not be renewed "
                        f"({exc}); this run stops before it writes more; `alt resume` "
                        "when the store is back"
                    )
                    log.error("%s", self.lost)
            if self.lost is not None:
                return
