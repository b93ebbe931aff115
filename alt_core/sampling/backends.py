"""Sampling backends: one small interface, two engines.

vLLM (its CPU build on laptops and CI, its CUDA build on GPUs; one code path) and
transformers' `generate` as a fallback. vLLM is imported here only, inside the class, so
`import alt_core` works without it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from alt_core.runtime.progress import ProgressLog
from alt_core.sampling.spec import EngineSettings, GenerationParams, SampleSpec


@dataclass
class Generation:
    text: str
    num_tokens: int
    truncated: bool


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

    def __init__(
        self,
        model_path: str,
        engine: EngineSettings,
        seed: int,
        max_prompt_tokens: int,
        kept: bool = False,
    ):
        extra: dict[str, Any] = {}
        if kept:
            # A kept engine (`sampling.engines`) switches checkpoints in place through
            # these worker methods, and sleeps between jobs on a GPU.
            extra["worker_extension_cls"] = "alt_core.sampling.engine_ext.EngineExtension"
            if _on_gpu() and engine.sleep_level:
                extra["enable_sleep_mode"] = True
        dtype = engine.dtype
        if not _on_gpu():
            # vLLM's own "auto" is bfloat16 on CPUs; sample in the precision the trainer
            # and the perplexity scorer use there (fp32), as model.dtype documents.
            dtype = "float32" if dtype == "auto" else dtype
            # vLLM's CPU build fails ("CPU Generator does not use offset") when it splits
            # the prefill of a seeded request over steps; a step budget that holds every
            # running prompt whole means it never has to.
            extra["max_num_batched_tokens"] = max(4096, engine.max_num_seqs * max_prompt_tokens)
            # Its KV cache size comes from the process environment the launcher set up
            # (EngineSettings.process_env).
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
            # Never a pickled pytorch_model.bin, even through torch's weights-only loader.
            load_format="safetensors",
            **extra,
        )

    def close(self) -> None:
        """Shut the engine's processes down (a kept engine that is replaced)."""
        import gc

        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
        gc.collect()

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
        # Safetensors only: a pickled pytorch_model.bin in a model folder is never read.
        self.model = AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True).eval()
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


def make_backend(spec: SampleSpec) -> SamplingBackend:
    if spec.backend == "vllm":
        return VLLMBackend(spec.model_path, spec.engine, spec.seed, spec.params.max_prompt_tokens)
    if spec.backend == "hf":
        return HFBackend(spec.model_path)
    raise ValueError(f"unknown sampling backend {spec.backend!r}; use 'vllm' or 'hf'")
