"""Parsers that turn a judge's answer text into a judgement, one per template kind.

- `lmu`: an unconstrained critique -> (analysis, feedback sentence, integer score);
  reads a JSON object (also inside a code fence or surrounded by chatter) or labelled
  lines `Analysis: / Feedback: / Score:`.
- `lmc`: one of a fixed list of categories, matched case-insensitively; the score is the
  category's position counted from the worst, so the best category scores highest.
- `steerlm`: attribute values such as `harmful:0,helpful:3`; the feedback is the
  canonical text of the values and the score a weighted sum shifted to start at 0.

Each parser raises `ParseError` with a reason a human (and the judge, in the repair
message) can act on. Settings are pydantic models, validated when a template loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ParseError(ValueError):
    """The answer does not have the format the template asks for."""


@dataclass(frozen=True)
class Judgement:
    """A parsed answer: the feedback text used for conditioning, its score, the analysis."""

    feedback: str
    score: int
    analysis: str = ""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LMUSettings(_Settings):
    min_score: int = Field(0, description="Lowest score the judge may give.")
    max_score: int = Field(3, description="Highest score the judge may give.")
    max_feedback_words: int = Field(
        30, gt=0, description="Longer feedback is rejected (the template asks for about 10)."
    )

    @model_validator(mode="after")
    def _range(self) -> LMUSettings:
        if self.min_score >= self.max_score:
            raise ValueError("min_score must be below max_score")
        return self


class LMCSettings(_Settings):
    categories: list[str] = Field(..., min_length=2, description="The allowed answers, best first.")

    @field_validator("categories")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        normed = [_norm(c) for c in value]
        if len(set(normed)) != len(normed) or not all(normed):
            raise ValueError("categories must be non-empty and distinct (ignoring case)")
        return value


class SteerLMSettings(_Settings):
    attributes: dict[str, tuple[int, int]] = Field(
        ..., min_length=1, description="Attribute name -> (lowest, highest) value, in order."
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight of each attribute in the score (default 1; negative for "
        "attributes where less is better, e.g. harmful).",
    )

    @model_validator(mode="after")
    def _check(self) -> SteerLMSettings:
        for name, (low, high) in self.attributes.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or low >= high:
                raise ValueError(
                    f"attribute {name!r}: names are lower-case words and ranges (low, high) "
                    "need low < high"
                )
        unknown = set(self.weights) - set(self.attributes)
        if unknown:
            raise ValueError(f"weights name unknown attributes {sorted(unknown)}")
        return self


# --- shared helpers ---------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_NUMBER = re.compile(r"^\s*[\[(*\"']*\s*(-?\d+(?:\.\d+)?)")


def _norm(text: str) -> str:
    """Lower case, punctuation to spaces, collapsed whitespace: the matching form."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _clean(text: str) -> str:
    return " ".join(str(text).strip().strip("\"'*`").split())


def _unfence(text: str) -> str:
    match = _FENCE.search(text)
    return match.group(1) if match else text


