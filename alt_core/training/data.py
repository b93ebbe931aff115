"""What one training run reads: its table as token ids, and its batches.

- `tokenise_train_table` / `collate`: the prompt side is LEFT-padded and the response
  side RIGHT-padded, and the policy input and the reference input are padded to the SAME
  prompt width, so response tokens sit at identical positions in both and one slice of
  the logits serves both models.
- `epoch_batches`: the data order, a pure function of (seed, epoch, rank), so a resumed
  run finds its place in it from the step number (see `alt_core.training.state`);
  `linear_warmup_decay` the learning-rate schedule over those steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from alt_core.losses import IGNORE_INDEX
from alt_core.schemas import require_columns
from alt_core.training.spec import TrainingError

TABLE_COLUMNS = ["query", "reference_query", "response", "append_eos"]


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
