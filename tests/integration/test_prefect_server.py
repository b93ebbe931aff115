"""Operating the pipeline as users do, against a real Prefect server on loopback.

1. `prefect server start` (its own PREFECT_HOME and port), then `python -m
   deployments.serve` (= `alt serve`) in another process, with a global concurrency
   limit for device slots.
2. A run of the single-iteration deployment is triggered through the API with
   parameters and completes.
3. A shard fails: the committed output of one feedback shard is lost and its path is
   taken by a folder, so writing it fails (task retry included). A run of the full-run
   deployment over the same folder fails on that shard.
4. The fault is repaired and the failed flow run is retried through the API exactly as
   the UI's "Retry" button does it; it completes, and only that shard ran again: every
   other committed output keeps its commit record.
5. The shard-level deployment path: docker/worker-entrypoint.sh (pool, limit, `prefect
   deploy --all` of prefect.yaml, `prefect worker start`) in another process; a flow in
   this process sends a feedback shard to the pool with `run_shard_remotely`.

Sampling uses the transformers backend (a real engine, not a fake): what is under test
here is Prefect, and vLLM's engine start would double the test's time on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from deployments.setup import DEFAULT_POOL
from tests.support import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = REPO_ROOT
BIN = Path(sys.executable).parent
LIMIT = "alt-test-gpu"
POOL = DEFAULT_POOL  # the pool prefect.yaml names; this server is the test's own
FAULTY = ("train_feedback", 1)  # (stage, shard) made to fail


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        OMP_NUM_THREADS="1",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )
    return env


@contextlib.contextmanager
def _process(cmd: list[str], env: dict, log: Path, cwd: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _tail(log: Path, lines: int = 60) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return f"--- {log.name} ---\n" + "\n".join(text[-lines:])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on a free loopback port, with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _process(cmd, _env(api, home), log, home) as proc:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start\n{_tail(log)}")
            time.sleep(1)
        yield {"api": api, "home": home}


@pytest.fixture(scope="module")
def client(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: server["api"]}),
        get_client(sync_client=True) as c,
    ):
        yield c


def _wait_for(what: str, check, timeout: float, logs: list[Path], every: float = 2.0):
    deadline = time.monotonic() + timeout
    while (value := check()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + "\n".join(_tail(p) for p in logs))
        time.sleep(every)
    return value


def _final_state(client, flow_run_id, timeout: float, logs: list[Path]):
    def check():
        state = client.read_flow_run(flow_run_id).state
        return state if state is not None and state.is_final() else None

    return _wait_for(f"flow run {flow_run_id} to finish", check, timeout, logs)


def _commit_records(run_dir: Path) -> dict[str, dict]:
    """Every committed output of the run and its commit record (sha256, committed_at)."""
    found = {}
    for path in run_dir.rglob("*"):
        if path.name.endswith(store.COMMIT_SUFFIX) or path.name == store.DIR_COMMIT:
            found[str(path.relative_to(run_dir))] = json.loads(path.read_text())
    return found


def _config(tmp_path, model_dir):
    from tests.support.runs import tiny_run_config

    return tiny_run_config(
        tmp_path, model_dir, sampling__backend="hf", sampling__concurrency=2
    ).model_dump(mode="json")


def _retry_like_the_ui(api: str, flow_run_id) -> None:
    """What the UI's Retry button sends (prefect-ui `retryFlowRun`)."""
    state = {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}
    r = httpx.post(f"{api}/flow_runs/{flow_run_id}/set_state",
                   json={"state": state, "force": False}, timeout=30)  # fmt: skip
    r.raise_for_status()
    assert r.json()["status"] == "ACCEPT", r.json()


