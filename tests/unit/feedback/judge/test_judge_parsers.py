"""Judge templates and their parsers, on answers that look like what judges really write."""

from __future__ import annotations

import pytest
import yaml

from alt_core.feedback.judge import JudgeConfigError, ParseError, list_templates, load_template
from alt_core.feedback.judge.parsers import SteerLMSettings, steerlm_score_range
from alt_core.feedback.judge.templates import JudgeTemplate, fill


@pytest.fixture(scope="module")
def tldr():
    return load_template("tldr_lmu")


@pytest.fixture(scope="module")
def hh():
    return load_template("hh_lmc")


@pytest.fixture(scope="module")
def steer():
    return load_template("hh_steerlm")


# --- LMU ---------------------------------------------------------------------------------

LMU_GOOD = [
    (
        '{"analysis": "The summary states the main conflict correctly.", '
        '"feedback": "Accurate and coherent, but omits the roommate\'s deadline.", "score": 2}',
        2,
        "Accurate and coherent, but omits the roommate's deadline.",
    ),
    (
        'Sure! Here is my evaluation:\n```json\n{\n  "Analysis": "Clear and faithful.",\n'
        '  "Feedback": "Concise, accurate and covers the main point well.",\n  "Score": "3"\n}\n```',
        3,
        "Concise, accurate and covers the main point well.",
    ),
    (
        "**Analysis:** The summary invents a detail about a lawsuit that the post never\n"
        "mentions, and it is hard to follow.\n\n**Feedback:** Confusing and inaccurate; "
        "invents a lawsuit.\n**Score:** 0/3",
        0,
        "Confusing and inaccurate; invents a lawsuit.",
    ),
    (
        'Analysis: Reads well.\nFeedback: "Fluent but misses why the author is upset."\n'
        "Score: 2 out of 3",
        2,
        "Fluent but misses why the author is upset.",
    ),
    (
        '{"analysis": "ok", "feedback": "Coherent and accurate summary.", "score": 3.0}',
        3,
        "Coherent and accurate summary.",
    ),
]


@pytest.mark.parametrize("answer,score,feedback", LMU_GOOD)
def test_lmu_reads_real_looking_answers(tldr, answer, score, feedback):
    judgement = tldr.parse(answer)
    assert judgement.score == score
    assert judgement.feedback == feedback
    assert isinstance(judgement.analysis, str)


def test_lmu_keeps_a_multiline_analysis(tldr):
    answer = LMU_GOOD[2][0]
    assert "never mentions" in tldr.parse(answer).analysis


LMU_BAD = [
    ('{"analysis": "The summary is mostly accurate", "feedback": "Accurate but', "truncated"),
    ('{"analysis": "x", "feedback": "Great summary.", "score": 5}', "outside 0..3"),
    ('{"analysis": "x", "feedback": "Great summary.", "score": "three"}', "must be an integer"),
    ('{"analysis": "x", "feedback": "Great summary.", "score": true}', "must be an integer"),
    ('{"analysis": "x", "score": 2}', "truncated or invalid"),
    ('{"analysis": "x", "feedback": "", "score": 2}', "feedback is empty"),
    (
        '{"analysis": "x", "feedback": "' + "very " * 40 + 'long", "score": 1}',
        "write one sentence of about 10 words",
    ),
    ("I think this summary is pretty good overall, nice job!", "found none"),
    ("Analysis: fine.\nScore: 2", "found ['analysis', 'score']"),
    ("   ", "empty"),
]


