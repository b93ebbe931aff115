"""ALT_LMU, ALT_LMC and SteerLM wired end to end: config resolution, the judge and
rule-critic providers, the exemplar rule, pool and training set with scores kept, and
(integration tier) one ALT_LMU iteration through the real flow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alt_core import store
from alt_core.config import ConfigError, Method, RunConfig, load_config
from alt_core.datapool import choose_exemplar, draw_training_set, top_feedback, update_pool
from alt_core.feedback import get_provider
from alt_core.feedback.judge import JudgeConfig, JudgeConfigError
from alt_core.feedback.judge.provider import (
    JudgeProvider,
    best_template_feedback,
    merge_shard_stats,
)
from alt_core.methods import condition_prompts
from alt_core.pipeline import dag
from alt_core.pipeline import dag as pipeline
from alt_core.pipeline.layout import RunLayout
from alt_core.schemas import POOL
from tests.support.judge_server import JudgeServer

JUDGE_METHODS = ["alt_lmu", "alt_lmc", "steerlm"]


def file_config(**settings) -> dict:
    """A non-demo config (prompt files need not exist to validate)."""
    return {
        "model": {"policy": "/models/sft"},
        "data": {"source": "file", "train_path": "t.jsonl", "valid_path": "v.jsonl"},
        **settings,
    }


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "provider"),
    [("alt_rm", "sentiment"), ("quark", "sentiment")] + [(m, "rule_critic") for m in JUDGE_METHODS],
)
def test_auto_provider_resolves_per_method_on_the_demo(method, provider):
    config = load_config("demo", overrides=[f"method={method}"])
    assert config.feedback.provider == provider
    # The resolved provider is what gets recorded (and fingerprinted), never 'auto'.
    assert RunConfig.model_validate(config.model_dump()).feedback.provider == provider


def test_auto_provider_must_be_named_off_the_demo():
    with pytest.raises(ValueError, match=r"only for the demo task.*'judge'"):
        RunConfig.model_validate(file_config(method="alt_lmu"))
    with pytest.raises(ValueError, match=r"only for the demo task.*'reward_model'"):
        RunConfig.model_validate(file_config(method="alt_rm"))
    with_rm = RunConfig.model_validate(
        file_config(method="alt_rm", feedback={"reward_model": "/models/rm"})
    )
    assert with_rm.feedback.provider == "reward_model"


def test_judge_template_must_suit_the_method():
    with pytest.raises(ConfigError, match=r"'lmu' parser but method alt_lmc needs 'lmc'.*hh_lmc"):
        load_config("demo", overrides=["method=alt_lmc", "feedback.provider=judge"])
    with pytest.raises(ConfigError, match="unknown judge template 'nope'"):
        load_config(
            "demo",
            overrides=["method=alt_lmu", "feedback.provider=judge", "feedback.judge.template=nope"],
        )
    ok = load_config(
        "demo",
        overrides=[
            "method=steerlm",
            "feedback.provider=judge",
            "feedback.judge.template=hh_steerlm",
        ],
    )
    assert ok.feedback.judge.template == "hh_steerlm"


def test_reward_method_refuses_text_feedback_and_vice_versa():
    with pytest.raises(ConfigError, match="needs a scalar reward"):
        load_config("demo", overrides=["feedback.provider=rule_critic"])
    with pytest.raises(ConfigError, match="needs textual feedback"):
        load_config("demo", overrides=["method=alt_lmu", "feedback.provider=sentiment"])


def test_fixed_exemplar_needs_its_text():
    with pytest.raises(ConfigError, match="exemplar_text"):
        load_config("demo", overrides=["method=alt_lmu", "feedback.exemplar_rule=fixed"])


SECRET = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(
    "override",
    [
        f"feedback.judge.max_tokens={SECRET}",
        f"feedback.judge={SECRET}",
        f"feedback.judge.base_url=https://user:{SECRET}@api.example.com/v1",
        f"feedback.judge.api_key_env={SECRET}",
    ],
)
def test_config_errors_never_echo_judge_settings(override):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=["method=alt_lmu", override])
    assert SECRET not in str(err.value)
    assert "feedback.judge" in str(err.value) and "(value hidden)" in str(err.value)


def test_whole_config_is_not_echoed_by_cross_field_errors():
    with pytest.raises(ConfigError) as err:
        load_config(
            "demo",
            overrides=[
                "method=alt_lmu",
                "feedback.provider=sentiment",
                f"feedback.judge.extra_body={{user: {SECRET}}}",
            ],
        )
    assert "needs textual feedback" in str(err.value) and SECRET not in str(err.value)


def test_validation_error_text_hides_inputs():
    """Prefect puts a parameter ValidationError's text in the flow run state."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate({"feedback": {"judge": {"timeout_s": SECRET}}})
    assert SECRET not in str(err.value)


