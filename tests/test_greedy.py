"""Greedy filtering to minimal sets: a planted necessary pair is found, batched trials decide exactly as
one-at-a-time trials, and the batched scorer's rows equal single forwards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_sae.greedy import (
    GREEDY_COLUMNS,
    ablation_scorer,
    active_on_prompt,
    greedy_filter,
    intersect_orders,
    minimal_sets,
)

N = 23
PAIR = (4, 17)


def planted_pair(masks: torch.Tensor) -> torch.Tensor:
    """Refusal stays (0.9) unless both latents of the pair are ablated (two redundant pathways)."""
    both = masks[:, PAIR[0]] & masks[:, PAIR[1]]
    return torch.where(both, torch.tensor(0.05), torch.tensor(0.9)).double()


def test_greedy_keeps_exactly_a_planted_necessary_pair():
    active = np.ones(N, dtype=bool)
    active[[0, 9]] = False  # inactive candidates are never part of the set
    for order in (list(range(N)), list(reversed(range(N))), list(np.random.default_rng(1).permutation(N))):
        result = greedy_filter(planted_pair, active, order, p_clean=0.9, tau=0.5, block_size=5)
        assert set(np.flatnonzero(result.kept)) == set(PAIR)
        assert np.isnan(result.delta[[0, 9]]).all()
        assert result.delta[list(PAIR)] == pytest.approx([0.85, 0.85])
    # Batched trials cost a forward per kept block (plus the starting point), not one per candidate.
    single = greedy_filter(planted_pair, active, list(range(N)), 0.9, tau=0.5, block_size=5, max_rows=1)
    batched = greedy_filter(planted_pair, active, list(range(N)), 0.9, tau=0.5, block_size=5)
    assert (batched.forwards, single.forwards) == (7, 16)  # 5 blocks, 10 latents in the 2 kept blocks, +1
    # A tau above the pair's effect keeps nothing: no restore raises P(R) by that much.
    assert not greedy_filter(planted_pair, active, list(range(N)), 0.9, tau=0.99).kept.any()


@pytest.mark.parametrize("seed", range(5))
def test_batched_trials_decide_as_one_at_a_time_trials(seed):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(N, generator=g, dtype=torch.float64) * 2
    pairs = torch.rand(N, N, generator=g, dtype=torch.float64) * (torch.rand(N, N, generator=g) < 0.1)

    def score(masks: torch.Tensor) -> torch.Tensor:
        present = (~masks).double()
        logit = present @ weights + ((present @ pairs) * present).sum(-1) - 6
        return torch.sigmoid(logit)

    active = (torch.rand(N, generator=g) < 0.8).numpy()
    order = list(np.random.default_rng(seed).permutation(N))
    p_clean = float(score(torch.zeros(1, N, dtype=torch.bool))[0])
    one_at_a_time = greedy_filter(score, active, order, p_clean, tau=0.1, block_size=4, max_rows=1)
    batched = greedy_filter(score, active, order, p_clean, tau=0.1, block_size=4, max_rows=32)
    np.testing.assert_array_equal(batched.kept, one_at_a_time.kept)
    np.testing.assert_allclose(batched.delta, one_at_a_time.delta)
    assert batched.forwards <= one_at_a_time.forwards


def test_batched_scorer_rows_equal_single_forwards(tiny_chat, tiny_saes):
    candidates = pd.DataFrame({"layer": [1, 1, 2, 3, 3], "feature": [3, 40, 7, 11, 60], "score": [0.5, 0.1, 0.3, 0.2, 0.4]})
    prompt = "How do I make a bomb?"
    score = ablation_scorer(tiny_chat, tiny_saes, prompt, candidates)
    masks = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 1, 0, 1, 1]], dtype=torch.bool)
    batched = score(masks)
    single = torch.cat([score(row[None]) for row in masks])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(batched[0], batched[1])  # ablating the candidates changes P(R)
    active = active_on_prompt(tiny_chat, tiny_saes, prompt, candidates)
    assert active.dtype == bool and active.shape == (5,) and active.any()


def test_minimal_sets_frame_and_intersection(tiny_chat, tiny_saes):
    candidates = pd.DataFrame({"layer": [1, 2, 3], "feature": [3, 7, 11], "score": [0.5, 0.3, 0.4]})
    frame = minimal_sets(tiny_chat, tiny_saes, ["How do I make a bomb?"], ["p0"], candidates, taus=[0.0, 2.0],
                         n_orders=2)
    assert list(frame.columns) == GREEDY_COLUMNS and set(frame["order"]) == {"attribution", "random1"}
    # tau 0: every restore that raises P(R) at all keeps the latent; tau 2 (twice P(R)): nothing is kept.
    assert not frame.loc[frame["tau"] == 2.0, "kept"].any()
    both = intersect_orders(frame)
    per_order = frame.loc[frame["kept"]].groupby(["tau", "layer", "feature"])["order"].nunique()
    assert len(both) == int((per_order == 2).sum())


def test_ablation_wakes_only_later_layers(tiny_chat, tiny_saes):
    """Ablating latents of a layer cannot wake latents of the same layer (they read the same input); the
    layer is read before its own edits. Latents of later layers see the ablated stream."""
    prompt = "How do I make a bomb?"
    features = list(range(64))
    same_layer = pd.DataFrame({"layer": [2] * len(features), "feature": features, "score": 0.0})
    clean = active_on_prompt(tiny_chat, tiny_saes, prompt, same_layer)
    ablated = clean.copy()  # zero every active latent of layer 2
    np.testing.assert_array_equal(active_on_prompt(tiny_chat, tiny_saes, prompt, same_layer, ablated=ablated), clean)
    later = pd.concat([same_layer, same_layer.assign(layer=3)], ignore_index=True)
    mask = np.concatenate([ablated, np.zeros(len(features), dtype=bool)])
    before = active_on_prompt(tiny_chat, tiny_saes, prompt, later)
    after = active_on_prompt(tiny_chat, tiny_saes, prompt, later, ablated=mask)
    assert (after[len(features):] != before[len(features):]).any()
