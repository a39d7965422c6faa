"""Study B's stages on a chat model (METHOD.md §11-13): minimal sets per prompt, the interactions that
extend them, and the activation-level interaction fit.

Stage 2 is :mod:`refusal_sae.greedy`; stage 3 fits :mod:`refusal_sae.interactions`' factorization
machine (FM) and its linear baseline on two designs:

* masks (per prompt): ``R(x)`` = candidate latents active while the minimal set ``M(x)`` is ablated
  (latents silent on the clean prompt included); random ablation masks over ``M ∪ R`` and the refusal
  score under each; the latents whose joint ablation with ``M`` lowers refusal most are added to ``M``.
* activations (per model): the candidates' peak activations on harmful vs harmless prompts, a
  classification fit (the study's design).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .greedy import ablation_scorer, active_on_prompt, woken_latents
from .interactions import FMConfig, evaluate, fit, interaction_scores, mask_design, weights_frame
from .interventions import Recorder, SparseAutoencoder, run_until
from .methods import STAGE3_METHODS
from .models import ChatModel

SELECTED_COLUMNS = ["prompt_id", "method", "layer", "feature", "rank", "score"]
STAGE3_COLUMNS = {
    "selected": SELECTED_COLUMNS,
    "weights": ["prompt_id", "model", "term", "feature_i", "feature_j", "weight"],
    "samples": ["prompt_id", "mask_id", "role", "target", "layer", "feature", "ablated"],
    "fit": ["prompt_id", "model", "metric", "value"],
}
"""Columns of the masks design's artifacts (``results/{model}/interactions/{dataset}/*.parquet``)."""


def feature_names(pool: pd.DataFrame) -> list[str]:
    """``"L{layer}/{feature}"`` names of the latents of a candidate frame (weights and samples use them)."""
    return [f"L{int(layer)}/{int(feature)}" for layer, feature in zip(pool["layer"], pool["feature"], strict=True)]


@dataclass(frozen=True)
class Stage3Result:
    """One prompt's masks design: the fits, the extensions of its minimal set and the artifacts' rows."""

    selected: pd.DataFrame
    weights: pd.DataFrame
    samples: pd.DataFrame
    fit: pd.DataFrame


