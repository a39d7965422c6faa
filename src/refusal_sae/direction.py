"""Difference-of-means refusal directions and their selection (METHOD.md section 2).

For every layer ``l`` and each trailing post-instruction position ``t`` (prompts are left padded, so
these are the last columns of every row) ``r_l(t) = mean_harmful h_l[t] - mean_harmless h_l[t]``.
Selection follows Arditi et al. (2024): each candidate is scored on a validation split by

* ``ablation_score``: mean refusal score of the harmful prompts under directional ablation of ``r̂`` at
  every layer (embeddings included) and every position;
* ``steering_score``: mean refusal score of the harmless prompts when ``r`` (unnormalised) is added at
  its own layer at every position;
* ``kl``: mean first-token ``KL(base || ablated)`` on the harmless prompts;

candidates with ``kl > kl_threshold``, ``steering_score < 0`` or a layer in the last
``exclude_last_fraction`` of the network are discarded and the lowest ``ablation_score`` wins.
All edits come from :mod:`refusal_sae.interventions`; nothing here touches the residual stream itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .interventions import ActivationAddition, DirectionAblation, Recorder, run_until
from .models import ChatModel
from .scoring import first_token_kl, last_position_logits, refusal_score_from_logits

DIRECTION_COLUMNS = [
    "layer", "position", "ablation_score", "steering_score", "kl", "filtered", "reason", "chosen", "vector",
]


class NoDirectionError(ValueError):
    """Every candidate direction was filtered out; ``frame`` holds the scores of every candidate."""

    def __init__(self, message: str, frame: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.frame = frame


@torch.no_grad()
def mean_activations(
    chat: ChatModel, prompts: Sequence[str], n_positions: int, batch_size: int = 16
) -> Tensor:
    """Mean ``resid_post`` over ``prompts`` at every layer and the last ``n_positions`` positions.

    Returns ``[n_layers, n_positions, d_model]`` (float32, CPU); index ``p`` is position
    ``p - n_positions`` from the end. One forward per batch records all layers at once and stops after
    the last block (no unembedding). Sums are accumulated in float32 whatever the model dtype.
    """
    if not prompts:
        raise ValueError("mean_activations: no prompts")
    n_layers, d = chat.facts.n_layers, chat.facts.d_model
    if not 0 < n_positions <= chat.facts.suffix_length:
        # Beyond the post-instruction template the trailing columns would hold user text, whose
        # position differs per prompt; a mean over them has no fixed meaning.
        raise ValueError(
            f"n_positions={n_positions}: must be in 1..{chat.facts.suffix_length} (the post-instruction "
            "template length of this model)"
        )
    total = torch.zeros(n_layers, n_positions, d, dtype=torch.float32)
    layers = list(range(n_layers))
    for start in tqdm(range(0, len(prompts), batch_size), desc="mean activations", leave=False):
        batch = chat.tokenize(prompts[start:start + batch_size])
        recorder = Recorder(layers)
        run_until(chat.model, [recorder], last_layer=n_layers - 1, **batch)
        for layer in layers:
            total[layer] += recorder.outputs[layer][0][:, -n_positions:].sum(0)
    return total / len(prompts)


def candidate_directions(harmful_means: Tensor, harmless_means: Tensor) -> Tensor:
    """Difference of means ``harmful - harmless`` (same shape as the inputs, e.g. ``[L, P, d]``)."""
    if harmful_means.shape != harmless_means.shape:
        raise ValueError(f"shape mismatch: {tuple(harmful_means.shape)} vs {tuple(harmless_means.shape)}")
    return harmful_means.float() - harmless_means.float()


def _position_index(n_positions: int, position: int) -> int:
    """Column index of a negative (from the end) position in a ``[L, P, d]`` candidate tensor."""
    if not -n_positions <= position <= -1:
        raise ValueError(f"position {position}: must be in -{n_positions}..-1 (negative, from the end)")
    return n_positions + position


def pinned_direction(candidates: Tensor, layer: int, position: int = -1) -> Tensor:
    """The candidate at a pinned ``layer`` and negative ``position`` (the studies' fixed layers)."""
    n_layers, n_positions, _ = candidates.shape
    if not 0 <= layer < n_layers:
        raise ValueError(f"direction_layer {layer}: the model has layers 0..{n_layers - 1}")
    return candidates[layer, _position_index(n_positions, position)].clone()


def late_layer_cutoff(n_layers: int, exclude_last_fraction: float) -> int:
    """First excluded layer: layers ``>= cutoff`` are in the last fraction (Arditi et al.'s rule)."""
    return int(n_layers * (1.0 - exclude_last_fraction))


def score_candidates(
    chat: ChatModel,
    candidates: Tensor,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    kl_threshold: float = 0.1,
    exclude_last_fraction: float = 0.2,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    pinned: tuple[int, int] | None = None,
    when_all_filtered: str = "error",
    relax_min_candidates: int = 5,
    refusal_removed_below: float = 0.0,
) -> pd.DataFrame:
    """Score candidate directions and choose one (Arditi et al. selection, METHOD.md section 2).

    ``when_all_filtered``: ``error`` (raise :class:`NoDirectionError`, which carries the scored frame)
    or ``relax_kl``: raise the KL bound to the ``relax_min_candidates``-th smallest KL among the
    non-late candidates with steering >= 0 that remove refusal (ablation score below
    ``refusal_removed_below``; all of them if none does), recorded per row as ``kl_threshold_used``,
    and choose the lowest ablation score among the candidates under it.

    ``candidates``: ``[n_layers, n_positions, d]`` from :func:`candidate_directions`. ``layers``
    restricts which layers are considered (default: all). Layers in the excluded last fraction are
    listed with ``reason="late_layer"`` but not scored (NaN scores): they can never be chosen, and
    skipping them saves a fifth of the cost. ``pinned=(layer, position)`` scores only that candidate
    and marks it chosen even when a filter rejects it (its ``reason`` still says why).

    Returns one row per candidate with ``DIRECTION_COLUMNS``; ``position`` is negative from the end;
    ``reason`` is the first failed filter in the order late_layer, kl, steering (``""`` when kept);
    ``vector`` holds the unnormalised direction as float32 (Parquet-ready). Raises
    :class:`NoDirectionError` when every candidate is filtered.
    """
    n_layers, n_positions, _ = candidates.shape
    if n_layers != chat.facts.n_layers:
        raise ValueError(f"candidates cover {n_layers} layers, the model has {chat.facts.n_layers}")
    cutoff = late_layer_cutoff(n_layers, exclude_last_fraction)
    if pinned is not None:
        pinned_direction(candidates, *pinned)  # validates the indices
        grid = [(pinned[0], _position_index(n_positions, pinned[1]))]
    else:
        chosen_layers = range(n_layers) if layers is None else sorted(set(layers))
        grid = [(layer, p) for layer in chosen_layers for p in range(n_positions)]

    # Base harmless logits are shared by every candidate's KL; their clean streams (float32, every
    # steered layer, every harmless prompt) let each steering pass skip the blocks before its layer.
    steered_layers = sorted({layer for layer, _ in grid if layer < cutoff or pinned is not None})
    clean_harmless = Recorder(steered_layers)
    base_harmless = last_position_logits(chat, harmless_val, [clean_harmless], batch_size)
    refusal_ids = chat.facts.refusal_token_ids
    rows = []
    for layer, p in tqdm(grid, desc="score directions", leave=False):
        vector = candidates[layer, p].float()
        row = {"layer": layer, "position": p - n_positions, "vector": vector.numpy().astype(np.float32)}
        if layer >= cutoff and pinned is None:
            row.update(ablation_score=np.nan, steering_score=np.nan, kl=np.nan, reason="late_layer")
            rows.append(row)
            continue
        ablation = [DirectionAblation.everywhere(vector, n_layers)]
        harmful_logits = last_position_logits(chat, harmful_val, ablation, batch_size)
        harmless_ablated = last_position_logits(chat, harmless_val, ablation, batch_size)
        steered = last_position_logits(chat, harmless_val, [ActivationAddition(vector, layer)], batch_size,
                                       resume_from=(layer, clean_harmless.outputs.get(layer, [])))
        row["ablation_score"] = float(refusal_score_from_logits(harmful_logits, refusal_ids).mean())
        row["steering_score"] = float(refusal_score_from_logits(steered, refusal_ids).mean())
        row["kl"] = float(first_token_kl(base_harmless, harmless_ablated).mean())
        if layer >= cutoff:
            row["reason"] = "late_layer"
        elif row["kl"] > kl_threshold:
            row["reason"] = "kl"
        elif row["steering_score"] < 0:
            row["reason"] = "steering"
        else:
            row["reason"] = ""
        rows.append(row)

    frame = pd.DataFrame(rows)
    frame["filtered"] = frame["reason"] != ""
    frame["chosen"] = False
    frame["kl_threshold_used"] = kl_threshold
    if pinned is not None:
        frame.loc[0, "chosen"] = True
        return frame[[*DIRECTION_COLUMNS, "kl_threshold_used"]]
    return select_direction(frame, when_all_filtered, relax_min_candidates, refusal_removed_below)


def select_direction(
    frame: pd.DataFrame, when_all_filtered: str = "error", relax_min_candidates: int = 5,
    refusal_removed_below: float = 0.0,
) -> pd.DataFrame:
    """Mark the chosen candidate of a scored frame (``reason``, ``filtered``, ``kl_threshold_used`` set).

    The lowest ablation score among unfiltered candidates wins. When every candidate is filtered,
    ``relax_kl`` raises the KL bound only as far as needed for ``relax_min_candidates`` candidates that
    remove refusal (non-late, steering >= 0, ablation score below ``refusal_removed_below``) to pass,
    then chooses the lowest ablation score among all non-late, steering >= 0 candidates under that
    bound: the bound follows the candidates that do the job, so the choice never reduces to "lowest
    KL". If none removes refusal, the bound follows all of them. ``error`` raises
    :class:`NoDirectionError` (carrying the frame).
    """
    frame = frame.copy()
    kept = frame[~frame["filtered"]]
    if kept.empty and when_all_filtered == "relax_kl":
        valid = frame[(frame["reason"] != "late_layer") & (frame["steering_score"] >= 0)]
        removing = valid[valid["ablation_score"] < refusal_removed_below]
        pool = removing if not removing.empty else valid
        if not pool.empty:
            relaxed = float(np.sort(pool["kl"].to_numpy())[min(relax_min_candidates, len(pool)) - 1])
            frame["kl_threshold_used"] = relaxed
            kept = valid[valid["kl"] <= relaxed]
    if kept.empty:
        counts = frame["reason"].value_counts().to_dict()
        raise NoDirectionError(
            f"every candidate direction was filtered ({counts}); pin the layer and position instead "
            "(models.<name>.direction_layer / direction_position, e.g. the studies' Gemma 15, Llama 11), "
            "relax direction.kl_threshold, or set direction.when_all_filtered: relax_kl",
            frame[[*DIRECTION_COLUMNS, "kl_threshold_used"]],
        )
    frame.loc[kept["ablation_score"].idxmin(), "chosen"] = True
    return frame[[*DIRECTION_COLUMNS, "kl_threshold_used"]]


def chosen_direction(frame: pd.DataFrame) -> Tensor:
    """The ``vector`` of the single chosen row of a :func:`score_candidates` frame (float32)."""
    chosen = frame[frame["chosen"]]
    if len(chosen) != 1:
        raise ValueError(f"expected exactly one chosen direction, found {len(chosen)}")
    return torch.tensor(np.asarray(chosen["vector"].iloc[0], dtype=np.float32))


def fit_pinned_direction(
    chat: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    layer: int,
    position: int,
    batch_size: int = 16,
) -> pd.DataFrame:
    """The difference of means at one ``layer`` and (negative) ``position``, scored like a pinned candidate.

    For the in-sample variant: the studies fitted the direction on the evaluation prompts themselves at a
    fixed layer, so no selection runs; the scores (ablation on ``harmful_val``, steering and KL on
    ``harmless_val``) are reported as for any chosen direction. Returns one row of ``DIRECTION_COLUMNS``
    plus ``kl_threshold_used``.
    """
    if position >= 0:
        raise ValueError(f"position {position}: must be negative (from the end)")
    n_positions = -position
    candidates = candidate_directions(
        mean_activations(chat, harmful, n_positions, batch_size), mean_activations(chat, harmless, n_positions, batch_size)
    )
    return score_candidates(chat, candidates, harmful_val, harmless_val, batch_size=batch_size, pinned=(layer, position))
