"""LLM-judge feedback: an async client for OpenAI-compatible endpoints, prompt templates
as data (alt_core/feedback/judge/templates/*.yaml) with their parsers, and a cache in the artifact store.

Entry point for callers: `judge_batch(rows, JudgeConfig(...), cache_uri=...)` returns a
DataFrame (feedback, score, analysis, reward, missing_reason, raw_answer; one row per
input row) and a dict of per-call stats. Nothing here imports Prefect at module level.
"""

from alt_core.config.judge import JudgeConfig, JudgeConfigError
from alt_core.feedback.judge.cache import JudgeCache
from alt_core.feedback.judge.client import (
    OUTPUT_COLUMNS,
    JudgeClient,
    JudgeRequestError,
    ajudge_batch,
    judge_batch,
)
from alt_core.feedback.judge.parsers import Judgement, ParseError, make_parser
from alt_core.feedback.judge.stats import FAILURE_KINDS, JudgeStats
from alt_core.feedback.judge.templates import JudgeTemplate, list_templates, load_template

__all__ = [
    "FAILURE_KINDS",
    "OUTPUT_COLUMNS",
    "JudgeCache",
    "JudgeClient",
    "JudgeConfig",
    "JudgeConfigError",
    "JudgeRequestError",
    "JudgeStats",
    "JudgeTemplate",
    "Judgement",
    "ParseError",
    "ajudge_batch",
    "judge_batch",
    "list_templates",
    "load_template",
    "make_parser",
]
