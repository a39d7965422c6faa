"""Cosine-restricted candidate features and LA-IG attribution (METHOD.md sections 3-4).

LA-IG ("attribution patching with integrated gradients") scores how much each SAE latent carries the
refusal decision from the clean run (the harmful prompt, which is refused) to the patched run (the
same prompt with the refusal direction ablated at every layer).

**Why the gradient can be taken on the residual stream.** An SAE decoder is affine, so splicing every
SAE layer with ``f(α) = (1-α) f_clean + α f_patch`` and error ``(1-α) ε_clean + α ε_patch`` gives
exactly ``dec(f(α)) + ε(α) = (1-α) h_clean + α h_patch``. Each integration step is therefore one
forward in which every SAE layer's stream is *set* to that interpolation with
:class:`~refusal_sae.interventions.StraightThroughTarget` (gradients flow through it, so paths via
later layers count), followed by one backward giving ``∂m/∂h_l``. The chain rule through the decoder
gives ``∂m/∂f_i = W_eff[i] · ∂m/∂h_l`` with ``W_eff[i] = dec(e_i) - dec(0)``: the effective decoder row,
derived through ``sae.decode`` itself so any scaling inside it (e.g. ``rescale_acts_by_decoder_norm``)
is included. SAEs whose decode is not affine (run-time ``layer_norm``/``constant_norm_rescale``
normalisation) are rejected with a clear error. The gradient is then needed only at the ``K0``
candidate columns: no dense ``[B, T, d_sae]`` attribution is ever built for more than one layer.

**Metric.** ``m = logit(j) - logit(R0)`` at the last prompt position, ``R0`` the first refusal token.
``j`` is the patched run's argmax over the non-refusal tokens (the first token the ablated model would
emit; refusal tokens are excluded so ``m`` never degenerates to zero when the ablation fails on a
prompt), or the first id of a configured ``target_token``. Positive attribution = the feature supports
refusal (moving it to its ablated value raises ``m``).

**Aggregation.** ``A[l,t,i] = (f_patch - f_clean)[l,t,i] · mean_k ∂m/∂f[l,t,i]`` is averaged over the
real (non-pad) token positions at or after ``start`` (default: the template prefix length, i.e.
after BOS, any system block and the user header), per prompt.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .interventions import (
    DirectionAblation,
    InterpolateTowards,
    Recorder,
    SparseAutoencoder,
    StraightThroughTarget,
    StreamState,
    intervene,
    sparse_splice,
)
from .models import ChatModel

ATTRIBUTION_COLUMNS = ["prompt_id", "layer", "feature", "score", "cosine", "target_id"]
CANDIDATE_COLUMNS = ["layer", "feature", "cosine", "rank"]
EXACT_COLUMNS = ["prompt_id", "layer", "feature", "delta_m", "n_positions", "delta_m_per_position"]


# ---------------------------------------------------------------------------------------------
# SAE helpers


def _decoder_weight(sae: SparseAutoencoder) -> Tensor:
    weight = getattr(sae, "W_dec", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(sae).__name__}: attribution needs an SAE with a W_dec [d_sae, d_in] matrix")
    return weight


def _check_affine_config(sae: SparseAutoencoder) -> None:
    mode = getattr(getattr(sae, "cfg", None), "normalize_activations", "none")
    if mode in ("layer_norm", "constant_norm_rescale"):
        raise ValueError(
            f"SAE normalize_activations={mode!r}: decode depends on the encoded input's norm, so it is not "
            "affine in the latents and LA-IG's interpolation identity does not hold; fold the "
            "normalisation into the weights or use an SAE without run-time normalisation"
        )


@torch.no_grad()
def decoder_rows(sae: SparseAutoencoder, features: Tensor) -> Tensor:
    """Effective decoder rows ``dec(e_i) - dec(0)`` for latents ``features``: ``[n, d_in]`` float32.

    Derived through ``sae.decode`` (so scalings inside decode count) and checked to be affine on a random
    combination of the rows; raises ``ValueError`` when the SAE's decode is not affine.
    """
    _check_affine_config(sae)
    weight = _decoder_weight(sae)
    features = features.to(device=weight.device, dtype=torch.long)
    n, d_sae = int(features.numel()), int(weight.shape[0])
    if n == 0:
        return torch.zeros(0, weight.shape[1])
    basis = torch.zeros(n, d_sae, dtype=weight.dtype, device=weight.device)
    basis[torch.arange(n, device=weight.device), features] = 1
    zero = sae.decode(torch.zeros(1, d_sae, dtype=weight.dtype, device=weight.device)).float()
    rows = sae.decode(basis).float() - zero
    coeff = torch.linspace(0.5, 2.0, n, device=weight.device)
    combined = sae.decode((coeff.to(weight.dtype)[:, None] * basis).sum(0, keepdim=True)).float() - zero
    expected = coeff @ rows
    tol = 1e-2 if weight.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not torch.allclose(combined[0], expected, rtol=tol, atol=tol * float(expected.abs().max().clamp_min(1))):
        raise ValueError(f"{type(sae).__name__}.decode is not affine in the latents; LA-IG needs an affine decoder")
    return rows


def _sae_d(sae: SparseAutoencoder) -> int:
    return int(_decoder_weight(sae).shape[0])


def _encode(sae: SparseAutoencoder, hidden: Tensor) -> Tensor:
    """``sae.encode`` in the SAE's dtype/device, returned as float32."""
    weight = _decoder_weight(sae)
    with torch.no_grad():
        return sae.encode(hidden.to(device=weight.device, dtype=weight.dtype)).float()


