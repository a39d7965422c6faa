"""Refusal score and first-token KL against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_sae.scoring import first_token_kl, last_position_logits, refusal_score_from_logits


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_refusal_score_single_token_matches_hand_computation() -> None:
    logits = [1.0, 2.0, 3.0, 0.5]
    p = _softmax(logits)[2]
    expected = math.log(p) - math.log(1 - p)
    score = refusal_score_from_logits(torch.tensor([logits]), [2])
    assert score.shape == (1,)
    assert score.item() == pytest.approx(expected, abs=1e-5)


def test_refusal_score_sums_probability_of_several_refusal_tokens() -> None:
    rows = [[1.0, 2.0, 3.0, 0.5], [-2.0, 0.0, 4.0, 1.0]]
    scores = refusal_score_from_logits(torch.tensor(rows), [0, 3])
    for row, score in zip(rows, scores.tolist(), strict=True):
        probs = _softmax(row)
        p = probs[0] + probs[3]
        assert score == pytest.approx(math.log(p / (1 - p)), abs=1e-5)
    # A uniform distribution over 4 tokens with 2 refusal tokens: p = 1/2, score 0.
    assert refusal_score_from_logits(torch.zeros(1, 4), [0, 3]).item() == pytest.approx(0.0, abs=1e-6)


def test_refusal_score_is_finite_when_refusal_is_certain() -> None:
    score = refusal_score_from_logits(torch.tensor([[100.0, -100.0, -100.0]]), [0])
    assert torch.isfinite(score).all() and score.item() > 10


def test_first_token_kl_zero_for_equal_logits_and_matches_hand_computation() -> None:
    torch.manual_seed(0)
    ref = torch.randn(3, 7)
    assert torch.allclose(first_token_kl(ref, ref.clone()), torch.zeros(3), atol=1e-6)
    # Shifting every logit by a constant leaves the distribution, hence KL, unchanged.
    assert torch.allclose(first_token_kl(ref, ref + 5.0), torch.zeros(3), atol=1e-5)

    other = torch.randn(3, 7)
    kl = first_token_kl(ref, other)
    assert (kl > 0).all()
    for i in range(3):
        p, q = _softmax(ref[i].tolist()), _softmax(other[i].tolist())
        hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        assert kl[i].item() == pytest.approx(hand, rel=1e-4)


def test_resumed_scoring_needs_one_recorded_stream_per_batch(tiny_chat) -> None:
    prompts = ["a", "b c", "d e f"]
    with pytest.raises(ValueError, match="2 streams for 3 batches"):
        last_position_logits(tiny_chat, prompts, [], batch_size=1, resume_from=(1, [torch.zeros(1), torch.zeros(1)]))
