"""The engine a sampling shard generates with: a fresh one, or the kept engine of a kept
worker (`runtime.workers`, `sampling.engine_reuse`), switched in place to the shard's
policy.

A kept engine serves the initial evaluation and every iteration's train and eval
sampling. When a shard asks for another checkpoint of the same model (same config and
tokenizer: the policy of the next iteration), the engine switches in place, and only
uses the new weights once it has proved it serves them:

1. `reload_weights` from the checkpoint's safetensors (vLLM's in-place reload);
2. the output head is refreshed when it is tied to the input embedding (vLLM does not
   redo a tied head's post-load step: it would go on scoring with the old weights);
3. the prefix cache is reset (blocks computed under the old weights would be served
   for prompts that share a prefix with earlier ones: silently different samples);
4. the probe (`sampling.probe`): the engine's log-probabilities of a fixed token
   sequence must agree with those the trainer recorded for the checkpoint, and be
   nearer to them than to the previous checkpoint's; the prefix cache is reset again
   after it, so the shard starts as it would on a fresh engine.

Anything else starts a fresh engine: another model (a different config or tokenizer,
e.g. Quark's added tokens), other engine settings, a checkpoint without a probe record,
or a failed check. A shard's samples never depend on which way its engine came.

On a GPU the kept engine sleeps between jobs (vLLM sleep mode, `sampling.sleep_level`)
and wakes for the next shard; at level 2 its weights were dropped, so they are reloaded
and checked again on waking (against the engine's own probe of the same weights).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alt_core.runtime import resident
from alt_core.sampling import probe
from alt_core.sampling.backends import SamplingBackend, VLLMBackend, _on_gpu, make_backend
from alt_core.sampling.spec import SampleSpec

KEY = ("sampling-engine",)
# What of a model folder decides the engine's structure (beyond the weights).
STRUCTURE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
# JSON fields that record where and how a folder was saved, not what the model or its
# tokenizer is (transformers adds some on every save); a tokenizer's padding and
# truncation settings are the caller's, not the engine's.
_BOOKKEEPING = {
    "_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "is_local",
    "local_files_only", "tokenizer_file", "padding", "truncation",
}  # fmt: skip


def structure_id(model_path: str) -> str:
    """What must match for an in-place switch: the model's config and generation config
    and its tokenizer files, less bookkeeping fields; a hub name stands for itself."""
    root = Path(model_path)
    if not root.is_dir():
        return f"ref:{model_path}"
    digest = hashlib.sha256()
    for name in STRUCTURE_FILES:
        path = root / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name.endswith(".json"):
            try:
                blob = json.loads(data)
            except ValueError:
                blob = None
            if isinstance(blob, dict):
                kept = {k: v for k, v in blob.items() if k not in _BOOKKEEPING}
                data = json.dumps(kept, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


@dataclass
class _Engine:
    backend: VLLMBackend
    settings: tuple[Any, ...]  # engine settings and structure: fixed for its life
    model_path: str
    weights: str
    record: dict[str, Any] | None  # the trainer's probe record of the loaded weights
    own_probe: list[float] | None  # the engine's probe of them
    sleep_level: int
    processes: list[Any] = field(default_factory=list)  # psutil.Process of the engine
    asleep: bool = False


_ENGINE: dict[str, _Engine] = {}


def backend_for(
    spec: SampleSpec, log: Callable[[str], None] = print
) -> tuple[SamplingBackend, str]:
    """The backend a shard generates with, and how it came: "fresh" (started for this
    shard), "kept" (the same weights as the last shard) or "switched" (in place)."""
    if spec.backend != "vllm" or not resident.serving() or not spec.engine.reuse:
        return make_backend(spec), "fresh"
    settings = (spec.engine, spec.params.max_prompt_tokens, structure_id(spec.model_path))
    engine = _ENGINE.get("kept")
    if engine is not None and engine.settings != settings:
        log("kept engine: another model or engine settings; starting a fresh engine")
        _close()
        engine = None
    if engine is not None:
        check_alive(engine)
        _wake(engine, log)
        if engine.weights == resident.weights_id(spec.model_path):
            _reset(engine)
            return engine.backend, "kept"
        problem = switch(engine, spec.model_path, log)
        if problem is None:
            return engine.backend, "switched"
        log(f"kept engine: not switched to {spec.model_path}: {problem}; starting a fresh engine")
        _close()
    return _start(spec, settings), "fresh"


def _start(spec: SampleSpec, settings: tuple[Any, ...]) -> VLLMBackend:
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    backend = VLLMBackend(
        spec.model_path, spec.engine, spec.seed, spec.params.max_prompt_tokens, kept=True
    )
    record = probe.read(spec.model_path)
    ids = record["token_ids"] if record else _probe_ids(spec.model_path)
    engine = _Engine(
        backend,
        settings,
        spec.model_path,
        resident.weights_id(spec.model_path),
        record,
        engine_probe(backend, ids),
        spec.engine.sleep_level if _on_gpu() else 0,
    )
    # The processes the engine started (its engine core and workers).
    engine.processes = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _reset(engine)
    _ENGINE["kept"] = engine
    resident.put(
        KEY,
        resident.Kept(engine, sleep=lambda: _sleep(engine), wake=None, close=_close),
    )
    return backend


def check_alive(engine: _Engine) -> None:
    """Raise if a process of the kept engine died since its last shard (an OOM kill): a
    dead engine can leave `generate` waiting forever, so the job fails instead, its
    worker ends, and the stage's retry gets a new worker with a fresh engine."""
    import psutil

    for proc in engine.processes:
        try:
            alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            raise RuntimeError(
                f"the kept engine's process {proc.pid} has died; a fresh engine will serve "
                f"the shard's retry"
            )