def cosine_candidates(saes: Mapping[int, SparseAutoencoder], direction: Tensor, k0: int) -> pd.DataFrame:
    """Top ``k0`` latents per layer by *signed* cosine of their decoder row with ``direction``.

    Returns ``CANDIDATE_COLUMNS``; ``rank`` is 0-based within the layer (0 = most aligned). Signed, so a
    row pointing against the direction (``-r``) ranks last, not first.
    """
    if k0 <= 0:
        raise ValueError(f"k0={k0}: must be positive")
    frames = []
    for layer in sorted(saes):
        weight = _decoder_weight(saes[layer]).detach().float().cpu()
        r = direction.detach().float().cpu()
        cos = (weight @ r) / (weight.norm(dim=-1) * r.norm()).clamp_min(1e-12)
        values, index = cos.topk(min(k0, cos.numel()))
        frames.append(pd.DataFrame({
            "layer": layer, "feature": index.numpy(), "cosine": values.numpy(), "rank": np.arange(len(index)),
        }))
    return pd.concat(frames, ignore_index=True)[CANDIDATE_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Shared clean/patched/IG machinery


@dataclass
class _RequireGrad:
    """Makes the embedding output a gradient leaf so ``∂m/∂h`` exists even with frozen parameters."""

    layers: Sequence[int] = (-1,)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        return hidden.detach().requires_grad_(True)


@dataclass
class _Runs:
    """One batch's clean and patched streams at the SAE layers plus what the metric needs."""

    batch: dict[str, Tensor]
    h_clean: dict[int, Tensor]
    h_patch: dict[int, Tensor]
    target_ids: Tensor
    m_clean: Tensor
    positions: Tensor
    """``[B, T]`` bool: real tokens at or after ``start`` (the positions attributions are averaged over)."""


def _last_logits(chat: ChatModel, batch: dict[str, Tensor]) -> Tensor:
    # Only the last position is scored: skip the unembedding elsewhere (Gemma's vocabulary is 256k).
    return chat.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1].float()


def _metric(logits: Tensor, target_ids: Tensor, refusal_id: int) -> Tensor:
    """``logit(j) - logit(R0)`` per row."""
    return logits.gather(1, target_ids.view(-1, 1)).squeeze(1) - logits[:, refusal_id]


def _target_id(chat: ChatModel, target_token: str | None) -> int | None:
    if target_token is None:
        return None
    ids = chat.tokenizer.encode(target_token, add_special_tokens=False)
    if not ids:
        raise ValueError(f"target_token {target_token!r} tokenises to nothing")
    return int(ids[0])


def averaged_positions(attention_mask: Tensor, start: int) -> Tensor:
    """``[B, T]`` bool: real (non-pad, left padding) tokens whose index from the row's start is ``>= start``."""
    pads = (attention_mask.cumsum(-1) == 0).sum(-1, keepdim=True)
    index = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return (index >= pads + start) & attention_mask.bool()


