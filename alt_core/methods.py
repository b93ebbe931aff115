"""The methods as one table: how each turns feedback into conditioning text.

Quark, ALT_RM, ALT_LMU, ALT_LMC and SteerLM differ only by the entry in `METHODS` (and
the feedback provider it calls for): the pool, the training set code and the trainer are
shared. Each field of `MethodSpec` names a rule; the functions below, the config's
cross-field checks, the datapool, the rule critic and the report read the table instead
of asking which method runs. A new method is one `Method` value and one entry, as long
as it combines rules that exist; a new rule is one more value of its `Literal`.

This module imports nothing from `alt_core.config` at run time (nor pandas at import),
so the config can import `Method` and the table from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

    from alt_core.config import RunConfig


class Method(str, Enum):
    """The alignment method. All share one pool and one trainer."""

    QUARK = "quark"
    ALT_RM = "alt_rm"
    ALT_LMU = "alt_lmu"
    ALT_LMC = "alt_lmc"
    STEERLM = "steerlm"


class FeedbackKind(str, Enum):
    """What a method trains on: a scalar reward per generation, or feedback text with a
    score (written by an LLM judge or the demo's rule critic)."""

    REWARD = "reward"
    TEXT = "text"


# Per prompt reward quantiles (bucket 0: highest rewards; the draw takes
# datapool.num_samples_per_quantile rows from each), or the dense rank of the judge
# score over the pool (the draw spreads datapool.num_samples_per_prompt rows per prompt
# over its buckets). See alt_core/datapool.py.
BucketRule = Literal["reward_quantiles", "score_rank"]
# A reward bucket's text: Quark's control token or ALT_RM's datapool.quantile_phrases;
# "judge": the feedback text the provider wrote, kept as it is.
FeedbackText = Literal["quantile_token", "quantile_phrase", "judge"]
# The training / sampling input: "feedback_prompt": feedback + prompt, no prefixes
# (Quark's token); "prefixed": feedback_prefix + feedback + prompt_prefix + prompt.
QueryRule = Literal["feedback_prompt", "prefixed"]
# What the frozen reference model sees: the raw prompt (Quark: the reference lacks the
# control tokens) or the same conditioned query as the policy.
ReferenceRule = Literal["prompt", "query"]
# The exemplar that conditions sampling from iteration 2 on: the best bucket's text,
# fixed ("best_bucket"); the pool's most frequent top-score feedback ("top_feedback");
# the best label the judge template or rule critic can give ("best_label": ALT_LMC's
# best category, SteerLM's attributes at their best). For text methods
# feedback.exemplar_rule=fixed replaces the last two with feedback.exemplar_text.
ExemplarRule = Literal["best_bucket", "top_feedback", "best_label"]
# The judge-template parser a text method needs (alt_core/feedback/judge/parsers.py); the
# rule critic answers in the same style.
JudgeParser = Literal["lmu", "lmc", "steerlm"]
# What the report calls a datapool bucket: its feedback text (token / phrase) or the
# judge score its rows share.
BucketLabel = Literal["feedback_text", "score"]


@dataclass(frozen=True)
class MethodSpec:
    """One method's rules (see the Literal types above for what each value means)."""

    feedback: FeedbackKind
    demo_provider: Literal["sentiment", "rule_critic"]  # feedback.provider=auto on the demo
    bucket_rule: BucketRule
    feedback_text: FeedbackText
    query: QueryRule
    feedback_prefix: str  # default of datapool.feedback_prefix (used by "prefixed" only)
    reference: ReferenceRule
    adds_quantile_tokens: bool  # Quark: its control tokens join the tokenizer's vocabulary
    exemplar: ExemplarRule
    judge_parser: JudgeParser | None
    bucket_label: BucketLabel


# Each method in full once; the others say how they differ from it.
_QUARK = MethodSpec(
    feedback=FeedbackKind.REWARD,
    demo_provider="sentiment",
    bucket_rule="reward_quantiles",
    feedback_text="quantile_token",
    query="feedback_prompt",
    feedback_prefix="feedback: ",
    reference="prompt",
    adds_quantile_tokens=True,
    exemplar="best_bucket",
    judge_parser=None,
    bucket_label="feedback_text",
)
_ALT_LMU = MethodSpec(
    feedback=FeedbackKind.TEXT,
    demo_provider="rule_critic",
    bucket_rule="score_rank",
    feedback_text="judge",
    query="prefixed",
    feedback_prefix="feedback: ",
    reference="query",
    adds_quantile_tokens=False,
    exemplar="top_feedback",
    judge_parser="lmu",
    bucket_label="score",
)
METHODS: Mapping[Method, MethodSpec] = MappingProxyType(
    {
        Method.QUARK: _QUARK,
        Method.ALT_RM: replace(
            _QUARK,
            feedback_text="quantile_phrase",
            query="prefixed",
            feedback_prefix="",
            reference="query",
            adds_quantile_tokens=False,
        ),
        Method.ALT_LMU: _ALT_LMU,
        Method.ALT_LMC: replace(_ALT_LMU, exemplar="best_label", judge_parser="lmc"),
        Method.STEERLM: replace(_ALT_LMU, exemplar="best_label", judge_parser="steerlm"),
    }
)

REWARD_METHODS = frozenset(m for m, s in METHODS.items() if s.feedback is FeedbackKind.REWARD)
JUDGE_METHODS = frozenset(m for m, s in METHODS.items() if s.feedback is FeedbackKind.TEXT)


def method_spec(method: Method | RunConfig) -> MethodSpec:
    """The table entry of a method, or of a config's method."""
    return METHODS[method if isinstance(method, Method) else method.method]


def quantile_token(q: int) -> str:
    return f"_QUANTILE_TOKEN_{q}_"


def quantile_tokens(num_quantiles: int) -> list[str]:
    """The control tokens Quark adds to the tokenizer, best first."""
    return [quantile_token(q) for q in range(num_quantiles)]


def added_tokens(config: RunConfig) -> list[str]:
    """Tokens the method adds to the tokenizer (Quark: one per quantile; else none)."""
    if method_spec(config).adds_quantile_tokens:
        return quantile_tokens(config.datapool.num_quantiles)
    return []


def uses_judge(config: RunConfig) -> bool:
    """Whether the method trains on textual feedback (its exemplar may come from the
    pool) rather than a scalar reward."""
    return method_spec(config).feedback is FeedbackKind.TEXT


def bucket_namer(config: RunConfig) -> Callable[[int], str]:
    """The text of reward bucket q (Quark: control token; ALT_RM: phrase)."""
    rule = method_spec(config).feedback_text
    if rule == "quantile_token":
        return quantile_token
    if rule == "quantile_phrase":
        phrases = config.datapool.quantile_phrases
        return lambda q: phrases[int(q)]
    raise ValueError(f"{config.method.value} takes its feedback text from the judge, not buckets")


def bucket_text(config: RunConfig, bucket: pd.Series) -> pd.Series:
    """Feedback text of each reward bucket (Quark: control token; ALT_RM: phrase)."""
    return bucket.map(bucket_namer(config))


def feedback_prefix(config: RunConfig) -> str:
    """datapool.feedback_prefix, or the method's default when it is not set."""
    if config.datapool.feedback_prefix is not None:
        return config.datapool.feedback_prefix
    return method_spec(config).feedback_prefix


def compose_queries(config: RunConfig, feedback: pd.Series, prompt: pd.Series) -> pd.Series:
    """input = feedback_prefix + feedback + prompt_prefix + prompt (Quark: token + prompt)."""
    if method_spec(config).query == "feedback_prompt":
        return feedback + prompt
    return feedback_prefix(config) + feedback + config.datapool.prompt_prefix + prompt


def reference_queries(config: RunConfig, query: pd.Series, prompt: pd.Series) -> pd.Series:
    """What the frozen reference sees: the raw prompt for Quark (it lacks the control
    tokens), the same conditioned input for the ALT variants."""
    return prompt.copy() if method_spec(config).reference == "prompt" else query.copy()


def default_exemplar(config: RunConfig) -> str:
    """The feedback that names the behaviour we want, when it is fixed by the method:
    the text of the best bucket (bucket 0)."""
    if method_spec(config).exemplar != "best_bucket":
        raise ValueError(f"{config.method.value} chooses its exemplar from the pool")
    return bucket_namer(config)(0)


def best_feedback(config: RunConfig) -> str:
    """ALT_LMC: the best category; SteerLM: every attribute at its best value. Taken from
    the judge's template (provider judge) or the rule critic's labels."""
    if method_spec(config).exemplar != "best_label":
        raise ValueError(f"{config.method.value} has no fixed best feedback")
    if config.feedback.provider == "judge":
        from alt_core.feedback.judge.provider import best_template_feedback

        return best_template_feedback(config.feedback.judge.template)
    from alt_core.tasks.demo.rule_critic import best_feedback as critic_best

    return critic_best(config.method, config.feedback.rule_critic)


def condition_prompts(config: RunConfig, prompts: pd.Series, exemplar: str | None) -> pd.Series:
    """The sampling input: the raw prompt before the first training, else the prompt
    conditioned on the exemplar feedback."""
    if exemplar is None:
        return prompts.copy()
    import pandas as pd  # here: the config imports this module, and it needs no pandas

    return compose_queries(config, pd.Series(exemplar, index=prompts.index), prompts)
