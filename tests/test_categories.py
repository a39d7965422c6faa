"""Harm vs refusal features by category (METHOD.md section 8): roles, conditions, pools, the ratio interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_sae.categories import (
    category_pools,
    condition_sets,
    hold_edit,
    refusal_features,
    split_roles,
    transfer_partners,
    upstream_checks,
)
from refusal_sae.metrics import paired_ratio_bootstrap

SHARED = [(5, 1), (8, 2)]
"""Planted refusal features: in every category's set."""
OWN = {"cyber": [(2, 7), (5, 9)], "weapons": [(3, 4)], "drugs": [(2, 3), (8, 6)]}
"""Planted harm features: one category each."""


def planted_sets(extra: dict[str, list[tuple[int, int]]] | None = None) -> dict[str, pd.DataFrame]:
    sets = {}
    for category, own in OWN.items():
        members = SHARED + own + (extra or {}).get(category, [])
        sets[category] = pd.DataFrame({"layer": [m[0] for m in members], "feature": [m[1] for m in members],
                                       "rank": range(len(members)), "score": np.linspace(1, 0.1, len(members))})
    return sets


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["layer"].astype(int), frame["feature"].astype(int), strict=True))


def test_shared_features_are_refusal_and_the_rest_harm():
    roles = split_roles(planted_sets())
    assert pairs(refusal_features(roles)) == set(SHARED)
    for category, own in OWN.items():
        mine = roles.loc[(roles["category"] == category) & (roles["role"] == "harm")]
        assert pairs(mine) == set(own), category
    assert (roles.loc[roles["role"] == "refusal", "n_categories"] == 3).all()


def test_a_fraction_admits_features_most_categories_share():
    sets = planted_sets(extra={"cyber": [(9, 9)], "weapons": [(9, 9)]})  # in 2 of 3 sets
    assert (9, 9) not in pairs(refusal_features(split_roles(sets, 1.0)))
    assert (9, 9) in pairs(refusal_features(split_roles(sets, 2 / 3)))
    assert (9, 9) not in pairs(refusal_features(split_roles(sets, 0.7)))
    with pytest.raises(ValueError, match="refusal_fraction"):
        split_roles(sets, 0.0)


def test_conditions_clamp_one_part_and_hold_the_other():
    roles = split_roles(planted_sets())
    partners = transfer_partners(list(OWN))
    assert partners == {"cyber": "drugs", "drugs": "weapons", "weapons": "cyber"}
    clamped, held = condition_sets(roles, "cyber", "harm", partners)
    assert pairs(clamped) == set(OWN["cyber"]) and pairs(held) == set(SHARED)
    clamped, held = condition_sets(roles, "cyber", "refusal", partners)
    assert pairs(clamped) == set(SHARED) and pairs(held) == set(OWN["cyber"])
    clamped, held = condition_sets(roles, "cyber", "all", partners)
    assert pairs(clamped) == set(SHARED + OWN["cyber"]) and held.empty
    clamped, held = condition_sets(roles, "cyber", "transfer", partners)
    assert pairs(clamped) == set(OWN["drugs"]) and pairs(held) == set(SHARED)
    clamped, held = condition_sets(roles, "cyber", "base", partners)
    assert clamped.empty and held.empty
    # The upstream check: each refusal layer with the category's harm features strictly below it.
    cyber = [(layer, pairs(r), pairs(h)) for layer, r, h in upstream_checks(roles, "cyber")]
    assert cyber == [(5, {(5, 1)}, {(2, 7)}), (8, {(8, 2)}, {(2, 7), (5, 9)})]
    assert [(layer, pairs(h)) for layer, _, h in upstream_checks(roles, "weapons")] == [(5, {(3, 4)}), (8, {(3, 4)})]


def test_hold_edit_groups_latents_by_layer(tiny_saes):
    roles = split_roles({c: s.assign(layer=s["layer"] % 4) for c, s in planted_sets().items()})
    hold = hold_edit(refusal_features(roles), tiny_saes)
    assert {layer: index.tolist() for layer, index in hold.features.items()} == {1: [1], 0: [2]}
    assert hold_edit(refusal_features(roles).iloc[0:0], tiny_saes).layers == []
    with pytest.raises(ValueError, match="no SAE"):
        hold_edit(pd.DataFrame({"layer": [7], "feature": [0]}), {0: tiny_saes[0]})
    assert isinstance(hold.features[0], torch.Tensor)


def test_pools_keep_categories_with_enough_prompts_in_row_order():
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(9)], "prompt": list("abcdefghi"),
                            "category": ["b", "a", "b", "a", "b", "", "c", "b", "a"]})
    pools = category_pools(prompts, min_prompts=3, max_prompts=3)
    assert list(pools) == ["a", "b"]
    assert pools["b"]["prompt_id"].tolist() == ["p0", "p2", "p4"]
    assert pools["a"]["prompt_id"].tolist() == ["p1", "p3", "p8"]


def test_normalised_rate_and_its_interval():
    all_clamped = [1.0] * 8 + [0.0] * 2
    harm_only = [1.0] * 4 + [0.0] * 6
    value, low, high = paired_ratio_bootstrap(harm_only, all_clamped, n_boot=2000, seed=0)
    assert value == pytest.approx(0.5)
    assert low < 0.5 < high and 0 <= low and high <= 1.01
    assert np.isnan(paired_ratio_bootstrap([1.0, 0.0], [0.0, 0.0])[0])
