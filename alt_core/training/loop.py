"""Conditional SFT of the policy: one trainer for every method.

Quark, ALT_RM, ALT_LMU, ALT_LMC and SteerLM differ only in the training table (the
conditioned `query` and what the reference sees in `reference_query`) and in config
values (`kl_coef`, `entropy_coef`, added control tokens). The building blocks:

- `alt_core.training.data`: the spec, tokenising, collating and the data order (re-exported
  here).
- `alt_core.training.model`: loading the policy and reference, added tokens, and
  `freeze_lower_layers`, which trains only the top share of transformer blocks
  (re-exported here).
- `train(spec)`: the loop, run through Accelerate + DeepSpeed in a worker process (see
  `alt_core.training.worker`). It saves its full state every `spec.checkpoint_every` steps
  and at the end (`alt_core.training.state`); started again with the same spec after a
  kill, it continues from the newest complete checkpoint, and a finished run returns its
  saved summary. DeepSpeed and Accelerate are imported inside functions so that
  `import alt_core` works without them.
- Experiment trackers (`training.report_to`: TensorBoard, W&B, MLflow; off by default)
  receive every step's loss terms through Accelerate's tracker interface. TensorBoard
  writes under `<output_dir>/trackers/<run_name>`, so its event files travel with the
  trained policy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alt_core.config import TrainingConfig
from alt_core.losses import IGNORE_INDEX, conditional_sft_loss
from alt_core.sampling import probe
from alt_core.store import read_table, write_json
from alt_core.training.data import (
    TABLE_COLUMNS,
    Batch,
    TokenisedTable,
    collate,
    epoch_batches,
    linear_warmup_decay,
    tokenise_train_table,
)
from alt_core.training.dist import Dist
from alt_core.training.model import (
    add_tokens,
    check_paths,
    find_transformer_blocks,
    freeze_lower_layers,
    input_embeddings,
    load_policy,
    load_reference,
    save_kwargs,
)
from alt_core.training.spec import TrainingError, TrainSpec
from alt_core.training.state import (
    METRICS_FILE,
    Checkpointer,
    Progress,
    finished_summary,
    resume_key,
    state_lock,
)
from alt_core.training.worker import TrainingStopped, save_fits, stop_requested

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "METRICS_FILE",
    "TABLE_COLUMNS",
    "Batch",
    "TokenisedTable",
    "TrainSpec",
    "TrainingError",
    "add_tokens",
    "check_finite",
    "collate",
    "epoch_batches",
    "find_transformer_blocks",
    "freeze_lower_layers",
    "input_embeddings",
    "linear_warmup_decay",
    "tokenise_train_table",
    "train",
]

LOSS_TERMS = ("loss", "nll", "kl", "entropy")
# Step-record fields sent to the experiment trackers, as `train/<name>`.
TRACKED = (*LOSS_TERMS, "lr", "grad_norm")
TRACKER_DIR = "trackers"


def _make_accelerator(cfg: TrainingConfig, output_dir: str) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    _check_trackers(cfg.report_to)

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
        log_with=cfg.report_to or None,
        # Where TensorBoard writes (W&B and MLflow follow their own environment variables).
        project_dir=str(Path(output_dir) / TRACKER_DIR),
    )


# ------------------------------------------------------------------- experiment trackers


def _check_trackers(report_to: Sequence[str]) -> None:
    """Fail before DeepSpeed starts when a requested tracker's package is missing:
    Accelerate would drop that tracker without a word."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [name for name in report_to if name not in available]
    if missing:
        raise TrainingError(
            f"training.report_to names {missing} but the package(s) are not installed in "
            f"the training environment: pip install {' '.join(missing)}, or remove them "
            "from training.report_to"
        )


def _tracker_config(spec: TrainSpec) -> dict[str, Any]:
    """The settings a tracker records with the run, as flat scalars: TensorBoard's
    hparams take no lists, dicts or None, so those go in as JSON text."""
    fields = {
        **spec.training.model_dump(mode="json"),
        "seed": spec.seed,
        "added_tokens": spec.added_tokens,
    }
    scalar = (bool, int, float, str)
    return {k: v if isinstance(v, scalar) else json.dumps(v) for k, v in fields.items()}


def _start_trackers(spec: TrainSpec, accelerator: Any, dist: Dist, progress: Progress) -> None:
    """Open the tracker runs on the main process only: with DeepSpeed on CPUs Accelerate
    takes every process for the main one (see `Dist`), and each would write its own run."""
    if not spec.training.report_to or not dist.is_main:
        return
    # A resumed training logs from the step after its checkpoint; TensorBoard hides what
    # the killed attempt logged from there on, so no step shows twice.
    first_step = progress.step + 1
    accelerator.init_trackers(
        spec.run_name,
        config=_tracker_config(spec),
        init_kwargs={"tensorboard": {"purge_step": first_step}},
    )


