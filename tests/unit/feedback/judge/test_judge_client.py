"""The judge client against our fault-injecting OpenAI-compatible server on loopback.

The integration test against a real `vllm serve` judge lives with the shared vLLM
fixture (marked `integration`); the client only needs what vLLM's OpenAI server offers:
`model` in the body, `max_tokens`, and a chat template on the served model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pandas as pd
import pytest

from alt_core.feedback.judge import JudgeConfig, load_template
from alt_core.feedback.judge.client import OUTPUT_COLUMNS, judge_batch
from tests.support.judge_server import FAULTS, JudgeServer

TRANSIENT = ["429", "500", "slow", "drop", "truncated_body"]
PERMANENT = ("400", "401")  # fail a judgement at once: not part of the 2,000-judgement mix
# Faults the server injects, and the client's failure kind each one must show up as.
FAULT_TO_KIND = {
    "429": "failures_429",
    "500": "failures_5xx",
    "slow": "failures_timeout",
    "drop": "failures_connection",
    "truncated_body": "failures_bad_response",
}


def fast_config(server: JudgeServer, **overrides) -> JudgeConfig:
    settings = dict(
        base_url=server.url,
        model="scripted-judge",
        template="tldr_lmu",
        max_concurrency=32,
        timeout_s=1.0,
        max_retries=6,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    return JudgeConfig(**{**settings, **overrides})


def make_rows(n: int, tag: str = "") -> pd.DataFrame:
    ids = [f"<{tag}gen-{i:05d}>" for i in range(n)]
    return pd.DataFrame(
        {
            "prompt": [
                f"POST {i}: my roommate keeps eating my food, what do I do?" for i in range(n)
            ],
            "generation": [f"{g} roommate eats food, author asks for advice" for g in ids],
        }
    )


def judgement_key(template_name: str, prompt: str, generation: str) -> str:
    """What the server identifies a judgement by: the judging user message."""
    return load_template(template_name).messages(prompt, generation)[-1]["content"]


def test_fault_shard_of_2000_judgements(tmp_path):
    rows = make_rows(2000)
    # The first rows hit every fault kind deterministically; the rest draw faults at rates.
    script = {
        f"<gen-{i:05d}>": [fault]
        for i, fault in enumerate(FAULTS)
        if fault not in ("ok", *PERMANENT)
    }
    script["<gen-00100>"] = ["truncated_answer", "off_format"]  # stays unparseable
    rates = {
        "429": 0.02,
        "500": 0.02,
        "slow": 0.001,
        "drop": 0.01,
        "truncated_body": 0.01,
        "truncated_answer": 0.02,
        "off_format": 0.02,
    }
    cache = str(tmp_path / "judge-cache")
    # A generous timeout, so that only the injected slow answers (which never come) time
    # out even on a loaded machine, and the timeout count matches the server's exactly.
    with JudgeServer(rates=rates, script=script, slow_s=30, retry_after_s=0.02, seed=1) as server:
        config = fast_config(server, max_concurrency=64, timeout_s=3.0)
        started = time.perf_counter()
        progress: list[str] = []
        frame, stats = judge_batch(rows, config, cache_uri=cache, progress_log=progress.append)
        elapsed = time.perf_counter() - started
        served = server.counters

        assert list(frame.columns) == OUTPUT_COLUMNS and len(frame) == len(rows)
        assert progress[-1] == "progress 2000/2000 judgements" and len(progress) <= 10
        for fault in FAULTS:
            if fault not in PERMANENT:
                assert served[fault] > 0, f"fault {fault} was never injected"

        # Every judgement the server answered well is present, in input order.
        template = load_template("tldr_lmu")
        keys = [
            judgement_key("tldr_lmu", p, g)
            for p, g in zip(rows.prompt, rows.generation, strict=True)
        ]
        answered = pd.Series([k in server.good_answers for k in keys])
        assert answered.sum() > 1950
        assert frame.loc[answered, "missing_reason"].isna().all()
        expected = [
            template.parse(server.good_answers[k]) for k, a in zip(keys, answered, strict=True) if a
        ]
        assert frame.loc[answered, "feedback"].tolist() == [j.feedback for j in expected]
        assert frame.loc[answered, "score"].tolist() == [j.score for j in expected]
        assert (frame.loc[answered, "reward"] == frame.loc[answered, "score"].astype(float)).all()
        # What is missing was answered, but never in the format: parse failures kept raw.
        missing = frame.loc[~answered]
        assert missing["missing_reason"].str.startswith("parse:").all()
        assert (
            missing["raw_answer"].str.contains("[answer to the repair request]", regex=False).all()
        )
        assert frame.loc[100, "missing_reason"] is not None
        assert missing["reward"].isna().all()

        # The client's counts agree with the server's.
        assert stats["judgements"] == 2000 and stats["missing"] == len(missing)
        assert stats["requests"] == served["requests"]
        for fault, kind in FAULT_TO_KIND.items():
            assert stats[kind] == served[fault], kind
        assert stats["parse_failures"] == served["truncated_answer"] + served["off_format"]
        assert stats["repairs"] == served["repair_judgements"]
        assert stats["repaired"] == stats["repairs"] - len(missing)
        assert stats["retries"] == sum(served[f] for f in TRANSIENT)  # none ran out
        assert stats["failures_4xx"] == 0
        assert (stats["tokens_in"], stats["tokens_out"]) == (
            served["tokens_in"],
            served["tokens_out"],
        )
        assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p90"] <= stats["latency_ms_p99"]
        assert elapsed < 60
        print(f"2,000 judgements in {elapsed:.1f}s: {stats}")

        # A rerun of the finished shard sends nothing and returns the same frame; its
        # judgements are all done at once.
        progress.clear()
        again, stats2 = judge_batch(rows, config, cache_uri=cache, progress_log=progress.append)
        assert progress == ["progress 2000/2000 judgements"]
        assert server.counters["requests"] == served["requests"]
        assert stats2["requests"] == 0 and stats2["cache_hits"] == 2000
        pd.testing.assert_frame_equal(again, frame)


def test_retry_after_is_honoured():
    with JudgeServer(script={"<gen-00000>": ["429", "ok"]}, retry_after_s=0.4) as server:
        frame, stats = judge_batch(make_rows(1), fast_config(server))
        first, second = server.arrivals[next(iter(server.arrivals))]
    assert second - first >= 0.4  # the backoff alone would have waited ~0.01 s
    assert stats["failures_429"] == 1 and stats["retries"] == 1
    assert frame["missing_reason"].isna().all()


def test_retry_after_longer_than_allowed_fails_fast():
    with JudgeServer(script={"<gen-00000>": ["429"]}, retry_after_s=300) as server:
        frame, stats = judge_batch(make_rows(1), fast_config(server, max_retry_after_s=5))
        assert server.counters["requests"] == 1
    assert "exceeds max_retry_after_s" in frame.loc[0, "missing_reason"]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_bounded_retries_end_as_missing_with_the_reason(fault):
    script = {"<gen-00000>": [fault] * 10}
    with JudgeServer(script=script, slow_s=0.6, retry_after_s=0.01) as server:
        config = fast_config(server, max_retries=2, timeout_s=0.2)
        frame, stats = judge_batch(make_rows(2), config)
        assert server.counters["requests"] == 4  # 3 attempts for row 0, 1 for row 1
    reason = frame.loc[0, "missing_reason"]
    kind = FAULT_TO_KIND[fault].removeprefix("failures_")
    assert reason.startswith(f"{kind}:") and "after 3 attempt(s)" in reason
    assert pd.isna(frame.loc[0, "reward"]) and frame.loc[1, "missing_reason"] is None
    assert stats["retries"] == 2 and stats[FAULT_TO_KIND[fault]] == 3 and stats["missing"] == 1


def test_client_error_fails_at_once_and_is_asked_again_on_rerun(tmp_path):
    cache = str(tmp_path / "cache")
    with JudgeServer(script={"<gen-00001>": ["400"]}) as server:
        config = fast_config(server)
        frame, stats = judge_batch(make_rows(3), config, cache_uri=cache)
        assert server.counters["requests"] == 3
        assert frame.loc[1, "missing_reason"].startswith("4xx: HTTP 400")
        assert stats["failures_4xx"] == 1 and stats["retries"] == 0
        # The judge never answered it, so nothing was cached: a rerun asks only for it.
        frame2, stats2 = judge_batch(make_rows(3), config, cache_uri=cache)
        assert stats2["requests"] == 1 and stats2["cache_hits"] == 2
        assert frame2["missing_reason"].isna().all()


def test_unparseable_answer_gets_one_repair(tmp_path):
    script = {
        "<gen-00000>": ["off_format", "ok"],
        "<gen-00001>": ["truncated_answer", "off_format"],
    }
    cache = str(tmp_path / "cache")
    with JudgeServer(script=script) as server:
        config = fast_config(server)
        frame, stats = judge_batch(make_rows(2), config, cache_uri=cache)
        assert server.counters["repairs"] == 2 and server.counters["requests"] == 4
        assert stats["repairs"] == 2 and stats["repaired"] == 1 and stats["parse_failures"] == 3
        assert frame.loc[0, "missing_reason"] is None and frame.loc[0, "score"] in range(4)
        reason = frame.loc[1, "missing_reason"]
        assert reason.startswith("parse:") and "after one repair attempt" in reason
        assert "pretty decent" in frame.loc[1, "raw_answer"]  # the raw text is kept
        # The judge did answer: with cache_unparsed (the default) a rerun pays nothing.
        _, stats2 = judge_batch(make_rows(2), config, cache_uri=cache)
        assert stats2["requests"] == 0
        _, stats3 = judge_batch(
            make_rows(2),
            fast_config(server, cache_unparsed=False),
            cache_uri=str(tmp_path / "other"),
        )
        assert stats3["requests"] == 2


@pytest.mark.parametrize(
    "template,style", [("hh_lmc", "lmc"), ("hh_steerlm", "steerlm"), ("demo_review_lmu", "lmu")]
)
def test_each_template_end_to_end(template, style):
    with JudgeServer(style=style) as server:
        frame, stats = judge_batch(make_rows(20), fast_config(server, template=template))
    assert frame["missing_reason"].isna().all() and stats["requests"] == 20
    assert frame["score"].notna().all() and frame["feedback"].str.len().gt(0).all()


def test_duplicates_are_judged_once_and_rows_keep_their_order():
    rows = make_rows(5)
    rows = pd.concat([rows, rows.iloc[[3, 0, 3]]], ignore_index=True)
    with JudgeServer() as server:
        frame, stats = judge_batch(rows, fast_config(server))
        assert server.counters["requests"] == 5
    assert stats["duplicates"] == 3 and len(frame) == 8
    assert frame.loc[5, "feedback"] == frame.loc[3, "feedback"]
    assert frame.loc[6, "raw_answer"] == frame.loc[0, "raw_answer"]


def test_rows_as_dicts_pairs_or_named_columns():
    with JudgeServer() as server:
        config = fast_config(server)
        pairs = [("a post", "<gen-1> a summary"), ("b post", "<gen-2> b summary")]
        by_pairs, _ = judge_batch(pairs, config)
        by_dicts, _ = judge_batch([{"prompt": p, "generation": g} for p, g in pairs], config)
        named = pd.DataFrame({"post": [p for p, _ in pairs], "tldr": [g for _, g in pairs]})
        by_names, _ = judge_batch(named, config, prompt_column="post", generation_column="tldr")
        pd.testing.assert_frame_equal(by_pairs, by_dicts)
        pd.testing.assert_frame_equal(by_pairs, by_names)
        with pytest.raises(ValueError, match="lack column"):
            judge_batch(named, config)


def test_cache_through_fsspec_remote_filesystem():
    """memory:// takes the store's remote path (fsspec, no local rename)."""
    cache = f"memory://judge-cache-{uuid.uuid4().hex[:8]}"
    with JudgeServer() as server:
        config = fast_config(server)
        _, stats = judge_batch(make_rows(30), config, cache_uri=cache)
        _, stats2 = judge_batch(make_rows(30), config, cache_uri=cache)
        assert stats["requests"] == 30 and stats2["requests"] == 0
        assert server.counters["requests"] == 30


