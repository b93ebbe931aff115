"""LLM-judge feedback: the `judge` provider around `alt_core.feedback.judge.judge_batch`.

Each (raw prompt, generation) row is judged with the template in `feedback.judge.template`
(its parser must suit the method: lmu for ALT_LMU, lmc for ALT_LMC, steerlm for SteerLM).
The judgement's feedback text, score and analysis become the row's feedback columns, and
`reward` is the score as a float, so a judge method's metrics report the mean judge score.
A judgement the client could not get or parse is missing (`missing_reason` says why,
`missing_cause` names the cause, the raw answer is kept in `raw_answer`), and the datapool
leaves that generation out; a shard with too many of them fails instead of committing
(`feedback.max_missing_share`, `alt_core.feedback.base.check_complete`).

Cache: every parsed answer is kept in the artifact store under `feedback.judge_cache`,
by default `<storage.cache_dir>/judge-cache`. The cache is keyed by judge model, template
content and the (prompt, generation) pair, so it is safe to share: beside the run's other
reusable artifacts (the built demo model) it makes a resumed shard, a repeated iteration
and a rerun of the same experiment into another folder all free. A run folder in object
storage needs storage.cache_dir (or feedback.judge_cache) there too, so that every shard
process, wherever it runs, sees one cache.

`last_stats` holds the client's counters of the latest `score` call (requests, retries,
failures by kind, parse failures, tokens, latency percentiles); the feedback worker
reports them as `judge_*` keys of the shard result, and `merge_shard_stats` sums the
shards of one stage for the iteration's metrics.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from alt_core import store
from alt_core.config import RunConfig
from alt_core.feedback.base import (
    NO_GENERATION,
    FeedbackProvider,
    feedback_frame,
    missing_generations,
)
from alt_core.feedback.judge import (
    OUTPUT_COLUMNS,
    JudgeConfig,
    JudgeConfigError,
    JudgeTemplate,
    judge_batch,
    list_templates,
    load_template,
)
from alt_core.methods import Method, method_spec

STATS_PREFIX = "judge_"
# Stats that describe a distribution or a duration: merged by their maximum, not summed.
_MAX_STATS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "wall_s")
_TEXT = ["feedback", "analysis", "missing_reason", "raw_answer", "missing_cause"]


def judge_cache_uri(config: RunConfig) -> str:
    """Where this run's judge answers are cached (see the module docstring)."""
    return config.feedback.judge_cache or store.join(config.storage.cache_dir, "judge-cache")


def check_template(template: JudgeTemplate, method: Method) -> None:
    """Refuse a template whose answers are not the feedback `method` trains on."""
    want = method_spec(method).judge_parser
    if want is None:
        raise JudgeConfigError(
            f"method {method.value} trains on a scalar reward; the LLM judge writes textual "
            f"feedback for alt_lmu, alt_lmc or steerlm"
        )
    if template.parser != want:
        fits = [t for t in list_templates() if load_template(t).parser == want]
        raise JudgeConfigError(
            f"judge template {template.name!r} uses the {template.parser!r} parser but method "
            f"{method.value} needs {want!r}: set feedback.judge.template to a {want} template "
            f"(built-in templates with it: {', '.join(fits) or 'none'}; or a template file "
            f"with parser: {want})"
        )


def check_judge_template(config: RunConfig) -> None:
    """With provider judge, the template must suit the method (`check_template`). Checked
    before any work for built-in and local templates (this reads the template file); one
    in object storage is checked when the provider starts. Raises JudgeConfigError."""
    if config.feedback.provider != "judge" or method_spec(config).judge_parser is None:
        return
    name = config.feedback.judge.template
    if not store.is_remote(name):
        check_template(load_template(name), config.method)


def best_template_feedback(template_name: str) -> str:
    """The best label a template's parser can give: the first category (lmc) or every
    attribute at its best value (steerlm: the highest one, the lowest where the weight is
    negative), written the way the parser writes it."""
    template = load_template(template_name)
    settings = template.settings
    if template.parser == "lmc":
        return str(settings["categories"][0])
    if template.parser == "steerlm":
        weights = settings.get("weights", {})
        best = {
            name: (low if weights.get(name, 1.0) < 0 else high)
            for name, (low, high) in settings["attributes"].items()
        }
        return ",".join(f"{name}:{value}" for name, value in best.items())
    raise JudgeConfigError(
        f"judge template {template.name!r} ({template.parser}) has no fixed best label; an "
        "lmu exemplar is chosen from the pool"
    )


class JudgeProvider(FeedbackProvider):
    """Textual feedback from an OpenAI-compatible LLM judge."""

    name = "judge"
    unit = "judgements"
    resume_note = "answered judgements are cached, so only the missing ones are asked again"

    def __init__(
        self,
        judge: JudgeConfig,
        method: Method,
        cache_uri: str | None = None,
        template: JudgeTemplate | str | None = None,
    ) -> None:
        if template is None or isinstance(template, str):
            template = load_template(template or judge.template)
        check_template(template, method)
        self.judge = judge
        self.method = method
        self.template = template
        self.cache_uri = cache_uri
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: RunConfig) -> JudgeProvider:
        return cls(config.feedback.judge, config.method, cache_uri=judge_cache_uri(config))

    def __repr__(self) -> str:
        return (
            f"JudgeProvider(model={self.judge.model!r}, template={self.template.name!r}, "
            f"cache={self.cache_uri!r})"
        )

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Judge every row that has a generation; see the module docstring."""
        missing = missing_generations(df)
        present = df.loc[~missing, ["prompt", "generation"]]
        judged = pd.DataFrame(index=present.index, columns=OUTPUT_COLUMNS)
        self.last_stats = {}
        if len(present):
            frame, self.last_stats = judge_batch(
                present,
                self.judge,
                template=self.template,
                cache_uri=self.cache_uri,
                progress_log=self.progress,
            )
            judged = frame.set_axis(present.index)
        judged = judged.reindex(df.index)  # rows without a generation: all NaN
        texts = judged[_TEXT].astype(object).where(judged[_TEXT].notna(), None)
        score = judged["reward"].astype("float64")  # the client's score as a float
        out = feedback_frame(
            df.index,
            reward=score,
            feedback=texts["feedback"],
            score=score,
            analysis=texts["analysis"],
            missing_reason=texts["missing_reason"].where(~missing, "no generation"),
        )
        # Beyond FEEDBACK_COLUMNS: the judge's raw answer, kept for missing judgements, and
        # the cause of each missing one.
        out["raw_answer"] = texts["raw_answer"]
        out["missing_cause"] = texts["missing_cause"].where(~missing, NO_GENERATION)
        return out


def merge_shard_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The `judge_*` keys of several feedback-shard results as one dict for the iteration's
    metrics: counts summed; latency percentiles and wall time as the worst shard's (exact
    percentiles of the union would need every latency). Shards skipped because they were
    already committed carry no stats and add nothing."""
    merged: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if not key.startswith(STATS_PREFIX) or not isinstance(value, int | float):
                continue
            name = key.removeprefix(STATS_PREFIX)
            if name in _MAX_STATS:
                if value == value:  # NaN (no request sent) says nothing about latency
                    merged[key] = max(merged.get(key, value), value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged
