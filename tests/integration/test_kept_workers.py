"""Kept workers (`runtime.workers`): one process per slot runs job after job and keeps
what it loaded; a failed or crashed job ends it and the slot's next job gets a new one;
a stop ends it as it ends a one-off job. Real jobs: reference perplexity on the tiny
model (the engine's side is in test_engine_reuse.py)."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

from alt_core import store
from alt_core.pipeline.specs import PerplexitySpec
from alt_core.runtime import stop, workers
from alt_core.runtime.faults import FAULT_ENV
from alt_core.runtime.launcher import WorkerError, run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def jobs(tmp_path, tiny_model_dir):
    """A perplexity job over a small eval table; `make(name)` gives its spec."""
    table = pd.DataFrame({"prompt": ["The food was", "The room was"],
                          "generation": [" good and warm.", " clean."]})  # fmt: skip
    source = store.write_table(str(tmp_path / "eval.parquet"), table)

    def make(name: str, input_uri: str = source) -> PerplexitySpec:
        return PerplexitySpec(
            input_uri=input_uri,
            output_uri=str(tmp_path / f"{name}.parquet"),
            reference_path=str(tiny_model_dir),
            batch_size=4,
        )

    yield make
    workers.close_all()
    stop.reset()


def _run(spec, lines, keep=True, env=None):
    return run_job("perplexity", spec, name="perplexity", env=env or {"SLOT": "0"},
                   log=lines.append, keep=keep)  # fmt: skip


def _pids():
    return [w.proc.pid for w in workers.kept()]


def test_one_worker_serves_job_after_job_and_keeps_the_model(jobs):
    first, second = [], []
    _run(jobs("a"), first)
    (pid,) = _pids()
    _run(jobs("b"), second)
    assert _pids() == [pid] and workers.kept()[0].jobs == 2
    # The reference model was loaded by the first job only.
    assert any("Loading weights" in line for line in first)
    assert not any("Loading weights" in line for line in second)
    a = store.read_table(jobs("a").output_uri)
    b = store.read_table(jobs("b").output_uri)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # The same job in a one-off process scores exactly the same.
    _run(jobs("c"), [], keep=False)
    pd.testing.assert_frame_equal(a, store.read_table(jobs("c").output_uri), check_exact=True)
    # Another slot (its environment) has a worker of its own.
    _run(jobs("d"), [], env={"SLOT": "1"})
    assert len(_pids()) == 2 and pid in _pids()


def test_a_failed_job_ends_its_worker_and_the_next_job_gets_a_new_one(jobs, tmp_path):
    _run(jobs("a"), [])
    (pid,) = _pids()
    lines = []
    with pytest.raises(WorkerError, match="perplexity failed") as failed:
        _run(jobs("bad", input_uri=str(tmp_path / "missing.parquet")), lines)
    assert "missing.parquet" in str(failed.value)
    assert _pids() == []  # dropped: what it had loaded may be broken
    _run(jobs("b"), [])
    (new,) = _pids()
    assert new != pid


def test_a_crashed_worker_is_replaced(jobs, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "perplexity")  # the job SIGKILLs its own process group
    with pytest.raises(WorkerError, match="killed by signal 9"):
        _run(jobs("a"), [])
    assert _pids() == []
    monkeypatch.delenv(FAULT_ENV)
    _run(jobs("b"), [])
    assert len(_pids()) == 1 and store.is_committed(jobs("b").output_uri)


def test_a_stop_ends_the_kept_workers_between_jobs(jobs):
    _run(jobs("a"), [])
    (worker,) = workers.kept()
    assert stop.request_stop(signal.SIGTERM)
    assert stop.finish_jobs(grace_s=5.0), "an idle kept worker outlived the stop's grace"
    assert worker.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.proc.pid, 0)
    with pytest.raises(stop.StopRequested):
        _run(jobs("b"), [])


def test_close_all_ends_every_worker(jobs):
    _run(jobs("a"), [])
    _run(jobs("b"), [], env={"SLOT": "1"})
    procs = [w.proc for w in workers.kept()]
    workers.close_all()
    assert workers.kept() == [] and all(p.poll() is not None for p in procs)


def test_a_crashed_engine_is_replaced_by_a_fresh_one(tmp_path, tiny_model_dir):
    """The vLLM engine of a kept sampling worker dies between shards (an OOM kill): the
    next shard fails (its stage retries it), and the one after gets a new worker with a
    fresh engine that samples what the first engine did."""
    import psutil

    from tests.unit.sampling.test_sampling import ENGINE, _spec

    spec = _spec(tmp_path, tiny_model_dir, 6, "the food was", n=2, temperature=0.9,
                 top_p=0.9, max_new_tokens=6, max_prompt_tokens=16)  # fmt: skip
    out = lambda name: spec.model_copy(update={"output_uri": str(tmp_path / f"{name}.parquet")})  # noqa: E731
    env = {"SLOT": "0", **ENGINE.process_env()}
    try:
        run_job("sample", out("first"), name="s", env=env, log=lambda _: None, keep=True)
        (worker,) = workers.kept()
        engine_procs = psutil.Process(worker.proc.pid).children(recursive=True)
        assert engine_procs, "the kept engine runs no process of its own"
        for proc in engine_procs:
            proc.kill()
        with pytest.raises(WorkerError, match="kept engine.s process .* has died"):
            run_job("sample", out("second"), name="s", env=env, log=lambda _: None, keep=True)
        assert workers.kept() == []
        run_job("sample", out("third"), name="s", env=env, log=lambda _: None, keep=True)
        (new,) = workers.kept()
        assert new.proc.pid != worker.proc.pid
        assert store.commit_info(out("third").output_uri)["meta"]["engine"] == "fresh"
        pd.testing.assert_frame_equal(
            store.read_table(out("first").output_uri), store.read_table(out("third").output_uri)
        )
    finally:
        workers.close_all()