@torch.no_grad()
def _clean_and_patched(
    chat: ChatModel, prompts: Sequence[str], layers: Sequence[int], direction: Tensor,
    target_token: str | None, start: int, exclude_refusal: bool = True,
) -> _Runs:
    batch = chat.tokenize(prompts)
    clean = Recorder(layers)
    with intervene(chat.model, [clean]):
        clean_logits = _last_logits(chat, batch)
    patched = Recorder(layers)
    ablation = DirectionAblation.everywhere(direction, chat.facts.n_layers)
    # Ablation runs before the recorder at each layer, so the recorded stream is the ablated one.
    with intervene(chat.model, [ablation, patched]):
        patched_logits = _last_logits(chat, batch)
    refusal_ids = list(chat.facts.refusal_token_ids)
    fixed = _target_id(chat, target_token)
    if fixed is None:
        masked = patched_logits.clone()
        if exclude_refusal:
            masked[:, refusal_ids] = -torch.inf
        target_ids = masked.argmax(-1)
    else:
        target_ids = torch.full((len(prompts),), fixed, dtype=torch.long, device=patched_logits.device)
    device = chat.device
    return _Runs(
        batch=batch,
        h_clean={layer: clean.outputs[layer][0].to(device) for layer in layers},
        h_patch={layer: patched.outputs[layer][0].to(device) for layer in layers},
        target_ids=target_ids,
        m_clean=_metric(clean_logits, target_ids, refusal_ids[0]),
        positions=averaged_positions(batch["attention_mask"], start),
    )


IGPath = Literal["straight_through", "reference"]
"""How integrated gradients move every SAE layer from clean to patched (see :func:`_ig_gradients`)."""


def _ig_gradients(
    chat: ChatModel, runs: _Runs, layers: Sequence[int], n_steps: int, path: IGPath = "straight_through",
) -> dict[int, Tensor]:
    """``mean_k ∂m/∂h_l`` over ``α_k = k/N, k = 0..N-1`` (left Riemann sum), float32 ``[B, T, d]``.

    ``straight_through`` (METHOD.md section 4): every SAE layer is held at ``lerp(h_clean, h_patch, α)``
    and gradients pass through it unchanged, so paths through later layers count in full.
    ``reference`` (the studies' code): every SAE layer encodes the stream it receives and moves it to
    ``lerp(h, h_patch, α)``, so its value depends on the layers before it and gradients through each
    later SAE layer are scaled by ``1 - α``.
    """
    refusal_id = chat.facts.refusal_token_ids[0]
    total = {layer: torch.zeros_like(runs.h_clean[layer]) for layer in layers}
    with torch.enable_grad():
        for k in range(n_steps):
            alpha = k / n_steps
            if path == "reference":
                straight = InterpolateTowards(runs.h_patch, alpha)
            else:
                targets = {layer: torch.lerp(runs.h_clean[layer], runs.h_patch[layer], alpha) for layer in layers}
                straight = StraightThroughTarget(targets)
            with intervene(chat.model, [_RequireGrad(), straight]):
                logits = _last_logits(chat, runs.batch)
            # Rows are independent, so the gradient of the batch sum is each row's own gradient.
            metric = _metric(logits, runs.target_ids, refusal_id).sum()
            grads = torch.autograd.grad(metric, [straight.outputs[layer] for layer in layers])
            for layer, grad in zip(layers, grads, strict=True):
                total[layer] += grad.float()
    return {layer: g / n_steps for layer, g in total.items()}


def _check_inputs(chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str],
                  prompt_ids: Sequence, n_steps: int | None = None) -> list[int]:
    if len(prompts) == 0:
        raise ValueError("no prompts")
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps={n_steps}: must be >= 1")
    layers = sorted(int(layer) for layer in saes)
    bad = [layer for layer in layers if not 0 <= layer < chat.facts.n_layers]
    if bad:
        raise ValueError(f"SAE layers {bad} are outside the model's 0..{chat.facts.n_layers - 1}")
    for layer in layers:
        _check_affine_config(saes[layer])
    return layers


def _masked_mean(values: Tensor, positions: Tensor) -> Tensor:
    """Mean of ``values [B, T, n]`` over the ``positions [B, T]`` of each row: ``[B, n]``."""
    mask = positions.unsqueeze(-1).to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp_min(1)


def _batches(n: int, batch_size: int, desc: str) -> Iterator[slice]:
    for start in tqdm(range(0, n, batch_size), desc=desc, leave=False):
        yield slice(start, min(start + batch_size, n))


# ---------------------------------------------------------------------------------------------
# LA-IG over the cosine candidates


def _candidate_index(candidates: pd.DataFrame, layers: Sequence[int]) -> dict[int, pd.DataFrame]:
    by_layer = {}
    for layer, group in candidates.groupby("layer"):
        if int(layer) not in layers:
            raise ValueError(f"candidate features at layer {layer}, which has no SAE")
        by_layer[int(layer)] = group.drop_duplicates("feature").reset_index(drop=True)
    return by_layer


