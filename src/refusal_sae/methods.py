"""The evaluated methods (METHOD.md sections 5-7) as intervention edits: one place maps a method
name to what is done to the residual stream during scoring and generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from torch import Tensor

    from .interventions import EditsForRows, FeatureEdit, PositionMask, ResidualEdit

# The edits' modules (torch) are imported where edits are built: the config check and the table jobs
# read only the method names.

BASE = "base"
DIRECTION_ABLATION = "direction_ablation"
PER_PROMPT_METHODS = ("ours_prompt", "ap_prompt")
"""Feature sets attributed on each evaluation prompt (LA-IG over the cosine candidates, AP over every
latent): one set per prompt, one file per dataset."""
GLOBAL_SET_METHODS = ("ours_global", "cossim", "actdiff", "ap", "random")
"""Feature sets fitted once per model and applied to every prompt."""
FEATURE_SET_METHODS = (*PER_PROMPT_METHODS, *GLOBAL_SET_METHODS)
ALL_METHODS = (BASE, DIRECTION_ABLATION, *FEATURE_SET_METHODS)
ACTIVATION_ADDITION = "activation_addition"
"""Refusal induction by adding the refusal direction at its layer (the dense counterpart of setting latents)."""
INDUCTION_METHODS = (*GLOBAL_SET_METHODS, ACTIVATION_ADDITION)
STAGE3_METHODS = ("fm_added", "linear_added", "random_added")
"""Study B's stage-3 extensions of a prompt's minimal set (FM, linear, random picks at equal size)."""
STUDYB_METHODS = ("greedy_minimal", *STAGE3_METHODS)
"""Every Study B set verified by generation: the minimal set, then its extensions."""


def top_of(feature_set: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """The first ``k`` members (by rank) of every scope of a ranked set (all of them for ``None``)."""
    return feature_set if k is None else feature_set.loc[feature_set["rank"] < k]


def feature_edit(
    feature_set: pd.DataFrame,
    prompt_ids: Sequence[str],
    saes: Mapping[int, object],
    mode: str,
    value: float,
    positions: PositionMask | None = None,
    k: int | None = None,
) -> FeatureEdit:
    """A ``FeatureEdit`` for a global or per-prompt set (its top ``k`` per scope), rows aligned with
    ``prompt_ids``."""
    from .interventions import FeatureEdit, PositionMask
    from .selection import feature_set_to_edit_inputs

    features, row_active = feature_set_to_edit_inputs(top_of(feature_set, k), list(prompt_ids))
    missing = sorted(set(features) - set(saes))
    if missing:
        raise ValueError(f"feature set uses layers {missing} that have no SAE")
    return FeatureEdit(
        saes={layer: saes[layer] for layer in features}, features=features, mode=mode, value=value,
        positions=positions or PositionMask(), row_active=row_active,
    )


def method_edits(
    method: str,
    prompt_ids: Sequence[str],
    n_layers: int,
    direction: Tensor | None = None,
    saes: Mapping[int, object] | None = None,
    feature_set: pd.DataFrame | None = None,
    mode: str = "scale",
    value: float = -3.0,
    direction_layer: int | None = None,
    k: int | None = None,
) -> Sequence[ResidualEdit] | EditsForRows:
    """Edits for ``method`` on prompts ``prompt_ids`` (callable per batch rows for per-prompt sets).

    ``activation_addition`` adds ``value`` times the (unnormalised) direction at ``direction_layer``, at
    every position; feature-set methods apply ``mode`` with ``value`` to the top ``k`` latents of their set
    (sets are fitted larger than the main K* so that the grid can use its sizes).
    """
    from .interventions import ActivationAddition, DirectionAblation, rows_of

    if method == BASE:
        return ()
    if method == ACTIVATION_ADDITION:
        if direction is None or direction_layer is None:
            raise ValueError("activation_addition needs the refusal direction and its layer")
        return [ActivationAddition(direction, direction_layer, value)]
    if method == DIRECTION_ABLATION:
        if direction is None:
            raise ValueError("direction_ablation needs the refusal direction")
        return [DirectionAblation.everywhere(direction, n_layers)]
    if feature_set is None or saes is None:
        raise ValueError(f"method {method!r} needs a feature set and SAEs")
    edit = feature_edit(feature_set, prompt_ids, saes, mode, value, k=k)
    if edit.row_active is None:
        return [edit]
    return lambda rows: [rows_of(edit, rows)]


def n_features(feature_set: pd.DataFrame, k: int | None = None) -> float:
    """Features per prompt of the top ``k``: the set size for a global set, the mean size for per-prompt sets."""
    sizes = top_of(feature_set, k).groupby("scope").size()
    return float(sizes.mean()) if len(sizes) else 0.0

