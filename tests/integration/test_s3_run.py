"""A full iteration with its run folder on a real S3 server (SeaweedFS on loopback),
and the same run surviving a restart of that server while it writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from tests.support.runs import tiny_run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_iteration_on_s3_survives_a_server_restart(
    tmp_path, tiny_model_dir, s3_server, s3_run_root, prefect_harness
):
    from prefect.settings import PREFECT_API_URL

    config = tiny_run_config(tmp_path, tiny_model_dir)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run_dir = s3_run_root
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "run", "--config", str(config_path),
         "--run-dir", run_dir],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    layout = RunLayout(run_dir)
    first_shard = layout.shard(1, "train_samples", 0)
    deadline = time.monotonic() + 300
    while not store.is_committed(first_shard) and proc.poll() is None:
        assert time.monotonic() < deadline, "the first sampling shard never committed"
        time.sleep(1)
    # The server goes away while the other shards and the feedback stage are writing.
    s3_server.restart(down_seconds=3)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert out.strip().splitlines()[-1] == f"run dir: {run_dir}"

    # Every artifact is on S3, committed, and readable through the same store code.
    assert store.read_json(layout.metrics)["iterations"][0]["iteration"] == 1
    assert len(store.read_table(layout.table(1, "datapool", "pool"))) == 60
    assert store.dir_committed(layout.policy(1))
    assert len(store.read_table(layout.table(1, "eval", "eval"))) == 8
    # Credentials come from the environment only: never in the recorded config.
    assert s3_server.secret_key not in store.read_bytes(layout.config).decode()
    assert s3_server.secret_key not in out
