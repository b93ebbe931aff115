"""Sampling backends and the sampling shard.

One small interface, two engines: vLLM (its CPU build on laptops and CI, its CUDA build
on GPUs; one code path) and transformers' `generate` as a fallback. Queries are
tokenised here and cut from the left to `max_prompt_tokens`, so the engine sees exactly
the tokens the trainer will see. Every prompt row gets its own seed, derived from the
iteration seed and its row number, so the samples do not depend on how the prompt set
was sharded.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd

from alt_core import store
from alt_core.config import Dtype
from alt_core.runtime.faults import crash_if, shard_point
from alt_core.runtime.progress import ProgressLog
from alt_core.schemas import PROMPTS, SAMPLES, require_columns


@dataclass
class Generation:
    text: str
    num_tokens: int
    truncated: bool


@dataclass
class GenerationParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_prompt_tokens: int = 512


@dataclass
class EngineSettings:
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    cpu_kvcache_gib: float = 1.0
    enforce_eager: bool = True
    max_num_seqs: int = 256
    dtype: Dtype = "auto"
    trust_remote_code: bool = False


@dataclass
class SampleSpec:
    """Everything a sampling shard needs; serialisable to JSON, free of secrets."""

    model_path: str
    prompts_uri: str
    output_uri: str
    start: int
    stop: int
    seed: int
    params: GenerationParams = field(default_factory=GenerationParams)
    engine: EngineSettings = field(default_factory=EngineSettings)
    backend: str = "vllm"
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleSpec:
        d = dict(d)
        d["params"] = GenerationParams(**d.get("params", {}))
        d["engine"] = EngineSettings(**d.get("engine", {}))
        return cls(**d)


class SamplingBackend(Protocol):
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: GenerationParams,
        seeds: list[int],
        progress: ProgressLog | None = None,
    ) -> list[list[Generation]]:
        """One list of `params.n` generations per prompt, in input order; `progress`
        advances by one per prompt done."""
        ...


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class VLLMBackend:
    """vLLM's offline engine; imported here only, so alt_core imports without vLLM."""

    def __init__(self, model_path: str, engine: EngineSettings, seed: int, max_prompt_tokens: int):
        extra: dict[str, Any] = {}
        dtype = engine.dtype
        if not _on_gpu():
            # vLLM's own "auto" is bfloat16 on CPUs; sample in the precision the trainer
            # and the perplexity scorer use there (fp32), as model.dtype documents.
            dtype = "float32" if dtype == "auto" else dtype
            # vLLM's CPU build fails ("CPU Generator does not use offset") when it splits
            # the prefill of a seeded request over steps; a step budget that holds every
            # running prompt whole means it never has to.
            extra["max_num_batched_tokens"] = max(4096, engine.max_num_seqs * max_prompt_tokens)
            # The CPU build sizes its KV cache from this variable, not from the GPU share.
            os.environ.setdefault(
                "VLLM_CPU_KVCACHE_SPACE", str(max(1, int(engine.cpu_kvcache_gib)))
            )
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            seed=seed,
            tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization if _on_gpu() else 0.2,
            enforce_eager=engine.enforce_eager,
            max_num_seqs=engine.max_num_seqs,
            dtype=dtype,
            trust_remote_code=engine.trust_remote_code,
            **extra,
        )

    def generate(
        self,
        prompt_ids: list[list[int]],
        params: GenerationParams,
        seeds: list[int],
        progress: ProgressLog | None = None,
    ) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature == 0
        sps = [
            SamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=1.0 if greedy else params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        bar = _progress_bar(progress) if progress is not None else False
        outputs = self.llm.generate(prompts, sps, use_tqdm=bar)
        return [
            [Generation(o.text, len(o.token_ids), o.finish_reason == "length") for o in out.outputs]
            for out in outputs
        ]


def _progress_bar(progress: ProgressLog) -> Callable[..., Any]:
    """A tqdm class for vLLM's `use_tqdm` that draws nothing and advances `progress` by
    one per finished request. vLLM also opens a "Rendering prompts" bar with it, which is
    not counted; its "Processed prompts" bar calls `update` once per finished request
    (with the request's number of outputs in some versions and 1 in others, so the
    argument is not used)."""
    from tqdm import tqdm

    class _Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._counts = str(kwargs.get("desc", "")).startswith("Processed")
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "dynamic_ncols": False})

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts:
                progress.advance()
            return super().update(n)

    return _Bar