def test_serve_trigger_fail_retry_and_remote_shard(server, client, tmp_path, tiny_model_dir):
    api, home = server["api"], server["home"]
    config = _config(tmp_path, tiny_model_dir)
    run_dir = tmp_path / "run"
    layout = RunLayout(str(run_dir))
    serve_log = tmp_path / "serve.log"
    serve_cmd = [sys.executable, "-m", "deployments.serve", "--gpu-limit", LIMIT, "--slots", "2"]
    # cwd is not the repository: the served flows load from the installed package.
    with _process(serve_cmd, _env(api, home), serve_log, tmp_path):
        logs = [serve_log]
        served = ["alt-single-iteration/alt-iteration", "alt-run/alt-run",
                  "alt-scheduled-run/alt-nightly"]  # fmt: skip
        one, full, _ = _wait_for(
            "the served deployments",
            lambda: _all_deployments(client, served),
            120, logs,
        )  # fmt: skip
        _assert_paused_nightly(client, "alt-scheduled-run/alt-nightly")

        # -- 2. a run triggered through the API, with parameters
        params = {"config": config, "run_dir": str(run_dir), "iteration": 1}
        first = client.create_flow_run_from_deployment(one.id, parameters=params)
        state = _final_state(client, first.id, 420, logs)
        assert state.is_completed(), f"{state.type}: {state.message}\n{_tail(serve_log)}"
        limit = client.read_global_concurrency_limit_by_name(LIMIT)
        assert (limit.limit, limit.active_slots) == (2, 0)  # created, and every slot given back
        before = _commit_records(run_dir)
        faulty = layout.shard(1, *FAULTY)
        assert Path(faulty).relative_to(run_dir).as_posix() + store.COMMIT_SUFFIX in before

        # -- 3. the shard fails: its output is lost and its path cannot be written
        Path(faulty + store.COMMIT_SUFFIX).unlink()
        Path(faulty).unlink()
        Path(faulty).mkdir()
        (Path(faulty) / "blocker").write_text("a folder where the shard's file must go")
        second = client.create_flow_run_from_deployment(
            full.id, parameters={"config": config, "run_dir": str(run_dir)}
        )
        state = _final_state(client, second.id, 300, logs)
        assert state.is_failed(), f"expected a failure, got {state.type}: {state.message}"
        assert Path(faulty).name in state.message  # the failure names the shard's output
        # The UI offers Retry once the run is over; over means its process has exited too
        # (the runner reports a crash for a process that exits with an error while its
        # run is not final, which a retry sent a moment too early would be).
        _wait_for(
            "the failed run's process to exit",
            lambda: "Process exited with status code" in serve_log.read_text() or None,
            60, logs,
        )  # fmt: skip
        time.sleep(2)

        # -- 4. repaired, then retried through the API as the UI does
        shutil.rmtree(faulty)
        _retry_like_the_ui(api, second.id)
        state = _final_state(client, second.id, 300, logs)
        assert state.is_completed(), f"{state.type}: {state.message}\n{_tail(serve_log)}"
        assert client.read_flow_run(second.id).run_count >= 2

    after = _commit_records(run_dir)
    key = Path(faulty).relative_to(run_dir).as_posix() + store.COMMIT_SUFFIX
    redone = {k for k in before if after.get(k) != before[k]}
    assert redone == {key}, f"outputs redone besides the failed shard: {redone - {key}}"
    assert after[key]["sha256"] == before[key]["sha256"]  # the same rows again
    assert set(after) == set(before)

    _remote_shard(client, api, home, tmp_path, config, layout)


def _deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _all_deployments(client, names: list[str]) -> list | None:
    found = [_deployment(client, name) for name in names]
    return found if all(found) else None


def _assert_paused_nightly(client, name: str) -> None:
    """The example schedule is registered, and paused until someone switches it on."""
    (schedule,) = _deployment(client, name).schedules
    assert (schedule.schedule.cron, schedule.active) == ("0 3 * * *", False), name


def _workers(client) -> list | None:
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        return client.read_workers_for_work_pool(POOL) or None
    except (ObjectNotFound, PrefectHTTPStatusError):  # the pool is not created yet
        return None


