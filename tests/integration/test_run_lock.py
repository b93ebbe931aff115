"""Two runs on one folder, local and s3://: the second is refused while the first runs,
the first finishes, and every committed artifact matches its manifest afterwards.

The runs are the real `alt` command in subprocesses, on the session's Prefect API, with
transformers' generate for sampling (the lock, not the engine, is under test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from alt_core import store
from alt_core.runtime.runlock import LOCK_NAME, RunLock, RunLockedError
from tests.support.runs import HF_SAMPLING, tiny_run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lock_config(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("lock")
    config = tiny_run_config(
        tmp,
        tiny_model_dir,
        sampling=HF_SAMPLING,
    )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def _alt(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def _committed(run_dir: str) -> list[str]:
    """Every committed table and folder of the run (by its manifest)."""
    fs, root = fsspec.core.url_to_fs(run_dir)
    fs.invalidate_cache()
    found = []
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1 :]
        if rel.endswith(store.COMMIT_SUFFIX):
            found.append(store.join(run_dir, rel.removesuffix(store.COMMIT_SUFFIX)))
        elif rel.endswith("/" + store.DIR_COMMIT):
            found.append(store.join(run_dir, rel.removesuffix("/" + store.DIR_COMMIT)))
    return found


@pytest.mark.timeout(900)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_run_on_a_held_folder_is_refused(where, lock_config, tmp_path, request):
    request.getfixturevalue("prefect_harness")
    from prefect.settings import PREFECT_API_URL

    # The s3_run_root fixture sets the AWS environment the runs inherit.
    run_dir = request.getfixturevalue("s3_run_root") if where == "s3" else str(tmp_path / "run")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    args = ["run", "--config", str(lock_config), "--run-dir", run_dir]
    first = _alt(args, env)
    try:
        lock = store.join(run_dir, LOCK_NAME)
        deadline = time.monotonic() + 180
        while not store.exists(lock):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.5)
        second = _alt(args, env)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2, out[-2000:] + err[-3000:]
        assert f"{run_dir} is held by a live run: host " in err
        assert f"pid {first.pid}, since" in err and f"kill {first.pid} on " in err
        assert "Traceback" not in err
        assert first.poll() is None, "the refused run stopped the first one"
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, out[-2000:] + err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not store.exists(store.join(run_dir, LOCK_NAME))  # released
    committed = _committed(run_dir)
    assert len(committed) > 10 and any(u.endswith("/policy") for u in committed)
    assert {u: store.verify(u, full=True) for u in committed} == dict.fromkeys(committed)


def test_concurrent_acquisitions_on_s3_have_one_winner(s3_run_root):
    """Conditional writes (If-None-Match) decide between runs that start together."""
    barrier, outcomes = threading.Barrier(4), []
    locks = [RunLock(s3_run_root, lease_s=30) for _ in range(4)]

    def take(lock: RunLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except RunLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["refused"] * 3 + ["won"]
    finally:
        for lock in locks:
            if lock.expires:
                lock.release()
    assert not store.exists(store.join(s3_run_root, LOCK_NAME))