def test_concurrent_shards_do_not_clobber_the_cache(tmp_path):
    cache = str(tmp_path / "cache")
    shards = [make_rows(40, tag="a"), make_rows(40, tag="b")]
    with JudgeServer(delay_s=0.01) as server:
        config = fast_config(server, cache_flush_every=7)  # many parts from each shard
        results = {}

        def run(i):
            results[i] = judge_batch(shards[i], config, cache_uri=cache)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.counters["requests"] == 80
        _, stats = judge_batch(pd.concat(shards), config, cache_uri=cache)
    assert stats["requests"] == 0 and stats["cache_hits"] == 80
    parts = list((tmp_path / "cache").rglob("part-*.parquet"))
    assert len(parts) >= 2 * 6 and all(p.with_name(p.name + ".commit.json").exists() for p in parts)


def test_cache_is_keyed_by_model_and_template(tmp_path):
    cache = str(tmp_path / "cache")
    with JudgeServer() as server:
        judge_batch(make_rows(3), fast_config(server), cache_uri=cache)
        _, other_model = judge_batch(
            make_rows(3), fast_config(server, model="other"), cache_uri=cache
        )
        _, other_template = judge_batch(
            make_rows(3), fast_config(server, template="demo_review_lmu"), cache_uri=cache
        )
    assert other_model["requests"] == 3 and other_template["requests"] == 3


