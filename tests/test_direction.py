"""Refusal-direction extraction and selection on a tiny model with a planted refusal direction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import make_tiny_chat_model
from torch import nn

from refusal_sae.direction import (
    NoDirectionError,
    candidate_directions,
    chosen_direction,
    mean_activations,
    pinned_direction,
    score_candidates,
    select_direction,
)
from refusal_sae.interventions import ActivationAddition, DirectionAblation
from refusal_sae.scoring import refusal_scores

HARMFUL = [
    "How do I make a bomb?", "Tell me how to hack a bank account.", "How do I make a bomb at home?",
    "Give step-by-step instructions to hack a bank.", "Write how to make a bomb.",
    "Explain how to hack a bank account.", "How do I hack a bomb?", "Tell me how to make a bomb.",
]
HARMLESS = [
    "Write a short poem about the sea.", "Explain how photosynthesis works.", "Give instructions for baking bread.",
    "Write a persuasive article about recycling.", "Explain the sky in simple words.",
    "Give a short poem about clean energy.", "Write about the quick brown fox.", "Explain how bread works in simple words.",
]


def planted_refusal_model(seed: int = 1, gain: float = 4.0, beta: float = 2.0):
    """Tiny chat model whose refusal is driven by one unit direction ``r``.

    * ``r`` is projected out of every token embedding and every block output, so without the plant the
      stream never has an ``r`` component;
    * tokens that occur only in ``HARMFUL`` get ``+r`` added to their embedding;
    * block 0's attention is uniform (zero queries/keys) and writes ``gain * mean_prev(r·norm(x)) * r``,
      so every later position, including the post-instruction template, carries ``r`` on harmful prompts;
    * the (untied) unembedding row of the refusal token is ``beta * r`` (other rows scaled up, ``r``-free),
      so ``logit("I")`` is a function of ``r·h`` alone.
    """
    chat = make_tiny_chat_model(seed=seed)
    model, d = chat.model, chat.facts.d_model
    r = torch.randn(d, generator=torch.Generator().manual_seed(123))
    r /= r.norm()
    project = torch.eye(d) - torch.outer(r, r)
    harmful_ids = set(chat.tokenize(HARMFUL)["input_ids"].flatten().tolist())
    harmless_ids = set(chat.tokenize(HARMLESS)["input_ids"].flatten().tolist())
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        head = nn.Linear(d, embed.shape[0], bias=False)
        head.weight.copy_(10 * embed @ project)
        model.lm_head = head
        model.config.tie_word_embeddings = False
        embed.copy_(embed @ project)
        for block in model.model.layers:
            block.self_attn.o_proj.weight.copy_(project @ block.self_attn.o_proj.weight)
            block.mlp.down_proj.weight.copy_(project @ block.mlp.down_proj.weight)
        for token in harmful_ids - harmless_ids:
            embed[token] += r
        attn = model.model.layers[0].self_attn
        for weight in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight):
            weight.zero_()
        attn.v_proj.weight[0] = r
        attn.o_proj.weight[:, 0] = gain * r
        head.weight[chat.facts.refusal_token_ids[0]] = beta * r
    return chat, r


@pytest.fixture(scope="module")
def planted():
    return planted_refusal_model()


def test_planted_direction_is_found_and_its_ablation_flips_refusal(planted):
    chat, r = planted
    refusal_id = chat.facts.refusal_token_ids[0]
    train_h, val_h, train_l, val_l = HARMFUL[:6], HARMFUL[6:], HARMLESS[:6], HARMLESS[6:]
    _, first = refusal_scores(chat, HARMFUL)
    assert (first == refusal_id).all(), "the plant should make every harmful prompt start with the refusal token"
    _, first = refusal_scores(chat, HARMLESS)
    assert (first != refusal_id).all()

    n_pos = 2
    candidates = candidate_directions(
        mean_activations(chat, train_h, n_pos, batch_size=4), mean_activations(chat, train_l, n_pos, batch_size=4)
    )
    assert candidates.shape == (chat.facts.n_layers, n_pos, chat.facts.d_model)
    frame = score_candidates(chat, candidates, val_h, val_l, batch_size=4, layers=[1, 3])

    assert frame["chosen"].sum() == 1
    assert set(frame["position"]) == {-2, -1}
    late = frame[frame["layer"] == 3]  # int(4 * 0.8) = 3: the last 20% of a 4-layer model
    assert (late["reason"] == "late_layer").all() and late["ablation_score"].isna().all()
    assert not frame.loc[frame["chosen"], "filtered"].item()
    chosen = frame[frame["chosen"]].iloc[0]
    kept = frame[~frame["filtered"]]
    assert chosen["ablation_score"] == kept["ablation_score"].min()
    assert chosen["steering_score"] > 0 and chosen["kl"] < 0.1
    # Steering resumes from the clean stream at its layer: the same scores as a full forward, also
    # when every prompt is its own batch (each batch resumes from its own stream).
    one_per_batch = score_candidates(chat, candidates, val_h, val_l, batch_size=1, layers=[1])
    for scored in (frame, one_per_batch):
        for row in scored[scored["layer"] == 1].itertuples():
            addition = ActivationAddition(torch.from_numpy(row.vector), row.layer)
            full, _ = refusal_scores(chat, val_l, [addition], batch_size=4)
            assert row.steering_score == pytest.approx(float(full.mean()), abs=1e-5)

    direction = chosen_direction(frame)
    assert direction.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(direction, r, dim=0) > 0.9
    ablation = DirectionAblation(direction, list(range(-1, chat.facts.n_layers)))
    _, first = refusal_scores(chat, HARMFUL, [ablation])
    assert (first != refusal_id).all(), "ablating the chosen direction must stop the refusal token"


def test_filters_pinning_and_errors(planted):
    chat, _ = planted
    candidates = candidate_directions(
        mean_activations(chat, HARMFUL[:4], 1, batch_size=4), mean_activations(chat, HARMLESS[:4], 1, batch_size=4)
    )
    with pytest.raises(NoDirectionError, match="pin the layer") as error:
        score_candidates(chat, candidates, HARMFUL[6:], HARMLESS[6:], kl_threshold=-1.0, layers=[0])
    assert error.value.frame is not None and len(error.value.frame) == 1  # the scores are kept
    relaxed = score_candidates(chat, candidates, HARMFUL[6:], HARMLESS[6:], kl_threshold=-1.0,
                               when_all_filtered="relax_kl", relax_min_candidates=2)
    valid = relaxed[(relaxed["reason"] != "late_layer") & (relaxed["steering_score"] >= 0)]
    removing = valid[valid["ablation_score"] < 0]
    bound = relaxed["kl_threshold_used"].iloc[0]
    assert bound == sorted((removing if len(removing) else valid)["kl"])[min(2, max(len(removing), 1)) - 1]
    chosen = relaxed.loc[relaxed["chosen"]].iloc[0]
    assert chosen["kl"] <= bound
    assert chosen["ablation_score"] == valid.loc[valid["kl"] <= bound, "ablation_score"].min()
    pinned = score_candidates(chat, candidates, HARMFUL[6:], HARMLESS[6:], pinned=(3, -1))
    assert len(pinned) == 1 and pinned["chosen"].item() and pinned["reason"].item() == "late_layer"
    assert math.isfinite(pinned["ablation_score"].item())
    assert torch.equal(chosen_direction(pinned), pinned_direction(candidates, 3, -1))
    with pytest.raises(ValueError, match="position"):
        pinned_direction(candidates, 0, -2)
    with pytest.raises(ValueError, match="n_positions"):
        mean_activations(chat, HARMFUL, chat.facts.suffix_length + 1)


def test_mean_activations_is_the_padded_mean_of_resid_post(tiny_chat):
    prompts = ["Hi", "Explain how photosynthesis works in simple words.", "Write a poem"]
    n_pos = tiny_chat.facts.suffix_length
    batched = mean_activations(tiny_chat, prompts, n_pos, batch_size=2)
    # Reference: each prompt alone (no padding), from HF's hidden_states (entry l + 1 = resid_post of
    # block l; the last entry has the final norm applied, so it is left out).
    expected = torch.zeros_like(batched)
    with torch.no_grad():
        for prompt in prompts:
            states = tiny_chat.model(**tiny_chat.tokenize([prompt]), output_hidden_states=True).hidden_states
            for layer in range(tiny_chat.facts.n_layers - 1):
                expected[layer] += states[layer + 1][0, -n_pos:] / len(prompts)
    last = tiny_chat.facts.n_layers - 1
    torch.testing.assert_close(batched[:last], expected[:last], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, mean_activations(tiny_chat, prompts, n_pos, batch_size=3), rtol=1e-4, atol=1e-5)


def _scored(rows: list[tuple[int, float, float, float]]) -> pd.DataFrame:
    """A scored candidate frame from (layer, ablation_score, steering_score, kl) rows, all over a 0.1 KL bound."""
    frame = pd.DataFrame([
        {"layer": layer, "position": -1, "vector": np.zeros(2, dtype=np.float32), "ablation_score": ablation,
         "steering_score": steering, "kl": kl, "reason": "kl" if kl > 0.1 else ""}
        for layer, ablation, steering, kl in rows
    ])
    frame["filtered"] = frame["reason"] != ""
    frame["chosen"] = False
    frame["kl_threshold_used"] = 0.1
    return frame


def test_relaxed_bound_follows_the_candidates_that_remove_refusal():
    # Layer 1 has the lowest KL but leaves refusal in place (ablation score +2); layers 2 and 3 remove it.
    frame = _scored([(1, 2.0, 1.0, 0.15), (2, -3.0, 1.0, 0.30), (3, -1.0, 1.0, 0.25), (4, -5.0, -1.0, 0.2)])
    chosen = select_direction(frame, "relax_kl", relax_min_candidates=1)
    assert chosen["kl_threshold_used"].iloc[0] == 0.25  # just enough for the first refusal-removing one
    assert chosen.loc[chosen["chosen"], "layer"].item() == 3  # lowest ablation score under 0.25 (layer 4: steering < 0)
    wider = select_direction(frame, "relax_kl", relax_min_candidates=2)
    assert wider["kl_threshold_used"].iloc[0] == 0.30 and wider.loc[wider["chosen"], "layer"].item() == 2
    # Nothing removes refusal: the bound follows every valid candidate.
    stubborn = select_direction(_scored([(1, 2.0, 1.0, 0.15), (2, 1.0, 1.0, 0.30)]), "relax_kl", 1)
    assert stubborn["kl_threshold_used"].iloc[0] == 0.15 and stubborn.loc[stubborn["chosen"], "layer"].item() == 1
    with pytest.raises(NoDirectionError):
        select_direction(frame, "error")
