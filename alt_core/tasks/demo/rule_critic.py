"""The rule-based critic: a STAND-IN for an LLM judge on the demo task.

No language model is involved. The critic reads each continuation with VADER (a
lexicon-based sentiment scorer) and a few surface rules, and answers the way the LLM
judge of each textual-feedback method would, so ALT_LMU, ALT_LMC and SteerLM can run end
to end on a CPU with feedback that means something. Its rules, fixed and deterministic:

- sentiment band 0..3 from the VADER compound c of the continuation (the prompt is not
  scored): c >= 0.5: 3, c >= 0.05: 2, c > -0.05: 1, else 0 (VADER's own +-0.05 cut for
  "neutral");
- flaws: it repeats itself (a word twice in a row, or a three-word phrase twice), it is
  far too short (fewer than 4 words), it trails off (does not end a sentence);
  fluency = 2 - number of flaws, at least 0.

What each method gets, by the judge parser it needs (`judge_parser` in
`alt_core.methods`), so the critic answers as a judge template of that parser would:
- ALT_LMU (lmu): a feedback sentence of at most 8 words naming the tone and the main
  flaw or, with none, the strength ("Warm and upbeat, but repeats itself.", "Negative
  about the staff, and trails off mid-sentence."), and a score 0..3: the band, one
  lower when the continuation has a flaw;
- ALT_LMC (lmc): the band's category (`feedback.rule_critic.categories`, best first;
  score = band);
- SteerLM (steerlm): attribute values `positive:<band>,fluent:<fluency>` (names
  configurable; score = band + fluency, 0..5).

`reward` is the VADER compound itself (the demo's reward), so every method's metrics
table on the demo reports validation reward on one scale; `score` is what the pool
buckets by. A missing generation (None / NaN) gets no judgement and a `missing_reason`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from alt_core.config import RuleCriticConfig, RunConfig
from alt_core.feedback.base import (
    FeedbackProvider,
    feedback_frame,
    missing_generations,
    reason_where,
)
from alt_core.methods import JudgeParser, Method, method_spec

# (lowest, highest) of the two SteerLM attributes: sentiment band, fluency.
ATTRIBUTE_RANGES = ((0, 3), (0, 2))
MAX_BAND = 3
MIN_WORDS = 4

_TONE = {3: "Warm and upbeat", 2: "Mildly positive", 1: "Takes no side"}
_FLAWS = {  # in the order they are named: the first one found is the sentence's weakness
    "repeats": "repeats itself",
    "too_short": "far too short",
    "trails_off": "trails off mid-sentence",
}
_STRENGTH = "reads smoothly"
# A word twice in a row ("very very"), or a three-word phrase that comes back later.
_REPEAT = r"\b(\w+)\s+\1\b|\b(\w+\W+\w+\W+\w+)\b.*\b\2\b"
_SENTENCE_END = r"[.!?…][\"'”’)\]]*\s*$"


def _aspect_pattern() -> str:
    """What a demo review talks about ("staff", "battery life"): longest names first."""
    from alt_core.tasks.demo.reviews import DOMAINS

    aspects = sorted({a for d in DOMAINS for a in d.aspects}, key=lambda a: (-len(a), a))
    return r"\b(" + "|".join(re.escape(a) for a in aspects) + r")\b"


def sentiment_band(compound: pd.Series) -> pd.Series:
    """0..3 from VADER compound scores (see the module docstring)."""
    c = compound.to_numpy()
    band = np.select([c >= 0.5, c >= 0.05, c > -0.05], [3, 2, 1], default=0)
    return pd.Series(band, index=compound.index, dtype="int64")


def find_flaws(text: pd.Series) -> pd.DataFrame:
    """Boolean columns repeats, too_short, trails_off for each (non-missing) text."""
    lowered = text.str.lower()
    words = lowered.str.count(r"\w+")
    return pd.DataFrame(
        {
            "repeats": lowered.str.count(_REPEAT, flags=re.S) > 0,
            "too_short": words < MIN_WORDS,
            "trails_off": ~text.str.contains(_SENTENCE_END, regex=True),
        },
        index=text.index,
    )


def _tone(band: pd.Series, compound: pd.Series, aspect: pd.Series) -> pd.Series:
    negative = np.where(compound <= -0.5, "Harsh", "Negative")
    about = np.where(aspect.notna(), " about the " + aspect.fillna(""), " in tone")
    tone = band.map(_TONE).astype(object)
    return tone.where(band > 0, pd.Series(negative, index=band.index) + about)


def feedback_sentence(
    band: pd.Series, compound: pd.Series, flaws: pd.DataFrame, aspect: pd.Series
) -> pd.Series:
    """One sentence per row: the tone, then the first flaw or, with none, the strength.
    "but" joins a good tone to a flaw or a bad tone to the strength, "and" the rest."""
    note = pd.Series(_STRENGTH, index=band.index, dtype=object)
    for name in reversed(_FLAWS):  # the first flaw in _FLAWS order wins
        note = note.mask(flaws[name], _FLAWS[name])
    flawed = flaws.any(axis=1)
    contrast = (band >= 2) == flawed
    joiner = np.where(contrast, ", but ", ", and ")
    return _tone(band, compound, aspect) + joiner + note + "."


class RuleCriticProvider(FeedbackProvider):
    """Textual feedback for ALT_LMU / ALT_LMC / SteerLM from sentiment rules (a stand-in
    for an LLM judge; see the module docstring)."""

    name = "rule_critic"

    def __init__(self, method: Method, settings: RuleCriticConfig | None = None) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        style = method_spec(method).judge_parser
        if style is None:
            raise ValueError(
                f"the rule critic writes textual feedback for alt_lmu, alt_lmc or steerlm, "
                f"not {method.value}; use feedback.provider=sentiment for reward methods"
            )
        self.method = method
        # It answers the way a judge template of the method's parser would.
        self.style: JudgeParser = style
        self.settings = settings or RuleCriticConfig()
        self._analyzer = SentimentIntensityAnalyzer()
        self._aspects = _aspect_pattern()
        self.last_stats: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: RunConfig) -> RuleCriticProvider:
        return cls(config.method, config.feedback.rule_critic)

    def polarity(self, texts: pd.Series) -> pd.DataFrame:
        """VADER compound, pos and neg of each text, each distinct text scored once."""
        unique = pd.unique(texts)
        scores = pd.DataFrame.from_records(
            [self._analyzer.polarity_scores(t) for t in unique], index=unique
        ).reindex(columns=["compound", "pos", "neg"])
        out = scores.reindex(texts.to_numpy()).fillna(0.0)
        out.index = texts.index
        return out

    def analyse(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per present row: compound, band, fluency, flaws, aspect and the sentence."""
        text = df["generation"].astype(str).str.strip()
        pol = self.polarity(text)
        band = sentiment_band(pol["compound"])
        flaws = find_flaws(text)
        aspect = text.str.lower().str.extract(self._aspects, expand=False)
        # No subject named in the continuation: it speaks of what the prompt last named.
        from_prompt = df["prompt"].astype(str).str.lower().str.findall(self._aspects).str[-1]
        aspect = aspect.where(aspect.notna(), from_prompt)
        fluency = (2 - flaws.sum(axis=1)).clip(lower=0).astype("int64")
        # bool matrix times names: each row's flaw names, joined (an object-dtype dot).
        found = flaws.dot(flaws.columns + ", ").str.removesuffix(", ").replace("", "none")
        analysis = (
            "VADER compound "
            + pol["compound"].map("{:+.3f}".format)
            + ", pos "
            + pol["pos"].map("{:.2f}".format)
            + ", neg "
            + pol["neg"].map("{:.2f}".format)
            + "; flaws: "
            + found
            + "."
        )
        return pd.DataFrame(
            {
                "compound": pol["compound"],
                "band": band,
                "fluency": fluency,
                "flawed": flaws.any(axis=1),
                "sentence": feedback_sentence(band, pol["compound"], flaws, aspect),
                "analysis": analysis,
            },
            index=df.index,
        )

    def judge(self, analysis: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """(feedback text, score) of each analysed row for the configured method."""
        band = analysis["band"]
        if self.style == "lmu":
            score = (band - analysis["flawed"].astype("int64")).clip(lower=0)
            return analysis["sentence"], score
        if self.style == "lmc":
            categories = self.settings.categories
            return band.map(lambda b: categories[MAX_BAND - b]).astype(object), band
        positive, fluent = self.settings.attributes
        text = f"{positive}:" + band.astype(str) + f",{fluent}:" + analysis["fluency"].astype(str)
        return text, band + analysis["fluency"]

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = missing_generations(df)
        present = df.loc[~missing]
        feedback = pd.Series(None, index=df.index, dtype=object)
        score = pd.Series(np.nan, index=df.index, dtype="float64")
        reward = pd.Series(np.nan, index=df.index, dtype="float64")
        analysis = pd.Series(None, index=df.index, dtype=object)
        if len(present):
            found = self.analyse(present)
            text, points = self.judge(found)
            feedback.loc[present.index] = text
            score.loc[present.index] = points.astype("float64")
            reward.loc[present.index] = found["compound"]
            analysis.loc[present.index] = found["analysis"]
        reason = reason_where(missing, "no generation")
        self.last_stats = {"judgements": int(len(df)), "missing": int(missing.sum())}
        # Absent text is None, never NaN (what an LLM judge's missing rows hold too).
        return feedback_frame(
            df.index,
            reward=reward,
            feedback=feedback.where(feedback.notna(), None),
            score=score,
            analysis=analysis.where(analysis.notna(), None),
            missing_reason=reason,
        )


def best_feedback(method: Method, settings: RuleCriticConfig) -> str:
    """The critic's best label: its first category (ALT_LMC) or both attributes at their
    highest values (SteerLM)."""
    style = method_spec(method).judge_parser
    if style == "lmc":
        return settings.categories[0]
    if style == "steerlm":
        names = settings.attributes
        return ",".join(f"{n}:{hi}" for n, (_, hi) in zip(names, ATTRIBUTE_RANGES, strict=True))
    raise ValueError(f"{method.value} has no fixed best label; its exemplar comes from the pool")