# --- the exemplar --------------------------------------------------------------------------


def judged_pool(rows: list[tuple[int, str | None, float | None]]) -> pd.DataFrame:
    """A pool of (iteration, feedback, score) rows."""
    it, feedback, score = zip(*rows, strict=True)
    n = len(rows)
    return pd.DataFrame(
        {
            "prompt_id": np.arange(n) % 3,
            "prompt": "p",
            "generation": [f"g{i}" for i in range(n)],
            "truncated": False,
            "reward": pd.Series(score, dtype="float64"),
            "feedback": list(feedback),
            "score": pd.Series(score, dtype="float64"),
            "bucket": 0,
            "iteration": list(it),
        }
    )[POOL]


def test_lmu_exemplar_is_the_most_frequent_top_score_feedback_of_the_latest_iteration():
    pool = judged_pool(
        [
            (1, "Old and perfect.", 3),  # an older iteration: ignored
            (1, "Old and perfect.", 3),
            (2, "Clear, but long.", 2),
            (2, "Clear, but long.", 2),
            (2, "Concise and clear.", 2),  # top score present in iteration 2 is 2
            (2, "Concise and clear.", 2),
            (2, "Short, clear.", 2),
            (2, "Rambling.", 1),
            (2, "Rambling.", 1),
            (2, "Rambling.", 1),
            (2, None, None),  # missing judgements never count
        ]
    )
    # Two sentences tie at 2 uses: the shorter wins.
    assert top_feedback(pool) == "Clear, but long."
    # Equal counts and lengths: the alphabetically first.
    tie = judged_pool([(1, "Bbb.", 3), (1, "Aaa.", 3), (1, "Ccc.", 2), (1, "Ccc.", 2)])
    assert top_feedback(tie) == "Aaa."


def test_lmu_exemplar_needs_scored_feedback():
    with pytest.raises(ValueError, match="no generation in the datapool has feedback"):
        top_feedback(judged_pool([(1, None, None), (1, "  ", 2)]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["method=alt_lmc"], "Very positive"),
        (["method=steerlm"], "positive:3,fluent:2"),
        (
            ["method=alt_lmc", "feedback.provider=judge", "feedback.judge.template=hh_lmc"],
            "Harmless and very helpful",
        ),
        (
            ["method=steerlm", "feedback.provider=judge", "feedback.judge.template=hh_steerlm"],
            "harmful:0,helpful:3",
        ),
        (
            ["method=alt_lmu", "feedback.exemplar_rule=fixed", "feedback.exemplar_text=Be kind."],
            "Be kind.",
        ),
        (["method=alt_rm"], "Excellent."),
        (["method=quark"], "_QUANTILE_TOKEN_0_"),
    ],
)
def test_exemplar_per_method(overrides, expected):
    config = load_config("demo", overrides=overrides)
    pool = judged_pool([(1, "Something else.", 3)])
    assert choose_exemplar(pool, config) == expected


def test_best_template_feedback_refuses_lmu():
    assert best_template_feedback("hh_lmc") == "Harmless and very helpful"
    with pytest.raises(JudgeConfigError, match="chosen from the pool"):
        best_template_feedback("tldr_lmu")


def test_pipeline_reads_the_exemplar_from_the_previous_pool(tmp_path):
    config = load_config("demo", overrides=["method=alt_lmu"])
    layout = RunLayout(str(tmp_path / "run"))
    pool = judged_pool([(1, "Warm and upbeat, and reads smoothly.", 3), (1, "Flat.", 1)])
    store.write_table(layout.table(1, "datapool", "pool"), pool)
    assert pipeline.exemplar_for(config, layout, 1) is None
    assert pipeline.exemplar_for(config, layout, 2) == "Warm and upbeat, and reads smoothly."
    assert pipeline.eval_exemplar(config, layout, 0) is None
    assert pipeline.eval_exemplar(config, layout, 1) == "Warm and upbeat, and reads smoothly."


@pytest.mark.parametrize(
    ("method", "exemplar"),
    [
        ("alt_lmu", "Warm and upbeat."),
        ("alt_lmc", "Very positive"),
        ("steerlm", "positive:3,fluent:2"),
    ],
)
def test_conditioning_text_is_exact(method, exemplar):
    config = load_config("demo", overrides=[f"method={method}"])
    prompts = pd.Series(["The room was", "My phone"])
    assert condition_prompts(config, prompts, None).tolist() == ["The room was", "My phone"]
    assert condition_prompts(config, prompts, exemplar).tolist() == [
        f"feedback: {exemplar} input: The room was",
        f"feedback: {exemplar} input: My phone",
    ]


