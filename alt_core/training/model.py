"""The models a training uses: loading the policy and the frozen reference, adding
tokens, and freezing the lower transformer blocks (`training.unfrozen_layers_ratio`).

Weights are read from safetensors only (`use_safetensors=True`, as everywhere this
package loads a model): a `pytorch_model.bin` is a pickle, and a model folder is never
unpickled, not even by torch's weights-only loader.
transformers is imported inside the functions that load a model, so that importing
`alt_core` does not pull it in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from alt_core.training.spec import TrainingError, TrainSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Where the common architectures keep their block list; anything else falls back to the
# longest homogeneous nn.ModuleList.
BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "model.layers",  # Llama, Mistral, Qwen, Gemma
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


def find_transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks and its dotted path."""
    for path in BLOCK_PATHS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    lists = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    if not lists:
        raise TrainingError(
            f"cannot find the transformer blocks of {type(model).__name__}: no module list at "
            f"{BLOCK_PATHS}; set training.unfrozen_layers_ratio=1.0 to train every layer"
        )
    return max(lists, key=lambda item: len(item[1]))


def freeze_lower_layers(
    model: PreTrainedModel, unfrozen_layers_ratio: float, keep_input_embeddings: bool = False
) -> dict[str, int]:
    """Freeze the bottom blocks and the embeddings so only the top share of blocks trains.

    With ratio 1.0 nothing is frozen. The number of trained blocks is ratio x blocks,
    rounded half up, at least one. Embeddings are frozen with the bottom blocks (on
    models with tied embeddings, like GPT-2, that freezes the output head too), except
    the input embeddings when `keep_input_embeddings`: tokens added to the vocabulary
    (Quark's control tokens) start from an average embedding and carry the conditioning
    signal, so their rows must learn; a parameter cannot be frozen row-wise, so the whole
    matrix stays trainable.
    """
    if not 0 < unfrozen_layers_ratio <= 1:
        raise ValueError(f"unfrozen_layers_ratio must be in (0, 1], got {unfrozen_layers_ratio}")
    path, blocks = find_transformer_blocks(model)
    trained = len(blocks)
    if unfrozen_layers_ratio < 1:
        trained = max(1, math.floor(unfrozen_layers_ratio * len(blocks) + 0.5))
        for block in blocks[: len(blocks) - trained]:
            block.requires_grad_(False)
        table = model.get_input_embeddings()
        for name, module in model.named_modules():
            outside_blocks = not name.startswith(path + ".")
            keep = keep_input_embeddings and module is table
            if isinstance(module, nn.Embedding) and outside_blocks and not keep:
                module.requires_grad_(False)
    params = list(model.parameters())
    return {
        "blocks": len(blocks),
        "blocks_frozen": len(blocks) - trained,
        "blocks_trained": trained,
        "params": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "input_embeddings_trainable": int(input_embeddings(model).weight.requires_grad),
    }


def input_embeddings(model: PreTrainedModel) -> nn.Embedding:
    """The model's input embedding table; layer freezing and Quark's added tokens need a
    plain `nn.Embedding` there."""
    table = model.get_input_embeddings()
    if not isinstance(table, nn.Embedding):
        raise TrainingError(
            f"{type(model).__name__}'s input embeddings are a {type(table).__name__}, not an "
            "nn.Embedding: this trainer supports causal LMs with a plain embedding table"
        )
    return table


def add_tokens(tokenizer: Any, model: PreTrainedModel, tokens: Sequence[str]) -> int:
    """Add `tokens` to the tokenizer and grow the embeddings if they no longer fit.

    Never shrinks: some checkpoints (GPT-J) carry more embedding rows than tokenizer
    entries, and new tokens then reuse those spare rows. Returns how many tokens were new.
    """
    added = tokenizer.add_tokens(list(tokens)) if tokens else 0
    if len(tokenizer) > input_embeddings(model).num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return added


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """from_pretrained's dtype keyword: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def save_kwargs() -> dict[str, bool]:
    """transformers 4.x takes `safe_serialization`; 5.x writes only safetensors and dropped it."""
    import transformers
    from packaging.version import Version

    return {"safe_serialization": True} if Version(transformers.__version__).major < 5 else {}


def check_paths(spec: TrainSpec) -> None:
    """Fail before DeepSpeed starts when an input is missing."""
    for what, path in (("policy_path", spec.policy_path), ("reference_path", spec.reference_path)):
        if path and not (Path(path) / "config.json").is_file():
            raise TrainingError(
                f"{what} {path!r} is not a local checkpoint folder (no config.json); the trainer "
                "loads local folders only: fetch remote ones with alt_core.store.local_dir or "
                "huggingface_hub.snapshot_download first"
            )


def load_policy(spec: TrainSpec) -> tuple[Any, PreTrainedModel, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.policy_path)
    # fp32 weights: under fp16/bf16 DeepSpeed keeps fp32 master copies made from these.
    model = AutoModelForCausalLM.from_pretrained(
        spec.policy_path, **dtype_kwargs(torch.float32), use_safetensors=True
    )
    added = add_tokens(tokenizer, model, spec.added_tokens)
    return tokenizer, model, added


def load_reference(spec: TrainSpec, accelerator: Any) -> PreTrainedModel:
    """The frozen reference: eval mode, no gradients, kept out of DeepSpeed (it has no
    optimizer state to shard), in the training precision to save memory."""
    from transformers import AutoModelForCausalLM

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        str(accelerator.mixed_precision), torch.float32
    )
    if spec.reference_path is None:  # TrainSpec's validator requires it when kl_coef > 0
        raise TrainingError("no reference_path to load the reference model from")
    model = AutoModelForCausalLM.from_pretrained(
        spec.reference_path, **dtype_kwargs(dtype), use_safetensors=True
    )
    model.requires_grad_(False)
    return model.eval().to(accelerator.device)
