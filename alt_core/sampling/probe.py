"""The probe: a fixed token sequence whose log-probabilities say which weights a model is.

The trainer records the probe's per-token log-probabilities under the checkpoint it
saves, computed by its own forward pass (`alt_probe.json` beside the weights). A kept
engine that switched to that checkpoint in place scores the same tokens and must agree
(`check`); otherwise the switch is not trusted and a fresh engine is started.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PROBE_FILE = "alt_probe.json"
PROBE_TEXT = (
    "The room was clean and quiet, the staff were friendly, and the breakfast was "
    "good, but the coffee was cold and the wifi kept dropping."
)
PROBE_TOKENS = 32
# Mean absolute difference of the per-token log-probabilities allowed between the
# trainer's forward pass and the engine's: the same fp32 arithmetic in another order
# (CPU) differs by ~1e-5; 16-bit kernels by a few hundredths.
TOLERANCE = {"float32": 2e-3, "other": 0.1}


def probe_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:PROBE_TOKENS]
    if len(ids) < 2:
        raise ValueError("the probe text tokenises to fewer than 2 tokens")
    return [int(i) for i in ids]


def torch_logprobs(model: Any, ids: list[int], device: Any) -> list[float]:
    """Per-token log-probabilities of ids[1:] given the tokens before, by `model`'s own
    forward pass (eval mode, no grad; the caller restores train mode)."""
    import torch

    with torch.no_grad():
        inp = torch.tensor([ids], device=device)
        logits = model(input_ids=inp).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1)
        picked = lp.gather(-1, inp[0, 1:].unsqueeze(-1)).squeeze(-1)
    return [float(x) for x in picked.cpu()]


def write(model_dir: str | Path, ids: list[int], logprobs: list[float], dtype: str) -> None:
    record = {"token_ids": ids, "logprobs": logprobs, "dtype": dtype}
    Path(model_dir, PROBE_FILE).write_text(json.dumps(record))


def read(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir, PROBE_FILE)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ids, lps = record.get("token_ids"), record.get("logprobs")
    if not isinstance(ids, list) or not isinstance(lps, list) or len(lps) != len(ids) - 1:
        return None
    return record


def distance(a: list[float], b: list[float]) -> float:
    """Mean absolute difference of two probes' log-probabilities (inf if unusable)."""
    if len(a) != len(b) or not a or not all(map(math.isfinite, [*a, *b])):
        return math.inf
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def check(
    engine: list[float],
    record: dict[str, Any],
    previous: dict[str, Any] | None = None,
    engine_dtype: str = "torch.float32",
) -> str | None:
    """Why the engine's probe does not prove it serves the recorded checkpoint, or None.
    Besides agreeing within the tolerance (the fp32 one only when both the trainer and
    the engine computed in fp32), it must be nearer to this checkpoint than to the
    `previous` one, when the two differ by more than the tolerance."""
    fp32 = record.get("dtype") == engine_dtype == "torch.float32"
    tol = TOLERANCE["float32" if fp32 else "other"]
    gap = distance(engine, record["logprobs"])
    if gap > tol:
        return f"the probe's log-probabilities differ by {gap:.2g} on average (allowed {tol:g})"
    if previous is not None and previous.get("token_ids") == record.get("token_ids"):
        apart = distance(record["logprobs"], previous["logprobs"])
        if apart > tol and distance(engine, previous["logprobs"]) <= gap:
            return "the probe matches the previous checkpoint as well as the new one"
    return None
