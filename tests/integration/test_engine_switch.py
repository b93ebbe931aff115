"""A kept engine switched to another checkpoint in place (`sampling.engines`) serves
exactly what a fresh engine on that checkpoint does, and each trap of the switch is
caught: the prefix cache (blocks computed under the old weights), the tied output head
(not refreshed by vLLM's reload), and a checkpoint that cannot be checked. Real vLLM
(CPU build) in this process, on tiny models made here."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from alt_core.runtime import resident
from alt_core.sampling import engines, probe
from alt_core.sampling.backends import VLLMBackend
from alt_core.sampling.spec import GenerationParams, SampleSpec
from tests.unit.sampling.test_sampling import ENGINE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Prompts longer than a KV block of vLLM's CPU build (128 tokens) and sharing their
# first block, so the prefix cache serves blocks across requests and shards.
SHARED = [(7 * i) % 250 + 3 for i in range(140)]
PROMPTS = [SHARED + [(11 * i + j) % 250 + 3 for j in range(20)] for i in range(12)]
SEEDS = [1000 + i for i in range(len(PROMPTS))]
SAMPLED = GenerationParams(
    n=3, temperature=0.9, top_p=0.9, max_new_tokens=12, max_prompt_tokens=192
)
GREEDY = SAMPLED.model_copy(update={"n": 1, "temperature": 0.0, "top_p": 1.0})


def _record_probe(model_dir) -> None:
    """What the trainer writes beside a checkpoint it saves (`alt_probe.json`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    ids = probe.probe_ids(AutoTokenizer.from_pretrained(model_dir))
    probe.write(model_dir, ids, probe.torch_logprobs(model, ids, "cpu"), str(model.dtype))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoint A and B (A's weights moved by noise: another policy of the same model),
    each with its probe record, and B without one."""
    from tests.support.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("switch")
    a = build_tiny_model(root / "a", n_positions=256)
    b = root / "b"
    shutil.copytree(a, b)
    weights = load_file(str(b / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    moved = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in weights.items()}
    save_file(moved, str(b / "model.safetensors"), metadata={"format": "pt"})
    unchecked = root / "b-unchecked"
    shutil.copytree(b, unchecked)
    _record_probe(a)
    _record_probe(b)
    return a, b, unchecked


def _spec(model_dir) -> SampleSpec:
    return SampleSpec(
        model_path=str(model_dir), prompts_uri="unused", output_uri="unused",
        start=0, stop=1, seed=3, params=SAMPLED, engine=ENGINE,
    )  # fmt: skip


def _outputs(backend) -> tuple:
    greedy = backend.generate(PROMPTS, GREEDY, SEEDS)
    sampled = backend.generate(PROMPTS, SAMPLED, SEEDS)
    return tuple(tuple(g.text for g in gens) for gens in [*greedy, *sampled])


@pytest.fixture(scope="module")
def fresh_b(models):
    """What a fresh engine on B serves."""
    backend = VLLMBackend(str(models[1]), ENGINE, 3, 192)
    try:
        return _outputs(backend)
    finally:
        backend.close()


@pytest.fixture
def kept(monkeypatch):
    """This process as a kept worker; its engine closed after the test."""
    monkeypatch.setitem(resident._STATE, "serving", True)
    yield
    resident.close()


def test_a_switched_engine_serves_what_a_fresh_one_does(models, fresh_b, kept):
    a, b, unchecked = models
    backend, how = engines.backend_for(_spec(a))
    assert how == "fresh"
    _outputs(backend)  # fills the prefix cache under A
    backend, how = engines.backend_for(_spec(b))
    assert how == "switched"
    assert _outputs(backend) == fresh_b
    again, how = engines.backend_for(_spec(b))
    assert (again, how) == (backend, "kept") and _outputs(again) == fresh_b
    # And back: A's probe record checks that switch.
    _, how = engines.backend_for(_spec(a))
    assert how == "switched"
    # A checkpoint without a probe record cannot be checked: a fresh engine serves it.
    fresh, how = engines.backend_for(_spec(unchecked))
    assert how == "fresh" and fresh is not backend
    assert _outputs(fresh) == fresh_b


def test_the_traps_a_switch_avoids(models, fresh_b, kept):
    """Each step of the switch matters: without the prefix-cache reset the engine serves
    blocks cached under the old weights, and without the head refresh it scores with
    the old tied head (silently other samples, both); the probe sees the second."""
    a, b, _ = models
    backend, _ = engines.backend_for(_spec(a))
    llm = backend.llm
    _outputs(backend)  # fills the prefix cache under A
    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(b)})
    assert llm.collective_rpc("alt_refresh_tied_head") == [True]  # GPT-2 ties its head
    assert _outputs(backend) != fresh_b  # the prefix cache trap
    assert llm.reset_prefix_cache()
    assert _outputs(backend) == fresh_b

    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(a)})
    assert llm.reset_prefix_cache()
    ids = probe.read(a)["token_ids"]
    stale_head = engines.engine_probe(backend, ids)  # A's body under B's head
    assert probe.check(stale_head, probe.read(a), probe.read(b)) is not None
    llm.collective_rpc("alt_refresh_tied_head")
    assert llm.reset_prefix_cache()
    assert probe.check(engines.engine_probe(backend, ids), probe.read(a), probe.read(b)) is None


def test_a_switch_the_probe_refuses_gets_a_fresh_engine(models, fresh_b, kept, monkeypatch):
    """A switch that leaves the tied head stale is refused, and a fresh engine serves B."""
    a, b, _ = models
    backend, _ = engines.backend_for(_spec(a))
    real_rpc = backend.llm.collective_rpc

    def skip_head_refresh(method, *args, **kwargs):
        return [False] if method == "alt_refresh_tied_head" else real_rpc(method, *args, **kwargs)

    monkeypatch.setattr(backend.llm, "collective_rpc", skip_head_refresh)
    lines: list[str] = []
    switched, how = engines.backend_for(_spec(b), log=lines.append)
    assert how == "fresh" and switched is not backend
    assert any("not switched" in line and "probe" in line for line in lines), lines
    assert _outputs(switched) == fresh_b