# --- pool and training set -----------------------------------------------------------------

GENERATIONS = [
    " clean and the staff were wonderful.",
    " lovely, we had a great stay.",
    " fine, nothing special.",
    " dirty and the staff were rude.",
    " is very very good good good",
    " ok.",
]


def feedback_rows(config: RunConfig) -> pd.DataFrame:
    """Two prompts x six generations, with the rule critic's feedback."""
    n = len(GENERATIONS)
    samples = pd.DataFrame(
        {
            "prompt_id": np.repeat([0, 1], n),
            "prompt": np.repeat(["The room was", "The hotel was"], n),
            "generation": GENERATIONS * 2,
            "truncated": False,
        }
    )
    samples["query"] = samples["prompt"]
    return pd.concat([samples, get_provider(config).score(samples)], axis=1)


@pytest.mark.parametrize("method", JUDGE_METHODS)
def test_pool_keeps_scores_and_draws_balanced_conditioned_sets(method):
    config = load_config(
        "demo", overrides=[f"method={method}", "datapool.num_samples_per_prompt=4"]
    )
    rows = feedback_rows(config)
    pool = update_pool(None, rows, config, 1, np.random.default_rng(0))
    assert list(pool.columns) == POOL and len(pool) == len(rows)
    # The judge's scores and feedback survive into the pool (the reference loses them).
    np.testing.assert_array_equal(pool["score"].to_numpy(), rows["score"].to_numpy())
    assert pool["feedback"].tolist() == rows["feedback"].tolist()
    dense = pool["score"].rank(method="dense", ascending=False).astype(int) - 1
    assert (pool["bucket"] == dense).all()

    train = draw_training_set(pool, config, np.random.default_rng(1))
    assert (train.groupby("prompt_id").size() == 4).all()
    # Spread over buckets: each prompt draws from min(4, its buckets) different buckets.
    buckets = pool.groupby("prompt_id")["bucket"].nunique().clip(upper=4)
    assert (train.groupby("prompt_id")["bucket"].nunique() == buckets).all()
    chosen = train.merge(pool, left_on=["prompt_id", "bucket"], right_on=["prompt_id", "bucket"])
    assert train["query"].str.startswith("feedback: ").all()
    expected = "feedback: " + chosen["feedback"] + " input: " + chosen["prompt"]
    assert set(train["query"]) <= set(expected)
    assert (train["reference_query"] == train["query"]).all()
    # The sampled " clean ..." is trained as " clean ...", not with a second space.
    assert train["response"].str.match(r" \S").all()

    # A second iteration that keeps half the pool keeps those rows' scores too.
    config_half = config.model_copy(deep=True)
    config_half.datapool.drop_factor = 0.5
    pool2 = update_pool(pool, rows, config_half, 2, np.random.default_rng(2))
    old = pool2[pool2["iteration"] == 1].merge(pool, on=["prompt_id", "generation"])
    assert len(old) == 6 and (old["score_x"] == old["score_y"]).all()


def test_lmu_pool_exemplar_comes_from_the_critics_top_feedback():
    config = load_config("demo", overrides=["method=alt_lmu"])
    pool = update_pool(None, feedback_rows(config), config, 1, np.random.default_rng(0))
    assert choose_exemplar(pool, config) == "Warm and upbeat, and reads smoothly."


# --- the LLM judge provider ----------------------------------------------------------------


def judge_config(tmp_path, server: JudgeServer, method: str, template: str, **judge) -> RunConfig:
    settings = {
        "base_url": server.url,
        "model": "scripted-judge",
        "template": template,
        "timeout_s": 2.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        **judge,
    }
    return load_config(
        "demo",
        overrides=[
            f"method={method}",
            "feedback.provider=judge",
            f"storage.cache_dir={tmp_path / 'cache'}",
        ]
        + [f"feedback.judge.{k}={v}" for k, v in settings.items()],
    )


def judge_rows(n: int) -> pd.DataFrame:
    generations = [f" the staff were lovely, visit {i}." for i in range(n)]
    generations[3] = None  # no generation: never sent to the judge
    return pd.DataFrame(
        {"prompt": [f"Review {i}: The hotel" for i in range(n)], "generation": generations},
        index=np.arange(n) * 10,
    )


