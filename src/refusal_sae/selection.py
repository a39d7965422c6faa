"""Feature sets: per-prompt and global top-K* sets and the baselines (METHOD.md section 5).

Every set is a long frame ``scope, layer, feature, rank, score, method``: ``scope`` is ``"global"``
or the prompt id (as a string, so one column can hold both); ``rank`` is 0-based within the scope.
:func:`feature_set_to_edit_inputs` turns a set into :class:`~refusal_sae.interventions.FeatureEdit`
inputs aligned *by prompt id* with the caller's prompt order (the original code indexed per-prompt
lists by position and misaligned them, METHOD.md section 14).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .attribution import averaged_positions, cosine_candidates
from .interventions import Recorder, SparseAutoencoder, run_until
from .models import ChatModel

SET_COLUMNS = ["scope", "layer", "feature", "rank", "score", "method"]
GLOBAL = "global"


def _check_k(k_star: int) -> None:
    if k_star <= 0:
        raise ValueError(f"k_star={k_star}: must be positive")


def ranked_set(scores: pd.DataFrame, k_star: int, method: str, scope: str = GLOBAL) -> pd.DataFrame:
    """Top ``k_star`` rows of a ``layer, feature, score`` frame (largest score first) as one set.

    Ties are broken by lower layer, then lower feature index, so sets are deterministic.
    """
    _check_k(k_star)
    ordered = scores.sort_values(["score", "layer", "feature"], ascending=[False, True, True], kind="mergesort")
    top = ordered.head(k_star).reset_index(drop=True)
    return pd.DataFrame({
        "scope": scope,
        "layer": top["layer"].astype(int).to_numpy(),
        "feature": top["feature"].astype(int).to_numpy(),
        "rank": np.arange(len(top)),
        "score": top["score"].astype(float).to_numpy(),
        "method": method,
    })[SET_COLUMNS]


def per_prompt_sets(attr_df: pd.DataFrame, k_star: int, method: str = "ours") -> pd.DataFrame:
    """Per-prompt sets ``F*_x``: the top ``k_star`` features of each prompt by its attribution score."""
    frames = [ranked_set(group, k_star, method, scope=str(pid)) for pid, group in attr_df.groupby("prompt_id", sort=False)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SET_COLUMNS)


def global_set(attr_df: pd.DataFrame, k_star: int, method: str = "ours") -> pd.DataFrame:
    """Global set: the top ``k_star`` features by the mean attribution over prompts.

    A feature missing for a prompt counts as 0 there (``attr_df`` from ``la_ig`` has every candidate for
    every prompt, so this only matters for sparse inputs).
    """
    n_prompts = attr_df["prompt_id"].nunique()
    means = attr_df.groupby(["layer", "feature"], as_index=False)["score"].sum()
    means["score"] = means["score"] / max(n_prompts, 1)
    return ranked_set(means, k_star, method)


def cossim_set(saes: Mapping[int, SparseAutoencoder], direction: Tensor, k_star: int) -> pd.DataFrame:
    """CosSim baseline: global top ``k_star`` by signed decoder-row cosine over all layers × features."""
    _check_k(k_star)
    # The global top-k* is contained in the union of the per-layer top-k* lists.
    candidates = cosine_candidates(saes, direction, k_star).rename(columns={"cosine": "score"})
    return ranked_set(candidates, k_star, "cossim")


@torch.no_grad()
def _max_activation_means(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str], batch_size: int, start: int,
) -> dict[int, Tensor]:
    """Per layer: mean over prompts of each latent's max activation over the real positions ``>= start``."""
    layers = sorted(saes)
    sums = {layer: torch.zeros(saes[layer].W_dec.shape[0], dtype=torch.float64) for layer in layers}
    for first in tqdm(range(0, len(prompts), batch_size), desc="ActDiff activations", leave=False):
        batch = chat.tokenize(prompts[first:first + batch_size])
        recorder = Recorder(layers)
        run_until(chat.model, [recorder], last_layer=max(layers), **batch)
        mask = averaged_positions(batch["attention_mask"], start).cpu().unsqueeze(-1)
        for layer in layers:
            sae = saes[layer]
            weight = sae.W_dec
            latents = sae.encode(recorder.outputs[layer][0].to(device=weight.device, dtype=weight.dtype)).float().cpu()
            # Latents are >= 0 for ReLU/TopK/JumpReLU SAEs, but mask with -inf so the max is right anyway.
            peak = latents.masked_fill(~mask, -torch.inf).amax(1)
            sums[layer] += peak.double().sum(0)
    return {layer: s / len(prompts) for layer, s in sums.items()}


