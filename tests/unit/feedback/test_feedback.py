"""Feedback providers: the registry, the VADER sentiment reward and the reward model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alt_core.config import RunConfig
from alt_core.feedback import FEEDBACK_COLUMNS, FeedbackProvider, get_provider
from alt_core.feedback.reward_model import (
    RewardModelError,
    RewardModelProvider,
    join_prompt_generation,
)
from alt_core.feedback.sentiment import SentimentProvider
from alt_core.schemas import FEEDBACK, SAMPLES


def samples(prompts: list[str], generations: list, index=None) -> pd.DataFrame:
    return pd.DataFrame({"prompt": prompts, "generation": generations}, index=index)


# --- registry ----------------------------------------------------------------------------


def test_feedback_columns_follow_the_schema():
    assert [c for c in FEEDBACK if c not in SAMPLES] == FEEDBACK_COLUMNS


def test_registry_builds_the_sentiment_provider():
    provider = get_provider(RunConfig())
    assert isinstance(provider, SentimentProvider) and isinstance(provider, FeedbackProvider)


# --- sentiment ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentiment() -> SentimentProvider:
    return SentimentProvider()


def test_sentiment_scores_known_texts(sentiment):
    df = samples(
        ["The room was"] * 3,
        [" clean and the staff were wonderful.", " dirty and the staff were rude.", " blue."],
    )
    out = sentiment.score(df)
    assert list(out.columns) == FEEDBACK_COLUMNS
    assert out["reward"].iloc[0] > 0.5 and out["reward"].iloc[1] < -0.5
    assert out["reward"].iloc[2] == 0.0
    assert out["reward"].between(-1, 1).all()
    assert out["feedback"].isna().all() and out["missing_reason"].isna().all()


def test_sentiment_ignores_the_prompt(sentiment):
    gen = " lovely, I would recommend it."
    df = samples(
        ["Horrible awful terrible disgusting:", "Wonderful amazing perfect:", ""], [gen] * 3
    )
    rewards = sentiment.score(df)["reward"]
    assert rewards.nunique() == 1 and rewards.iloc[0] > 0.5
    bad_prompt_only = sentiment.score(samples(["I hated it, awful."], [" The room was blue."]))
    assert bad_prompt_only["reward"].iloc[0] == 0.0


def test_sentiment_empty_and_missing_generations(sentiment):
    df = samples(["a", "b", "c", "d"], ["", "   ", None, np.nan], index=[7, 3, 11, 0])
    out = sentiment.score(df)
    assert list(out.index) == [7, 3, 11, 0]  # aligned with the input rows
    assert out["reward"].tolist()[:2] == [0.0, 0.0]
    assert out["reward"].iloc[2:].isna().all()
    assert out["missing_reason"].tolist() == [None, None, "no generation", "no generation"]
    assert out["reward"].dtype == np.float64


def test_sentiment_needs_prompt_and_generation(sentiment):
    with pytest.raises(ValueError, match="generation"):
        sentiment.score(pd.DataFrame({"prompt": ["x"]}))


# --- reward model ------------------------------------------------------------------------

TEXTS = [
    "The room was clean and the staff were friendly.",
    "The food was cold and the waiter was rude.",
    "My new phone is fast.",
    "The plot was dull but the ending was great.",
]


def tiny_tokenizer():
    from alt_core.tasks.demo.assets import train_tokenizer

    return train_tokenizer(TEXTS * 5, vocab_size=300, model_max_length=64)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> str:
    """A tiny, randomly initialised scalar-head GPT-2 saved with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # spread the scores out
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def rm_frame(n: int = 10) -> pd.DataFrame:
    """Rows of different lengths, so batches need padding."""
    prompts = ["The room was", "The food was", "My new phone is", "The plot was"]
    gens = [
        " clean.",
        " cold and the waiter was rude.",
        " fast.",
        " dull but the ending was great.",
    ]
    return samples(
        [prompts[i % 4] for i in range(n)],
        [gens[(i * 3) % 4] * (1 + i % 3) for i in range(n)],
        index=range(100, 100 + n),
    )