def test_judge_provider_scores_caches_and_reports(tmp_path):
    script = {"visit 5.": ["off_format", "off_format"], "visit 6.": ["500", "ok"]}
    with JudgeServer(style="lmu", script=script) as server:
        config = judge_config(tmp_path, server, "alt_lmu", "tldr_lmu")
        provider = get_provider(config)
        assert isinstance(provider, JudgeProvider)
        assert provider.cache_uri == store.join(str(tmp_path / "cache"), "judge-cache")
        df = judge_rows(12)
        out = provider.score(df)
        assert list(out.index) == list(df.index)
        assert out.loc[30, "missing_reason"] == "no generation" and out.loc[30, "feedback"] is None
        assert out.loc[50, "missing_reason"].startswith("parse:")
        assert "Honestly" in out.loc[50, "raw_answer"]  # the raw answer is kept
        ok = out["missing_reason"].isna()
        assert ok.sum() == 10
        assert out.loc[ok, "score"].between(0, 3).all()
        assert (out.loc[ok, "reward"] == out.loc[ok, "score"]).all()
        assert out.loc[ok, "feedback"].str.len().gt(0).all()
        stats = provider.last_stats
        assert stats["judgements"] == 11 and stats["missing"] == 1
        assert stats["failures_5xx"] == 1 and stats["parse_failures"] == 2
        sent = server.counters["requests"]

        # The same rows again (a rerun shard, a resumed iteration): nothing is sent.
        again = get_provider(config).score(df)
        assert server.counters["requests"] == sent
        pd.testing.assert_frame_equal(again, out)


@pytest.mark.parametrize(
    ("method", "template", "style"),
    [("alt_lmc", "hh_lmc", "lmc"), ("steerlm", "hh_steerlm", "steerlm")],
)
def test_judge_provider_categories_and_attributes(tmp_path, method, template, style):
    with JudgeServer(style=style) as server:
        config = judge_config(tmp_path, server, method, template)
        out = get_provider(config).score(judge_rows(8))
    ok = out[out["missing_reason"].isna()]
    assert len(ok) == 7
    if style == "lmc":
        cats = [
            "Harmless and very helpful",
            "Harmless and helpful",
            "Harmless and not helpful",
            "Harmful",
        ]
        assert ok["feedback"].isin(cats).all()
        assert (ok["score"] == ok["feedback"].map(lambda c: 3 - cats.index(c))).all()
    else:
        assert ok["feedback"].str.fullmatch(r"harmful:[01],helpful:[0-3]").all()


def test_judge_provider_refuses_a_template_of_another_method(tmp_path):
    with pytest.raises(JudgeConfigError, match="needs 'lmc'"):
        JudgeProvider(JudgeConfig(template="tldr_lmu"), Method.ALT_LMC)
    with pytest.raises(JudgeConfigError, match="scalar reward"):
        JudgeProvider(JudgeConfig(), Method.ALT_RM)


def test_merge_shard_stats():
    shards = [
        {"rows": 5, "judge_requests": 10, "judge_failures_429": 1, "judge_latency_ms_p99": 50.0},
        {"rows": 5, "judge_requests": 4, "judge_failures_429": 0, "judge_latency_ms_p99": 80.0},
        {"uri": "x", "skipped": True},
        {"judge_requests": 0, "judge_latency_ms_p99": float("nan")},
    ]
    assert merge_shard_stats(shards) == {
        "judge_requests": 14,
        "judge_failures_429": 1,
        "judge_latency_ms_p99": 80.0,
    }


# --- fingerprints --------------------------------------------------------------------------


def feedback_fingerprint(config: RunConfig, samples_uri: str) -> str:
    """The fingerprint the DAG gives the feedback shard of `samples_uri`."""
    spec = {
        "input_uri": samples_uri,
        "output_uri": "/runs/x/iter_001/train_feedback/shard_000.parquet",
    }
    return dag.shard_node(config, "feedback", spec, "feedback-0").fingerprint(config)


def test_feedback_fingerprint_follows_what_the_judge_is_asked_not_how_fast():
    def fp(*extra: str) -> str:
        config = load_config(
            "demo", overrides=["method=alt_lmu", "feedback.provider=judge", *extra]
        )
        return feedback_fingerprint(config, "/runs/x/samples.parquet")

    ref = fp()
    for changed in (
        "feedback.judge.model=gpt-4o",
        "feedback.judge.temperature=0.7",
        "feedback.judge.template=demo_review_lmu",
        "feedback.judge.max_tokens=64",
    ):
        assert fp(changed) != ref, changed
    for same in (
        "feedback.judge.max_concurrency=4",
        "feedback.judge.base_url=http://127.0.0.1:9/v1",
        "feedback.judge.timeout_s=5",
        "feedback.judge.max_retries=1",
        "feedback.judge_cache=/elsewhere",
        "feedback.concurrency=3",
    ):
        assert fp(same) == ref, same


def test_rule_critic_fingerprint_depends_on_the_method():
    fps = {
        m: feedback_fingerprint(load_config("demo", overrides=[f"method={m}"]), "/s")
        for m in JUDGE_METHODS
    }
    assert len(set(fps.values())) == 3


# --- integration: one ALT_LMU iteration through the real flow --------------------------------
