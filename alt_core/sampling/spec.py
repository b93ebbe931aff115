"""What a sampling shard is given: typed, built from the run config, free of secrets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alt_core.config import Dtype, RunConfig


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationParams(_Spec):
    """What decides the generated tokens (with the seed and the prompt tokens). Built by
    `train` or `evaluation` from the config; no defaults of its own."""

    n: int = Field(gt=0, description="Generations per prompt.")
    temperature: float = Field(ge=0, description="0: greedy.")
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    max_prompt_tokens: int = Field(gt=0, description="Longer queries are cut from the left.")

    @classmethod
    def train(cls, config: RunConfig) -> GenerationParams:
        """Iteration sampling: the `sampling` section's generation settings."""
        s = config.sampling
        return cls(
            n=s.num_generations,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            max_prompt_tokens=config.data.max_prompt_tokens,
        )

    @classmethod
    def evaluation(cls, config: RunConfig) -> GenerationParams:
        """Evaluation, `evaluation.max_new_tokens` long (default: the sampling length): one
        greedy generation, or `evaluation.samples_per_prompt` sampled ones at the
        evaluation's temperature and top_p."""
        e = config.evaluation
        length = e.max_new_tokens or config.sampling.max_new_tokens
        sampled = e.samples_per_prompt > 1
        return cls(
            n=e.samples_per_prompt,
            temperature=e.temperature if sampled else 0.0,
            top_p=e.top_p if sampled else 1.0,
            max_new_tokens=length,
            max_prompt_tokens=config.data.max_prompt_tokens,
        )


class EngineSettings(_Spec):
    """How the engine runs: the config's values, copied by `from_config` (no defaults of
    its own, so it cannot drift from the config)."""

    tensor_parallel_size: int
    gpu_memory_utilization: float
    cpu_kvcache_gib: float
    enforce_eager: bool
    max_num_seqs: int
    dtype: Dtype
    trust_remote_code: bool
    reuse: bool
    sleep_level: int

    @classmethod
    def from_config(cls, config: RunConfig) -> EngineSettings:
        s = config.sampling
        return cls(
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            cpu_kvcache_gib=s.cpu_kvcache_gib,
            enforce_eager=s.enforce_eager,
            max_num_seqs=s.max_num_seqs,
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
            reuse=s.engine_reuse,
            sleep_level=s.sleep_level,
        )

    def process_env(self) -> dict[str, str]:
        """Environment the engine reads at start-up: vLLM's CPU build sizes its KV cache
        from VLLM_CPU_KVCACHE_SPACE (GiB), not from the GPU share. Given to the shard's
        process by the launcher; never written into this process's environment."""
        return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(self.cpu_kvcache_gib)))}


class SampleSpec(_Spec):
    """Everything a sampling shard needs."""

    model_path: str = Field(description="A local checkpoint folder or a hub name.")
    prompts_uri: str = Field(description="The committed prompt table (PROMPTS columns).")
    output_uri: str
    start: int = Field(ge=0, description="First prompt row of the shard.")
    stop: int = Field(gt=0, description="One past the last prompt row.")
    seed: int
    params: GenerationParams
    engine: EngineSettings
    backend: Literal["vllm", "hf"] = "vllm"
    fingerprint: str = ""