def _report(accelerator: Any, record: dict[str, Any]) -> None:
    """Send one step's loss terms to the trackers (there are none unless report_to is set,
    and none on processes other than the main one)."""
    if accelerator.trackers:
        values = {f"train/{k}": record[k] for k in TRACKED if record[k] is not None}
        accelerator.log(values, step=record["step"])


@dataclass
class _Loop:
    """What the training loop needs, prepared by `train`."""

    accelerator: Any
    dist: Dist
    model: Any
    reference: PreTrainedModel | None
    optimizer: Any
    scheduler: Any
    data: TokenisedTable
    cfg: TrainingConfig
    seed: int
    pad_id: int
    total_steps: int
    say: Callable[[str], None]
    state: Checkpointer

    @property
    def ref_vocab(self) -> int:
        return input_embeddings(self.reference).num_embeddings if self.reference else 0


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


def _step_line(record: dict[str, Any], total_steps: int) -> str:
    grad = record["grad_norm"]
    return (
        f"step {record['step']}/{total_steps} epoch {record['epoch']} loss={record['loss']:.4f} "
        f"nll={record['nll']:.4f} kl={record['kl']:.4f} entropy={record['entropy']:.4f} "
        f"lr={record['lr']:.3g} grad_norm={'n/a' if grad is None else format(grad, '.3g')}"
    )


def _run_epochs(
    loop: _Loop, progress: Progress, after_step: Callable[[int], None] | None = None
) -> Progress:
    """Train from `progress` (step 0, or the step a checkpoint was saved at) to the end.

    The data order is a pure function of (seed, epoch), so a resumed run finds its place
    from the step number alone: it skips the epochs and accumulation windows already done.
    """
    cfg, gas = loop.cfg, loop.cfg.gradient_accumulation_steps
    records = list(progress.records)
    session_started = time.time()
    last_save_s: float | None = None  # how long this session's last checkpoint took
    loop.model.train()
    first_epoch, first_window = loop.state.position(progress.step)
    for epoch in range(first_epoch, cfg.epochs):
        batches = epoch_batches(
            len(loop.data), cfg.per_device_batch_size, loop.seed, epoch,
            loop.dist.rank, loop.dist.world,
        )  # fmt: skip
        skip = first_window * gas if epoch == first_epoch else 0
        for start in range(skip, len(batches), gas):
            step = len(records) + 1
            sums = _accumulate(loop, batches[start : start + gas], step)
            lr = loop.scheduler.get_last_lr()[0]  # the rate this update used
            # No-ops under DeepSpeed (its engine stepped in backward); kept for clarity.
            loop.optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad()
            record = _step_record(loop, sums, step, epoch, lr)
            record["elapsed_s"] = progress.train_seconds + time.time() - session_started
            records.append(record)
            _report(loop.accelerator, record)
            if step == progress.step + 1 or step % cfg.log_every == 0 or step == loop.total_steps:
                loop.say(_step_line(record, loop.total_steps))
            save_started = time.monotonic()
            saved = loop.state.save_if_due(records, record["elapsed_s"]) is not None
            if saved:
                last_save_s = time.monotonic() - save_started
            if after_step is not None:
                after_step(step)
            if stop_requested(loop.dist):
                # SIGTERM: keep this step if a checkpoint fits in the grace time, then exit.
                if not saved and save_fits(loop.dist, last_save_s):
                    replace(loop.state, every=1).save_if_due(records, record["elapsed_s"])
                    saved = True
                kept = "its checkpoint is kept" if saved else "no checkpoint of it was saved"
                raise TrainingStopped(f"training stopped after step {step}; {kept}")
    if len(records) != loop.total_steps:  # a bug in the position arithmetic, never data
        raise TrainingError(
            f"training ended after {len(records)} steps, expected {loop.total_steps} "
            f"(resumed from step {progress.resumed_from}); delete {loop.state.state_dir} and rerun"
        )
    seconds = progress.train_seconds + time.time() - session_started
    return Progress(len(records), records, seconds, progress.resumed_from)


def _save_model(loop: _Loop, tokenizer: Any, output_dir: str) -> None:
    """Save a standard Hugging Face checkpoint (safetensors) that vLLM and transformers load."""
    # Every process must call this: under ZeRO-3 the weights are gathered collectively
    # (and the probe's forward pass runs on every rank).
    record = _probe_record(loop, tokenizer)
    state_dict = loop.accelerator.get_state_dict(loop.model)
    if loop.dist.is_main:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        # A retry into the same folder must not leave shards of an older save behind.
        for stale in [*out.glob("model*.safetensors"), *out.glob("*.safetensors.index.json")]:
            stale.unlink()
        unwrapped = loop.accelerator.unwrap_model(loop.model)
        unwrapped.save_pretrained(out, state_dict=state_dict, **save_kwargs())
        tokenizer.save_pretrained(out)
        probe.write(out, *record)
    loop.dist.barrier()


