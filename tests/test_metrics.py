"""Wilson intervals, rate rows and masked cross-entropy (padding-free, response-only)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from refusal_sae import scoring
from refusal_sae.interventions import DirectionAblation, intervene
from refusal_sae.metrics import (
    PAIRED_COLUMNS,
    first_token_kl,
    grid_tables,
    masked_cross_entropy,
    mcnemar_exact,
    paired_bootstrap,
    paired_rows,
    rate_row,
    response_loss_inputs,
    text_loss_inputs,
    wilson_interval,
)
from refusal_sae.models import render_chat


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (1, 100, 0.0018, 0.0545),
    (72, 100, 0.6251, 0.7986),
])
def test_wilson_interval_known_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_empty_and_invalid():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_row_long_format():
    row = rate_row("ours", "harmbench_test", "jailbreak_rate", [True, False, True, True], judge="substring")
    assert row["value"] == 0.75 and row["n"] == 4 and row["judge"] == "substring"
    assert (row["ci_low"], row["ci_high"]) == wilson_interval(3, 4)
    assert set(row) == {"method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "judge"}
    assert math.isnan(rate_row("m", "d", "x", [])["value"])


def test_first_token_kl_is_reused_from_scoring():
    assert first_token_kl is scoring.first_token_kl


def hand_ce(chat, ids: list[int], scored: list[bool], edits=()) -> float:
    """CE of one unpadded sequence: mean of F.cross_entropy over the scored target positions."""
    x = torch.tensor([ids])
    with torch.no_grad(), intervene(chat.model, edits):
        logits = chat.model(input_ids=x).logits[0]
    losses = F.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    keep = torch.tensor(scored[1:])
    return float(losses[keep].mean())


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sea.",
         "Explain how photosynthesis works in simple words, please, step by step."]


def unpadded(inputs, row: int) -> tuple[list[int], list[bool]]:
    real = inputs.attention_mask[row].bool()
    return inputs.input_ids[row, real].tolist(), inputs.loss_mask[row, real].bool().tolist()


def test_text_ce_equals_hand_computation_regardless_of_padding(tiny_chat):
    inputs = text_loss_inputs(tiny_chat, TEXTS, max_length=12)
    assert inputs.attention_mask.sum(-1).tolist()[0] == 12  # truncated
    assert inputs.attention_mask[1].sum() < 12  # so row 1 is left-padded
    batched = masked_cross_entropy(tiny_chat, *inputs, batch_size=3)
    one_by_one = masked_cross_entropy(tiny_chat, *inputs, batch_size=1)
    for row in range(len(TEXTS)):
        ids, scored = unpadded(inputs, row)
        assert ids[0] == tiny_chat.tokenizer.bos_token_id and scored == [False] + [True] * (len(ids) - 1)
        expected = hand_ce(tiny_chat, ids, scored)
        assert batched[row].item() == pytest.approx(expected, abs=1e-5)
        assert one_by_one[row].item() == pytest.approx(expected, abs=1e-5)


PROMPTS = ["Write a poem", "Give step-by-step instructions for baking bread at home."]
RESPONSES = ["Here is a short poem about the sea and the sky.", "Sure, here are the steps: first"]


def test_response_mask_covers_exactly_the_response_tokens(tiny_chat):
    tok = tiny_chat.tokenizer
    inputs = response_loss_inputs(tiny_chat, PROMPTS, RESPONSES)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ids, scored = unpadded(inputs, row)
        assert tok.decode(ids) == render_chat(tok, prompt, response)
        scored_ids = [t for t, s in zip(ids, scored, strict=True) if s]
        assert scored_ids == tok(response, add_special_tokens=False)["input_ids"]
        assert all(scored[len(ids) - len(scored_ids):]) and not any(scored[:len(ids) - len(scored_ids)])
    assert not inputs.loss_mask[inputs.attention_mask == 0].any()  # padding never scored
    clipped = response_loss_inputs(tiny_chat, PROMPTS, RESPONSES, max_response_tokens=3)
    assert clipped.loss_mask.sum(-1).tolist() == [3, 3]


def test_response_ce_under_edits_equals_hand_computation(tiny_chat):
    inputs = response_loss_inputs(tiny_chat, PROMPTS, RESPONSES)
    torch.manual_seed(0)
    ablation = DirectionAblation(torch.randn(tiny_chat.facts.d_model), layers=[-1, 0, 1, 2, 3])
    seen = []

    def edits_for(rows):
        seen.append(rows)
        return [ablation]

    plain = masked_cross_entropy(tiny_chat, *inputs, batch_size=1)
    edited = masked_cross_entropy(tiny_chat, *inputs, edits=edits_for, batch_size=1)
    assert seen == [slice(0, 1), slice(1, 2)]
    for row in range(len(PROMPTS)):
        ids, scored = unpadded(inputs, row)
        assert plain[row].item() == pytest.approx(hand_ce(tiny_chat, ids, scored), abs=1e-5)
        assert edited[row].item() == pytest.approx(hand_ce(tiny_chat, ids, scored, [ablation]), abs=1e-5)
    assert not torch.allclose(plain, edited)


def test_row_with_nothing_scored_is_nan(tiny_chat):
    inputs = response_loss_inputs(tiny_chat, ["hi", "hi"], ["", "Sure"])
    ce = masked_cross_entropy(tiny_chat, *inputs)
    assert math.isnan(ce[0].item()) and math.isfinite(ce[1].item())


def test_mcnemar_exact_matches_the_binomial_tail():
    # 10 prompts jailbroken by the first method only, 2 by the second only, 20 by both or neither.
    first = [True] * 10 + [False] * 2 + [True] * 12 + [False] * 8
    second = [False] * 10 + [True] * 2 + [True] * 12 + [False] * 8
    only_first, only_second, p = mcnemar_exact(first, second)
    assert (only_first, only_second) == (10, 2)
    # Two-sided exact: 2 * P[Bin(12, 1/2) <= 2] = 2 * (1 + 12 + 66) / 4096
    assert p == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="equal-length"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_interval_covers_a_planted_shift_and_excludes_zero():
    rng = torch.Generator().manual_seed(0)
    base = torch.randn(200, generator=rng)
    shifted = base + 0.5 + 0.1 * torch.randn(200, generator=rng)  # paired: the per-prompt noise cancels
    diff, low, high = paired_bootstrap(shifted.tolist(), base.tolist(), seed=1)
    assert low < 0.5 < high and low > 0.45 and high < 0.55
    assert diff == pytest.approx(float((shifted - base).mean()))
    # Identical paired values: no difference and a zero-width interval.
    _, low_same, high_same = paired_bootstrap(base.tolist(), base.tolist())
    assert low_same == high_same == 0.0


def test_paired_rows_report_differences_p_values_and_sign():
    ours = [True] * 30 + [False] * 2
    other = [True] * 10 + [False] * 22
    rows = paired_rows("ours_global", "cossim", "d", ours, other, [-3.0] * 32, [1.0] * 32, judge="substring")
    rate, logodds = rows
    assert rate["metric"] == "jailbreak_rate_diff" and rate["value"] == pytest.approx(20 / 32)
    assert rate["ci_low"] > 0 and rate["p_value"] < 1e-4 and (rate["first_only"], rate["second_only"]) == (20, 0)
    assert logodds["value"] == pytest.approx(-4.0) and logodds["p_value"] < 1e-4 and logodds["judge"] == "substring"


def _grid_generations(jailbroken: dict[str, list[bool]], prefix: str) -> pd.DataFrame:
    frames = [pd.DataFrame({"prompt_id": [f"{prefix}-{i}" for i in range(len(flags))], "method": method,
                            "clamp_scale": clamp, "k_star": 20, "refused": [not f for f in flags],
                            "refusal_score": [-2.0 if f else 2.0 for f in flags]})
              for clamp in (0.0, -3.0) for method, flags in jailbroken.items()]
    return pd.concat(frames, ignore_index=True)


def test_grid_tables_pair_ours_with_each_method_at_every_point_and_pooled():
    """ours_global jailbreaks 8 of 10 prompts per dataset where cossim jailbreaks 2 (the same 2): pooled over
    both datasets that is 12 discordant pairs all one way, p = 2 * 0.5**12."""
    flags = {"ours_global": [True] * 8 + [False] * 2, "cossim": [False] * 6 + [True] * 2 + [False] * 2}
    grid, paired = grid_tables({"a": _grid_generations(flags, "a"), "b": _grid_generations(flags, "b")},
                               ("ours_global",), seed=0)
    rates = grid.loc[grid["metric"] == "jailbreak_rate"].set_index(["dataset", "method", "clamp_scale"])["value"]
    assert rates[("a", "ours_global", 0.0)] == 0.8 and rates[("b", "cossim", -3.0)] == 0.2
    assert list(paired.columns) == [*PAIRED_COLUMNS, "clamp_scale", "k_star"]
    rate_diff = paired.loc[paired["metric"] == "jailbreak_rate_diff"].set_index(["dataset", "clamp_scale"])
    assert set(rate_diff.index) == {(d, c) for d in ("a", "b", "pooled") for c in (0.0, -3.0)}
    pooled = rate_diff.loc[("pooled", 0.0)]
    assert pooled["method"] == "ours_global" and pooled["baseline"] == "cossim" and pooled["n"] == 20
    assert pooled["value"] == pytest.approx(0.6) and (pooled["first_only"], pooled["second_only"]) == (12, 0)
    assert pooled["p_value"] == pytest.approx(2 * 0.5 ** 12)
    assert rate_diff.loc[("a", 0.0), "p_value"] == pytest.approx(2 * 0.5 ** 6)
