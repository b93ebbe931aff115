"""The one job launcher: its file protocol, its errors, and CPU device slots."""

from __future__ import annotations

import json
import os

import pytest

from alt_core.runtime import entry, launcher
from alt_core.runtime.launcher import Job, WorkerError, run_job
from alt_core.runtime.slots import SlotPool
from alt_core.training.spec import TrainSpec
from tests.support import REPO_ROOT


def test_a_failed_job_names_its_exit_and_last_lines(tmp_path):
    spec = TrainSpec(policy_path=str(tmp_path / "none"), train_table="t", output_dir="o",
                     training={"kl_coef": 0})  # fmt: skip
    lines: list[str] = []
    with pytest.raises(
        WorkerError, match=r"(?s)train-x failed \(exit code 1\).*training failed"
    ) as info:
        run_job("train", spec, name="train-x", log=lines.append, env={"OMP_NUM_THREADS": "1"})
    assert info.value.returncode == 1 and lines


def test_the_job_file_carries_the_spec_and_thread_count(tmp_path, monkeypatch):
    """The child reads its job from the file and writes its result beside it."""
    seen: dict = {}

    def fake(spec: dict) -> dict:
        import torch

        seen.update(spec=spec, threads=torch.get_num_threads())
        return {"rows": 3}

    monkeypatch.setitem(entry.RUNNERS, "sample", fake)
    job = Job(kind="sample", spec={"a": 1}, result_path=str(tmp_path / "r.json"), num_threads=1)
    path = tmp_path / "job.json"
    path.write_text(job.model_dump_json())
    assert entry.main([str(path)]) == 0
    assert seen == {"spec": {"a": 1}, "threads": 1}
    assert json.loads((tmp_path / "r.json").read_text()) == {"rows": 3}
    assert entry.main([]) == 2  # usage


def test_child_env_finds_this_checkout_and_keeps_engines_quiet():
    env = launcher.child_env({"X": "1"})
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    assert env["VLLM_LOGGING_LEVEL"] == "WARNING"


def test_describe_exit():
    assert launcher.describe_exit(-9) == "was killed by signal 9"
    assert launcher.describe_exit(1) == "exited with code 1"


def test_cpu_slots_are_disjoint_core_groups(monkeypatch):
    monkeypatch.setattr("alt_core.runtime.slots.cuda_device_count", lambda: 0)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    pool = SlotPool(2)
    first, second = pool.slot_for(0), pool.slot_for(1)
    assert first.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and first.num_threads == 2
    assert second.env["VLLM_CPU_OMP_THREADS_BIND"] == "2-3" and second.env["OMP_NUM_THREADS"] == "2"