def actdiff_set(
    chat: ChatModel,
    saes: Mapping[int, SparseAutoencoder],
    harmful: Sequence[str],
    harmless: Sequence[str],
    k_star: int,
    batch_size: int = 16,
    start: int | None = None,
) -> pd.DataFrame:
    """ActDiff baseline: top ``k_star`` by (mean over harmful of max-over-positions activation) minus
    (the same over harmless).

    Positions: real tokens at or after ``start`` (default ``chat.facts.prefix_length``): the template
    prefix is identical for every prompt under causal attention, so it would only add the same maximum
    to both sides and hide differences.
    """
    _check_k(k_star)
    if not harmful or not harmless:
        raise ValueError("actdiff_set: needs harmful and harmless prompts")
    start = chat.facts.prefix_length if start is None else start
    pos = _max_activation_means(chat, saes, list(harmful), batch_size, start)
    neg = _max_activation_means(chat, saes, list(harmless), batch_size, start)
    frames = []
    for layer in sorted(saes):
        diff = pos[layer] - neg[layer]
        val, feat = diff.topk(min(k_star, diff.numel()))
        frames.append(pd.DataFrame({"layer": layer, "feature": feat.numpy(), "score": val.numpy()}))
    return ranked_set(pd.concat(frames, ignore_index=True), k_star, "actdiff")


PEAK_REGIONS = ("sink", "template_prefix", "user_text", "template_suffix")


def position_region(position: int, n_real: int, prefix_length: int, suffix_length: int) -> str:
    """Region of a position counted from a prompt's first real token: the attention sink (first token), the
    rest of the template before the user text, the user text, or the post-instruction template."""
    if position == 0:
        return "sink"
    if position < prefix_length:
        return "template_prefix"
    if position >= n_real - suffix_length:
        return "template_suffix"
    return "user_text"


