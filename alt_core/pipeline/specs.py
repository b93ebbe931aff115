"""Typed specs and results that cross task and process boundaries.

Each spec is built from the run config by the stage's planner (`pipeline.dag`), never by
copying the config's defaults. Sampling and training have their own spec modules
(`alt_core.sampling.spec`, `alt_core.training.spec`); the rest live here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alt_core.config import RunConfig


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsSpec(_Spec):
    """A prompt table to condition: `source_uri` rows (all, or `draw` of them drawn with
    replacement), each query conditioned on `exemplar` (None: the raw prompt)."""

    source_uri: str
    output_uri: str
    exemplar: str | None
    draw: int | None = Field(None, description="Prompts drawn with replacement (None: all).")
    seed: int = 0


class FeedbackSpec(_Spec):
    """One feedback shard: the samples shard it scores and where its feedback goes."""

    config: RunConfig
    input_uri: str
    output_uri: str
    fingerprint: str = ""


class DatapoolSpec(_Spec):
    feedback_uris: list[str]
    previous_pool_uri: str | None
    pool_uri: str
    train_uri: str
    iteration: int
    seed: int


class JoinSpec(_Spec):
    """The evaluation feedback shards joined into one scored table."""

    feedback_uris: list[str]
    output_uri: str


class PerplexitySpec(_Spec):
    input_uri: str
    output_uri: str
    reference_path: str
    batch_size: int
    fingerprint: str = ""


class TrainStageSpec(_Spec):
    """The train stage: what the training job will be built from once its inputs are
    local (`alt_core.training.spec.TrainSpec` is the job's own spec)."""

    train_uri: str
    policy_uri: str
    reference_uri: str
    output_uri: str
    state_uri: str | None
    added_tokens: list[str]
    seed: int
    run_name: str


class StageResult(BaseModel):
    """What every stage (and every shard of one) returns: its committed outputs, whether
    they were reused, and its figures (rows, seconds, judge counters, training loss)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    outputs: list[str]
    skipped: bool = False
    stats: dict[str, Any] = Field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.outputs[0]
