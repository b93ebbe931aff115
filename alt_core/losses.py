"""The conditional-SFT loss shared by every method (Quark, ALT_RM, ALT_LMU, ALT_LMC, SteerLM).

    L = NLL(y | x, f) + kl_coef * KL(ref || policy) - entropy_coef * H(policy)

Every term is a masked mean over generation tokens (positions whose label is not
`IGNORE_INDEX`). The KL and the entropy are taken per token over the whole next-token
distribution, not estimated from the sampled token.

These are pure tensor functions: no model, no tokenizer, no device handling. The caller
aligns the logits with the labels (see `shift_for_causal_lm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def shift_for_causal_lm(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align a causal LM's outputs with its targets: position t predicts token t + 1.

    Args:
        logits: (B, L, V) model outputs for input positions 0..L-1.
        labels: (B, L) targets laid out like the input ids (IGNORE_INDEX where no loss).

    Returns:
        (logits[:, :-1], labels[:, 1:]), shapes (B, L-1, V) and (B, L-1).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must share (B, L)"
        )
    return logits[:, :-1], labels[:, 1:]


def _upcast(logits: Tensor) -> Tensor:
    """At least float32: in fp16/bf16 the vocabulary sums of the KL and entropy lose too
    much precision. float64 inputs stay float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` (B, T) over positions where `mask` (B, T) is true.

    A batch without any generation token gives 0 instead of NaN: that happens only for
    empty responses without EOS and must not abort training.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def conditional_sft_loss(
    logits: Tensor,
    labels: Tensor,
    ref_logits: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Conditional SFT loss with an optional KL anchor and entropy bonus.

    Args:
        logits: (B, T, V) policy logits, already shifted: position t predicts labels[:, t].
        labels: (B, T) target ids, IGNORE_INDEX (-100) on prompt and padding positions.
        ref_logits: (B, T, V_ref) frozen reference logits at the same positions, with
            V_ref <= V. Required when kl_coef > 0.
        kl_coef: beta, weight of the token-level KL(ref || policy).
        entropy_coef: alpha, weight of the entropy bonus (subtracted from the loss).

    Returns:
        (loss, terms): loss is a 0-dim tensor with gradient; terms maps "loss", "nll",
        "kl" and "entropy" to detached 0-dim tensors (masked means per token), computed
        in at least float32.

    When V_ref < V (Quark adds control tokens the reference lacks), the policy's
    log-probabilities are computed over its FULL vocabulary and then sliced to the first
    V_ref columns; they are deliberately NOT renormalised over the reference vocabulary.
    The KL then equals KL(ref || renormalised policy) - log Z, where Z <= 1 is the policy
    mass on the reference vocabulary, so it also penalises probability put on the new
    control tokens, which a policy should never generate. This matches the reference
    implementation, which drops the new tokens' logits after the softmax.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    mask = labels != IGNORE_INDEX
    logp = F.log_softmax(_upcast(logits), dim=-1)
    safe_labels = labels.masked_fill(~mask, 0).unsqueeze(-1)
    nll = _masked_mean(-logp.gather(-1, safe_labels).squeeze(-1), mask)
    entropy = _masked_mean(-(logp.exp() * logp).sum(-1), mask)

    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logits is not None:
        kl = _masked_mean(_kl_ref_policy(logp, ref_logits), mask)
    elif kl_coef > 0:
        raise ValueError("kl_coef > 0 needs ref_logits (the frozen reference model's logits)")

    loss = nll + kl_coef * kl - entropy_coef * entropy
    terms = {
        "loss": loss.detach(),
        "nll": nll.detach(),
        "kl": kl.detach(),
        "entropy": entropy.detach(),
    }
    return loss, terms


def _kl_ref_policy(policy_logp: Tensor, ref_logits: Tensor) -> Tensor:
    """Per-token KL(ref || policy) = sum_v p_ref (log p_ref - log p_pol), shape (B, T).

    policy_logp: (B, T, V) log-probabilities over the full policy vocabulary;
    ref_logits: (B, T, V_ref) with V_ref <= V. See `conditional_sft_loss` for why the
    policy is sliced, not renormalised.
    """
    v_ref, v_pol = ref_logits.shape[-1], policy_logp.shape[-1]
    if ref_logits.shape[:2] != policy_logp.shape[:2] or v_ref > v_pol:
        raise ValueError(
            f"ref_logits {tuple(ref_logits.shape)} must match the policy's (B, T) "
            f"{tuple(policy_logp.shape[:2])} with a vocabulary no larger than {v_pol}"
        )
    ref_logp = F.log_softmax(_upcast(ref_logits.detach()), dim=-1)
    return (ref_logp.exp() * (ref_logp - policy_logp[..., :v_ref])).sum(-1)
