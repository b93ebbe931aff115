"""Kill the run inside each stage, resume it, and get the uninterrupted result.

Each faulty run is the real `alt` command, started in this test's process group as `make`
would start it, SIGKILLed (its own group and all) from inside a stage by
`alt_core.runtime.faults`; `alt resume` then finishes it. The final
datapool and metrics must equal those of an uninterrupted run with the same seeds, and
only the lost work may be redone. Sampling uses transformers' generate here (the
pipeline, not the engine, is under test; the vLLM path has its own integration tests),
which keeps the ten runs of this module within a few minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from tests.support.runs import hf_run_config_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = ("train_samples", "train_feedback", "eval_samples", "eval_feedback")


@pytest.fixture(scope="module")
def fault_config(tmp_path_factory, tiny_model_dir) -> Path:
    return hf_run_config_file(tmp_path_factory.mktemp("faults"), tiny_model_dir, checkpoint_every=2)


@pytest.fixture(scope="module")
def api_env(prefect_harness) -> dict[str, str]:
    """Runs in child processes talk to the session's Prefect API instead of each
    starting a temporary server of their own."""
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


def outcome(run_dir: str) -> tuple[pd.DataFrame, list[dict]]:
    layout = RunLayout(run_dir)
    pool = store.read_table(layout.table(1, "datapool", "pool"))
    pool = pool.sort_values(["prompt_id", "generation", "reward"]).reset_index(drop=True)
    rows = store.read_json(layout.metrics)["iterations"]
    timeless = [
        {k: v for k, v in r.items() if not k.endswith("_s") and k not in ("skipped", "reused")}
        for r in rows
    ]
    return pool, timeless


def commit_times(run_dir: str) -> dict[str, float]:
    layout = RunLayout(run_dir)
    times = {}
    for stage in SHARDS:
        for i in range(2):
            info = store.commit_info(layout.shard(1, stage, i))
            if info:
                times[f"{stage}:{i}"] = info["committed_at"]
    return times


@pytest.fixture(scope="module")
def reference(fault_config, api_env, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("reference") / "run")
    done = alt(["run", "--config", str(fault_config), "--run-dir", run_dir], api_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, outcome(run_dir)


@pytest.mark.parametrize(
    ("fault", "value"),
    [
        ("ALT_FAULT_POINT", "train_samples:1"),
        ("ALT_FAULT_POINT", "train_feedback:0"),
        ("ALT_FAULT_POINT", "datapool"),
        ("ALT_TRAIN_FAIL_AT_STEP", "5"),
        ("ALT_FAULT_POINT", "perplexity"),
    ],
)
def test_kill_inside_a_stage_then_resume(fault, value, fault_config, api_env, reference, tmp_path):
    run_dir = str(tmp_path / "run")
    killed = alt(
        ["run", "--config", str(fault_config), "--run-dir", run_dir], {**api_env, fault: value}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not store.exists(RunLayout(run_dir).metrics)
    before = commit_times(run_dir)
    spent = stage_seconds(run_dir)

    resumed = alt(["resume", run_dir], api_env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == f"run dir: {run_dir}"

    # Work committed before the kill was not redone.
    after = commit_times(run_dir)
    assert {k: after[k] for k in before} == before
    # Same rows (none lost, none duplicated) and the same metrics as without the kill.
    ref_pool, ref_metrics = reference[1]
    pool, metrics = outcome(run_dir)
    pd.testing.assert_frame_equal(pool, ref_pool)
    assert_same_metrics(metrics, ref_metrics)
    # The table reports what every stage cost over both attempts, and what was reused.
    (row,) = [
        r for r in store.read_json(RunLayout(run_dir).metrics)["iterations"] if r["iteration"] == 1
    ]
    for stage, seconds in spent.items():
        assert row[f"{stage}_s"] >= seconds > 0, stage
        assert stage in row["reused"]


def stage_seconds(run_dir: str) -> dict[str, float]:
    """What the first attempt spent on the iteration-1 stages it finished."""
    uri = RunLayout(run_dir).timings(1)
    attempts = store.read_json(uri)["attempts"] if store.exists(uri) else []
    keys = {"train_sample", "train_feedback", "datapool", "train"}
    return {
        a["stage"]: a["seconds"] for a in attempts if a["stage"] in keys and a["outcome"] == "done"
    }


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            if isinstance(ra[key], float):
                assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
            else:
                assert ra[key] == rb[key], key


def test_corrupt_artifact_is_detected_and_only_it_redone(reference, api_env, tmp_path):
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(reference[0], run_dir)
    layout = RunLayout(run_dir)
    victim = Path(layout.shard(1, "train_feedback", 0))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = commit_times(run_dir)

    status = alt(["status", run_dir], api_env)
    assert status.returncode == 0 and "corrupt" in status.stdout
    assert "1 corrupt" in status.stdout.splitlines()[-1]

    resumed = alt(["resume", run_dir], api_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = commit_times(run_dir)
    redone = sorted(k for k in after if after[k] != before.get(k))
    assert redone == ["train_feedback:0"]
    pool, metrics = outcome(run_dir)
    pd.testing.assert_frame_equal(pool, reference[1][0])
    assert_same_metrics(metrics, reference[1][1])


def test_a_flipped_byte_in_a_committed_policy_redoes_its_training(reference, api_env, tmp_path):
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(reference[0], run_dir)
    layout = RunLayout(run_dir)
    weights = Path(layout.policy(1)) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(64):  # 64 flipped bytes, the size unchanged
        data[len(data) // 3 + 97 * i] ^= 0x5A
    weights.write_bytes(bytes(data))
    trained_at = store.read_json(store.join(layout.policy(1), store.DIR_COMMIT))["committed_at"]

    verify = alt(["status", "--verify", run_dir], api_env)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "model.safetensors does not match its commit hash" in verify.stdout
    assert "1 corrupt" in verify.stdout

    resumed = alt(["resume", run_dir], api_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "is damaged (model.safetensors does not match its commit hash); redoing it" in (
        resumed.stdout + resumed.stderr
    )
    manifest = store.read_json(store.join(layout.policy(1), store.DIR_COMMIT))
    assert manifest["committed_at"] > trained_at
    # The same training redone gives the same weights, so nothing after it was redone.
    assert alt(["status", "--verify", run_dir], api_env).returncode == 0
    pool, metrics = outcome(run_dir)
    pd.testing.assert_frame_equal(pool, reference[1][0])
    assert_same_metrics(metrics, reference[1][1])
    (row,) = [r for r in store.read_json(layout.metrics)["iterations"] if r["iteration"] == 1]
    assert "train" not in row["reused"] and "train_sample" in row["reused"]


def test_status_of_finished_run_and_changed_setting(reference, api_env, fault_config):
    from alt_core.config import load_config
    from alt_core.pipeline.status import run_status

    run_dir = reference[0]
    done = alt(["status", run_dir], api_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("9 committed, 0 stale, 0 missing")
    # A training setting leaves sampling, feedback and the pool valid; training and
    # everything evaluated from the new policy become stale.
    changed = load_config(config_file=str(fault_config), overrides=["training.learning_rate=0.002"])
    states = {row["stage"]: row["state"] for row in run_status(run_dir, changed)}
    assert states["prompts"] == states["train samples"] == states["datapool"] == "committed"
    assert states["train"] == states["eval samples"] == states["eval"] == "stale"


def every_commit(run_dir: str) -> dict[str, float]:
    """Commit time of every table and folder of iteration 1, by path in the run."""
    root = Path(run_dir) / "iter_001"
    times = {}
    for manifest in [*root.rglob("*.commit.json"), *root.rglob("_COMMIT.json")]:
        times[str(manifest.relative_to(root))] = store.read_json(str(manifest))["committed_at"]
    return times


def _states(run_dir: str, fault_config: Path, *overrides: str) -> dict[str, str]:
    from alt_core.config import load_config
    from alt_core.pipeline.status import run_status

    changed = load_config(config_file=str(fault_config), overrides=list(overrides))
    return {row["stage"]: row["state"] for row in run_status(run_dir, changed)}


TRAIN_SIDE = ("prompts", "train samples", "train feedback", "datapool", "train")


@pytest.mark.parametrize(
    "setting",
    ["evaluation.max_new_tokens=6", "sampling.temperature=0.5", "sampling.top_p=0.5"],
)
def test_an_eval_or_train_only_generation_setting_restales_its_side_only(
    reference, fault_config, setting
):
    states = _states(reference[0], fault_config, setting)
    if setting.startswith("evaluation."):
        assert all(states[s] == "committed" for s in TRAIN_SIDE), states
        assert states["eval prompts"] == "committed"
        assert states["eval samples"] == states["eval feedback"] == states["eval"] == "stale"
    else:  # the eval shards' own fingerprints ignore it (tests/test_dag.py); they are
        # redone here only because they sample the policy that is retrained
        assert states["prompts"] == states["eval prompts"] == "committed", states
        assert states["train samples"] == states["train"] == "stale", states


@pytest.mark.parametrize(
    "setting",
    [
        "sampling.concurrency=3",
        "sampling.max_num_seqs=8",
        "feedback.concurrency=2",
        "feedback.judge.max_concurrency=4",
        "training.log_every=1",
        "training.checkpoint_every=5",
        "evaluation.batch_size=3",
    ],
)
def test_throughput_settings_leave_everything_committed(reference, fault_config, setting):
    states = _states(reference[0], fault_config, setting)
    assert set(states.values()) == {"committed"}, (setting, states)


def test_rerun_with_an_eval_setting_redoes_only_the_evaluation(
    reference, api_env, fault_config, tmp_path
):
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(reference[0], run_dir)
    before = every_commit(run_dir)
    args = ["run", "--config", str(fault_config), "--run-dir", run_dir]
    done = alt([*args, "evaluation.max_new_tokens=6"], api_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = every_commit(run_dir)
    redone = sorted(path for path in after if after[path] != before.get(path))
    assert redone == [
        "eval/eval.parquet.commit.json",
        "eval/scored.parquet.commit.json",
        "eval_feedback/shard_000.parquet.commit.json",
        "eval_feedback/shard_001.parquet.commit.json",
        "eval_samples/shard_000.parquet.commit.json",
        "eval_samples/shard_001.parquet.commit.json",
    ], redone
    tokens = store.read_table(RunLayout(run_dir).table(1, "eval", "eval"))["num_tokens"]
    assert tokens.max() <= 6