@pytest.mark.parametrize("answer,reason", LMU_BAD)
def test_lmu_rejects_malformed_answers_with_a_reason(tldr, answer, reason):
    with pytest.raises(ParseError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        tldr.parse(answer)


def test_demo_review_template_uses_the_lmu_parser():
    demo = load_template("demo_review_lmu")
    answer = (
        '{"analysis": "Warm and fluent, stays on the film.", '
        '"feedback": "Positive and fluent, though a little repetitive.", "score": 3}'
    )
    assert demo.parse(answer).score == 3
    with pytest.raises(ParseError):
        demo.parse("Positive: yes. Fluent: mostly.")


# --- LMC ---------------------------------------------------------------------------------

LMC_GOOD = [
    ("Harmless and very helpful", "Harmless and very helpful", 3),
    ("harmless and helpful.", "Harmless and helpful", 2),
    ("Category: Harmful", "Harmful", 0),
    ('{"category": "harmless and not helpful"}', "Harmless and not helpful", 1),
    (
        "The assistant declines and gives no information at all.\nHarmless and not helpful",
        "Harmless and not helpful",
        1,
    ),
    ("The reply is not harmful. Category: **Harmless and helpful**", "Harmless and helpful", 2),
    (
        "The reply is not harmful; I'd say harmless and very helpful!",
        "Harmless and very helpful",
        3,
    ),
    ("HARMFUL - it explains how to pick a lock to break in.", "Harmful", 0),
]


@pytest.mark.parametrize("answer,category,score", LMC_GOOD)
def test_lmc_matches_categories_case_insensitively(hh, answer, category, score):
    judgement = hh.parse(answer)
    assert judgement.feedback == category  # canonical spelling, not the judge's
    assert judgement.score == score


def test_lmc_score_counts_from_the_worst(hh):
    categories = hh.settings["categories"]
    scores = [hh.parse(c).score for c in categories]
    assert scores == [3, 2, 1, 0]  # best first in the settings, best scores highest


LMC_BAD = [
    ("Somewhat helpful, I suppose.", "names none of the categories"),
    ("Harmless and extremely helpful", "names none of the categories"),
    ("Either Harmful or Harmless and helpful, hard to say.\nNot sure.", "more than one"),
    ("Category: Harml", "names none"),
    ("", "empty"),
]


@pytest.mark.parametrize("answer,reason", LMC_BAD)
def test_lmc_rejects_malformed_answers(hh, answer, reason):
    with pytest.raises(ParseError, match=reason):
        hh.parse(answer)


def test_lmc_few_shot_answers_parse_with_their_own_template(hh):
    assert len(hh.few_shot) == 4
    assert sorted(hh.parse(s.assistant).score for s in hh.few_shot) == [0, 1, 2, 3]


# --- SteerLM -----------------------------------------------------------------------------

STEER_GOOD = [
    ("harmful:0,helpful:3", "harmful:0,helpful:3", 7),
    ("Harmful: 1\nHelpful: 2", "harmful:1,helpful:2", 2),
    ('{"harmful": 0, "helpful": 1}', "harmful:0,helpful:1", 5),
    ("Annotation: harmful = 0, helpful = 2.", "harmful:0,helpful:2", 6),
    ('```json\n{"attributes": {"Harmful": 1, "Helpful": 0}}\n```', "harmful:1,helpful:0", 0),
]


@pytest.mark.parametrize("answer,canonical,score", STEER_GOOD)
def test_steerlm_reads_attribute_values(steer, answer, canonical, score):
    judgement = steer.parse(answer)
    assert judgement.feedback == canonical
    assert judgement.score == score


def test_steerlm_harmful_always_scores_below_harmless(steer):
    worst_harmless = steer.parse("harmful:0,helpful:0").score
    best_harmful = steer.parse("harmful:1,helpful:3").score
    assert best_harmful < worst_harmless
    settings = SteerLMSettings.model_validate(steer.settings)
    assert steerlm_score_range(settings) == (0, 7)


STEER_BAD = [
    ("harmful:0", "no value for attribute 'helpful'"),
    ("harmful:0,helpful:5", "outside 0..3"),
    ("harmful:0,helpful:2 ... actually harmful:1,helpful:2", "several values"),
    ("harmful:0,hel", "no value for attribute 'helpful'"),
    ("It's fine and quite useful.", "no value"),
]


@pytest.mark.parametrize("answer,reason", STEER_BAD)
def test_steerlm_rejects_malformed_answers(steer, answer, reason):
    with pytest.raises(ParseError, match=reason):
        steer.parse(answer)


# --- templates -----------------------------------------------------------------------------


def test_every_builtin_template_loads_and_renders():
    names = list_templates()
    assert {"tldr_lmu", "hh_lmc", "hh_steerlm", "demo_review_lmu"} <= set(names)
    for name in names:
        template = load_template(name)
        messages = template.messages("PROMPT-TEXT", "GENERATION-TEXT")
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert "GENERATION-TEXT" in messages[-1]["content"]
        assert "{generation}" not in messages[-1]["content"]
        repair = template.repair_messages(messages, "bad", "it was off-format")
        assert repair[-2] == {"role": "assistant", "content": "bad"}
        assert "it was off-format" in repair[-1]["content"]


def test_placeholders_are_filled_in_one_pass(tldr):
    text = tldr.messages("a post that says {generation} literally", "SUMMARY")[-1]["content"]
    assert "a post that says {generation} literally" in text
    assert '{"analysis":' in text  # the JSON example's braces survive
    assert fill("{prompt}/{other}", prompt="x") == "x/{other}"


def test_content_hash_tracks_what_the_judge_is_asked(tldr):
    data = tldr.model_dump()
    same = JudgeTemplate.model_validate({**data, "description": "reworded description"})
    changed = JudgeTemplate.model_validate({**data, "user": data["user"] + "\nBe strict."})
    assert same.content_hash == tldr.content_hash
    assert changed.content_hash != tldr.content_hash


def test_template_file_by_path_and_clear_errors(tmp_path, tldr):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**tldr.model_dump(), "name": "mine"}))
    assert load_template(str(path)).name == "mine"
    with pytest.raises(JudgeConfigError, match="built-in templates: .*tldr_lmu"):
        load_template("no_such_template")
    bad = {**tldr.model_dump(), "user": "no placeholder here"}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(JudgeConfigError, match=r"\{generation\} placeholder"):
        load_template(str(path))
    path.write_text(yaml.safe_dump({**tldr.model_dump(), "parser": "lmc"}))
    with pytest.raises(JudgeConfigError, match="categories"):
        load_template(str(path))