def _probe_record(loop: _Loop, tokenizer: Any) -> tuple[list[int], list[float], str]:
    """The probe's log-probabilities under the weights being saved, by this model's own
    forward pass: what a kept sampling engine that switches to them must reproduce
    (`alt_core.sampling.engines`)."""
    ids = probe.probe_ids(tokenizer)
    model = loop.model
    was_training = model.training
    model.eval()
    try:
        logprobs = probe.torch_logprobs(model, ids, loop.accelerator.device)
    finally:
        model.train(was_training)
    dtype = str(next(loop.accelerator.unwrap_model(model).parameters()).dtype)
    return ids, logprobs, dtype


def _summarise(progress: Progress, **extra: Any) -> dict[str, Any]:
    records, seconds = progress.records, progress.train_seconds
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
        "resumed_from_step": progress.resumed_from,
        **extra,
    }


def _prepare(
    spec: TrainSpec, accelerator: Any, dist: Dist, key: str, log: Callable[[str], None]
) -> tuple[_Loop, Any, dict[str, Any]]:
    """Load the models and data, build the optimizer and schedule, wrap with DeepSpeed."""
    cfg = spec.training
    say = log if dist.is_main else (lambda _msg: None)
    tokenizer, model, added = load_policy(spec)
    freeze = freeze_lower_layers(model, cfg.unfrozen_layers_ratio, keep_input_embeddings=added > 0)
    reference = load_reference(spec, accelerator) if cfg.kl_coef > 0 else None
    data = tokenise_train_table(read_table(spec.train_table), tokenizer, cfg.max_seq_len)
    if any(v for k, v in data.stats.items() if k != "rows"):
        say(f"warning: truncated to training.max_seq_len={cfg.max_seq_len}: {data.stats}")
    micro_per_epoch = math.ceil(math.ceil(len(data) / dist.world) / cfg.per_device_batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = cfg.epochs * steps_per_epoch
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
    state = Checkpointer(
        accelerator, dist, spec.resolved_state_dir, key, spec.checkpoint_every,
        spec.keep_checkpoints, total_steps, steps_per_epoch, say, spec.state_uri,
    )  # fmt: skip
    loop = _Loop(accelerator, dist, model, reference, optimizer, scheduler, data, cfg,
                 spec.seed, pad_id, total_steps, say, state)  # fmt: skip
    facts = {"added_tokens": added, "truncation": data.stats, "freeze": freeze}
    return loop, tokenizer, facts


def train(
    spec: TrainSpec,
    log: Callable[[str], None] = print,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run conditional SFT as described by `spec`; returns the summary also written to
    `<output_dir>/train_metrics.json` next to the checkpoint. Must run in a process of
    its own (see `alt_core.training.worker`): it sets up torch.distributed.

    Resumable: the full state is saved under `spec.resolved_state_dir`; run again with
    the same spec after a crash, training continues from the newest complete checkpoint,
    and once the final model is written a rerun returns its summary without training.
    `after_step(step)` runs on every process after each optimizer step (and its
    checkpoint, if one was due).
    """
    from accelerate.utils import set_seed

    started = time.time()
    key = resume_key(spec)
    done = finished_summary(spec, key)
    if done is not None:
        log(f"training already finished: {spec.output_dir} holds its final model; nothing to do")
        return done
    check_paths(spec)
    accelerator = _make_accelerator(spec.training, spec.output_dir)
    dist = Dist.current()
    set_seed(spec.seed)
    loop, tokenizer, facts = _prepare(spec, accelerator, dist, key, log)
    with state_lock(loop.state.state_dir, enabled=dist.is_main):
        resumed = loop.state.resume()
        _start_trackers(spec, accelerator, dist, resumed)
        progress = _run_epochs(loop, resumed, after_step)
        _save_model(loop, tokenizer, spec.output_dir)
        summary = _summarise(
            progress,
            total_seconds=time.time() - started,
            rows=len(loop.data),
            epochs=spec.training.epochs,
            num_processes=dist.world,
            zero_stage=spec.training.zero_stage,
            mixed_precision=str(accelerator.mixed_precision),
            **facts,
            output_dir=spec.output_dir,
            state_dir=str(loop.state.state_dir),
        )
        if dist.is_main:
            metrics = {
                "summary": summary,
                "steps": progress.records,
                "spec": spec.model_dump(mode="json"),
                "resume_key": key,
            }
            write_json(str(Path(spec.output_dir) / METRICS_FILE), metrics)
        dist.barrier()
    accelerator.end_training()  # closes the tracker runs, then the process group
    return summary
