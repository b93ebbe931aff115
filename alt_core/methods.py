"""How each method turns feedback into conditioning text.

Quark, ALT_RM, ALT_LMU, ALT_LMC and SteerLM differ only here and in the feedback
provider: the pool, the training set code and the trainer are shared.
"""

from __future__ import annotations

import pandas as pd

from alt_core.config import JUDGE_METHODS, Method, RunConfig


def quantile_token(q: int) -> str:
    return f"_QUANTILE_TOKEN_{q}_"


def quantile_tokens(num_quantiles: int) -> list[str]:
    """The control tokens Quark adds to the tokenizer, best first."""
    return [quantile_token(q) for q in range(num_quantiles)]


def bucket_text(config: RunConfig, bucket: pd.Series) -> pd.Series:
    """Feedback text of each reward bucket (Quark: control token; ALT_RM: phrase)."""
    if config.method == Method.QUARK:
        return bucket.map(quantile_token)
    if config.method == Method.ALT_RM:
        phrases = config.datapool.quantile_phrases
        return bucket.map(lambda q: phrases[int(q)])
    raise ValueError(f"{config.method.value} takes its feedback text from the judge, not buckets")


def compose_queries(config: RunConfig, feedback: pd.Series, prompt: pd.Series) -> pd.Series:
    """input = feedback_prefix + feedback + prompt_prefix + prompt (Quark: token + prompt)."""
    if config.method == Method.QUARK:
        return feedback + prompt
    return config.feedback_prefix() + feedback + config.datapool.prompt_prefix + prompt


def reference_queries(config: RunConfig, query: pd.Series, prompt: pd.Series) -> pd.Series:
    """What the frozen reference sees: the raw prompt for Quark (it lacks the control
    tokens), the same conditioned input for the ALT variants."""
    return prompt.copy() if config.method == Method.QUARK else query.copy()


def uses_judge(config: RunConfig) -> bool:
    return config.method in JUDGE_METHODS


def default_exemplar(config: RunConfig) -> str:
    """The feedback that names the behaviour we want, when it is fixed by the method."""
    if config.method == Method.QUARK:
        return quantile_token(0)
    if config.method == Method.ALT_RM:
        return config.datapool.quantile_phrases[0]
    raise ValueError(f"{config.method.value} chooses its exemplar from the pool")


def best_feedback(config: RunConfig) -> str:
    """ALT_LMC: the best category; SteerLM: every attribute at its best value. Taken from
    the judge's template (provider judge) or the rule critic's labels."""
    if config.method not in (Method.ALT_LMC, Method.STEERLM):
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
    return compose_queries(config, pd.Series(exemplar, index=prompts.index), prompts)
