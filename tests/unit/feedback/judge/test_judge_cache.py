"""The judge cache in the artifact store: committed parts, keys, restore of missing values."""

from __future__ import annotations

import uuid
from pathlib import Path

from alt_core import store
from alt_core.config.judge import JudgeConfig
from alt_core.feedback.judge import JudgeCache, load_template


def entry(score, reason=None):
    return {
        "feedback": None if score is None else f"fb {score}",
        "score": score,
        "analysis": "",
        "missing_reason": reason,
        "raw_answer": "raw",
        "missing_cause": None if reason is None else "unparseable",
    }


def test_parts_round_trip_and_missing_values_come_back_as_none(tmp_path):
    template = load_template("tldr_lmu")
    cache = JudgeCache(str(tmp_path), "judge-model", template)
    cache.put(cache.key("p", "g1"), entry(2))
    cache.put(cache.key("p", "g2"), entry(None, "parse: no score"))
    part = cache.flush()
    assert part and store.is_committed(part, verify=True)
    assert cache.flush() is None  # nothing pending: no empty part

    fresh = JudgeCache(str(tmp_path), "judge-model", template)
    assert fresh.load() == 2
    assert fresh.get(fresh.key("p", "g1")) == entry(2)
    assert fresh.get(fresh.key("p", "g2")) == entry(None, "parse: no score")
    assert fresh.get(fresh.key("p", "g3")) is None


def test_parts_written_before_causes_were_recorded_read_as_unparseable(tmp_path):
    template = load_template("tldr_lmu")
    cache = JudgeCache(str(tmp_path), "judge-model", template)
    old = {k: v for k, v in entry(None, "parse: no score").items() if k != "missing_cause"}
    cache.write_part({cache.key("p", "g"): old})
    fresh = JudgeCache(str(tmp_path), "judge-model", template)
    assert fresh.load() == 1
    assert fresh.get(fresh.key("p", "g")) == entry(None, "parse: no score")


def test_uncommitted_parts_are_ignored(tmp_path):
    template = load_template("hh_lmc")
    writer = JudgeCache(str(tmp_path), "m", template)
    writer.put(writer.key("p", "g"), entry(1))
    part = writer.flush()
    store.remove(part + store.COMMIT_SUFFIX)  # as if the writer died before committing
    assert JudgeCache(str(tmp_path), "m", template).load() == 0


def test_folders_separate_models_template_contents_and_answer_settings(tmp_path):
    tldr = load_template("tldr_lmu")
    edited = tldr.model_copy(update={"system": tldr.system + " Be strict."})
    default = JudgeConfig(model="a/model").answer_settings()
    short = JudgeConfig(model="a/model", max_tokens=32).answer_settings()
    seeded = JudgeConfig(model="a/model", extra_body={"seed": 1, "top_p": 0.9}).answer_settings()
    reordered = {**seeded, "extra_body": {"top_p": 0.9, "seed": 1}}
    uris = [
        JudgeCache(str(tmp_path), "a/model", tldr, default).uri,
        JudgeCache(str(tmp_path), "b/model", tldr, default).uri,
        JudgeCache(str(tmp_path), "a/model", edited, default).uri,
        JudgeCache(str(tmp_path), "a/model", tldr, short).uri,
        JudgeCache(str(tmp_path), "a/model", tldr, seeded).uri,
    ]
    assert len(set(uris)) == 5
    assert JudgeCache(str(tmp_path), "a/model", tldr, reordered).uri == uris[-1]
    assert all("/" not in u.removeprefix(str(tmp_path) + "/") for u in uris)


def test_cache_without_a_store_is_in_memory_only():
    cache = JudgeCache(None, "m", load_template("tldr_lmu"))
    cache.put("k", entry(3))
    assert cache.load() == 1 and cache.flush() is None and cache.get("k") == entry(3)


def test_cache_on_an_fsspec_uri():
    uri = f"memory://judge-cache-test-{uuid.uuid4().hex[:8]}"
    template = load_template("hh_steerlm")
    cache = JudgeCache(uri, "m", template)
    cache.put(cache.key("p", "g"), entry(7))
    cache.flush()
    assert JudgeCache(uri, "m", template).load() == 1


def test_a_corrupt_part_is_skipped_with_a_warning(tmp_path, caplog):
    template = load_template("tldr_lmu")
    writer = JudgeCache(str(tmp_path), "m", template)
    writer.put(writer.key("p", "g"), entry(1))
    part = writer.flush()
    path = Path(part)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    assert JudgeCache(str(tmp_path), "m", template).load() == 0
    assert "ignoring" in caplog.text and "does not match its commit hash" in caplog.text
