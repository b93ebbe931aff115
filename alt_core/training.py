"""Conditional SFT of the policy: one trainer for every method.

Quark, ALT_RM, ALT_LMU, ALT_LMC and SteerLM differ only in the training table (the
conditioned `query` and what the reference sees in `reference_query`) and in config
values (`kl_coef`, `entropy_coef`, added control tokens). The building blocks:

- `tokenise_train_table` / `collate`: the prompt side is LEFT-padded and the response
  side RIGHT-padded, and the policy input and the reference input are padded to the SAME
  prompt width, so response tokens sit at identical positions in both and one slice of
  the logits serves both models.
- `freeze_lower_layers`: trains only the top share of transformer blocks.
- `train(spec)`: the loop, run through Accelerate + DeepSpeed in a worker process (see
  `alt_core.train_worker`). DeepSpeed and Accelerate are imported inside functions so that
  `import alt_core` works without them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from alt_core.config import TrainingConfig
from alt_core.losses import IGNORE_INDEX, conditional_sft_loss
from alt_core.schemas import require_columns
from alt_core.store import read_table, write_json

METRICS_FILE = "train_metrics.json"
LOSS_TERMS = ("loss", "nll", "kl", "entropy")
TABLE_COLUMNS = ["query", "reference_query", "response", "append_eos"]
# Where the common architectures keep their block list; anything else falls back to the
# longest homogeneous nn.ModuleList.
BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "model.layers",  # Llama, Mistral, Qwen, Gemma
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


class TrainingError(RuntimeError):
    """Training failed; the message names the cause and what to change."""


class TrainSpec(BaseModel):
    """Everything one training run needs; serialised to JSON for the worker process."""

    model_config = ConfigDict(extra="forbid")

    policy_path: str = Field(description="Local checkpoint folder of the policy to train.")
    reference_path: str | None = Field(
        None, description="Frozen reference model (the initial SFT model); needed when kl_coef > 0."
    )
    train_table: str = Field(description="Committed training Parquet (local path or fsspec URI).")
    output_dir: str = Field(description="Local folder for the trained checkpoint and metrics.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="The run config's training section."
    )
    added_tokens: list[str] = Field(
        default_factory=list, description="Tokens to add to the tokenizer (Quark control tokens)."
    )
    seed: int = Field(0, description="Seeds the data order and dropout.")

    @model_validator(mode="after")
    def _check_reference(self) -> TrainSpec:
        if self.training.kl_coef > 0 and not self.reference_path:
            raise ValueError(
                "training.kl_coef > 0 needs reference_path (the initial SFT model); "
                "set it or set training.kl_coef=0"
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls.model_validate_json(text)


# ---------------------------------------------------------------------------- data


@dataclass
class TokenisedTable:
    """Token ids of a training table, one list per row, after truncation."""

    query_ids: list[list[int]]
    reference_ids: list[list[int]]
    response_ids: list[list[int]]
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)


def tokenise_train_table(table: pd.DataFrame, tokenizer: Any, max_seq_len: int) -> TokenisedTable:
    """Tokenise queries, reference queries and responses (+ EOS where `append_eos`).

    A response longer than max_seq_len - 1 keeps its first tokens. A query that does not
    fit beside its response loses tokens from the LEFT (the end of the prompt is what the
    response continues); the counts land in `stats` so callers can see it happen. The
    conditioning text sits at the start of a query, so keep data.max_prompt_tokens small
    enough that this never triggers.
    """
    require_columns(table, TABLE_COLUMNS, "training table")
    if table.empty:
        raise TrainingError("the training table has no rows: nothing to train on")
    nulls = [c for c in TABLE_COLUMNS if table[c].isna().any()]
    if nulls:
        raise TrainingError(f"training table has missing values in column(s) {nulls}")
    append_eos = table["append_eos"].astype(bool).tolist()
    eos = tokenizer.eos_token_id
    if eos is None and any(append_eos):
        raise TrainingError("append_eos is set but the tokenizer has no eos_token; set one")

    def encode(column: str, special: bool) -> list[list[int]]:
        return tokenizer(table[column].astype(str).tolist(), add_special_tokens=special)[
            "input_ids"
        ]

    responses = [
        r + [eos] if add else r
        for r, add in zip(encode("response", False), append_eos, strict=True)
    ]
    limit = max_seq_len - 1  # leave at least one prompt token to predict the first response token
    cut_responses = [r[:limit] for r in responses]
    budgets = [max_seq_len - len(r) for r in cut_responses]
    queries, references = encode("query", True), encode("reference_query", True)
    empty = [i for i, q in enumerate(queries) if not q]
    if empty:
        raise TrainingError(f"training rows {empty[:5]} have an empty query")
    stats = {
        "rows": len(table),
        "responses_truncated": sum(len(r) > limit for r in responses),
        "queries_truncated": sum(len(q) > b for q, b in zip(queries, budgets, strict=True)),
        "reference_queries_truncated": sum(
            len(q) > b for q, b in zip(references, budgets, strict=True)
        ),
    }
    return TokenisedTable(
        query_ids=[q[-b:] for q, b in zip(queries, budgets, strict=True)],
        reference_ids=[q[-b:] for q, b in zip(references, budgets, strict=True)],
        response_ids=cut_responses,
        stats=stats,
    )


@dataclass
class Batch:
    """One padded micro-batch. All tensors are (B, P + R) where P is the shared prompt
    width and R the response width; response tokens start at column P in both inputs."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    ref_input_ids: torch.Tensor
    ref_attention_mask: torch.Tensor
    ref_position_ids: torch.Tensor
    labels: torch.Tensor
    prompt_width: int

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Batch(**moved, prompt_width=self.prompt_width)


