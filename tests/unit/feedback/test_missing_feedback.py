"""Missing feedback is a failure, not a result: the `feedback.max_missing_share` rule,
the cause each missing row is blamed on, the failure record beside an uncommitted
shard, and a retry that asks the judge only for what it did not answer before."""

from __future__ import annotations

import socket
import time

import numpy as np
import pandas as pd
import pytest

from alt_core import store
from alt_core.config import RunConfig, load_config
from alt_core.feedback.base import (
    MISSING_CAUSES,
    NO_GENERATION,
    FeedbackIncompleteError,
    check_complete,
    feedback_frame,
    missing_causes,
)
from alt_core.pipeline.layout import RunLayout
from alt_core.pipeline.specs import FeedbackSpec
from alt_core.pipeline.stages import score_feedback
from tests.support.judge_server import JudgeServer

FAST = {"timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 2}


def scored(missing: int, rows: int = 100, cause: str = "unparseable") -> pd.DataFrame:
    reward = np.arange(rows, dtype=float)
    reward[:missing] = np.nan
    reason = pd.Series([f"{cause}: row {i}" if i < missing else None for i in range(rows)])
    out = feedback_frame(pd.RangeIndex(rows), reward=reward, missing_reason=reason)
    out["missing_cause"] = reason.str.split(":").str[0]
    return out


# --------------------------------------------------------------------- the threshold rule


def test_the_default_share_is_small():
    config = load_config("demo")
    assert config.feedback.max_missing_share == 0.05
    field = type(config.feedback).model_fields["max_missing_share"]
    assert field.description and "unparseable" in field.description
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="max_missing_share"):
            load_config("demo", overrides=[f"feedback.max_missing_share={bad}"])


def test_just_below_or_at_the_share_commits_just_above_fails():
    assert check_complete(scored(5), 0.05, shard="s", rerun="alt resume R") == {"unparseable": 5}
    assert check_complete(scored(0), 0.0, shard="s", rerun="alt resume R") == {}
    with pytest.raises(FeedbackIncompleteError) as info:
        check_complete(scored(6), 0.05, shard="iter_001/train_feedback/shard_000", rerun="r")
    error = info.value
    assert (error.missing, error.rows, error.causes, error.cause) == (
        6,
        100,
        {"unparseable": 6},
        "unparseable",
    )
    assert str(error).startswith("iter_001/train_feedback/shard_000: 6 of 100 rows missing")
    assert "max_missing_share=0.05" in str(error) and "nothing committed" in str(error)
    assert check_complete(scored(100), 1.0, shard="s", rerun="r") == {"unparseable": 100}


def test_rows_without_a_generation_do_not_count_against_the_share():
    frame = scored(50)
    frame.loc[:49, "missing_reason"] = "no generation"
    frame.loc[:49, "missing_cause"] = NO_GENERATION
    frame.loc[50, ["reward", "missing_reason", "missing_cause"]] = [np.nan, "unparseable: x", None]
    # 1 of the 50 rows that had something to score is missing: 2%, under 5%.
    counts = check_complete(frame, 0.05, shard="s", rerun="r")
    assert counts == {NO_GENERATION: 50, "unparseable": 1}


def test_causes_come_from_the_column_else_the_reason():
    frame = feedback_frame(
        pd.RangeIndex(5),
        reward=np.array([1.0, np.nan, np.nan, np.nan, np.nan]),
        missing_reason=pd.Series([None, "no generation", "non_finite: NaN", "boom", None]),
    )
    assert missing_causes(frame).tolist() == [
        None,
        NO_GENERATION,
        "non_finite",
        "unknown",
        "unknown",
    ]
    frame["missing_cause"] = [None, None, "rate_limited", None, None]
    assert missing_causes(frame).tolist()[2] == "rate_limited"
    assert set(MISSING_CAUSES) >= {"unreachable", "unauthorized", "rate_limited", "unparseable"}


def test_the_error_survives_pickling():
    import pickle

    with pytest.raises(FeedbackIncompleteError) as info:
        check_complete(scored(10), 0.05, shard="s", rerun="r")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.causes == {"unparseable": 10}


# --------------------------------------------------------------------- through the stage


def run_config(tmp_path, url: str, **judge) -> RunConfig:
    settings = {"base_url": url, "model": "scripted-judge", "template": "tldr_lmu", **FAST, **judge}
    return load_config(
        "demo",
        overrides=[
            "method=alt_lmu",
            "feedback.provider=judge",
            f"feedback.judge_cache={tmp_path / 'judge-cache'}",
        ]
        + [f"feedback.judge.{k}={v}" for k, v in settings.items()],
    )


