"""The demo's rule-based critic, a stand-in for an LLM judge: sentences, scores,
categories and attribute values from a sentiment analysis of the continuation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alt_core.config import Method, RuleCriticConfig, load_config
from alt_core.feedback import FEEDBACK_COLUMNS, get_provider
from alt_core.feedback.sentiment import SentimentProvider
from alt_core.tasks.demo.reviews import generate_reviews
from alt_core.tasks.demo.rule_critic import (
    RuleCriticProvider,
    best_feedback,
    find_flaws,
    sentiment_band,
)

PROMPTS = ["The staff", "Review: The room was", "The battery", "Book review: The story was"]
GENERATIONS = [
    " were rude and the room was dirty.",  # harsh, fluent
    " clean and the staff were wonderful, I loved it!",  # warm, fluent
    " is very very good good good",  # warm, repeats itself, trails off
    " fine",  # mildly positive, far too short
]


def rows(prompts=PROMPTS, generations=GENERATIONS, index=None) -> pd.DataFrame:
    return pd.DataFrame({"prompt": prompts, "generation": generations}, index=index)


@pytest.fixture(scope="module")
def critics() -> dict[Method, RuleCriticProvider]:
    return {m: RuleCriticProvider(m) for m in (Method.ALT_LMU, Method.ALT_LMC, Method.STEERLM)}


def test_bands_follow_vaders_cut_points():
    compound = pd.Series([-0.9, -0.05, -0.0499, 0.0, 0.0499, 0.05, 0.4999, 0.5, 1.0])
    assert sentiment_band(compound).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]


def test_flaws():
    text = pd.Series(
        [
            "The room was clean.",
            "It was very very nice.",
            "the cake was warm and the cake was sweet.",
            "Nice.",
            "The staff were friendly and",
        ]
    )
    flaws = find_flaws(text)
    assert flaws["repeats"].tolist() == [False, True, True, False, False]
    assert flaws["too_short"].tolist() == [False, False, False, True, False]
    assert flaws["trails_off"].tolist() == [False, False, False, False, True]


def test_lmu_sentences_and_scores(critics):
    out = critics[Method.ALT_LMU].score(rows())
    assert list(out.columns) == FEEDBACK_COLUMNS
    assert out["feedback"].tolist() == [
        "Harsh about the room, but reads smoothly.",
        "Warm and upbeat, and reads smoothly.",
        "Warm and upbeat, but repeats itself.",
        "Mildly positive, but far too short.",
    ]
    # The band, one lower for a flawed continuation.
    assert out["score"].tolist() == [0.0, 3.0, 2.0, 1.0]
    assert out["missing_reason"].isna().all()
    assert out["analysis"].str.startswith("VADER compound ").all()
    assert "flaws: repeats, trails_off." in out["analysis"].iloc[2]


def test_negative_feedback_names_the_subject_from_the_prompt_when_the_text_does_not(critics):
    out = critics[Method.ALT_LMU].score(
        rows(["The staff", "Honestly,"], [" were a bit rude.", " it was not good and"])
    )
    assert out["feedback"].tolist() == [
        "Negative about the staff, but reads smoothly.",
        "Negative in tone, and trails off mid-sentence.",
    ]


def test_lmc_categories_and_steerlm_attributes(critics):
    lmc = critics[Method.ALT_LMC].score(rows())
    assert lmc["feedback"].tolist() == ["Negative", "Very positive", "Very positive", "Positive"]
    assert lmc["score"].tolist() == [0.0, 3.0, 3.0, 2.0]  # the band: best category scores 3
    steer = critics[Method.STEERLM].score(rows())
    assert steer["feedback"].tolist() == [
        "positive:0,fluent:2",
        "positive:3,fluent:2",
        "positive:3,fluent:0",
        "positive:2,fluent:0",
    ]
    assert steer["score"].tolist() == [2.0, 5.0, 3.0, 2.0]


def test_configured_labels_are_used():
    settings = RuleCriticConfig(
        categories=["Glowing", "Kind", "Flat", "Sour"], attributes=("tone", "style")
    )
    lmc = RuleCriticProvider(Method.ALT_LMC, settings).score(rows())
    assert lmc["feedback"].tolist() == ["Sour", "Glowing", "Glowing", "Kind"]
    steer = RuleCriticProvider(Method.STEERLM, settings).score(rows())
    assert steer["feedback"].iloc[1] == "tone:3,style:2"
    assert best_feedback(Method.ALT_LMC, settings) == "Glowing"
    assert best_feedback(Method.STEERLM, settings) == "tone:3,style:2"


def test_reward_is_the_demo_sentiment_reward(critics):
    """All methods report validation reward on one scale on the demo: VADER's compound."""
    df = rows()
    expected = SentimentProvider().score(df)["reward"]
    for critic in critics.values():
        pd.testing.assert_series_equal(critic.score(df)["reward"], expected)


def test_only_the_continuation_is_judged(critics):
    df = rows(["Awful, horrible, disgusting:", "Wonderful:", ""], [" lovely, I liked it."] * 3)
    out = critics[Method.ALT_LMU].score(df)
    assert out["feedback"].nunique() == 1 and out["score"].nunique() == 1


def test_missing_and_empty_generations(critics):
    df = rows(["a", "b", "c"], [None, "", np.nan], index=[7, 3, 11])
    out = critics[Method.ALT_LMU].score(df)
    assert list(out.index) == [7, 3, 11]
    assert out["missing_reason"].tolist() == ["no generation", None, "no generation"]
    assert out.loc[7, "feedback"] is None and np.isnan(out.loc[7, "score"])
    assert out.loc[3, "feedback"] == "Takes no side, and far too short."
    assert out.loc[3, "score"] == 0.0 and out.loc[3, "reward"] == 0.0
    assert critics[Method.ALT_LMU].last_stats == {"judgements": 3, "missing": 2}


def test_deterministic_short_feedback_on_demo_reviews(critics):
    reviews = generate_reviews(300, seed=3)
    # Continuations as the policy would write them: the review text after its prompt.
    generations = [t[len(p) :] for p, t in zip(reviews["prompt"], reviews["text"], strict=True)]
    df = rows(reviews["prompt"].tolist(), generations)
    first = critics[Method.ALT_LMU].score(df)
    again = critics[Method.ALT_LMU].score(df)
    pd.testing.assert_frame_equal(first, again)
    words = first["feedback"].str.split().str.len()
    assert words.max() <= 10
    assert set(first["score"]) == {0.0, 1.0, 2.0, 3.0}
    # Positive reviews get better scores than negative ones.
    by_label = first["score"].groupby(reviews["label"]).mean()
    assert by_label["positive"] > by_label["neutral"] > by_label["negative"]


def test_registry_and_auto_provider_on_the_demo():
    for method in ("alt_lmu", "alt_lmc", "steerlm"):
        config = load_config("demo", overrides=[f"method={method}"])
        provider = get_provider(config)
        assert isinstance(provider, RuleCriticProvider) and provider.method.value == method


def test_refuses_reward_methods():
    with pytest.raises(ValueError, match="feedback.provider=sentiment"):
        RuleCriticProvider(Method.ALT_RM)