def _pad(seqs: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            out[row, cols] = torch.tensor(seq, dtype=torch.long)
    return out


def _join(
    prompts: list[list[int]], responses: list[list[int]], width: int, resp_width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts + right-padded responses -> ids, attention mask, position ids."""
    ids = torch.cat(
        [_pad(prompts, width, pad_id, left=True), _pad(responses, resp_width, pad_id, left=False)],
        dim=1,
    )
    prompt_len = torch.tensor([len(s) for s in prompts])[:, None]
    resp_len = torch.tensor([len(s) for s in responses])[:, None]
    mask = torch.cat(
        [torch.arange(width) >= width - prompt_len, torch.arange(resp_width) < resp_len], dim=1
    ).long()
    # Left padding shifts absolute positions; count them from the first real token.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def collate(data: TokenisedTable, indices: Sequence[int], pad_id: int) -> Batch:
    """Build the policy and reference inputs and the labels for rows `indices`.

    Labels are IGNORE_INDEX except on response tokens (including the EOS appended by
    `tokenise_train_table`).
    """
    queries = [data.query_ids[i] for i in indices]
    references = [data.reference_ids[i] for i in indices]
    responses = [data.response_ids[i] for i in indices]
    width = max(len(q) for q in queries + references)
    resp_width = max(1, max(len(r) for r in responses))
    ids, mask, positions = _join(queries, responses, width, resp_width, pad_id)
    ref_ids, ref_mask, ref_positions = _join(references, responses, width, resp_width, pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :width] = IGNORE_INDEX
    return Batch(ids, mask, positions, ref_ids, ref_mask, ref_positions, labels, width)


def epoch_batches(
    num_rows: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """Row indices of this process's micro-batches for one epoch.

    The order is a permutation seeded by (seed, epoch), identical on every process. Like
    torch's DistributedSampler it is padded cyclically to a multiple of world_size, so all
    processes run the same number of micro-batches (DeepSpeed's collectives need that).
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    order = np.resize(order, num_rows + (-num_rows) % world_size)
    mine = order[rank::world_size].tolist()
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor of update `step` (0-based): linear rise to 1 over `warmup_steps` updates,
    then linear decay that would reach 0 one update after the last. Unlike
    transformers' schedule, the first update does not run at lr 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# --------------------------------------------------------------------------- model


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
    model: nn.Module, unfrozen_layers_ratio: float, keep_input_embeddings: bool = False
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
        input_embeddings = model.get_input_embeddings()
        for name, module in model.named_modules():
            outside_blocks = not name.startswith(path + ".")
            keep = keep_input_embeddings and module is input_embeddings
            if isinstance(module, nn.Embedding) and outside_blocks and not keep:
                module.requires_grad_(False)
    params = list(model.parameters())
    return {
        "blocks": len(blocks),
        "blocks_frozen": len(blocks) - trained,
        "blocks_trained": trained,
        "params": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "input_embeddings_trainable": int(model.get_input_embeddings().weight.requires_grad),
    }


def add_tokens(tokenizer: Any, model: nn.Module, tokens: Sequence[str]) -> int:
    """Add `tokens` to the tokenizer and grow the embeddings if they no longer fit.

    Never shrinks: some checkpoints (GPT-J) carry more embedding rows than tokenizer
    entries, and new tokens then reuse those spare rows. Returns how many tokens were new.
    """
    added = tokenizer.add_tokens(list(tokens)) if tokens else 0
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return added


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """from_pretrained's dtype keyword: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _save_kwargs() -> dict[str, bool]:
    """transformers 4.x takes `safe_serialization`; 5.x writes only safetensors and dropped it."""
    import transformers
    from packaging.version import Version

    return {"safe_serialization": True} if Version(transformers.__version__).major < 5 else {}


def _check_paths(spec: TrainSpec) -> None:
    """Fail before DeepSpeed starts when an input is missing."""
    for what, path in (("policy_path", spec.policy_path), ("reference_path", spec.reference_path)):
        if path and not (Path(path) / "config.json").is_file():
            raise TrainingError(
                f"{what} {path!r} is not a local checkpoint folder (no config.json); the trainer "
                "loads local folders only: fetch remote ones with alt_core.store.local_dir or "
                "huggingface_hub.snapshot_download first"
            )


def _load_policy(spec: TrainSpec) -> tuple[Any, nn.Module, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.policy_path)
    # fp32 weights: under fp16/bf16 DeepSpeed keeps fp32 master copies made from these.
    model = AutoModelForCausalLM.from_pretrained(spec.policy_path, **_dtype_kwargs(torch.float32))
    added = add_tokens(tokenizer, model, spec.added_tokens)
    return tokenizer, model, added


def _load_reference(spec: TrainSpec, accelerator: Any) -> nn.Module:
    """The frozen reference: eval mode, no gradients, kept out of DeepSpeed (it has no
    optimizer state to shard), in the training precision to save memory."""
    from transformers import AutoModelForCausalLM

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        str(accelerator.mixed_precision), torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(spec.reference_path, **_dtype_kwargs(dtype))
    model.requires_grad_(False)
    return model.eval().to(accelerator.device)


def _make_accelerator(cfg: TrainingConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(
        zero_stage=cfg.zero_stage,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # 0 turns DeepSpeed's clipping off; None would let an environment variable decide.
        gradient_clipping=cfg.max_grad_norm or 0.0,
        offload_optimizer_device="cpu" if cfg.offload_optimizer else "none",
        # Every process loads the whole model (no zero.Init), so adding tokens and freezing
        # work before DeepSpeed partitions it; ZeRO-3 then gathers the weights to save.
        zero3_init_flag=False,
        zero3_save_16bit_model=cfg.zero_stage == 3,
    )
    # DeepSpeed's CPU accelerator trains in fp32; mixed precision is for GPUs only.
    mixed = cfg.mixed_precision if torch.cuda.is_available() else "no"
    return Accelerator(
        deepspeed_plugin=plugin,
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # We step the scheduler once per optimizer update ourselves; Accelerate would
        # otherwise step it once per process.
        step_scheduler_with_optimizer=False,
    )


@dataclass
class _Dist:
    """Rank and world size as torch.distributed sees them. Accelerate has no CPU backend
    for DeepSpeed and reports a single process when DeepSpeed runs several on CPUs, so
    the process group DeepSpeed set up is the source of truth (on GPUs both agree)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> _Dist:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


@dataclass
class _Loop:
    """What the training loop needs, prepared by `train`."""

    accelerator: Any
    dist: _Dist
    model: Any
    reference: nn.Module | None
    optimizer: Any
    scheduler: Any
    data: TokenisedTable
    cfg: TrainingConfig
    seed: int
    pad_id: int
    total_steps: int
    say: Callable[[str], None]

    @property
    def ref_vocab(self) -> int:
        return self.reference.get_input_embeddings().num_embeddings if self.reference else 0


def _batch_loss(loop: _Loop, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = loop.model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    # Column P-1 predicts the first response token; the last column predicts nothing.
    span = slice(batch.prompt_width - 1, -1)
    ref_logits = None
    if loop.reference is not None:
        # A generation may hold a token the reference lacks (a sampled control token); it
        # would index past the reference's embeddings, so the reference reads token 0.
        ref_ids = batch.ref_input_ids.masked_fill(batch.ref_input_ids >= loop.ref_vocab, 0)
        with torch.no_grad():
            ref_logits = loop.reference(
                input_ids=ref_ids,
                attention_mask=batch.ref_attention_mask,
                position_ids=batch.ref_position_ids,
                use_cache=False,
            ).logits[:, span]
    return conditional_sft_loss(
        out.logits[:, span],
        batch.labels[:, batch.prompt_width :],
        ref_logits,
        kl_coef=loop.cfg.kl_coef,
        entropy_coef=loop.cfg.entropy_coef,
    )


def check_finite(
    loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int, micro_batch: int
) -> None:
    """Stop at the first NaN/inf loss, naming the step: training on would only spread it."""
    if not torch.isfinite(loss):
        values = " ".join(f"{k}={v.item():.4g}" for k, v in terms.items() if k != "loss")
        raise TrainingError(
            f"non-finite loss {loss.item()} at step {step} (micro-batch {micro_batch}): "
            f"{values}; lower training.learning_rate or check the training table"
        )


def _accumulate(loop: _Loop, window: list[list[int]], step: int) -> torch.Tensor:
    """Forward and backward over one accumulation window (DeepSpeed steps the optimizer
    inside the last backward). Returns this process's summed [loss, nll, kl, entropy,
    micro-batches, tokens, response tokens]."""
    acc, gas = loop.accelerator, loop.cfg.gradient_accumulation_steps
    sums = torch.zeros(7, dtype=torch.float64, device=acc.device)
    for j, indices in enumerate(window):
        batch = collate(loop.data, indices, loop.pad_id).to(acc.device)
        acc.sync_gradients = j == len(window) - 1
        loss, terms = _batch_loss(loop, batch)
        check_finite(loss, terms, step, micro_batch=j + 1)
        # DeepSpeed divides every loss by gradient_accumulation_steps; an epoch's short last
        # window is scaled back up so its gradient is still a mean over its micro-batches.
        acc.backward(loss * (gas / len(window)))
        counts = [1.0, batch.attention_mask.sum(), (batch.labels != IGNORE_INDEX).sum()]
        parts = [terms[k] for k in LOSS_TERMS] + counts
        sums += torch.stack([torch.as_tensor(p, device=acc.device) for p in parts]).double()
    return sums


def _step_record(loop: _Loop, sums: torch.Tensor, step: int, epoch: int, lr: float) -> dict:
    loss, nll, kl, entropy, micro, tokens, resp = loop.dist.sum(sums).tolist()
    grad_norm = getattr(loop.model, "get_global_grad_norm", lambda: None)()
    return {
        "step": step,
        "epoch": epoch,
        "loss": loss / micro,
        "nll": nll / micro,
        "kl": kl / micro,
        "entropy": entropy / micro,
        "lr": lr,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "tokens": int(tokens),
        "response_tokens": int(resp),
    }


def _run_epochs(loop: _Loop) -> list[dict[str, Any]]:
    cfg, gas = loop.cfg, loop.cfg.gradient_accumulation_steps
    records: list[dict[str, Any]] = []
    started = time.time()
    loop.model.train()
    for epoch in range(cfg.epochs):
        batches = epoch_batches(
            len(loop.data), cfg.per_device_batch_size, loop.seed, epoch,
            loop.dist.rank, loop.dist.world,
        )  # fmt: skip
        for start in range(0, len(batches), gas):
            step = len(records) + 1
            sums = _accumulate(loop, batches[start : start + gas], step)
            lr = loop.scheduler.get_last_lr()[0]  # the rate this update used
            # No-ops under DeepSpeed (its engine stepped in backward); kept for clarity.
            loop.optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad()
            record = _step_record(loop, sums, step, epoch, lr)
            record["elapsed_s"] = time.time() - started
            records.append(record)
            loop.say(
                f"step {step}/{loop.total_steps} epoch {epoch} loss={record['loss']:.4f} "
                f"nll={record['nll']:.4f} kl={record['kl']:.4f} "
                f"entropy={record['entropy']:.4f} lr={lr:.3g} grad_norm={record['grad_norm']}"
            )
    return records


def _save_checkpoint(loop: _Loop, tokenizer: Any, output_dir: str) -> None:
    """Save a standard Hugging Face checkpoint (safetensors) that vLLM and transformers load."""
    # Every process must call this: under ZeRO-3 the weights are gathered collectively.
    state_dict = loop.accelerator.get_state_dict(loop.model)
    if loop.dist.is_main:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        # A retry into the same folder must not leave shards of an older save behind.
        for stale in [*out.glob("model*.safetensors"), *out.glob("*.safetensors.index.json")]:
            stale.unlink()
        unwrapped = loop.accelerator.unwrap_model(loop.model)
        unwrapped.save_pretrained(out, state_dict=state_dict, **_save_kwargs())
        tokenizer.save_pretrained(out)
    loop.dist.barrier()


def _summarise(records: list[dict[str, Any]], seconds: float, **extra: Any) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in records)
    means = {f"mean_{k}": float(np.mean([r[k] for r in records])) for k in LOSS_TERMS}
    return {
        "steps": len(records),
        "final_loss": records[-1]["loss"],
        **means,
        "train_seconds": seconds,
        "tokens": tokens,
        "response_tokens": sum(r["response_tokens"] for r in records),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        **extra,
    }


def _prepare(
    spec: TrainSpec, accelerator: Any, dist: _Dist, log: Callable[[str], None]
) -> tuple[_Loop, Any, dict[str, Any]]:
    """Load the models and data, build the optimizer and schedule, wrap with DeepSpeed."""
    cfg = spec.training
    say = log if dist.is_main else (lambda _msg: None)
    tokenizer, model, added = _load_policy(spec)
    freeze = freeze_lower_layers(model, cfg.unfrozen_layers_ratio, keep_input_embeddings=added > 0)
    reference = _load_reference(spec, accelerator) if cfg.kl_coef > 0 else None
    data = tokenise_train_table(read_table(spec.train_table), tokenizer, cfg.max_seq_len)
    if any(v for k, v in data.stats.items() if k != "rows"):
        say(f"warning: truncated to training.max_seq_len={cfg.max_seq_len}: {data.stats}")
    micro_per_epoch = math.ceil(math.ceil(len(data) / dist.world) / cfg.per_device_batch_size)
    total_steps = cfg.epochs * math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup, total_steps)
    )
    # No DataLoader goes through prepare(), so DeepSpeed is told the batch sizes.
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds_config["train_batch_size"] = (
        cfg.per_device_batch_size * cfg.gradient_accumulation_steps * dist.world
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    say(
        f"training {len(data)} rows for {total_steps} steps (warmup {warmup}) on "
        f"{dist.world} process(es), {accelerator.device}, ZeRO-{cfg.zero_stage}, "
        f"mixed precision {accelerator.mixed_precision}; blocks trained "
        f"{freeze['blocks_trained']}/{freeze['blocks']}; {added} token(s) added"
    )
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    loop = _Loop(accelerator, dist, model, reference, optimizer, scheduler, data, cfg,
                 spec.seed, pad_id, total_steps, say)  # fmt: skip
    facts = {"added_tokens": added, "truncation": data.stats, "freeze": freeze}
    return loop, tokenizer, facts


def train(spec: TrainSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run conditional SFT as described by `spec`; returns the summary also written to
    `<output_dir>/train_metrics.json` next to the checkpoint. Must run in a process of
    its own (see `alt_core.train_worker`): it sets up torch.distributed."""
    from accelerate.utils import set_seed

    started = time.time()
    _check_paths(spec)
    accelerator = _make_accelerator(spec.training)
    dist = _Dist.current()
    set_seed(spec.seed)
    loop, tokenizer, facts = _prepare(spec, accelerator, dist, log)
    train_started = time.time()
    records = _run_epochs(loop)
    train_seconds = time.time() - train_started
    _save_checkpoint(loop, tokenizer, spec.output_dir)
    summary = _summarise(
        records,
        train_seconds,
        total_seconds=time.time() - started,
        rows=len(loop.data),
        epochs=spec.training.epochs,
        num_processes=dist.world,
        zero_stage=spec.training.zero_stage,
        mixed_precision=str(accelerator.mixed_precision),
        **facts,
        output_dir=spec.output_dir,
    )
    if dist.is_main:
        metrics = {"summary": summary, "steps": records, "spec": spec.model_dump(mode="json")}
        write_json(str(Path(spec.output_dir) / METRICS_FILE), metrics)
    dist.barrier()
    accelerator.end_training()
    return summary
