"""Configuration of the toxicity scorers (`feedback.toxicity`).

Three providers score toxicity in [0, 1] and give reward = 1 - toxicity:
`toxicity_classifier` (a local sequence classifier), `perspective` (Google's
Perspective API) and `profanity` (alt-profanity-check, a linear model shipped in its
package: the CPU-sized scorer). Like the judge, the Perspective API key is never part
of this model: it names an environment variable or a Prefect Secret block.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from alt_core.config.judge import JudgeConfig

_Count = Annotated[int, Strict()]
PERSPECTIVE_URL = "https://commentanalyzer.googleapis.com/v1alpha1"


class PerspectiveConfig(JudgeConfig):
    """The Perspective API client: the judge client's concurrency, rate limit, retries,
    backoff and key handling (inherited fields keep their meaning), with Perspective's
    endpoint, attribute and defaults (1 query per second, the API's default quota)."""

    base_url: str = Field(
        PERSPECTIVE_URL,
        description="Root of the Perspective API; requests go to "
        "{base_url}/comments:analyze?key=... (the key is added at request time, never logged).",
    )
    model: str = Field(
        "perspective-v1alpha1",
        description="A name for the scorer in the cache key (Perspective has no model field).",
    )
    attribute: str = Field(
        "TOXICITY",
        description="The requested attribute whose summary score is the toxicity (TOXICITY, "
        "SEVERE_TOXICITY, INSULT, PROFANITY, ...).",
    )
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="Languages sent with each request (an empty list: let the API detect).",
    )
    requests_per_minute: float | None = Field(
        60.0,
        gt=0,
        description="Request rate limit; the API enforces 1 QPS by default (60 per minute).",
    )
    max_concurrency: _Count = Field(4, gt=0, le=4096, description="Requests in flight at once.")
    api_key_env: str = Field(
        "PERSPECTIVE_API_KEY",
        description="Name of the environment variable that holds the API key.",
    )

    @field_validator("attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not value.replace("_", "").isalpha() or value.upper() != value:
            raise ValueError("attribute must be an upper-case Perspective attribute, e.g. TOXICITY")
        return value


class ToxicityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    classifier: str | None = Field(
        None,
        description="toxicity_classifier: a sequence-classification checkpoint (hub name, local "
        "or s3:// folder, safetensors) whose labels name a toxic class, e.g. "
        "unitary/toxic-bert or s-nlp/roberta_toxicity_classifier.",
    )
    toxic_label: str = Field(
        "toxic",
        description="toxicity_classifier: the label (config.id2label, case-insensitive) whose "
        "probability is the toxicity.",
    )
    multi_label: bool | None = Field(
        None,
        description="toxicity_classifier: sigmoid per label (multi-label heads such as "
        "toxic-bert) or softmax over labels (multi-class). None: from the checkpoint's "
        "problem_type (multi_label_classification -> sigmoid; else softmax).",
    )
    batch_size: _Count = Field(
        32, gt=0, le=1 << 16, description="toxicity_classifier: sequences per forward pass."
    )
    max_length: _Count = Field(
        128, gt=0, le=1 << 20, description="toxicity_classifier: input truncation, in tokens."
    )
    score_prompt: bool = Field(
        False,
        description="Score prompt + generation instead of the generation alone (the paper, "
        "like RealToxicityPrompts, scores the continuation only).",
    )
    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="A generation at or above this toxicity counts as toxic (the toxicity "
        "probability metric).",
    )
    perspective: PerspectiveConfig = Field(
        default_factory=PerspectiveConfig,
        description="The Perspective API client (provider perspective). The key is never set "
        "here: api_key_env or api_key_secret_block name where it is.",
    )