def shard_spec(tmp_path, config: RunConfig, n: int = 20) -> FeedbackSpec:
    layout = RunLayout(str(tmp_path / "run"))
    samples = pd.DataFrame(
        {
            "prompt_id": range(n),
            "prompt": [f"Review {i}: The hotel" for i in range(n)],
            "query": [f"Review {i}: The hotel" for i in range(n)],
            "sample_idx": 0,
            "generation": [f" <gen-{i:03d}> the staff were lovely." for i in range(n)],
            "num_tokens": 7,
            "truncated": False,
        }
    )
    input_uri = layout.shard(1, "train_sample", 0)
    store.write_table(input_uri, samples)
    output_uri = layout.shard(1, "train_feedback", 0)
    return FeedbackSpec(config=config, input_uri=input_uri, output_uri=output_uri, fingerprint="f")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def fail_shard(spec: FeedbackSpec) -> FeedbackIncompleteError:
    with pytest.raises(FeedbackIncompleteError) as info:
        score_feedback(spec, log=lambda _line: None)
    assert not store.is_committed(spec.output_uri)
    marker = store.read_json(spec.output_uri + ".failed.json")
    error = info.value
    assert set(marker) == {"cause", "causes", "missing", "rows", "message", "at"}
    assert marker["cause"] == error.cause and marker["causes"] == error.causes
    assert marker["message"] == str(error) and marker["at"] <= time.time()
    assert (marker["missing"], marker["rows"]) == (error.missing, error.rows)
    return error


def test_an_unreachable_judge_fails_the_shard_in_seconds_with_the_defaults(tmp_path):
    url = closed_port_url()
    config = run_config(tmp_path, url)
    judge = config.feedback.judge
    for name in ("timeout_s", "backoff_base_s", "backoff_max_s", "max_retries"):
        setattr(judge, name, type(judge).model_fields[name].default)
    spec = shard_spec(tmp_path, config)
    started = time.perf_counter()
    error = fail_shard(spec)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"an unreachable judge took {elapsed:.1f}s to fail the shard"
    assert error.causes == {"unreachable": 20}
    message = str(error)
    assert message.startswith("iter_001/train_feedback/shard_000: 20 of 20 judgements missing")
    assert f"cannot connect to {url}" in message and "start the judge" in message
    assert f"alt resume {tmp_path / 'run'}" in message and "cached" in message


@pytest.mark.parametrize(
    ("faults", "cause", "said"),
    [
        (["401"], "unauthorized", "HTTP 401"),
        (["429"] * 3, "rate_limited", "the retry budget is spent"),
        (["off_format"] * 2, "unparseable", "after one repair attempt"),
        (["500"] * 3, "server_error", "HTTP 500"),
    ],
)
def test_each_cause_is_named_with_what_to_fix(tmp_path, monkeypatch, faults, cause, said):
    monkeypatch.setenv("ALT_OUTAGE_TEST_KEY", "sk-outage-Jw5Rq8Zt3Lm")
    script = {f"<gen-{i:03d}>": list(faults) for i in range(20)}
    with JudgeServer(script=script, retry_after_s=0.01) as server:
        config = run_config(tmp_path, server.url, api_key_env="ALT_OUTAGE_TEST_KEY")
        error = fail_shard(shard_spec(tmp_path, config))
    assert error.causes == {cause: 20}
    message = str(error)
    assert f"20 of 20 judgements missing ({cause}: 20 — " in message and said in message
    assert MISSING_CAUSES[cause] in message
    assert "sk-outage" not in message and "Bearer" not in message


def test_below_the_share_the_shard_commits_with_the_causes_in_its_stats(tmp_path):
    script = {"<gen-004>": ["off_format", "off_format"]}
    with JudgeServer(script=script) as server:
        spec = shard_spec(tmp_path, run_config(tmp_path, server.url), n=40)
        stats = score_feedback(spec, log=lambda _line: None)
    assert store.is_committed(spec.output_uri)
    assert stats["missing"] == 1 and stats["missing_unparseable"] == 1
    assert stats["judge_missing"] == 1
    assert not store.exists(spec.output_uri + ".failed.json")


def test_a_retry_asks_only_what_was_not_answered_and_clears_the_failure(tmp_path):
    # 12 of 20 answered; 8 fail with 500s until the retries are spent (40% missing).
    script = {f"<gen-{i:03d}>": ["500"] * 3 for i in range(12, 20)}
    with JudgeServer(script=script) as server:
        spec = shard_spec(tmp_path, run_config(tmp_path, server.url))
        error = fail_shard(spec)
        assert error.causes == {"server_error": 8}
        answered = set(server.good_answers)
        assert len(answered) == 12
        server.script.clear()  # the judge is mended: every request is answered now
        server.reset()
        stats = score_feedback(spec, log=lambda _line: None)
        asked = set(server.arrivals)
        assert server.counters["requests"] == 8
    assert len(asked) == 8 and not asked & answered
    assert stats["judge_cache_hits"] == 12 and stats["missing"] == 0
    assert store.is_committed(spec.output_uri)
    assert not store.exists(spec.output_uri + ".failed.json")
    assert store.read_table(spec.output_uri)["missing_reason"].isna().all()


def test_a_non_finite_reward_is_missing_feedback_not_a_reward():
    from alt_core.feedback.reward_model import RewardModelProvider

    provider = object.__new__(RewardModelProvider)  # no model: the scores are given
    provider.rewards = lambda texts: np.array([0.5, np.nan, np.inf][: len(texts)])
    frame = pd.DataFrame({"prompt": ["a", "b", "c", "d"], "generation": ["x", "y", None, "z"]})
    out = provider.score(frame)
    assert out["reward"].tolist()[0] == 0.5 and out["reward"].iloc[1:].isna().all()
    assert missing_causes(out).tolist() == [None, "non_finite", NO_GENERATION, "non_finite"]
    with pytest.raises(FeedbackIncompleteError, match="2 of 3 rows missing"):
        check_complete(out, 0.05, shard="s", rerun="r")