@torch.no_grad()
def peak_regions(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str], feature_sets: pd.DataFrame,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Where each feature of ``feature_sets`` (``method, layer, feature`` rows) peaks on ``prompts``.

    For every prompt, the position of the feature's largest activation is classed as the attention
    sink (first real token), the rest of the template before the user text, the user text, or the
    post-instruction template. Returns one row per method, layer, feature and region: ``share`` of the
    prompts on which it peaks there (prompts where it never fires count as ``silent``) and the mean
    peak activation. Explains what a set responds to: e.g. latents that only fire at the sink are
    never touched by edits that leave the sink clean.
    """
    layers = sorted(int(layer) for layer in feature_sets["layer"].unique())
    columns = {layer: torch.as_tensor(np.unique(feature_sets.loc[feature_sets["layer"] == layer, "feature"]))
               for layer in layers}
    prefix, suffix = chat.facts.prefix_length, chat.facts.suffix_length
    counts: dict[tuple[int, int, str], int] = {}
    peaks: dict[tuple[int, int, str], float] = {}
    for first in range(0, len(prompts), batch_size):
        batch = chat.tokenize(prompts[first:first + batch_size])
        recorder = Recorder(layers)
        run_until(chat.model, [recorder], last_layer=max(layers), **batch)
        mask = batch["attention_mask"].bool().cpu()
        pads = (~mask).sum(-1)
        width = mask.shape[1]
        for layer in layers:
            sae = saes[layer]
            weight = sae.W_dec
            acts = sae.encode(recorder.outputs[layer][0].to(device=weight.device, dtype=weight.dtype)).float().cpu()
            acts = acts[..., columns[layer]].masked_fill(~mask.unsqueeze(-1), -torch.inf)
            value, where = acts.max(1)  # [b, n]
            for row in range(acts.shape[0]):
                rel = where[row] - pads[row]
                n_real = width - int(pads[row])
                for j, feature in enumerate(columns[layer].tolist()):
                    if value[row, j] <= 0:
                        region = "silent"
                    else:
                        region = position_region(int(rel[j]), n_real, prefix, suffix)
                    key = (layer, feature, region)
                    counts[key] = counts.get(key, 0) + 1
                    peaks[key] = peaks.get(key, 0.0) + max(float(value[row, j]), 0.0)
    rows = []
    for (method, layer, feature), _ in feature_sets.groupby(["method", "layer", "feature"]):
        for region in (*PEAK_REGIONS, "silent"):
            n = counts.get((layer, feature, region), 0)
            rows.append({"method": method, "layer": int(layer), "feature": int(feature), "region": region,
                         "share": n / len(prompts), "mean_peak": peaks.get((layer, feature, region), 0.0) / max(n, 1)})
    return pd.DataFrame(rows)


def random_set(saes: Mapping[int, SparseAutoencoder], k_star: int, seed: int = 0) -> pd.DataFrame:
    """Random baseline: ``k_star`` distinct (layer, feature) pairs drawn uniformly over all SAE latents.

    The draw is a prefix of one seeded permutation, so the first ``k`` of a set drawn at any larger size
    are the set drawn at ``k``: sets are fitted at the grid's largest K* and applied by rank, and the
    random control at the default K* must not change with the grid's sizes.
    """
    _check_k(k_star)
    layers = sorted(saes)
    sizes = np.array([saes[layer].W_dec.shape[0] for layer in layers])
    total = int(sizes.sum())
    if k_star > total:
        raise ValueError(f"k_star={k_star} exceeds the {total} latents available")
    flat = np.random.default_rng(seed).permutation(total)[:k_star]
    bounds = np.cumsum(sizes)
    which = np.searchsorted(bounds, flat, side="right")
    offsets = np.concatenate([[0], bounds[:-1]])
    return pd.DataFrame({
        "scope": GLOBAL,
        "layer": np.asarray(layers)[which],
        "feature": flat - offsets[which],
        "rank": np.arange(k_star),
        "score": np.nan,
        "method": "random",
    })[SET_COLUMNS]


def feature_set_to_edit_inputs(
    set_df: pd.DataFrame, prompt_ids: Sequence,
) -> tuple[dict[int, Tensor], dict[int, Tensor] | None]:
    """``FeatureEdit`` inputs for ``set_df`` aligned with ``prompt_ids`` (the order of the prompts run).

    Returns ``(features, row_active)``: ``features[l]`` the sorted union of latents used at layer ``l``;
    ``row_active[l]`` a ``[len(prompt_ids), n_l]`` bool matrix, row ``r`` marking the latents of prompt
    ``prompt_ids[r]``'s set (plus any ``global`` rows, which apply to every prompt). ``row_active`` is
    ``None`` for a purely global set. Rows are matched by prompt id, never by position; a prompt with no
    set of its own (and no global rows) is an error. ``FeatureEdit`` expects batch-aligned rows:
    slice ``row_active[l][batch_rows]`` per batch.
    """
    scopes = set_df["scope"].astype(str)
    features: dict[int, Tensor] = {}
    for layer, group in set_df.groupby("layer"):
        features[int(layer)] = torch.as_tensor(np.unique(group["feature"].astype(int).to_numpy()), dtype=torch.long)
    if (scopes == GLOBAL).all():
        return features, None
    keys = [str(pid) for pid in prompt_ids]
    own = set(scopes[scopes != GLOBAL])
    has_global = bool((scopes == GLOBAL).any())
    missing = [pid for pid in keys if pid not in own]
    if missing and not has_global:
        raise KeyError(f"no feature set for prompt(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    row_of = {pid: r for r, pid in enumerate(keys)}
    row_active = {layer: torch.zeros(len(keys), len(index), dtype=torch.bool) for layer, index in features.items()}
    for (scope, layer), group in set_df.assign(scope=scopes).groupby(["scope", "layer"]):
        index = features[int(layer)]
        cols = torch.searchsorted(index, torch.tensor(group["feature"].astype(int).to_numpy(), dtype=torch.long))
        if scope == GLOBAL:
            row_active[int(layer)][:, cols] = True
        elif scope in row_of:
            row_active[int(layer)][row_of[scope], cols] = True
    return features, row_active
