"""What vLLM mixes into each of its workers for a kept engine (`worker_extension_cls`).

The methods run inside vLLM's worker processes, called by name through
`LLM.collective_rpc`; each returns something small and JSON-able. This module is
imported by vLLM only (never by alt_core itself), so it imports nothing of vLLM's at the
top.
"""

from __future__ import annotations

from typing import Any


class EngineExtension:
    """Helpers for switching a live engine to another checkpoint (`sampling.engines`)."""

    model_runner: Any  # set by vLLM's worker

    def alt_refresh_tied_head(self) -> bool:
        """After `reload_weights`: rebuild what the output head derived from its weights
        when it shares them with the input embedding (GPT-2, tied Llama/Qwen heads).

        vLLM reloads layer by layer, and a tied head owns no parameter of its own, so
        its post-load step (on the CPU build, the packed GEMM weight it computes from
        them) is not redone: the engine would go on scoring with the old head. Returns
        whether the head is tied (and so was refreshed)."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        if weight is None or not _is_input_embedding(model, weight):
            return False
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
        return True


def _is_input_embedding(model: Any, weight: Any) -> bool:
    """Whether `weight` (the head's) is also the weight of an input embedding module
    (vLLM's `get_input_embeddings` takes token ids, so the modules are searched)."""
    for module in model.modules():
        if "Embedding" not in type(module).__name__ or module is getattr(model, "lm_head", None):
            continue
        own = getattr(module, "weight", None)
        if own is not None and (own is weight or own.data_ptr() == weight.data_ptr()):
            return True
    return False