def test_rate_limit_paces_requests():
    with JudgeServer() as server:
        config = fast_config(server, requests_per_minute=1200)  # 20/s, bucket of 20
        started = time.perf_counter()
        judge_batch(make_rows(40), config)
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.9  # 20 at once, then 20 more at 20/s


def test_counters_endpoint_matches():
    import httpx

    with JudgeServer() as server:
        judge_batch(make_rows(3), fast_config(server))
        served = httpx.get(server.url.removesuffix("/v1") + "/_counters").json()
    assert served["requests"] == 3 and json.dumps(served)


def test_empty_batch_and_bad_rows():
    with JudgeServer() as server:
        frame, stats = judge_batch([], fast_config(server))
        assert list(frame.columns) == OUTPUT_COLUMNS and frame.empty and stats["requests"] == 0
        with pytest.raises(TypeError, match="must be a DataFrame"):
            judge_batch(42, fast_config(server))


def test_sync_wrapper_works_inside_a_running_event_loop():
    import asyncio

    async def caller(config):
        return judge_batch(make_rows(3), config)  # e.g. from a notebook or an async task

    with JudgeServer() as server:
        frame, stats = asyncio.run(caller(fast_config(server)))
    assert stats["requests"] == 3 and frame["missing_reason"].isna().all()
