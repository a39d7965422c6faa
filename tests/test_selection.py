"""Feature sets and their alignment with prompt order (METHOD.md sections 5 and 14)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_sae.interventions import FeatureEdit, Recorder, run_until
from refusal_sae.scoring import last_position_logits
from refusal_sae.selection import (
    SET_COLUMNS,
    actdiff_set,
    cossim_set,
    feature_set_to_edit_inputs,
    global_set,
    peak_regions,
    per_prompt_sets,
    random_set,
)

PROMPTS = ["How do I make a bomb?", "Write a poem", "Explain photosynthesis in simple words.", "Hi", "Tell me a story"]


def attribution_frame(prompt_ids, seed=0, n_features=12) -> pd.DataFrame:
    """LA-IG-shaped scores where every prompt has a different top set."""
    rng = np.random.default_rng(seed)
    rows = [(pid, layer, f, float(rng.normal())) for pid in prompt_ids for layer in (1, 2) for f in range(n_features)]
    return pd.DataFrame(rows, columns=["prompt_id", "layer", "feature", "score"])


def expected_sets(attr: pd.DataFrame, k: int) -> dict[str, set[tuple[int, int]]]:
    return {
        str(pid): set(map(tuple, g.nlargest(k, "score")[["layer", "feature"]].to_numpy().tolist()))
        for pid, g in attr.groupby("prompt_id")
    }


def active_sets(features, row_active, prompt_ids) -> dict[str, set[tuple[int, int]]]:
    out = {}
    for r, pid in enumerate(prompt_ids):
        out[str(pid)] = {(layer, int(f)) for layer, index in features.items() for f in index[row_active[layer][r]]}
    return out


def test_per_prompt_sets_follow_prompt_ids_not_positions():
    ids = [101, 7, 55, 3, 42]
    attr = attribution_frame(ids)
    sets = per_prompt_sets(attr, k_star=4)
    assert list(sets.columns) == SET_COLUMNS
    assert set(sets["scope"]) == {str(i) for i in ids}
    assert (sets.groupby("scope")["rank"].apply(list) == [[0, 1, 2, 3]] * 5).all()
    want = expected_sets(attr, 4)
    for order in (ids, ids[::-1], [55, 3, 101, 42, 7]):
        features, row_active = feature_set_to_edit_inputs(sets, order)
        assert row_active is not None
        assert all(row_active[layer].shape == (len(order), len(features[layer])) for layer in features)
        assert active_sets(features, row_active, order) == want
    with pytest.raises(KeyError, match="999"):
        feature_set_to_edit_inputs(sets, [*ids, 999])


def test_per_prompt_edit_matches_each_prompts_own_edit_after_shuffling(tiny_chat, tiny_saes):
    """End to end: one batched FeatureEdit with row_active == running each prompt with its own set."""
    ids = ["a", "b", "c", "d", "e"]
    attr = attribution_frame(ids, seed=3, n_features=tiny_saes[1].W_dec.shape[0])
    sets = per_prompt_sets(attr, k_star=6)
    saes = {layer: tiny_saes[layer] for layer in (1, 2)}
    order = [3, 0, 4, 1, 2]
    prompts, order_ids = [PROMPTS[i] for i in order], [ids[i] for i in order]
    features, row_active = feature_set_to_edit_inputs(sets, order_ids)

    def edits(rows: slice):
        return [FeatureEdit(saes, features, mode="set", value=5.0,
                            row_active={layer: active[rows] for layer, active in row_active.items()})]

    batched = last_position_logits(tiny_chat, prompts, edits, batch_size=2)
    for row, pid in enumerate(order_ids):
        own, none = feature_set_to_edit_inputs(sets[sets["scope"] == pid].assign(scope="global"), [pid])
        assert none is None
        single = last_position_logits(tiny_chat, [prompts[row]], [FeatureEdit(saes, own, mode="set", value=5.0)])
        torch.testing.assert_close(batched[row], single[0], rtol=1e-4, atol=1e-4)


def test_global_set_and_global_edit_inputs():
    attr = attribution_frame(["x", "y", "z"], seed=1)
    top = global_set(attr, k_star=5)
    means = attr.groupby(["layer", "feature"], as_index=False)["score"].mean().nlargest(5, "score")
    assert list(zip(top["layer"], top["feature"], strict=True)) == list(zip(means["layer"], means["feature"], strict=True))
    np.testing.assert_allclose(top["score"], means["score"])
    assert (top["scope"] == "global").all() and list(top["rank"]) == list(range(5))
    features, row_active = feature_set_to_edit_inputs(top, ["z", "x"])
    assert row_active is None
    assert {(layer, int(f)) for layer, idx in features.items() for f in idx} == set(
        zip(top["layer"], top["feature"], strict=True))


def test_cossim_set_is_the_global_cosine_topk(tiny_saes):
    direction = torch.randn(tiny_saes[0].W_dec.shape[1], generator=torch.Generator().manual_seed(2))
    top = cossim_set(tiny_saes, direction, k_star=6)
    rows = []
    for layer, sae in tiny_saes.items():
        w = sae.W_dec.detach()
        cos = (w @ direction) / (w.norm(dim=-1) * direction.norm())
        rows += [(layer, f, float(c)) for f, c in enumerate(cos)]
    brute = pd.DataFrame(rows, columns=["layer", "feature", "score"]).nlargest(6, "score")
    assert list(zip(top["layer"], top["feature"], strict=True)) == list(zip(brute["layer"], brute["feature"], strict=True))
    assert (top["method"] == "cossim").all()


def test_random_set_is_distinct_seeded_and_in_range(tiny_saes):
    a, b, c = random_set(tiny_saes, 30, seed=4), random_set(tiny_saes, 30, seed=4), random_set(tiny_saes, 30, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert len(set(zip(a["layer"], a["feature"], strict=True))) == 30
    for layer, feature in zip(a["layer"], a["feature"], strict=True):
        assert 0 <= feature < tiny_saes[layer].W_dec.shape[0]


def test_random_set_at_a_smaller_size_is_the_first_latents_of_a_larger_one():
    # numpy's choice without replacement does not draw a size-20 set as the start of a size-30 one.
    saes = {layer: SimpleNamespace(W_dec=np.empty((6000, 1))) for layer in (2, 5, 8)}
    fitted, applied = random_set(saes, 30, seed=0), random_set(saes, 20, seed=0)
    pd.testing.assert_frame_equal(fitted.head(20), applied)


def test_actdiff_matches_unpadded_per_prompt_reference(tiny_chat, tiny_saes):
    saes = {layer: tiny_saes[layer] for layer in (0, 2)}
    harmful, harmless = PROMPTS[:3], PROMPTS[3:]
    top = actdiff_set(tiny_chat, saes, harmful, harmless, k_star=5, batch_size=3)
    start = tiny_chat.facts.prefix_length

    def mean_max(prompts):
        out = {layer: torch.zeros(sae.W_dec.shape[0]) for layer, sae in saes.items()}
        with torch.no_grad():
            for prompt in prompts:  # one at a time: no padding to get wrong
                states = tiny_chat.model(**tiny_chat.tokenize([prompt]), output_hidden_states=True).hidden_states
                for layer, sae in saes.items():
                    out[layer] += sae.encode(states[layer + 1][0, start:]).amax(0) / len(prompts)
        return out

    pos, neg = mean_max(harmful), mean_max(harmless)
    rows = [(layer, f, float(pos[layer][f] - neg[layer][f])) for layer in saes for f in range(len(pos[layer]))]
    brute = pd.DataFrame(rows, columns=["layer", "feature", "score"]).nlargest(5, "score")
    assert list(zip(top["layer"], top["feature"], strict=True)) == list(zip(brute["layer"], brute["feature"], strict=True))
    np.testing.assert_allclose(top["score"], brute["score"], rtol=1e-4, atol=1e-5)


def test_peak_regions_place_a_sink_latent_and_a_silent_one(tiny_chat, tiny_saes):
    """A latent planted on the attention sink's stream (it fires there only, in every padded row) peaks at
    the sink on every prompt; one that never fires is silent on every prompt."""
    layer = 1
    sae = copy.deepcopy(tiny_saes[layer])
    prompts = ["How do I make a bomb?", "Write a short poem about the sea.", "Hi"]
    batch = tiny_chat.tokenize(prompts)
    recorder = Recorder([layer])
    run_until(tiny_chat.model, [recorder], last_layer=layer, **batch)
    hidden = recorder.outputs[layer][0]
    pads = (batch["attention_mask"] == 0).sum(-1)
    sink = hidden[0, pads[0]]
    with torch.no_grad():
        sae.W_enc[:, 0] = sink / sink.norm()
        sae.b_enc[0] = -0.999 * sink.norm() + sae.b_dec @ (sink / sink.norm())
    members = pd.DataFrame({"method": "m", "layer": [layer], "feature": [0]})
    table = peak_regions(tiny_chat, {layer: sae}, prompts, members).set_index("region")
    assert table.loc["sink", "share"] == 1.0 and table.loc["sink", "mean_peak"] > 0
    assert table.drop(index="sink")["share"].sum() == 0
    # A latent that never fires is "silent" on every prompt.
    with torch.no_grad():
        sae.b_enc[0] = -1e6
    silent = peak_regions(tiny_chat, {layer: sae}, prompts, members).set_index("region")
    assert silent.loc["silent", "share"] == 1.0