class HFBackend:
    """transformers' generate: slower, but needs nothing beyond the trainer's stack."""

    def __init__(self, model_path: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.batch_size = batch_size

    def generate(
        self,
        prompt_ids: list[list[int]],
        params: GenerationParams,
        seeds: list[int],
        progress: ProgressLog | None = None,
    ) -> list[list[Generation]]:
        results = []
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        for ids, seed in zip(prompt_ids, seeds, strict=True):
            self.torch.manual_seed(seed)
            inp = self.torch.tensor([ids] * params.n, device=self.device)
            with self.torch.no_grad():
                out = self.model.generate(
                    inp,
                    attention_mask=self.torch.ones_like(inp),
                    do_sample=params.temperature > 0,
                    temperature=params.temperature if params.temperature > 0 else None,
                    top_p=params.top_p if params.temperature > 0 else None,
                    max_new_tokens=params.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            gens = []
            for row in out[:, len(ids) :].tolist():
                stop = row.index(eos) if eos in row else len(row)
                text = str(self.tokenizer.decode(row[:stop], skip_special_tokens=True))
                gens.append(Generation(text, stop, stop >= params.max_new_tokens))
            results.append(gens)
            if progress is not None:
                progress.advance()
        return results


def tokenize_queries(
    tokenizer: Any, queries: list[str], max_prompt_tokens: int, prompts: list[str] | None = None
) -> list[list[int]]:
    """Token ids per query, at most `max_prompt_tokens`. An over-long query loses the
    start of its raw prompt, never the conditioning prefix (`query = prefix + prompt`):
    cutting the feedback off would sample unconditioned."""
    ids = tokenizer(queries, add_special_tokens=False)["input_ids"]
    prompts = prompts if prompts is not None else [""] * len(queries)
    out = []
    for query, prompt, row in zip(queries, prompts, ids, strict=True):
        if len(row) <= max_prompt_tokens:
            out.append(row)
            continue
        prefix = query[: len(query) - len(prompt)] if prompt and query.endswith(prompt) else ""
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        if len(head) >= max_prompt_tokens:  # the prefix alone does not fit: keep its end
            out.append(head[-max_prompt_tokens:])
            continue
        tail = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prefix else row
        out.append(head + tail[len(tail) - (max_prompt_tokens - len(head)) :])
    return out


def make_backend(spec: SampleSpec) -> SamplingBackend:
    if spec.backend == "vllm":
        return VLLMBackend(spec.model_path, spec.engine, spec.seed, spec.params.max_prompt_tokens)
    if spec.backend == "hf":
        return HFBackend(spec.model_path)
    raise ValueError(f"unknown sampling backend {spec.backend!r}; use 'vllm' or 'hf'")


def samples_frame(prompts: pd.DataFrame, generations: list[list[Generation]]) -> pd.DataFrame:
    """Flatten per-prompt generations into one row per generation (SAMPLES columns)."""
    counts = [len(g) for g in generations]
    rows = prompts.loc[prompts.index.repeat(counts), PROMPTS].reset_index(drop=True)
    flat = [g for gens in generations for g in gens]
    rows["sample_idx"] = [i for c in counts for i in range(c)]
    rows["generation"] = [g.text for g in flat]
    rows["num_tokens"] = [g.num_tokens for g in flat]
    rows["truncated"] = [g.truncated for g in flat]
    return rows[SAMPLES]


def sample_shard(spec: SampleSpec, log=print) -> dict[str, Any]:
    """Generate for rows [start, stop) of the prompt table and commit the samples."""
    from transformers import AutoTokenizer

    prompts = store.read_table(spec.prompts_uri).iloc[spec.start : spec.stop]
    require_columns(prompts, PROMPTS, spec.prompts_uri)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    prompt_ids = tokenize_queries(
        tokenizer,
        prompts["query"].tolist(),
        spec.params.max_prompt_tokens,
        prompts["prompt"].tolist(),
    )
    seeds = [spec.seed * 1_000_003 + spec.start + i for i in range(len(prompts))]
    t0 = time.perf_counter()
    backend = make_backend(spec)
    t1 = time.perf_counter()
    log(f"engine ready in {t1 - t0:.1f}s; generating {len(prompts)} prompts x {spec.params.n}")
    progress = ProgressLog(len(prompts), "prompts", log)
    generations = backend.generate(prompt_ids, spec.params, seeds, progress)
    t2 = time.perf_counter()
    df = samples_frame(prompts.reset_index(drop=True), generations)
    crash_if(shard_point(spec.output_uri))
    store.write_table(spec.output_uri, df, meta={"fingerprint": spec.fingerprint})
    tokens = int(df["num_tokens"].sum())
    return {
        "rows": len(df),
        "tokens": tokens,
        "engine_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
        "tokens_per_s": round(tokens / max(t2 - t1, 1e-9), 1),
        "truncated_share": float(df["truncated"].mean()) if len(df) else 0.0,
    }