def test_reward_model_scores_one_float_per_row(reward_model_dir):
    provider = RewardModelProvider(reward_model_dir, batch_size=4, max_length=64)
    df = rm_frame()
    out = provider.score(df)
    assert list(out.columns) == FEEDBACK_COLUMNS and out.index.equals(df.index)
    assert out["reward"].notna().all() and out["reward"].dtype == np.float64
    assert out["reward"].nunique() > 1
    assert (
        provider.device.type == "cpu" and next(provider.model.parameters()).dtype.is_floating_point
    )


def test_reward_model_is_batch_invariant_and_deterministic(reward_model_dir):
    df = rm_frame()
    one = RewardModelProvider(reward_model_dir, batch_size=1).score(df)["reward"]
    three = RewardModelProvider(reward_model_dir, batch_size=3).score(df)["reward"]
    many = RewardModelProvider(reward_model_dir, batch_size=64).score(df)["reward"]
    np.testing.assert_allclose(one, three, atol=1e-5)
    np.testing.assert_allclose(one, many, atol=1e-5)
    again = RewardModelProvider(reward_model_dir, batch_size=3).score(df)["reward"]
    np.testing.assert_array_equal(three, again)
    # A row scores the same alone as inside a batch.
    alone = RewardModelProvider(reward_model_dir, batch_size=3).score(df.iloc[[4]])["reward"]
    np.testing.assert_allclose(alone.iloc[0], one.iloc[4], atol=1e-5)


def test_reward_model_truncates_the_prompt_from_the_left(reward_model_dir):
    provider = RewardModelProvider(reward_model_dir, batch_size=2, max_length=12)
    gen = " clean and the staff were friendly."
    long_a = "The food was cold and the waiter was rude. " * 30 + "The room was"
    long_b = "My new phone is fast. " * 40 + "The room was"
    out = provider.score(samples([long_a, long_b], [gen, gen]))["reward"]
    assert out.notna().all()
    # Both inputs end in the same 12 tokens, so only those were scored.
    assert (
        provider.tokenizer(long_a + gen)["input_ids"][-12:]
        == (provider.tokenizer(long_b + gen)["input_ids"][-12:])
    )
    np.testing.assert_allclose(out.iloc[0], out.iloc[1], atol=1e-5)


def test_reward_model_missing_generation_is_nan(reward_model_dir):
    provider = RewardModelProvider(reward_model_dir, batch_size=2)
    out = provider.score(samples(["The room was", "The room was"], [" clean.", None]))
    assert np.isfinite(out["reward"].iloc[0]) and np.isnan(out["reward"].iloc[1])
    assert out["missing_reason"].tolist() == [None, "no generation"]
    assert provider.score(samples(["a"], [None]))["reward"].isna().all()


def test_reward_model_from_the_registry(reward_model_dir):
    config = RunConfig.model_validate(
        {"feedback": {"provider": "reward_model", "reward_model": reward_model_dir,
                      "batch_size": 5, "max_length": 40}}
    )  # fmt: skip
    provider = get_provider(config)
    assert isinstance(provider, RewardModelProvider)
    assert (provider.batch_size, provider.max_length) == (5, 40)


def test_a_causal_lm_is_not_taken_for_a_reward_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(RewardModelError, match="not a scalar-head reward model"):
        RewardModelProvider(str(tmp_path))


def test_a_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(RewardModelError, match="cannot load reward model"):
        RewardModelProvider(str(tmp_path / "nothing-here"))


def test_join_prompt_generation_spacing():
    prompt = pd.Series(["a", "a ", "a", "a"])
    gen = pd.Series(["b", "b", " b", ""])
    assert join_prompt_generation(prompt, gen).tolist() == ["a b", "a b", "a b", "a"]


def test_score_in_batches_batches_by_length_and_keeps_the_input_order():
    from alt_core.feedback.base import score_in_batches

    texts = ["ccc", "a", "bbbbb", "dd", "e"]
    batches: list[list[str]] = []
    lines: list[str] = []

    def score(chunk: list[str]) -> list[float]:
        batches.append(chunk)
        return [float(len(t)) for t in chunk]

    out = score_in_batches(texts, 2, score, lines.append)
    assert out.tolist() == [3.0, 1.0, 5.0, 2.0, 1.0]
    assert batches == [["a", "e"], ["dd", "ccc"], ["bbbbb"]]  # shortest first, stable
    assert lines and lines[-1].startswith("progress 5/5")
