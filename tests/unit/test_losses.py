"""The conditional-SFT loss, term by term, against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from alt_core.losses import IGNORE_INDEX, conditional_sft_loss, shift_for_causal_lm

# B=1, T=2, V=3 with probabilities chosen by hand; logits = log p, so softmax(logits) = p.
P_POLICY = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
P_REF = [[0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3]]
LABELS = [[1, 2]]


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor([probs], dtype=torch.float64).log()


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def _kl(p_ref: list[float], p_pol: list[float]) -> float:
    return sum(r * (math.log(r) - math.log(q)) for r, q in zip(p_ref, p_pol, strict=True))


def test_nll_is_masked_mean_of_label_log_probs():
    _, terms = conditional_sft_loss(_logits(P_POLICY), torch.tensor(LABELS))
    expected = (-math.log(0.25) - math.log(0.5)) / 2
    assert terms["nll"].item() == pytest.approx(expected)


def test_entropy_is_mean_over_tokens():
    _, terms = conditional_sft_loss(_logits(P_POLICY), torch.tensor(LABELS))
    expected = (_entropy(P_POLICY[0]) + _entropy(P_POLICY[1])) / 2
    assert terms["entropy"].item() == pytest.approx(expected)
    # position 0 by hand: -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2
    assert _entropy(P_POLICY[0]) == pytest.approx(1.5 * math.log(2))


def test_kl_is_ref_to_policy_over_full_vocab():
    _, terms = conditional_sft_loss(
        _logits(P_POLICY), torch.tensor(LABELS), ref_logits=_logits(P_REF), kl_coef=1.0
    )
    expected = (_kl(P_REF[0], P_POLICY[0]) + _kl(P_REF[1], P_POLICY[1])) / 2
    assert terms["kl"].item() == pytest.approx(expected)
    # KL is not symmetric: make sure the direction is KL(ref || policy).
    reverse = (_kl(P_POLICY[0], P_REF[0]) + _kl(P_POLICY[1], P_REF[1])) / 2
    assert terms["kl"].item() != pytest.approx(reverse)


def test_kl_is_zero_when_reference_equals_policy():
    _, terms = conditional_sft_loss(
        _logits(P_POLICY), torch.tensor(LABELS), ref_logits=_logits(P_POLICY), kl_coef=0.5
    )
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-12)


def test_loss_combines_terms_with_coefficients():
    loss, terms = conditional_sft_loss(
        _logits(P_POLICY),
        torch.tensor(LABELS),
        ref_logits=_logits(P_REF),
        kl_coef=0.05,
        entropy_coef=0.06,
    )
    expected = terms["nll"] + 0.05 * terms["kl"] - 0.06 * terms["entropy"]
    assert loss.item() == pytest.approx(expected.item())
    assert terms["loss"].item() == pytest.approx(loss.item())
    assert not terms["loss"].requires_grad


def test_ignored_positions_do_not_count():
    labels = torch.tensor([[1, IGNORE_INDEX]])
    _, terms = conditional_sft_loss(
        _logits(P_POLICY), labels, ref_logits=_logits(P_REF), kl_coef=1.0
    )
    assert terms["nll"].item() == pytest.approx(-math.log(0.25))
    assert terms["entropy"].item() == pytest.approx(_entropy(P_POLICY[0]))
    assert terms["kl"].item() == pytest.approx(_kl(P_REF[0], P_POLICY[0]))


def test_masked_mean_pools_tokens_across_the_batch():
    # Two rows with 1 and 2 generation tokens: the mean is over 3 tokens, not over rows.
    logits = torch.cat([_logits(P_POLICY), _logits(P_POLICY)])
    labels = torch.tensor([[1, IGNORE_INDEX], [1, 2]])
    _, terms = conditional_sft_loss(logits, labels)
    expected = (-math.log(0.25) - math.log(0.25) - math.log(0.5)) / 3
    assert terms["nll"].item() == pytest.approx(expected)


def test_reference_with_smaller_vocab_uses_sliced_unrenormalised_policy():
    # The policy has a 4th (control) token the reference lacks.
    p_pol = [[0.4, 0.2, 0.2, 0.2], [0.1, 0.3, 0.4, 0.2]]
    _, terms = conditional_sft_loss(
        _logits(p_pol), torch.tensor(LABELS), ref_logits=_logits(P_REF), kl_coef=1.0
    )
    expected = (_kl(P_REF[0], p_pol[0][:3]) + _kl(P_REF[1], p_pol[1][:3])) / 2
    assert terms["kl"].item() == pytest.approx(expected)
    # Not renormalised: the sliced version exceeds the renormalised KL by -log Z.
    renorm = [[x / sum(row[:3]) for x in row[:3]] for row in p_pol]
    renormalised = (_kl(P_REF[0], renorm[0]) + _kl(P_REF[1], renorm[1])) / 2
    log_z = (math.log(0.8) + math.log(0.8)) / 2
    assert terms["kl"].item() == pytest.approx(renormalised - log_z)


def test_gradient_reaches_policy_not_reference():
    logits = _logits(P_POLICY).requires_grad_(True)
    ref = _logits(P_REF).requires_grad_(True)
    loss, _ = conditional_sft_loss(
        logits, torch.tensor([[1, IGNORE_INDEX]]), ref, kl_coef=0.1, entropy_coef=0.1
    )
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 0].abs().sum() > 0
    assert torch.all(logits.grad[0, 1] == 0)  # ignored position gets no gradient
    assert ref.grad is None


def test_nll_gradient_matches_softmax_minus_onehot():
    logits = _logits(P_POLICY).requires_grad_(True)
    loss, _ = conditional_sft_loss(logits, torch.tensor(LABELS))
    loss.backward()
    onehot = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    expected = (torch.tensor([P_POLICY], dtype=torch.float64) - onehot) / 2
    torch.testing.assert_close(logits.grad, expected)


def test_batch_without_generation_tokens_gives_zero_not_nan():
    labels = torch.full((1, 2), IGNORE_INDEX)
    loss, terms = conditional_sft_loss(_logits(P_POLICY), labels, _logits(P_REF), 0.1, 0.1)
    assert loss.item() == 0.0
    assert all(torch.isfinite(v) for v in terms.values())


def test_kl_coef_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logits"):
        conditional_sft_loss(_logits(P_POLICY), torch.tensor(LABELS), kl_coef=0.1)


def test_reference_vocab_larger_than_policy_is_an_error():
    p_ref = [[0.25] * 4, [0.25] * 4]
    with pytest.raises(ValueError, match="vocabulary"):
        conditional_sft_loss(_logits(P_POLICY), torch.tensor(LABELS), _logits(p_ref), 0.1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        conditional_sft_loss(_logits(P_POLICY), torch.tensor([[1, 2, 0]]))


def test_shift_for_causal_lm_aligns_predictions_with_next_tokens():
    logits = torch.randn(2, 5, 7)
    labels = torch.arange(10).reshape(2, 5)
    shifted_logits, shifted_labels = shift_for_causal_lm(logits, labels)
    assert shifted_logits.shape == (2, 4, 7)
    torch.testing.assert_close(shifted_logits, logits[:, :4])
    torch.testing.assert_close(shifted_labels, labels[:, 1:])
    with pytest.raises(ValueError):
        shift_for_causal_lm(logits, labels[:, :3])