def extend_minimal_set(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, prompt_id: str, pool: pd.DataFrame,
    members: np.ndarray, n_masks: int, density: float, test_fraction: float, fm: FMConfig, n_added: int,
    seed: int = 0, wake_pool: bool = False,
) -> Stage3Result:
    """The masks design of one prompt (module docstring): ``pool`` holds the candidate latents
    (``layer, feature``), ``members`` (``[len(pool)]`` bool) its minimal set. The FM and the linear model
    are fitted on the design's training masks and scored on the held-out ones; each ranks ``R \\ M`` by
    how much ablating a latent together with ``M`` lowers refusal (FM: pair weights with ``M`` plus the
    unary weight; linear: the unary weight), and ``n_added`` latents are added; ``random_added`` draws
    as many from ``R \\ M``. ``M`` itself is listed as ``greedy_minimal``. With ``wake_pool``, the latents of
    the whole SAEs that are silent on the clean prompt and wake once ``M`` is ablated
    (:func:`~refusal_sae.greedy.woken_latents`) join ``pool`` first.
    """
    pool = pool[["layer", "feature"]].reset_index(drop=True)
    members = np.asarray(members, dtype=bool)
    if wake_pool and members.any():
        extra = woken_latents(chat, saes, prompt, pool.loc[members])
        extra = extra.merge(pool, how="left", indicator=True)
        extra = extra.loc[extra["_merge"] == "left_only", ["layer", "feature"]]
        pool = pd.concat([pool, extra], ignore_index=True)
        members = np.concatenate([members, np.zeros(len(extra), dtype=bool)])
    woken = active_on_prompt(chat, saes, prompt, pool, ablated=members)
    design_index = np.flatnonzero(members | woken)
    design = pool.iloc[design_index].reset_index(drop=True)
    names = feature_names(design)
    member_pos = [i for i, j in enumerate(design_index) if members[j]]
    outside = [i for i in range(len(design)) if i not in set(member_pos)]

    def rows(method: str, positions: Sequence[int], scores: Sequence[float]) -> pd.DataFrame:
        return pd.DataFrame({"prompt_id": prompt_id, "method": method,
                             "layer": design["layer"].to_numpy()[list(positions)].astype(int),
                             "feature": design["feature"].to_numpy()[list(positions)].astype(int),
                             "rank": np.arange(len(positions)), "score": np.asarray(scores, dtype=float)})

    selected = [rows("greedy_minimal", member_pos, [np.nan] * len(member_pos))]
    if not member_pos or not outside:
        # Nothing to extend (no minimal set, or nothing woke up): the extensions are M itself.
        for method in STAGE3_METHODS:
            selected.append(rows(method, member_pos, [np.nan] * len(member_pos)))
        empty = pd.DataFrame()
        return Stage3Result(pd.concat(selected, ignore_index=True)[SELECTED_COLUMNS], empty, empty, empty)
    result = mask_design(ablation_scorer(chat, saes, prompt, design), len(design), n_masks, density,
                         test_fraction, seed)
    x, y = result.masks.float(), result.targets
    models = {"fm": fit(x[result.train], y[result.train], "regression", True, fm),
              "linear": fit(x[result.train], y[result.train], "regression", False, fm)}
    fit_rows = [{"prompt_id": prompt_id, "model": name, "metric": metric, "value": float(value)}
                for name, model in models.items()
                for metric, value in evaluate(model, x[~result.train], y[~result.train], "regression").items()]
    n = min(n_added, len(outside))
    for method, name in (("fm_added", "fm"), ("linear_added", "linear")):
        scores = interaction_scores(models[name], member_pos, sign=-1.0)
        top = [int(i) for i in torch.argsort(scores, descending=True)[:n]]
        selected.append(rows(method, member_pos + top, [np.nan] * len(member_pos) + scores[top].tolist()))
    drawn = list(np.random.default_rng([seed, n]).choice(outside, size=n, replace=False))
    selected.append(rows("random_added", member_pos + drawn, [np.nan] * (len(member_pos) + n)))
    weights = pd.concat([weights_frame(model, names, name) for name, model in models.items()], ignore_index=True)
    masks = result.masks.numpy()
    samples = pd.DataFrame({
        "prompt_id": prompt_id,
        "mask_id": np.repeat(np.arange(len(masks)), len(names)),
        "role": np.repeat(np.where(result.train.numpy(), "train", "test"), len(names)),
        "target": np.repeat(result.targets.numpy(), len(names)),
        "layer": np.tile(design["layer"].to_numpy().astype(int), len(masks)),
        "feature": np.tile(design["feature"].to_numpy().astype(int), len(masks)),
        "ablated": masks.reshape(-1),
    })
    return Stage3Result(pd.concat(selected, ignore_index=True)[SELECTED_COLUMNS], weights.assign(prompt_id=prompt_id),
                        samples, pd.DataFrame(fit_rows))


@torch.no_grad()
def peak_activations(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str], pool: pd.DataFrame,
    start: int, batch_size: int = 16,
) -> torch.Tensor:
    """``[n_prompts, len(pool)]``: each pool latent's largest activation over the prompt's real positions
    from ``start`` on (the activations design's rows)."""
    from .attribution import averaged_positions

    layers = sorted(int(layer) for layer in pool["layer"].unique())
    out = []
    for first in range(0, len(prompts), batch_size):
        batch = chat.tokenize(list(prompts[first:first + batch_size]))
        recorder = Recorder(layers)
        run_until(chat.model, [recorder], last_layer=max(layers), **batch)
        mask = averaged_positions(batch["attention_mask"], start).cpu().unsqueeze(-1)
        columns = []
        for layer in layers:
            sae = saes[layer]
            weight = sae.W_dec
            acts = sae.encode(recorder.outputs[layer][0].to(device=weight.device, dtype=weight.dtype)).float().cpu()
            index = torch.as_tensor(pool.loc[pool["layer"] == layer, "feature"].to_numpy().astype(int))
            columns.append(acts[..., index].masked_fill(~mask, 0.0).amax(1))
        out.append(torch.cat(columns, dim=1))
    order = np.concatenate([np.flatnonzero(pool["layer"].to_numpy() == layer) for layer in layers])
    peaks = torch.cat(out)
    result = torch.empty_like(peaks)
    result[:, torch.as_tensor(order)] = peaks
    return result