def switch(engine: _Engine, model_path: str, log: Callable[[str], None] = print) -> str | None:
    """Switch the kept engine to the checkpoint at `model_path` in place (the steps of
    the module docstring); None when it serves it, else why not (the engine must then
    not be used)."""
    record = probe.read(model_path)
    if record is None:
        return f"the checkpoint has no {probe.PROBE_FILE} to check the switch against"
    t0 = time.perf_counter()
    got = _load_weights(engine, model_path, record["token_ids"])
    problem = probe.check(got, record, engine.record, _dtype(engine))
    if problem is None:
        log(
            f"kept engine: switched to {model_path} in {time.perf_counter() - t0:.1f}s "
            f"(probe within {probe.distance(got, record['logprobs']):.1g})"
        )
        engine.model_path, engine.weights = model_path, resident.weights_id(model_path)
        engine.record, engine.own_probe = record, got
    return problem


def _load_weights(engine: _Engine, model_path: str, ids: list[int]) -> list[float]:
    llm = engine.backend.llm
    llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
    llm.collective_rpc("alt_refresh_tied_head")
    _reset(engine)
    got = engine_probe(engine.backend, ids)
    _reset(engine)
    return got


def engine_probe(backend: VLLMBackend, ids: list[int]) -> list[float]:
    """The engine's log-probability of each probe token given the ones before."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, seed=0)
    out = backend.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    lps = out[0].prompt_logprobs or []
    values = []
    for token, entry in zip(ids[1:], lps[1:], strict=True):
        values.append(float(entry[token].logprob) if entry and token in entry else float("nan"))
    return values


def _dtype(engine: _Engine) -> str:
    """The dtype the engine computes in, as torch names it ("torch.float32")."""
    return str(engine.backend.llm.llm_engine.model_config.dtype)


def _probe_ids(model_path: str) -> list[int]:
    from transformers import AutoTokenizer

    return probe.probe_ids(AutoTokenizer.from_pretrained(model_path))


def _reset(engine: _Engine) -> None:
    if not engine.backend.llm.reset_prefix_cache():
        raise RuntimeError("the kept engine could not reset its prefix cache")


def _sleep(engine: _Engine) -> None:
    if engine.sleep_level and not engine.asleep:
        engine.backend.llm.sleep(level=engine.sleep_level)
        engine.asleep = True


def _wake(engine: _Engine, log: Callable[[str], None]) -> None:
    if not engine.asleep:
        return
    engine.backend.llm.wake_up()
    engine.asleep = False
    if engine.sleep_level >= 2:
        # Level 2 dropped the weights: load them again and prove it, as a switch does.
        assert engine.own_probe is not None
        ids = engine.record["token_ids"] if engine.record else _probe_ids(engine.model_path)
        got = _load_weights(engine, engine.model_path, ids)
        if probe.distance(got, engine.own_probe) > 1e-6:
            _close()
            raise RuntimeError("the kept engine woke from sleep level 2 with other weights")
        log("kept engine: woke and reloaded its weights (sleep level 2)")
    _reset(engine)


def _close() -> None:
    engine = _ENGINE.pop("kept", None)
    resident.forget(KEY)
    if engine is not None:
        engine.backend.close()
