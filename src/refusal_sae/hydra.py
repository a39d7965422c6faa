"""Hydra features (Study B, METHOD.md §13): latents of a jailbreaking set that are silent on the clean
prompt yet needed, because they wake up once the rest of the set is ablated.

For a prompt whose set ``F`` (minimal set plus its stage-3 additions, zeroed at every position) jailbreaks
the model:

* **silent**: zero at every position of the clean prompt;
* **critical**: dropping it from ``F`` brings refusal back (the first generated token's refusal log-odds
  turns positive; the workflow re-checks the flips by generation);
* **where it wakes**: with the active part of ``F`` ablated, the position of its largest activation and
  every region where it fires, a region being the attention sink / BOS, the template before the user
  text, the user text or the template after it (prompt positions only: generated tokens are not read);
* **the BOS experiment**: ``F`` ablated, but each hydra latent held at BOS at its clean value (zero:
  only BOS is ablated for it, it is free elsewhere) or at its woken value there (its activation at BOS
  with the active part of ``F`` ablated; ablated after BOS), to see how much of its effect sits at BOS.
  The same is done with every silent latent of ``F`` held (``bos_silent_*``): when none is critical
  alone, this asks whether they matter together (redundancy rather than a single backup);
* **stage-3-only ablation**: ablating the additions alone, how many minimal-set latents switch off.

Activations are read from each layer's stream before that layer's own edits (after every upstream
layer's): a latent "wakes" only through what the ablation changed upstream of it, never through the
encoder reading its own layer's edited stream, which the model never computes with.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from .greedy import ablation_scorer, active_on_prompt
from .interventions import FeatureEdit, PositionMask, Recorder, SparseAutoencoder, run_until
from .metrics import mean_row, paired_comparisons, rate_row
from .models import ChatModel
from .selection import PEAK_REGIONS, position_region

HYDRA_COLUMNS = ["prompt_id", "layer", "feature", "silent", "critical", "loo_refusal_logodds", "woken_region",
                 "woken_position", "woken_activation", "woken_regions", "bos_activation"]


def _logodds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(1e-7, 1 - 1e-7)
    return p.log() - (1 - p).log()


def _edits(saes: Mapping[int, SparseAutoencoder], members: pd.DataFrame, positions: PositionMask,
           mode: str = "zero", value: float = 0.0) -> list[FeatureEdit]:
    """One FeatureEdit per layer zeroing (or setting) ``members`` on ``positions``."""
    return [FeatureEdit({int(layer): saes[int(layer)]},
                        {int(layer): torch.as_tensor(np.unique(group["feature"].astype(int)))},
                        mode=mode, value=value, positions=positions)
            for layer, group in members.groupby("layer")]


@torch.no_grad()
def activations_under(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, members: pd.DataFrame, ablated: pd.DataFrame,
) -> torch.Tensor:
    """``[T, len(members)]``: each member latent's activation at every position of ``prompt`` while the
    latents of ``ablated`` are zeroed at every position (upstream of the member's layer: see the module)."""
    layers = sorted(int(layer) for layer in members["layer"].unique())
    recorder = Recorder(layers)
    edits = _edits(saes, ablated, PositionMask()) if len(ablated) else []
    # Edits run in list order at each layer: the recorder first reads each layer before its own edits.
    run_until(chat.model, [recorder, *edits], last_layer=max(layers), **chat.tokenize([prompt]))
    out = torch.zeros(recorder.outputs[layers[0]][0].shape[1], len(members))
    for layer in layers:
        sae = saes[layer]
        weight = sae.W_dec
        acts = sae.encode(recorder.outputs[layer][0].to(device=weight.device, dtype=weight.dtype))[0].float().cpu()
        rows = np.flatnonzero(members["layer"].to_numpy() == layer)
        out[:, rows] = acts[:, members["feature"].to_numpy()[rows].astype(int)]
    return out


def hydra_table(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, prompt_id: str, members: pd.DataFrame,
) -> pd.DataFrame:
    """``HYDRA_COLUMNS`` for every latent of the jailbreaking set ``members`` (``layer, feature``).

    ``loo_refusal_logodds``: the first token's refusal log-odds with the whole set ablated except that
    latent (batched: rows = leave-one-out sets); ``critical`` when it is positive (refusal is the likelier
    first token again; the workflow re-checks these by generation). Woken columns are filled for silent
    latents only: the peak (position, region, activation), ``woken_regions`` (every region where it fires,
    ``;``-joined) and ``bos_activation`` (its activation at BOS).
    """
    members = members[["layer", "feature"]].drop_duplicates().reset_index(drop=True)
    n = len(members)
    active = active_on_prompt(chat, saes, prompt, members)
    score = ablation_scorer(chat, saes, prompt, members)
    leave_one_out = ~torch.eye(n, dtype=torch.bool)
    loo = _logodds(torch.cat([score(leave_one_out[i:i + 32]) for i in range(0, n, 32)])).numpy()
    frame = members.assign(prompt_id=prompt_id, silent=~active, critical=loo > 0, loo_refusal_logodds=loo,
                           woken_region="", woken_position=-1, woken_activation=0.0, woken_regions="",
                           bos_activation=0.0)
    silent = frame.index[frame["silent"]]
    if len(silent):
        acts = activations_under(chat, saes, prompt, members.loc[silent], members.loc[active])
        n_real = acts.shape[0]
        peak, where = acts.max(0)
        regions = [position_region(t, n_real, chat.facts.prefix_length, chat.facts.suffix_length)
                   for t in range(n_real)]
        for j, (row, value, position) in enumerate(zip(silent, peak.tolist(), where.tolist(), strict=True)):
            frame.loc[row, "woken_activation"] = value
            frame.loc[row, "bos_activation"] = float(acts[0, j])
            fired = {regions[t] for t in torch.nonzero(acts[:, j] > 0).flatten().tolist()}
            frame.loc[row, "woken_regions"] = ";".join(r for r in PEAK_REGIONS if r in fired)
            if value > 0:
                frame.loc[row, "woken_position"] = position
                frame.loc[row, "woken_region"] = position_region(position, n_real, chat.facts.prefix_length,
                                                                 chat.facts.suffix_length)
            else:
                frame.loc[row, "woken_region"] = "silent"
    return frame[HYDRA_COLUMNS]


def bos_hold_edits(
    saes: Mapping[int, SparseAutoencoder], members: pd.DataFrame, hydras: pd.DataFrame, reading: str,
) -> list[FeatureEdit]:
    """The BOS experiment's edits: every latent of ``members`` ablated, but the ``hydras`` (``layer, feature,
    bos_activation``) held at BOS at their clean value (``reading="clean"``: zero, i.e. ablated at BOS
    only and free to wake elsewhere: the jailbreak ablation is lifted for them after BOS) or at their woken
    value there (``"woken"``: set to ``bos_activation`` at BOS, ablated after it).

    Each layer's edits are one ``FeatureEdit`` per position mask, applied in order on the same stream."""
    others = members.merge(hydras[["layer", "feature"]], how="left", indicator=True)
    others = others.loc[others["_merge"] == "left_only", ["layer", "feature"]]
    edits = _edits(saes, others, PositionMask()) if len(others) else []
    if reading == "clean":
        return edits + _edits(saes, hydras, PositionMask("bos"))
    if reading != "woken":
        raise ValueError(f"reading {reading!r}: expected 'clean' or 'woken'")
    edits += _edits(saes, hydras, PositionMask("from", 1))
    for row in hydras.itertuples():
        edits += _edits(saes, pd.DataFrame({"layer": [row.layer], "feature": [row.feature]}), PositionMask("bos"),
                        mode="set", value=float(row.bos_activation))
    return edits


def hold_is_set_ablation(hydras: pd.DataFrame, reading: str) -> bool:
    """Whether :func:`bos_hold_edits` with these ``hydras`` and ``reading`` is the set's ablation itself: a
    ``"woken"`` hold of latents whose BOS activation is zero sets them to zero at BOS and ablates them
    after it, so its generation is the set ablation's (``bos_none``) and need not be run again."""
    return reading == "woken" and len(hydras) > 0 and bool((hydras["bos_activation"] == 0).all())


@torch.no_grad()
def stage3_only_deactivation(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, minimal: pd.DataFrame, additions: pd.DataFrame,
) -> dict[str, float]:
    """Ablate the stage-3 ``additions`` alone: the share of active ``minimal`` latents that switch off (zero at
    every position) and the mean, over the active ones (those switched off included), of the relative drop
    of their activation summed over positions."""
    minimal = minimal[["layer", "feature"]].reset_index(drop=True)
    clean = activations_under(chat, saes, prompt, minimal, minimal.iloc[0:0]).sum(0)
    edited = activations_under(chat, saes, prompt, minimal, additions[["layer", "feature"]]).sum(0)
    on = clean > 0
    if not on.any():
        return {"switched_off": float("nan"), "mean_relative_drop": float("nan"), "n_active": 0.0}
    return {"switched_off": float((edited[on] <= 0).float().mean()),
            "mean_relative_drop": float(((clean[on] - edited[on]) / clean[on]).mean()),
            "n_active": float(on.sum())}


def hydra_metric_rows(hydra: pd.DataFrame, experiments: pd.DataFrame, dataset: str, seed: int = 0) -> list[dict]:
    """Study B's metrics rows (method ``hydra``) of one dataset from its ``hydra/{dataset}.parquet`` and
    ``_experiments.parquet``: counts of silent, silent-but-critical and verified latents (``setting
    count``, ``n`` = prompts whose set jailbreaks) and the largest leave-one-out refusal log-odds of a
    silent latent (``n`` = silent latents); the peak regions of the verified ones (``position``) and of
    every silent one (``position_silent``), the share of verified ones firing in each region; the
    jailbreak rate of every BOS experiment and, for each hold against ``bos_none`` on the prompts the hold
    ran on, the paired rows, ``bos_none``'s rate there (``jailbreak_rate_set_alone``) and the relative
    drop of the jailbreak rate; the stage-3-only means (``stage3_only``)."""
    rows = []
    silent = hydra.loc[hydra["silent"]]
    verified = silent.loc[silent["critical_verified"].fillna(False).astype(bool)]
    n_prompts = int(hydra["prompt_id"].nunique())
    for metric, frame in (("silent", silent), ("silent_but_critical", silent.loc[silent["critical"]]),
                          ("silent_but_critical_verified", verified)):
        rows.append({"method": "hydra", "dataset": dataset, "metric": metric, "value": float(len(frame)),
                     "n": n_prompts, "setting": "count"})
    # How far the silent latents are from critical: positive log-odds would be a flip back to refusal.
    rows.append({"method": "hydra", "dataset": dataset, "metric": "silent_loo_refusal_logodds_max",
                 "value": float(silent["loo_refusal_logodds"].max()) if len(silent) else float("nan"),
                 "n": len(silent), "setting": "count"})
    for setting, frame in (("position", verified), ("position_silent", silent)):
        for region, count in frame["woken_region"].value_counts().items():
            rows.append({"method": "hydra", "dataset": dataset, "metric": f"peak_{region}", "value": float(count),
                         "n": len(frame), "setting": setting})
    fires_in = verified["woken_regions"].fillna("").str.split(";")
    for region in PEAK_REGIONS:
        rows.append(rate_row("hydra", dataset, f"fires_in_{region}", [region in r for r in fires_in],
                             setting="position"))
    bos = {name: group.set_index("prompt_id") for name, group in experiments.groupby("experiment")
           if name.startswith("bos_")}
    for name, group in bos.items():
        rows.append(rate_row("hydra", dataset, "jailbreak_rate", (~group["refused"].astype(bool)).tolist(),
                             setting=name, n_features=float(group["n_hydras"].mean())))
    none = bos.get("bos_none")
    for name in sorted(set(bos) - {"bos_none"}) if none is not None else []:
        # A hold runs only on some prompts (hydras or silent latents there): pair on those.
        shared = [pid for pid in bos[name].index if pid in none.index]
        outcomes = {key: pd.DataFrame({"prompt_id": shared, "jailbroken": ~frame.loc[shared, "refused"].astype(bool),
                                       "refusal_score": frame.loc[shared, "refusal_score"]})
                    for key, frame in ((name, bos[name]), ("bos_none", none))}
        for row in paired_comparisons(outcomes, [name], dataset, "substring", seed):
            rows.append({**row, "method": "hydra", "setting": name})
        alone = outcomes["bos_none"]["jailbroken"].tolist()
        rows.append(rate_row("hydra", dataset, "jailbreak_rate_set_alone", alone, setting=name))
        before, after = float(np.mean(alone)), float(outcomes[name]["jailbroken"].mean())
        rows.append({"method": "hydra", "dataset": dataset, "metric": "jailbreak_relative_drop",
                     "value": (before - after) / before if before else float("nan"), "n": len(shared),
                     "setting": name, "baseline": "bos_none"})
    stage3 = experiments.loc[experiments["experiment"].str.startswith("stage3_only_")]
    for name, group in stage3.groupby("experiment"):
        rows.append(mean_row("hydra", dataset, name.removeprefix("stage3_only_"), group["value"].tolist(),
                             setting="stage3_only"))
    return rows