def _remote_shard(client, api, home, tmp_path, config, layout) -> None:
    """5. A worker on the pool (started by the image's entrypoint script) runs a feedback
    shard sent by a flow in this process."""
    from prefect import flow

    from deployments.shards import run_shard_remotely

    worker_log = tmp_path / "worker.log"
    env = _env(api, home, ALT_WORK_POOL=POOL, ALT_GPU_LIMIT=LIMIT, ALT_DEPLOY="1")
    script = ROOT / "docker" / "worker-entrypoint.sh"
    with _process(["sh", str(script)], env, worker_log, ROOT):
        logs = [worker_log]
        _wait_for("the worker", lambda: _workers(client), 180, logs)
        for name in ("alt-run/alt-run-pool", "alt-shard/alt-shard"):
            assert _deployment(client, name).work_pool_name == POOL, name
        _assert_paused_nightly(client, "alt-scheduled-run/alt-nightly-pool")

        source = layout.shard(1, "train_samples", 1)
        out = str(tmp_path / "remote" / "feedback_001.parquet")
        spec = {"config": config, "input_uri": source, "output_uri": out}

        @flow(name="alt-test-send-shard")
        def send() -> dict:
            return run_shard_remotely(config, "feedback", spec, "remote-feedback-1")

        result = send()
    assert result["uri"] == out and store.is_committed(out), _tail(worker_log)
    remote = store.read_table(out)
    local = store.read_table(layout.shard(1, *FAULTY))
    assert remote["reward"].tolist() == local["reward"].tolist()
    shard_run = client.read_flow_run(result["flow_run_id"])
    assert shard_run.state.is_completed() and shard_run.work_pool_name == POOL


def test_a_cancel_in_the_ui_stops_a_served_run(server, client, tmp_path, tiny_model_dir):
    """A served run cancelled from the UI while a sampling shard runs: the flow run ends
    Cancelled, and no process of it is left (its shard job included, which runs in a
    session of its own), within the stop limit of `alt run` plus the runner's look at
    the API; the folder's lock is given back."""
    from tests.integration.test_signals import EXIT_LIMIT_S, cancel_like_the_ui
    from tests.support.processes import MARK_ENV, processes_marked

    api, home = server["api"], server["home"]
    config = _config(tmp_path, tiny_model_dir)
    run_dir = tmp_path / "run"
    mark, paused = uuid.uuid4().hex, tmp_path / "paused"
    env = _env(api, home, ALT_FAULT_PAUSE="train_samples:1", ALT_FAULT_PAUSE_MARK=str(paused),
               **{MARK_ENV: mark})  # fmt: skip
    serve_log = tmp_path / "serve.log"
    serve_cmd = [sys.executable, "-m", "deployments.serve", "--no-gpu-limit"]
    with _process(serve_cmd, env, serve_log, tmp_path) as serving:
        logs = [serve_log]
        one = _wait_for(
            "the served deployment",
            lambda: _deployment(client, "alt-single-iteration/alt-iteration"),
            120, logs,
        )  # fmt: skip
        params = {"config": config, "run_dir": str(run_dir), "iteration": 1}
        run = client.create_flow_run_from_deployment(one.id, parameters=params)
        _wait_for("the sampling shard to start", lambda: paused.exists() or None, 300, logs, 0.2)
        assert processes_marked(mark, exclude=(serving.pid,))  # the flow run and its jobs

        sent = time.monotonic()
        cancel_like_the_ui(api, run.id)
        state = _final_state(client, run.id, 60, logs)
        _wait_for(
            "every process of the run to end",
            lambda: not processes_marked(mark, exclude=(serving.pid,)) or None,
            60, logs, 0.2,
        )  # fmt: skip
        seconds = time.monotonic() - sent
    print(f"cancel of a served run at train_samples:1: {state.type.value} in {seconds:.1f} s")
    assert state.is_cancelled(), f"{state.type}: {state.message}\n{_tail(serve_log)}"
    # The runner looks for cancelled runs every PREFECT_RUNNER_POLL_FREQUENCY (2 s here).
    assert seconds < EXIT_LIMIT_S + 2, _tail(serve_log)
    assert not (run_dir / ".lock.json").exists(), "the cancelled run kept the folder's lock"
    assert not store.exists(RunLayout(str(run_dir)).metrics)