def la_ig(
    chat: ChatModel,
    saes: Mapping[int, SparseAutoencoder],
    prompts: Sequence[str],
    prompt_ids: Sequence,
    direction: Tensor,
    candidates: pd.DataFrame,
    n_steps: int = 10,
    target_token: str | None = None,
    batch_size: int = 8,
    start: int | None = None,
    exclude_refusal: bool = True,
    path: IGPath = "straight_through",
) -> pd.DataFrame:
    """LA-IG attribution of the candidate latents, per prompt (METHOD.md section 4).

    ``candidates``: rows ``layer, feature[, cosine]`` (e.g. :func:`cosine_candidates`). Per batch: one
    clean forward, one patched (direction-ablated) forward and ``n_steps`` forward+backward passes.
    ``start``: first averaged position counted from each row's first real token (default
    ``chat.facts.prefix_length``). ``exclude_refusal``: the metric token ``j`` is the patched run's
    argmax over non-refusal tokens (else over all tokens). ``path``: see :func:`_ig_gradients`. Returns ``ATTRIBUTION_COLUMNS``, one row per prompt and candidate;
    ``score`` > 0 means the latent supports refusal; ``target_id`` is the metric token ``j``.
    """
    prompts, prompt_ids = list(prompts), list(prompt_ids)
    layers = _check_inputs(chat, saes, prompts, prompt_ids, n_steps)
    by_layer = _candidate_index(candidates, layers)
    active = sorted(by_layer)
    start = chat.facts.prefix_length if start is None else start
    rows_w = {
        layer: decoder_rows(saes[layer], torch.tensor(by_layer[layer]["feature"].to_numpy(), dtype=torch.long)).to(chat.device)
        for layer in active
    }
    frames = []
    for rows in _batches(len(prompts), batch_size, "LA-IG"):
        runs = _clean_and_patched(chat, prompts[rows], active, direction, target_token, start, exclude_refusal)
        grads = _ig_gradients(chat, runs, active, n_steps, path)
        ids = list(prompt_ids[rows])
        for layer in active:
            features = torch.tensor(by_layer[layer]["feature"].to_numpy(), dtype=torch.long)
            f_clean = _encode(saes[layer], runs.h_clean[layer])[..., features.to(runs.h_clean[layer].device)]
            f_patch = _encode(saes[layer], runs.h_patch[layer])[..., features.to(runs.h_patch[layer].device)]
            dm_df = grads[layer] @ rows_w[layer].T  # [B, T, n_l]: ∂m/∂f at the candidate columns only
            score = _masked_mean((f_patch - f_clean).to(dm_df) * dm_df, runs.positions).cpu().numpy()
            n_feat = len(features)
            cosine = (by_layer[layer]["cosine"].to_numpy() if "cosine" in by_layer[layer]
                      else np.full(n_feat, np.nan))
            frames.append(pd.DataFrame({
                "prompt_id": [pid for pid in ids for _ in range(n_feat)],
                "layer": layer,
                "feature": np.tile(features.numpy(), len(ids)),
                "score": score.reshape(-1),
                "cosine": np.tile(cosine, len(ids)),
                "target_id": np.repeat(runs.target_ids.cpu().numpy(), n_feat),
            }))
    return pd.concat(frames, ignore_index=True)[ATTRIBUTION_COLUMNS]


# ---------------------------------------------------------------------------------------------
# AP baseline: the same attribution over every latent, with a streaming top-k


def _dense_dm_df(sae: SparseAutoencoder, grad_h: Tensor) -> Tensor:
    """``∂m/∂f`` for every latent ``[B, T, d_sae]`` as the vector-Jacobian product through ``sae.decode``."""
    weight = _decoder_weight(sae)
    with torch.enable_grad():
        latents = torch.zeros(*grad_h.shape[:-1], weight.shape[0], dtype=weight.dtype, device=weight.device,
                              requires_grad=True)
        out = sae.decode(latents)
        (grad,) = torch.autograd.grad(out, latents, grad_outputs=grad_h.to(out))
    return grad.float()


