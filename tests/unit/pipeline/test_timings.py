"""The attempts ledger: a stage's time is summed over the attempts at its outputs."""

from __future__ import annotations

from alt_core import store
from alt_core.pipeline.timings import StageTimes, stage_fingerprint


def test_a_stage_time_sums_every_attempt_at_the_same_outputs(tmp_path):
    uri = str(tmp_path / "iter_001" / "timings.json")
    times = StageTimes(uri)
    times.add("train", 200.0, "fp-a", "failed")
    times.add("train", 33.0, "fp-a", "done")
    times.add("train_sample", 12.0, "fp-s", "done")
    # A later attempt (a new process) reads the ledger back and reuses the outputs.
    again = StageTimes(uri)
    again.add("train", 0.2, "fp-a", "done", reused=True)
    assert again.total("train", "fp-a") == 233.2
    assert again.total("train_sample", "fp-s") == 12.0
    # Time spent on outputs made from other settings does not count.
    again.add("train", 50.0, "fp-b", "done")
    assert again.total("train", "fp-b") == 50.0
    attempts = store.read_json(uri)["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "done", "done", "done", "done"]
    assert attempts[3]["reused"] is True


def test_a_torn_or_foreign_ledger_starts_empty(tmp_path):
    uri = tmp_path / "timings.json"
    uri.write_text("{not json")
    assert StageTimes(str(uri)).total("train", "x") == 0.0
    uri.write_text("[1, 2]")
    times = StageTimes(str(uri))
    times.add("train", 1.0, "x", "done")
    assert times.total("train", "x") == 1.0


def test_the_stage_fingerprint_follows_its_nodes_in_order():
    assert stage_fingerprint(["a", "b"]) == stage_fingerprint(["a", "b"])
    assert stage_fingerprint(["a", "b"]) != stage_fingerprint(["b", "a"])
