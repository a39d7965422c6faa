"""Harm vs refusal features by harm category (METHOD.md section 8, Study A).

Per harm category ``c`` the direction is fitted on that category's refused training prompts, LA-IG
ranks the cosine candidates of that direction on the same prompts, and the top ``K*`` form ``F*_c``.
Refusal (shared) features ``R`` are those in at least ``refusal_fraction`` of the categories' sets
(1.0: the study's intersection); harm (specific) features ``H_c = F*_c \\ R``.

The experiments clamp one part while the other is held at its unedited values
(:class:`~refusal_sae.interventions.HoldLatents`): ``harm`` clamps ``H_c`` holding ``R``, ``refusal``
clamps ``R`` holding ``H_c``, ``all`` clamps ``F*_c``, ``transfer`` clamps another category's harm
features ``H_c'`` on category ``c`` holding ``R``, and ``base`` clamps nothing. The normalised
jailbreak of a condition is its jailbreak rate over that of ``all`` on the same prompts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .interventions import HoldLatents, SparseAutoencoder
from .selection import GLOBAL, SET_COLUMNS, feature_set_to_edit_inputs

CONDITIONS = ("base", "all", "harm", "refusal", "transfer")
"""What each category's evaluation prompts are generated under (see the module docstring)."""
ROLE_SET_COLUMNS = ["category", "layer", "feature", "rank", "score", "role", "n_categories"]
"""One row per member of a category's set ``F*_c``: its rank and score there, ``refusal`` or ``harm``,
and in how many categories' sets the latent is."""


def category_pools(prompts: pd.DataFrame, min_prompts: int, max_prompts: int | None = None) -> dict[str, pd.DataFrame]:
    """The rows of ``prompts`` (``prompt_id, prompt, category``) per category, in row order, for the
    categories with at least ``min_prompts`` rows (sorted by name), each cut to its first ``max_prompts``.

    Rows without a category (empty string) belong to none.
    """
    if min_prompts < 1:
        raise ValueError(f"min_prompts must be >= 1, got {min_prompts}")
    named = prompts.loc[prompts["category"].astype(str).str.len() > 0]
    pools = {}
    for category, rows in sorted(named.groupby("category", sort=False), key=lambda item: str(item[0])):
        if len(rows) >= min_prompts:
            pools[str(category)] = rows if max_prompts is None else rows.head(max_prompts)
    return pools


def split_roles(category_sets: Mapping[str, pd.DataFrame], refusal_fraction: float = 1.0) -> pd.DataFrame:
    """``R`` and ``H_c`` from the categories' ranked sets (``layer, feature, rank, score`` rows each).

    A latent is ``refusal`` when it is in at least ``ceil(refusal_fraction * C)`` of the ``C`` sets,
    else ``harm`` for the categories whose set holds it. Returns :data:`ROLE_SET_COLUMNS`.
    """
    if not 0 < refusal_fraction <= 1:
        raise ValueError(f"refusal_fraction must be in (0, 1], got {refusal_fraction}")
    if not category_sets:
        return pd.DataFrame(columns=ROLE_SET_COLUMNS)
    frames = [s[["layer", "feature", "rank", "score"]].assign(category=c) for c, s in category_sets.items()]
    rows = pd.concat(frames, ignore_index=True)
    counts = rows.groupby(["layer", "feature"])["category"].nunique().rename("n_categories").reset_index()
    rows = rows.merge(counts, on=["layer", "feature"], how="left")
    needed = math.ceil(refusal_fraction * len(category_sets) - 1e-9)
    rows["role"] = np.where(rows["n_categories"] >= needed, "refusal", "harm")
    return rows[ROLE_SET_COLUMNS].sort_values(["category", "rank"], kind="mergesort").reset_index(drop=True)


def transfer_partners(categories: Sequence[str]) -> dict[str, str]:
    """Each category's partner ``c'`` for the transfer condition: the next category by name (cyclic)."""
    ordered = sorted(categories)
    if len(ordered) < 2:
        return {}
    return {c: ordered[(i + 1) % len(ordered)] for i, c in enumerate(ordered)}


def refusal_features(roles: pd.DataFrame) -> pd.DataFrame:
    """``R``: the distinct ``layer, feature`` of the refusal role, sorted."""
    refusal = roles.loc[roles["role"] == "refusal", ["layer", "feature"]]
    return refusal.drop_duplicates().sort_values(["layer", "feature"]).reset_index(drop=True)


def harm_features(roles: pd.DataFrame, category: str) -> pd.DataFrame:
    """``H_c``: the harm-role members of ``category``'s set, by rank."""
    rows = roles.loc[(roles["category"] == category) & (roles["role"] == "harm"), ["layer", "feature"]]
    return rows.reset_index(drop=True)


def condition_sets(roles: pd.DataFrame, category: str, condition: str,
                   partners: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(clamped, held)`` latents (``layer, feature`` frames) of one condition on ``category``'s prompts.

    ``transfer`` needs a partner (two categories at least); it raises ``KeyError`` otherwise.
    """
    empty = pd.DataFrame({"layer": pd.Series(dtype=int), "feature": pd.Series(dtype=int)})
    refusal = refusal_features(roles)
    if condition == "base":
        return empty, empty
    if condition == "all":
        members = roles.loc[roles["category"] == category, ["layer", "feature"]].reset_index(drop=True)
        return members, empty
    if condition == "harm":
        return harm_features(roles, category), refusal
    if condition == "refusal":
        return refusal, harm_features(roles, category)
    if condition == "transfer":
        return harm_features(roles, partners[category]), refusal
    raise ValueError(f"unknown condition {condition!r} (known: {list(CONDITIONS)})")


def as_global_set(latents: pd.DataFrame, method: str) -> pd.DataFrame:
    """``layer, feature`` rows as a ranked global set (:data:`~refusal_sae.selection.SET_COLUMNS`)."""
    return pd.DataFrame({
        "scope": GLOBAL,
        "layer": latents["layer"].astype(int).to_numpy(),
        "feature": latents["feature"].astype(int).to_numpy(),
        "rank": np.arange(len(latents)),
        "score": np.nan,
        "method": method,
    })[SET_COLUMNS]


def hold_edit(latents: pd.DataFrame, saes: Mapping[int, SparseAutoencoder]) -> HoldLatents:
    """A :class:`HoldLatents` for ``layer, feature`` rows (none: a hold of nothing, the doubled batch alone,
    so that every condition is generated the same way)."""
    features, _ = feature_set_to_edit_inputs(as_global_set(latents, "hold"), []) if not latents.empty else ({}, None)
    missing = sorted(set(features) - set(saes))
    if missing:
        raise ValueError(f"held latents use layers {missing} that have no SAE")
    return HoldLatents(saes, features)


def upstream_checks(roles: pd.DataFrame, category: str) -> list[tuple[int, pd.DataFrame, pd.DataFrame]]:
    """The upstream check's cases: ``(layer L, R at L, H_c below L)`` for every layer of ``R`` with harm
    features of ``category`` at earlier layers. Only those are clamped, so a refusal feature's change is
    carried to it by the model, not written into its own layer by a same-layer decoder."""
    harm = harm_features(roles, category)
    refusal = refusal_features(roles)
    cases = []
    for layer, members in refusal.groupby("layer", sort=True):
        below = harm.loc[harm["layer"] < layer].reset_index(drop=True)
        if not below.empty:
            cases.append((int(layer), members.reset_index(drop=True), below))
    return cases
