"""A judge outage through the real Prefect flow (issue 14): missing feedback fails the
feedback shards instead of being committed as done, and the rerun asks the judge only
for the judgements it did not answer, ending with the metrics of a run that never failed.

The tiny ALT_LMU run of test_judge_flow.py (one iteration, two sampling shards of 24
generations each), with the scripted loopback judge (tests/support/judge_server.py).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from alt_core import store
from alt_core.config import RunConfig
from alt_core.feedback.base import FeedbackIncompleteError
from alt_core.pipeline.layout import RunLayout
from alt_core.pipeline.status import run_status
from tests.support.judge_server import JudgeServer
from tests.support.runs import tiny_run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = 2
JUDGEMENTS = 12 * 4  # prompts x generations of the iteration's training samples


class FailingAfter(JudgeServer):
    """Answers the first `answers` judgements, then 500 to every request."""

    def __init__(self, answers: int, **kwargs):
        super().__init__(**kwargs)
        self.answers = answers
        self._given: set[str] = set()
        self._given_lock = threading.Lock()

    def _choose(self, key: str) -> str:
        with self._given_lock:
            if key in self._given or len(self._given) < self.answers:
                self._given.add(key)
                return "ok"
        return "500"


def outage_config(tmp_path, model_dir, url: str, name: str) -> RunConfig:
    return tiny_run_config(
        tmp_path,
        model_dir,
        method="alt_lmu",
        sampling={"backend": "hf", "num_generations": 4, "max_new_tokens": 10,
                  "num_shards": SHARDS},
        feedback={
            "provider": "judge",
            "judge_cache": str(tmp_path / f"judge-cache-{name}"),
            # The client's default timeout and backoff: an unreachable judge must fail a
            # shard in seconds with them.
            "judge": {"base_url": url, "model": "scripted-judge", "template": "tldr_lmu"},
        },
        datapool={"num_samples_per_prompt": 4},
    )  # fmt: skip


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def with_judge(config: RunConfig, url: str, **judge) -> RunConfig:
    """The same run pointed at another judge (base_url and retries are throughput-only)."""
    again = config.model_copy(deep=True)
    again.feedback.judge.base_url = url
    for name, value in judge.items():
        setattr(again.feedback.judge, name, value)
    return again


def comparable(row: dict) -> dict:
    """A metrics row less wall times, the stages a rerun reused, and the judge's
    transport counters (which count cache hits and retries, so differ by construction
    after an outage)."""
    return {
        k: v
        for k, v in row.items()
        if not (k.endswith("_s") or k.startswith("judge_") or k == "reused")
        or k in ("judge_judgements", "judge_missing")
    }


def assert_same_metrics(rows: list[dict], reference: list[dict]) -> None:
    got, want = [comparable(r) for r in rows], [comparable(r) for r in reference]
    differ = {k for g, w in zip(got, want, strict=True) for k in g.keys() | w.keys()
              if g.get(k) != w.get(k)}  # fmt: skip
    assert got == want, f"metrics differ in {sorted(differ)}"


def feedback_shards(run_dir: str) -> list[str]:
    return [RunLayout(run_dir).shard(1, "train_feedback", i) for i in range(SHARDS)]


def assert_failed_uncommitted(run_dir: str, cause: str) -> None:
    for shard in feedback_shards(run_dir):
        assert not store.is_committed(shard), shard
        assert store.read_json(shard + ".failed.json")["cause"] == cause
    rows = {r["stage"]: r for r in run_status(run_dir) if r["iteration"] == 1}
    assert rows["train feedback"]["state"] == "failed", rows
    assert cause in rows["train feedback"]["detail"]


@pytest.fixture(scope="module")
def never_failed(tmp_path_factory, tiny_model_dir, prefect_harness):
    """The reference: the same run with the judge up throughout."""
    from flows.run import alt_run

    tmp_path = tmp_path_factory.mktemp("never-failed")
    with JudgeServer(style="lmu") as server:
        config = outage_config(tmp_path, tiny_model_dir, server.url, "reference")
        rows = alt_run(config=config, run_dir=str(tmp_path / "run"))
        return rows, server.counters["requests"]


def test_a_judge_down_from_the_start(tmp_path, tiny_model_dir, never_failed, capsys, monkeypatch):
    from alt_core import preflight
    from deployments.cli import execute
    from flows.run import alt_run

    reference, reference_requests = never_failed
    run_dir = str(tmp_path / "run")
    url = closed_port_url()
    config = outage_config(tmp_path, tiny_model_dir, url, "down")
    # Preflight finds a judge that is down before anything runs or is written ...
    assert execute(config, run_dir) == 1
    refused = capsys.readouterr().err
    assert "cannot be reached" in refused and url in refused
    assert not any(Path(run_dir).rglob("*.commit.json"))
    # ... and a judge that goes down after the checks fails the feedback shards.
    monkeypatch.setattr(preflight, "check_judge", lambda _judge: (None, None))
    assert execute(config, run_dir) == 1  # the CLI's exit status
    monkeypatch.undo()
    said = capsys.readouterr().err
    assert f"{JUDGEMENTS // SHARDS} of {JUDGEMENTS // SHARDS} judgements missing" in said
    assert f"unreachable: {JUDGEMENTS // SHARDS}" in said and f"cannot connect to {url}" in said
    assert f"alt resume {run_dir}" in said
    assert_failed_uncommitted(run_dir, "unreachable")

    with JudgeServer(style="lmu") as server:
        rows = alt_run(config=with_judge(config, server.url), run_dir=run_dir)
        asked = server.counters["requests"]
    # Nothing was answered before, so everything is asked now: exactly what a run that
    # never failed asks, with the same metrics.
    assert asked == reference_requests
    assert_same_metrics(rows, reference)
    assert rows[0]["judge_requests"] == reference[0]["judge_requests"]
    for shard in feedback_shards(run_dir):
        assert store.is_committed(shard) and not store.exists(shard + ".failed.json")


def test_a_judge_that_fails_part_way(tmp_path, tiny_model_dir, never_failed):
    from flows.run import alt_run

    reference, reference_requests = never_failed
    run_dir = str(tmp_path / "run")
    answered = 20  # of 48: both shards end up above the 5% share
    with FailingAfter(answered, style="lmu") as server:
        fast = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 1}
        config = with_judge(outage_config(tmp_path, tiny_model_dir, server.url, "part"), server.url,
                            **fast)  # fmt: skip
        with pytest.raises(FeedbackIncompleteError, match=r"server_error: \d+ — 5xx: HTTP 500"):
            alt_run(config=config, run_dir=run_dir)
        before = set(server.good_answers)
        assert len(before) == answered
    assert_failed_uncommitted(run_dir, "server_error")

    with JudgeServer(style="lmu") as server:
        rows = alt_run(config=with_judge(config, server.url), run_dir=run_dir)
        asked = server.counters["requests"]
        assert not set(server.arrivals) & before
    # Only the judgements the failing judge did not answer are asked again.
    assert asked == reference_requests - answered
    assert rows[0]["judge_cache_hits"] == answered
    assert_same_metrics(rows, reference)