def all_feature_attribution_topk(
    chat: ChatModel,
    saes: Mapping[int, SparseAutoencoder],
    prompts: Sequence[str],
    prompt_ids: Sequence,
    direction: Tensor,
    k: int,
    n_steps: int = 10,
    target_token: str | None = None,
    batch_size: int = 8,
    start: int | None = None,
    exclude_refusal: bool = True,
    path: IGPath = "straight_through",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LA-IG over *all* latents of every SAE layer (the AP baseline), reduced to top-``k`` sets.

    Memory-safe: per batch and layer the dense ``[B, T, d_sae]`` attribution exists only transiently,
    is averaged over positions to ``[B, d_sae]`` and merged into a running per-prompt top-``k``; the
    global score (mean over prompts) is an ``[n_layers, d_sae]`` running sum. Returns
    ``(per_prompt, global)``: ``prompt_id, layer, feature, score, rank`` and ``layer, feature, score,
    rank`` (rank 0 = largest score, i.e. strongest support for refusal).
    """
    prompts, prompt_ids = list(prompts), list(prompt_ids)
    layers = _check_inputs(chat, saes, prompts, prompt_ids, n_steps)
    if k <= 0:
        raise ValueError(f"k={k}: must be positive")
    for layer in layers:  # the affinity check on a few latents, as for the candidate path
        decoder_rows(saes[layer], torch.arange(min(4, _sae_d(saes[layer]))))
    start = chat.facts.prefix_length if start is None else start
    sums = {layer: torch.zeros(_sae_d(saes[layer]), dtype=torch.float64) for layer in layers}
    per_prompt = []
    for rows in _batches(len(prompts), batch_size, "AP (all latents)"):
        runs = _clean_and_patched(chat, prompts[rows], layers, direction, target_token, start, exclude_refusal)
        grads = _ig_gradients(chat, runs, layers, n_steps, path)
        n = rows.stop - rows.start
        best_val = torch.full((n, k), -torch.inf)
        best_layer = torch.full((n, k), -1, dtype=torch.long)
        best_feat = torch.full((n, k), -1, dtype=torch.long)
        for layer in layers:
            sae = saes[layer]
            delta = _encode(sae, runs.h_patch[layer]) - _encode(sae, runs.h_clean[layer])
            scores = _masked_mean(delta * _dense_dm_df(sae, grads[layer]).to(delta), runs.positions.to(delta.device))
            del delta
            scores = scores.cpu()
            sums[layer] += scores.double().sum(0)
            val, feat = scores.topk(min(k, scores.shape[1]), dim=1)
            merged_val = torch.cat([best_val, val], 1)
            merged_layer = torch.cat([best_layer, torch.full_like(feat, layer)], 1)
            merged_feat = torch.cat([best_feat, feat], 1)
            best_val, order = merged_val.topk(k, dim=1)
            best_layer, best_feat = merged_layer.gather(1, order), merged_feat.gather(1, order)
        for row, pid in enumerate(prompt_ids[rows]):
            keep = best_layer[row] >= 0
            per_prompt.append(pd.DataFrame({
                "prompt_id": [pid] * int(keep.sum()),
                "layer": best_layer[row][keep].numpy(),
                "feature": best_feat[row][keep].numpy(),
                "score": best_val[row][keep].numpy(),
                "rank": np.arange(int(keep.sum())),
            }))
    # Global top-k over layers without concatenating all layers' scores at once.
    heap: list[tuple[float, int, int]] = []
    for layer in layers:
        mean = sums[layer] / len(prompts)
        val, feat = mean.topk(min(k, mean.numel()))
        for v, f in zip(val.tolist(), feat.tolist(), strict=True):
            item = (v, -layer, -f)  # ties: lower layer, then lower index first
            if len(heap) < k:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
    ranked = sorted(heap, reverse=True)
    global_frame = pd.DataFrame({
        "layer": [-item[1] for item in ranked],
        "feature": [-item[2] for item in ranked],
        "score": [item[0] for item in ranked],
        "rank": np.arange(len(ranked)),
    })
    return pd.concat(per_prompt, ignore_index=True), global_frame


# ---------------------------------------------------------------------------------------------
# Exact activation patching (faithfulness check)


@dataclass
class _LatentPatch:
    """Set one latent to given per-position values (``where``), through the one splice (error kept)."""

    sae: SparseAutoencoder
    layer: int
    feature: int
    values: Tensor  # [B, T]
    where: Tensor  # [B, T] bool

    @property
    def layers(self) -> Sequence[int]:
        return [self.layer]

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        def edit(current: Tensor) -> Tensor:  # [B, T, 1]: the one patched latent
            return torch.where(self.where.unsqueeze(-1), self.values.to(current).unsqueeze(-1), current)

        return sparse_splice(self.sae, hidden, torch.tensor([self.feature]), edit)


@torch.no_grad()
def exact_patching(
    chat: ChatModel,
    saes: Mapping[int, SparseAutoencoder],
    prompts: Sequence[str],
    prompt_ids: Sequence,
    direction: Tensor,
    candidates: pd.DataFrame,
    target_token: str | None = None,
    batch_size: int = 8,
    start: int | None = None,
    exclude_refusal: bool = True,
) -> pd.DataFrame:
    """Exact activation patching of each candidate latent: the ground truth LA-IG approximates.

    For each candidate ``(l, i)``: the clean prompt with latent ``i`` at layer ``l`` set to its patched
    (direction-ablated) value at the positions LA-IG averages over (everything else clean, SAE error
    kept), and ``delta_m = m(edited) - m(clean)`` with the same metric token ``j`` as :func:`la_ig`.
    ``delta_m_per_position`` divides by the number of those positions, the scale of LA-IG's ``score``
    (for a model linear in the latents the two are equal). One forward per candidate per batch.
    """
    prompts, prompt_ids = list(prompts), list(prompt_ids)
    layers = _check_inputs(chat, saes, prompts, prompt_ids)
    by_layer = _candidate_index(candidates, layers)
    active = sorted(by_layer)
    start = chat.facts.prefix_length if start is None else start
    refusal_id = chat.facts.refusal_token_ids[0]
    frames = []
    for rows in _batches(len(prompts), batch_size, "exact patching"):
        runs = _clean_and_patched(chat, prompts[rows], active, direction, target_token, start, exclude_refusal)
        ids = list(prompt_ids[rows])
        n_pos = runs.positions.sum(1).cpu().numpy()
        for layer in active:
            sae = saes[layer]
            f_patch = _encode(sae, runs.h_patch[layer])
            for feature in by_layer[layer]["feature"].to_numpy():
                edit = _LatentPatch(sae, layer, int(feature), f_patch[..., int(feature)], runs.positions)
                with intervene(chat.model, [edit]):
                    m = _metric(_last_logits(chat, runs.batch), runs.target_ids, refusal_id)
                delta = (m - runs.m_clean).cpu().numpy()
                frames.append(pd.DataFrame({
                    "prompt_id": ids, "layer": layer, "feature": int(feature), "delta_m": delta,
                    "n_positions": n_pos, "delta_m_per_position": delta / np.maximum(n_pos, 1),
                }))
    return pd.concat(frames, ignore_index=True)[EXACT_COLUMNS]


def faithfulness_table(
    la_ig_df: pd.DataFrame, exact_df: pd.DataFrame, top_k: int = 10, top_candidates: int | None = 50
) -> pd.DataFrame:
    """How well LA-IG ranks candidates compared with exact patching.

    One row per prompt (``scope`` = prompt_id as a string) and a ``pooled`` row over all
    (prompt, feature) pairs: Spearman ρ between LA-IG ``score`` and exact ``delta_m_per_position``, and
    ``overlap_at_k`` = |top-k by LA-IG ∩ top-k by exact| / k; with ``top_candidates`` a row over the
    per-candidate means (over prompts) of the ``top_candidates`` largest ``|LA-IG|`` candidates.
    Columns: scope, spearman, overlap_at_k, k, n.
    """
    from scipy.stats import spearmanr

    merged = la_ig_df.merge(exact_df, on=["prompt_id", "layer", "feature"], how="inner")
    if merged.empty:
        raise ValueError("faithfulness_table: no (prompt_id, layer, feature) rows in common")

    def row(scope: str, group: pd.DataFrame) -> dict:
        k = min(top_k, len(group))
        ours = set(group.nlargest(k, "score").index)
        exact = set(group.nlargest(k, "delta_m_per_position").index)
        rho = spearmanr(group["score"], group["delta_m_per_position"]).statistic if len(group) > 1 else np.nan
        return {"scope": scope, "spearman": float(rho), "overlap_at_k": len(ours & exact) / max(k, 1),
                "k": k, "n": len(group)}

    rows = [row(str(pid), group) for pid, group in merged.groupby("prompt_id", sort=False)]
    rows.append(row("pooled", merged))
    if top_candidates:
        # Per-candidate means over the sampled prompts, restricted to the candidates LA-IG ranks
        # highest by magnitude: does LA-IG order the features that matter as exact patching does?
        means = merged.groupby(["layer", "feature"])[["score", "delta_m_per_position"]].mean()
        top = means.loc[means["score"].abs().nlargest(min(top_candidates, len(means))).index]
        rows.append(row(f"top{top_candidates}_candidate_means", top.reset_index(drop=True)))
    return pd.DataFrame(rows)