def find_json_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """The first JSON object in `text` (keys lower-cased) and whether text looked like JSON.

    Models often wrap the object in a code fence or a sentence, so every `{` is tried as
    a start; `looked_like_json` lets the caller say "truncated JSON" instead of a vaguer
    reason when nothing decodes.
    """
    body = _unfence(text)
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", body)][:20]
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(body, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return {str(k).strip().lower(): v for k, v in obj.items()}, True
    return None, bool(starts)


def labelled_fields(text: str, labels: tuple[str, ...]) -> dict[str, str]:
    """Values of `Label: value` lines (markdown bullets and bold allowed); a value runs on
    over following unlabelled lines, so a multi-line analysis is kept whole."""
    pattern = re.compile(
        r"^\s*(?:[-*#>]+\s*)?\**\s*(" + "|".join(labels) + r")\s*\**\s*[:=]\s*\**(.*)$",
        re.I,
    )
    fields: dict[str, list[str]] = {}
    current: str | None = None
    for line in _unfence(text).splitlines():
        match = pattern.match(line)
        if match:
            current = match.group(1).lower()
            fields.setdefault(current, []).append(match.group(2))
        elif current is not None and line.strip():
            fields[current].append(line)
    return {k: _clean(" ".join(v)) for k, v in fields.items()}


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ParseError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    match = _NUMBER.match(str(value)) if isinstance(value, str) else None
    if match and float(match.group(1)).is_integer():
        return int(float(match.group(1)))
    raise ParseError(f"{what} must be an integer, got {str(value)[:40]!r}")


def _empty_check(text: str) -> str:
    if not text or not text.strip():
        raise ParseError("the answer is empty")
    return text.strip()


# --- LMU ---------------------------------------------------------------------------------


def parse_lmu(text: str, settings: LMUSettings) -> Judgement:
    text = _empty_check(text)
    fields, looked_like_json = find_json_object(text)
    if fields is None:
        fields = labelled_fields(text, ("analysis", "feedback", "score"))
    if "score" not in fields or "feedback" not in fields:
        if looked_like_json:
            raise ParseError("the JSON object is truncated or invalid")
        have = sorted(fields) or "none"
        raise ParseError(f"expected the fields analysis, feedback and score; found {have}")
    score = _as_int(fields["score"], "score")
    if not settings.min_score <= score <= settings.max_score:
        raise ParseError(f"score {score} is outside {settings.min_score}..{settings.max_score}")
    feedback = _clean(fields["feedback"] or "")
    if not feedback:
        raise ParseError("feedback is empty")
    words = len(feedback.split())
    if words > settings.max_feedback_words:
        raise ParseError(f"feedback has {words} words; write one sentence of about 10 words")
    return Judgement(feedback=feedback, score=score, analysis=_clean(fields.get("analysis") or ""))


# --- LMC ---------------------------------------------------------------------------------

_NEGATIONS = ("not", "isn t", "is not", "never", "no", "nor")


def _mentions(text: str, categories: list[str]) -> list[int]:
    """Indices of the categories named in `text` as whole phrases, not negated, and not
    only as part of a longer category that is also named."""
    normed = f" {_norm(text)} "
    found = []
    for i, cat in enumerate(categories):
        phrase = _norm(cat)
        for match in re.finditer(re.escape(f" {phrase} "), normed):
            before = normed[: match.start()].split()[-2:]
            if not any(" ".join(before[-n:]) in _NEGATIONS for n in (1, 2)):
                found.append(i)
                break
    return [
        i
        for i in found
        if not any(
            j != i and f" {_norm(categories[i])} " in f" {_norm(categories[j])} " for j in found
        )
    ]


def _pick_category(value: str, categories: list[str]) -> int | None:
    exact = [i for i, c in enumerate(categories) if _norm(c) == _norm(value)]
    if exact:
        return exact[0]
    named = _mentions(value, categories)
    return named[0] if len(named) == 1 else None


def parse_lmc(text: str, settings: LMCSettings) -> Judgement:
    text = _empty_check(text)
    cats = settings.categories
    obj, _ = find_json_object(text)
    labelled = labelled_fields(text, ("category", "answer", "label", "classification"))
    explicit = None
    if obj is not None:
        explicit = next((obj[k] for k in ("category", "answer", "label") if k in obj), None)
    if explicit is None and labelled:
        explicit = next(iter(labelled.values()))
    candidates = [str(explicit)] if explicit is not None else []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    candidates += [text, lines[-1], lines[0]]
    for candidate in candidates:
        index = _pick_category(candidate, cats)
        if index is not None:
            analysis = "" if _norm(text) == _norm(cats[index]) else _clean(text)
            return Judgement(feedback=cats[index], score=len(cats) - 1 - index, analysis=analysis)
    named = _mentions(text, cats)
    if named:
        raise ParseError(
            "the answer names more than one category ("
            + ", ".join(repr(cats[i]) for i in named)
            + "); answer with exactly one"
        )
    raise ParseError("the answer names none of the categories " + ", ".join(map(repr, cats)))


# --- SteerLM -----------------------------------------------------------------------------


def parse_steerlm(text: str, settings: SteerLMSettings) -> Judgement:
    text = _empty_check(text)
    obj, _ = find_json_object(text)
    if isinstance(obj, dict) and isinstance(obj.get("attributes"), dict):
        obj = {str(k).lower(): v for k, v in obj["attributes"].items()}
    values: dict[str, int] = {}
    for name, (low, high) in settings.attributes.items():
        if obj is not None and name in obj:
            seen = {_as_int(obj[name], name)}
        else:
            pattern = re.compile(rf"\b{re.escape(name)}\b\W{{0,3}}\s*[:=]\s*(-?\d+)", re.I)
            seen = {int(v) for v in pattern.findall(text)}
        if not seen:
            raise ParseError(f"no value for attribute {name!r}; expected e.g. {name}:{high}")
        if len(seen) > 1:
            raise ParseError(f"attribute {name!r} has several values {sorted(seen)}")
        value = seen.pop()
        if not low <= value <= high:
            raise ParseError(f"{name}={value} is outside {low}..{high}")
        values[name] = value
    weights = {n: settings.weights.get(n, 1.0) for n in settings.attributes}
    floor = sum(
        w * (lo if w > 0 else hi)
        for (lo, hi), w in zip(settings.attributes.values(), weights.values(), strict=True)
    )
    score = int(round(sum(weights[n] * v for n, v in values.items()) - floor))
    canonical = ",".join(f"{n}:{v}" for n, v in values.items())
    return Judgement(feedback=canonical, score=score, analysis="")


def steerlm_score_range(settings: SteerLMSettings) -> tuple[int, int]:
    """(lowest, highest) score a SteerLM judgement can get."""
    span = sum(
        abs(settings.weights.get(n, 1.0)) * (hi - lo) for n, (lo, hi) in settings.attributes.items()
    )
    return 0, int(round(span))


# --- registry ----------------------------------------------------------------------------

PARSERS: dict[str, tuple[type[_Settings], Callable[[str, Any], Judgement]]] = {
    "lmu": (LMUSettings, parse_lmu),
    "lmc": (LMCSettings, parse_lmc),
    "steerlm": (SteerLMSettings, parse_steerlm),
}


def make_parser(name: str, settings: dict[str, Any]) -> Callable[[str], Judgement]:
    """The parser `name` bound to validated settings; raises ValueError naming the problem."""
    if name not in PARSERS:
        raise ValueError(f"unknown parser {name!r}; known parsers: {', '.join(PARSERS)}")
    settings_model, parse = PARSERS[name]
    bound = settings_model.model_validate(settings)
    return lambda text: parse(text, bound)
