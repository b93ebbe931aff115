"""Stop a run with SIGINT or SIGTERM inside a stage, then resume it.

Each run is the real `alt` command, held at a pause point of `alt_core.runtime.faults`
while a stage runs (a sampling shard's job, a feedback shard in the flow's process, a
training job after its second step). The signal must end the whole run within
`EXIT_LIMIT_S`, with no process of it left (every process of the run carries a marker in
its environment), exit 130/143, and say what it interrupted and how to resume; `alt
resume` then gives the metrics of an uninterrupted run. SIGINT goes to the run's process
group, as a Ctrl-C at the terminal sends it; SIGTERM to the `alt` process alone, as
`timeout`, SLURM and Kubernetes send it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from tests.integration.test_fault_injection import assert_same_metrics, outcome
from tests.support.processes import MARK_ENV, processes_marked
from tests.support.runs import hf_run_config_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXIT_LIMIT_S = 10.0
STAGES = {
    "train_samples:1": "iter-1-train-sample-1",
    "train_feedback:0": "iter-1-train-feedback-0",
    "train:2": "iter-1-train",
}


@pytest.fixture(scope="module")
def signal_config(tmp_path_factory, tiny_model_dir) -> Path:
    return hf_run_config_file(
        tmp_path_factory.mktemp("signals"), tiny_model_dir, checkpoint_every=4
    )


@pytest.fixture(scope="module")
def api_env(prefect_harness) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def alt(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference(signal_config, api_env, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("reference") / "run")
    done = alt(["run", "--config", str(signal_config), "--run-dir", run_dir], api_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return outcome(run_dir)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its pause point: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the pause point was never reached"
        time.sleep(0.2)


@contextlib.contextmanager
def paused_run(
    config: Path, run_dir: str, env: dict[str, str], point: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`alt run` in a session of its own, held at the pause point `point`; yields the
    process and the marker its processes carry, and SIGKILLs its group at the end if it
    is still running."""
    mark, paused = uuid.uuid4().hex, tmp_path / "paused"
    env = {**env, MARK_ENV: mark, "ALT_FAULT_PAUSE": point, "ALT_FAULT_PAUSE_MARK": str(paused)}
    run = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "run", "--config", str(config),
         "--run-dir", run_dir],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(paused, run)
        yield run, mark
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


@pytest.mark.parametrize("point", list(STAGES))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_then_resume_finishes_it(
    signum, point, signal_config, api_env, reference, tmp_path
):
    run_dir = str(tmp_path / "run")
    with paused_run(signal_config, run_dir, api_env, point, tmp_path) as (run, mark):
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(run.pid, signum)  # the terminal's Ctrl-C: the foreground group
        else:
            run.send_signal(signum)
        _, stderr = run.communicate(timeout=60)
        seconds = time.monotonic() - sent
    left = processes_marked(mark)
    print(f"{signal.Signals(signum).name} at {point}: exit {run.returncode} in {seconds:.1f} s")
    assert run.returncode == (130 if signum == signal.SIGINT else 143), stderr[-3000:]
    assert seconds < EXIT_LIMIT_S, stderr[-3000:]
    assert not left, left
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert re.fullmatch(
        rf"interrupted \({name}\) during .*{STAGES[point]}.*; finished work is kept; "
        rf"resume with: alt resume {re.escape(run_dir)}",
        last,
    ), stderr[-3000:]
    assert "Traceback" not in stderr and "ConnectError" not in stderr, stderr[-3000:]
    assert not store.exists(RunLayout(run_dir).metrics)

    resumed = alt(["resume", run_dir], {**api_env, MARK_ENV: mark})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    ref_pool, ref_metrics = reference
    _, metrics = outcome(run_dir)
    assert_same_metrics(metrics, ref_metrics)
    if point.startswith("train:"):
        summary = store.read_json(store.join(RunLayout(run_dir).policy(1), "train_metrics.json"))
        assert summary["summary"]["resumed_from_step"] == 2


def cancel_like_the_ui(api: str, flow_run_id) -> None:
    """What the UI's Cancel button sends (prefect-ui `cancelFlowRun`)."""
    import httpx

    state = {"type": "CANCELLING", "name": "Cancelling", "message": "Cancelled from the UI"}
    r = httpx.post(f"{api}/flow_runs/{flow_run_id}/set_state",
                   json={"state": state, "force": True}, timeout=30)  # fmt: skip
    r.raise_for_status()
    assert r.json()["status"] == "ACCEPT", r.json()


def test_a_cancel_in_prefect_stops_alt_run(signal_config, api_env, tmp_path):
    """`alt run` has no worker to end it: it watches its own flow run's state."""
    from prefect.client.orchestration import get_client

    from deployments.stopping import CANCEL_POLL_S

    run_dir = str(tmp_path / "run")
    started = datetime.datetime.now(datetime.timezone.utc)
    point = "train_samples:1"
    with paused_run(signal_config, run_dir, api_env, point, tmp_path) as (run, mark):
        with get_client(sync_client=True) as client:
            # Runs killed by earlier tests stay RUNNING in this session's API.
            mine = [r for r in client.read_flow_runs(limit=200)
                    if r.created is not None and r.created >= started
                    and r.name.startswith("it-")]  # fmt: skip
            assert len(mine) == 1, [r.name for r in mine]
        sent = time.monotonic()
        cancel_like_the_ui(api_env["PREFECT_API_URL"], mine[0].id)
        _, stderr = run.communicate(timeout=60)
        seconds = time.monotonic() - sent
    left = processes_marked(mark)
    print(f"cancel in Prefect at train_samples:1: exit {run.returncode} in {seconds:.1f} s")
    assert run.returncode == 130, stderr[-3000:]
    # The command sees the cancel at its next look at the flow run's state.
    assert seconds < EXIT_LIMIT_S + CANCEL_POLL_S, stderr[-3000:]
    assert not left, left
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"interrupted \(cancelled in Prefect\) during .*iter-1-train-sample-1.*; finished "
        rf"work is kept; resume with: alt resume {re.escape(run_dir)}",
        last,
    ), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not store.exists(RunLayout(run_dir).metrics)
