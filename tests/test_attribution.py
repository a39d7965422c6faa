"""Cosine candidates, LA-IG, the all-latent AP top-k and exact patching."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import make_tiny_chat_model, make_tiny_sae
from torch import nn

from refusal_sae.attribution import (
    ATTRIBUTION_COLUMNS,
    all_feature_attribution_topk,
    cosine_candidates,
    decoder_rows,
    exact_patching,
    faithfulness_table,
    la_ig,
)
from refusal_sae.interventions import DirectionAblation, intervene

PROMPTS = ["How do I make a bomb?", "Write a short poem about the sea.", "Explain photosynthesis."]
IDS = ["p-a", "p-b", "p-c"]


def linear_chat(seed: int = 2):
    """A tiny model whose last-position logits are *linear* in every residual stream ``h_l``.

    Norms become identities, queries/keys are zero (uniform causal attention: a fixed average of the
    values over the real tokens), and MLPs write nothing. Each block is then ``h + W_o mean_prev(W_v h)``,
    so ``m`` is linear in the SAE latents and integrated gradients are exact: LA-IG must equal exact
    patching, including paths through attention to later positions and later layers.
    """
    chat = make_tiny_chat_model(seed=seed)
    model = chat.model
    with torch.no_grad():
        for block in model.model.layers:
            block.input_layernorm = nn.Identity()
            block.post_attention_layernorm = nn.Identity()
            block.self_attn.q_proj.weight.zero_()
            block.self_attn.k_proj.weight.zero_()
            block.self_attn.v_proj.weight.mul_(10)
            block.self_attn.o_proj.weight.mul_(10)
            block.mlp.down_proj.weight.zero_()
        model.model.norm = nn.Identity()
        model.model.embed_tokens.weight.mul_(20)
    # float64 so the comparison below is limited by the method, not by rounding.
    model.double()
    return chat


@pytest.fixture(scope="module")
def linear_setup():
    chat = linear_chat()
    d = chat.facts.d_model
    saes = {layer: make_tiny_sae(d, 2 * d, seed=10 + layer).to(torch.float64) for layer in (1, 3)}
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return chat, saes, direction


def test_cosine_candidates_are_signed_and_find_the_planted_row(tiny_chat, tiny_saes):
    d = tiny_chat.facts.d_model
    r = torch.randn(d, generator=torch.Generator().manual_seed(5))
    saes = {layer: make_tiny_sae(d, 2 * d, seed=layer) for layer in (0, 2)}
    with torch.no_grad():
        saes[2].W_dec[17] = 3 * r  # cosine 1 (the scale must not matter)
        saes[2].W_dec[40] = -r  # cosine -1: must not be on top
        saes[0].W_dec[5] = -2 * r
    frame = cosine_candidates(saes, r, k0=4)
    assert list(frame.columns) == ["layer", "feature", "cosine", "rank"]
    assert frame.groupby("layer").size().to_dict() == {0: 4, 2: 4}
    top = frame[(frame["layer"] == 2) & (frame["rank"] == 0)].iloc[0]
    assert top["feature"] == 17 and top["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert 40 not in set(frame.loc[frame["layer"] == 2, "feature"])
    assert 5 not in set(frame.loc[frame["layer"] == 0, "feature"])
    assert (frame.groupby("layer")["cosine"].apply(lambda c: c.is_monotonic_decreasing)).all()


def test_reference_path_damps_paths_through_later_sae_layers(linear_setup):
    """On a linear model the reference path agrees with exact patching where no later SAE layer sits
    between a feature and the metric (layer 3) and undercounts earlier features' effects through it
    (layer 1: every later SAE layer scales their gradient by 1 - alpha); with one step (alpha = 0) the
    two paths coincide."""
    chat, saes, direction = linear_setup
    candidates = cosine_candidates(saes, direction, k0=4)
    kwargs = dict(n_steps=4, batch_size=3)
    ours = la_ig(chat, saes, PROMPTS, IDS, direction, candidates, **kwargs)
    reference = la_ig(chat, saes, PROMPTS, IDS, direction, candidates, path="reference", **kwargs)
    last = ours["layer"] == 3
    np.testing.assert_allclose(reference.loc[last, "score"], ours.loc[last, "score"], rtol=1e-6,
                               atol=1e-9 * ours["score"].abs().max())
    early = ~last
    assert not np.allclose(reference.loc[early, "score"], ours.loc[early, "score"], rtol=1e-3)
    one_step = [la_ig(chat, saes, PROMPTS, IDS, direction, candidates, n_steps=1, batch_size=3, path=p)
                for p in ("straight_through", "reference")]
    np.testing.assert_allclose(one_step[0]["score"], one_step[1]["score"], rtol=1e-9, atol=1e-12)


def test_metric_token_may_include_refusal_tokens(linear_setup):
    chat, saes, direction = linear_setup
    candidates = cosine_candidates(saes, direction, k0=2)
    plain = la_ig(chat, saes, PROMPTS, IDS, direction, candidates, n_steps=1, batch_size=3, exclude_refusal=False)
    batch = chat.tokenize(PROMPTS)
    with torch.no_grad(), intervene(chat.model, [DirectionAblation.everywhere(direction, chat.facts.n_layers)]):
        argmax = chat.model(**batch, use_cache=False).logits[:, -1].argmax(-1)
    assert plain.drop_duplicates("prompt_id")["target_id"].tolist() == argmax.tolist()


def test_la_ig_equals_exact_patching_on_a_linear_model(linear_setup):
    chat, saes, direction = linear_setup
    candidates = cosine_candidates(saes, direction, k0=4)
    start_time = time.perf_counter()
    attribution = la_ig(chat, saes, PROMPTS, IDS, direction, candidates, n_steps=3, batch_size=3)
    elapsed = time.perf_counter() - start_time
    print(f"la_ig: {elapsed:.2f}s for one batch of 3 prompts, 2 SAE layers, 3 steps (float64)")
    exact = exact_patching(chat, saes, PROMPTS, IDS, direction, candidates, batch_size=3)

    assert list(attribution.columns) == ATTRIBUTION_COLUMNS
    assert len(attribution) == len(PROMPTS) * len(candidates)
    assert set(attribution["prompt_id"]) == set(IDS)
    assert (attribution["target_id"] != chat.facts.refusal_token_ids[0]).all()
    merged = attribution.merge(exact, on=["prompt_id", "layer", "feature"])
    assert len(merged) == len(attribution)
    assert (merged["score"].abs() > 0).sum() >= len(merged) // 2, "the test needs non-trivial attributions"
    scale = merged["delta_m_per_position"].abs().max()
    # rtol 1e-4; the tiny atol covers the float32 rounding of Recorder'd streams around exact zeros.
    np.testing.assert_allclose(merged["score"], merged["delta_m_per_position"], rtol=1e-4, atol=1e-6 * scale)
    # The cosine column is carried over from the candidates.
    cos = candidates.set_index(["layer", "feature"])["cosine"]
    np.testing.assert_allclose(merged.set_index(["layer", "feature"])["cosine"], cos.loc[merged.set_index(["layer", "feature"]).index])

    table = faithfulness_table(attribution, exact, top_k=3, top_candidates=3)
    assert list(table["scope"]) == [*IDS, "pooled", "top3_candidate_means"]
    assert (table["overlap_at_k"] == 1.0).all()
    assert table.loc[table["scope"] == "pooled", "spearman"].item() > 0.999
    assert table.loc[table["scope"] == "top3_candidate_means", "spearman"].item() > 0.999


def test_la_ig_prompt_order_and_target_token(linear_setup):
    chat, saes, direction = linear_setup
    candidates = cosine_candidates(saes, direction, k0=2)
    base = la_ig(chat, saes, PROMPTS, IDS, direction, candidates, n_steps=1, batch_size=2)
    order = [2, 0, 1]
    shuffled = la_ig(chat, saes, [PROMPTS[i] for i in order], [IDS[i] for i in order], direction, candidates,
                     n_steps=1, batch_size=3)
    key = ["prompt_id", "layer", "feature"]
    pd.testing.assert_frame_equal(
        base.sort_values(key).reset_index(drop=True), shuffled.sort_values(key).reset_index(drop=True),
        check_exact=False, rtol=1e-6, atol=1e-9,
    )
    fixed = la_ig(chat, saes, PROMPTS[:1], IDS[:1], direction, candidates, n_steps=1, target_token="Here")
    here = chat.tokenizer.encode("Here", add_special_tokens=False)[0]
    assert (fixed["target_id"] == here).all()


def test_all_feature_topk_equals_naive_dense_topk(linear_setup):
    chat, saes, direction = linear_setup
    k = 7
    # One step suffices: the model is linear, so the gradient does not depend on alpha.
    per_prompt, global_top = all_feature_attribution_topk(chat, saes, PROMPTS, IDS, direction, k=k, n_steps=1,
                                                          batch_size=2)
    # Naive reference: LA-IG with *every* latent of every layer as a candidate, then a dense top-k.
    everything = pd.DataFrame([(layer, f) for layer in saes for f in range(saes[layer].W_dec.shape[0])],
                              columns=["layer", "feature"])
    dense = la_ig(chat, saes, PROMPTS, IDS, direction, everything, n_steps=1, batch_size=3)
    for pid in IDS:
        want = dense[dense["prompt_id"] == pid].nlargest(k, "score")
        got = per_prompt[per_prompt["prompt_id"] == pid]
        assert list(got["rank"]) == list(range(k))
        assert set(zip(got["layer"], got["feature"], strict=True)) == set(zip(want["layer"], want["feature"], strict=True))
        np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-6, atol=1e-12)
    mean = dense.groupby(["layer", "feature"], as_index=False)["score"].mean().nlargest(k, "score")
    assert list(zip(global_top["layer"], global_top["feature"], strict=True)) == list(
        zip(mean["layer"], mean["feature"], strict=True))
    np.testing.assert_allclose(global_top["score"].to_numpy(), mean["score"].to_numpy(), rtol=1e-6, atol=1e-12)


def test_la_ig_runs_on_a_nonlinear_model_and_rejects_non_affine_saes(tiny_chat, tiny_saes):
    direction = torch.randn(tiny_chat.facts.d_model, generator=torch.Generator().manual_seed(1))
    saes = {layer: tiny_saes[layer] for layer in (1, 2)}
    candidates = cosine_candidates(saes, direction, k0=4)
    frame = la_ig(tiny_chat, saes, PROMPTS[:2], [7, 8], direction, candidates, n_steps=2, batch_size=2)
    assert len(frame) == 2 * 8 and np.isfinite(frame["score"]).all()
    assert frame.groupby("prompt_id").size().to_dict() == {7: 8, 8: 8}

    rows = decoder_rows(saes[1], torch.tensor([3, 9]))
    torch.testing.assert_close(rows, saes[1].W_dec[[3, 9]].detach())

    from sae_lens import StandardSAE, StandardSAEConfig

    normed = StandardSAE(StandardSAEConfig(d_in=tiny_chat.facts.d_model, d_sae=8, normalize_activations="layer_norm"))
    with pytest.raises(ValueError, match="affine"):
        la_ig(tiny_chat, {1: normed}, PROMPTS[:1], [0], direction, pd.DataFrame({"layer": [1], "feature": [0]}))


def _saved_bytes_during(fn) -> tuple[int, int]:
    """Total and largest bytes autograd saves for backward while ``fn`` runs."""
    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(sizes), max(sizes)


def test_la_ig_backward_memory_does_not_grow_with_sae_width(tiny_chat):
    """The IG backward is the plain model's: nothing of size ``d_sae`` is saved, at any SAE width."""
    d = tiny_chat.facts.d_model
    direction = torch.randn(d, generator=torch.Generator().manual_seed(3))
    layers = range(tiny_chat.facts.n_layers)
    measured = {}
    for d_sae in (2 * d, 256 * d):
        saes = {layer: make_tiny_sae(d, d_sae, seed=layer, k=4) for layer in layers}
        candidates = cosine_candidates(saes, direction, k0=3)
        measured[d_sae] = _saved_bytes_during(lambda saes=saes, candidates=candidates: la_ig(
            tiny_chat, saes, PROMPTS, IDS, direction, candidates, n_steps=2, batch_size=3))
    narrow, wide = measured[2 * d], measured[256 * d]
    assert narrow == wide
    # A dense splice would save at least one [B, T, d_sae] latent tensor per layer and step.
    n_tokens = tiny_chat.tokenize(PROMPTS)["input_ids"].numel()
    assert wide[1] < n_tokens * 256 * d * 4
