"""How `alt run` and `alt resume` stop: Ctrl-C, SIGTERM, or a cancel in the Prefect UI.

The flow runs in a thread of its own, so this process's main thread owns the signal
handlers (Prefect installs its SIGTERM handler only in the main thread). On SIGINT or
SIGTERM, or when the flow run is found CANCELLING or CANCELLED in Prefect, the stop
controller (`alt_core.runtime.stop`) refuses new jobs and sends SIGTERM to every running
job; after its grace time it SIGKILLs what is left. The flow then gets a few seconds to
record its state (the stage tasks fail and are not retried), the temporary Prefect API
server, if this process started one, is stopped last, and `Interrupted` carries what was
running to the command line, which exits 130 (SIGINT, a cancel) or 143 (SIGTERM). A
second signal SIGKILLs every job and exits at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from alt_core.runtime import stop

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, stop.CANCEL: 130}
# After the jobs have ended: how long the flow thread gets to record its failed state.
FLOW_WAIT_S = 3.0
# How often the flow run's state is read to see a cancel from the UI.
CANCEL_POLL_S = 2.0


class Interrupted(Exception):
    """The run was stopped by a signal or a cancel; what was running then."""

    def __init__(self, signum: int, running: list[str]):
        super().__init__(stop.signal_name(signum))
        self.signum = signum
        self.running = running

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]

    def report(self, run_dir: str) -> str:
        how = "cancelled in Prefect" if self.signum == stop.CANCEL else self.args[0]
        where = f" during {', '.join(self.running)}" if self.running else ""
        return (
            f"interrupted ({how}){where}; finished work is kept; resume with: alt resume {run_dir}"
        )


def run_until_stopped(call: Callable[[str], Any], name: str) -> Any:
    """Run `call(flow_run_name)` (a flow) in a thread until it returns, raises, or the run
    is stopped (then raise Interrupted, see the module docstring). The flow run is named
    `name` plus a random tag, which is how the cancel watcher finds it."""
    run_name = f"{name}-{secrets.token_hex(3)}"
    server = start_temporary_api()
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["value"] = call(run_name)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            outcome["error"] = exc

    flow_thread = threading.Thread(target=body, name="alt-flow", daemon=True)
    with _signal_handlers(server):
        flow_thread.start()
        done = threading.Event()
        threading.Thread(
            target=_watch_cancel, args=(run_name, done), name="alt-cancel-watch", daemon=True
        ).start()
        while flow_thread.is_alive() and stop.stopping() is None:
            flow_thread.join(0.2)
        done.set()
        signum = stop.stopping()
        if signum is None:
            if "error" in outcome:
                raise outcome["error"]
            return outcome["value"]
        running = stop.running()
        stop.finish_jobs()
        flow_thread.join(FLOW_WAIT_S)
    if server is not None:
        server.stop()
    raise Interrupted(signum, running)


def quiet() -> None:
    """The stage failures a stop causes are expected: keep them off the terminal, so the
    last lines say what was interrupted."""
    for name in ("prefect", "alt", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _signal_handlers(server: Any) -> Iterator[None]:
    def handle(signum: int, _frame: types.FrameType | None) -> None:
        quiet()  # before the first task fails, so no failure reaches the terminal
        if stop.request_stop(signum):
            return
        # The second signal: no more waiting.
        stop.kill_jobs()
        if server is not None and server.server_process is not None:
            server.server_process.kill()
        print("\nstopped at once; finished work is kept", file=sys.stderr, flush=True)
        os._exit(EXIT_CODES.get(signal.Signals(signum), 130))

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _watch_cancel(run_name: str, done: threading.Event) -> None:
    """Stop the run when its flow run is cancelled in Prefect (a run started by `alt run`
    has no worker that would end it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    wanted = FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
    while not done.wait(CANCEL_POLL_S):
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=wanted, limit=1)
        except Exception:  # noqa: BLE001 - an unreachable API is not a cancel; look again
            continue
        if runs and runs[0].state is not None and runs[0].state.type.value in CANCEL_STATES:
            quiet()
            stop.request_stop(stop.CANCEL)
            return


CANCEL_STATES = ("CANCELLING", "CANCELLED")


def start_temporary_api() -> Any:
    """Start Prefect's temporary API server when no API is configured, in a session of
    its own, and return it (None when PREFECT_API_URL is set). Prefect would start it on
    first use in this process's group, where a Ctrl-C at the terminal stops it before
    the run has ended its jobs (the run then fails with ConnectError)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    server = _session_server_class()()
    server.start()
    return server


@functools.cache
def _session_server_class() -> type:
    from prefect.server.api import server as prefect_server

    class SessionServer(prefect_server.SubprocessASGIServer):
        """Prefect's `SubprocessASGIServer` (the instance `get_client` then reuses),
        started with `start_new_session`: Prefect's own command line, through a
        `subprocess` stand-in seen by that module only while it starts the process."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            own_session = types.SimpleNamespace(
                Popen=functools.partial(subprocess.Popen, start_new_session=True)
            )
            real = prefect_server.subprocess
            prefect_server.subprocess = own_session  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = real

    return SessionServer
