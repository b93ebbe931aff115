"""Configuration of the LLM-judge client.

The judge is any OpenAI-compatible chat-completions endpoint (OpenAI, a `vllm serve` on
the cluster, any compatible server). The API key is never part of this model: it names
an environment variable or a Prefect Secret block, and the key is read only when the
client opens its connection pool.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An integer, never a float or a bool (see `alt_core.config.models.Count`).
_Count = Annotated[int, Strict()]
# The request settings, beside the model, template and text, that change an answer.
ANSWER_FIELDS = ("temperature", "max_tokens", "extra_body")


class JudgeConfigError(ValueError):
    """The judge cannot be used as configured; the message says what to change."""


def template_is_path(template: str) -> bool:
    """Whether feedback.judge.template names a template file (a path or a store URI)
    rather than a built-in template (a bare name, looked up in the templates folder)."""
    return template.endswith((".yaml", ".yml")) or "/" in template or os.sep in template


class JudgeConfig(BaseModel):
    # hide_input_in_errors: a key pasted into the wrong field must not be echoed back in
    # the validation error (which ends up in logs and flow run states).
    # allow_inf_nan: every number is finite (a rate limit of .inf is "none", which is None).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    base_url: str = Field(
        "https://api.openai.com/v1",
        description="Root of the OpenAI-compatible API; requests go to {base_url}/chat/completions "
        "(a local vLLM judge: http://127.0.0.1:8000/v1).",
    )
    model: str = Field(
        "gpt-3.5-turbo",
        description="Judge model name sent in every request (vLLM: the served model name).",
    )
    template: str = Field(
        "tldr_lmu",
        description="Prompt template: a built-in name from alt_core/feedback/judge/templates (tldr_lmu, hh_lmc, "
        "hh_steerlm, demo_review_lmu) or a path to a template YAML file.",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    max_tokens: _Count = Field(
        256, gt=0, le=1 << 20, description="Cap on tokens the judge writes per answer."
    )
    max_concurrency: _Count = Field(
        32, gt=0, le=4096, description="Requests in flight at once (the client's semaphore)."
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="Request rate limit (token bucket); None: no limit."
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Token rate limit (prompt tokens estimated as characters / 4, plus "
        "max_tokens, corrected by the reported usage); None: no limit.",
    )
    timeout_s: float = Field(
        60.0, gt=0, description="Per-request timeout in seconds (connect, read and write each)."
    )
    max_retries: _Count = Field(
        5,
        ge=0,
        le=100,
        description="Retries of one request after a transient failure (connection error, "
        "timeout, 429, 5xx, malformed body); then the judgement is recorded as missing.",
    )
    backoff_base_s: float = Field(
        1.0, gt=0, description="First backoff delay; doubles per retry, with jitter."
    )
    backoff_max_s: float = Field(30.0, gt=0, description="Cap on one backoff delay.")
    max_retry_after_s: float = Field(
        120.0,
        gt=0,
        description="Longest Retry-After (on a 429) the client honours; a longer one fails the "
        "judgement at once instead of stalling the shard.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable that holds the API key (unset: requests "
        "go without an Authorization header, as a local vLLM judge expects).",
    )
    api_key_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the API key; takes precedence over "
        "api_key_env. Prefect is imported only when this is set.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra fields merged into every request body (e.g. seed, top_p).",
    )
    cache_unparsed: bool = Field(
        True,
        description="Also cache answers that stayed unparseable after the repair attempt, so a "
        "rerun reproduces them and pays nothing; False asks the judge again on the next run.",
    )
    cache_flush_every: _Count = Field(
        500,
        gt=0,
        le=1_000_000,
        description="Write new cache entries to the store after this many, so a crash loses "
        "at most this many paid judgements.",
    )

    def answer_settings(self) -> dict[str, Any]:
        """What, beside the model, template and request text, changes the judge's answer
        (ANSWER_FIELDS): part of the judge cache's key and of the feedback fingerprint."""
        return {name: getattr(self, name) for name in ANSWER_FIELDS}

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, "
                "underscores), e.g. OPENAI_API_KEY; put the key itself in that variable"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("base_url must not carry credentials; set the key through api_key_env")
        return value.rstrip("/")
