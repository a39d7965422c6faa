"""Entry script: harm vs refusal features by harm category (METHOD.md §8). Per category of the category
datasets' refused training prompts: a direction at the held-out direction's layer and position, LA-IG of
its cosine candidates, ``F*_c``; ``R`` and ``H_c``; each category's test prompts generated under every
condition (clamps with the other part held at its unedited values; every condition on the same doubled
batches); the upstream check (harm features clamped below each refusal layer)."""
import numpy as np
import pandas as pd
import torch

from refusal_sae.adversarial import latent_activations, relative_drop
from refusal_sae.attribution import cosine_candidates, la_ig
from refusal_sae.categories import (
    CONDITIONS,
    as_global_set,
    category_pools,
    condition_sets,
    hold_edit,
    refusal_features,
    split_roles,
    transfer_partners,
    upstream_checks,
)
from refusal_sae.direction import candidate_directions, mean_activations, pinned_direction
from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import feature_edit
from refusal_sae.metrics import mean_row, paired_ratio_bootstrap, rate_row
from refusal_sae.pipeline import la_ig_options, open_stage
from refusal_sae.runtime import start
from refusal_sae.selection import global_set

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
a, e = cfg.analysis, cfg.evaluation
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
chat, saes, spec = stage.chat, stage.saes, stage.spec
direction_rows = read_parquet(smk.input.direction)
chosen = direction_rows.loc[direction_rows["chosen"]].iloc[0]
layer, position = int(chosen["layer"]), int(chosen["position"])
metadata = {"settings": smk.params.settings}

prompts = read_parquet(smk.input.prompts)
datasets = pd.concat([read_parquet(p) for p in smk.input.datasets], ignore_index=True).drop_duplicates("prompt_id")
category_of = datasets.set_index("prompt_id")["category"]
# Every refused training prompt of the category datasets (not only the direction's sample of them).
train = prompts.loc[(prompts["role"] == "train") & prompts["prompt_id"].isin(category_of.index)]
harmful = train.loc[(train["label"] == "harmful") & train["first_token_refusal"]]
harmful = harmful.assign(category=harmful["prompt_id"].map(category_of).astype(str))
pools = category_pools(harmful, a.category_min_prompts, a.category_max_prompts)
if len(pools) < 2:
    counts = harmful.loc[harmful["category"] != "", "category"].value_counts().to_dict()
    raise ValueError(f"analysis.category_min_prompts: {len(pools)} harm categories have >= {a.category_min_prompts} "
                     f"refused training prompts in {list(smk.input.datasets)} (need 2; counts: {counts})")

n_positions = -position
harmless = prompts.loc[prompts["kept"] & (prompts["role"] == "train") & (prompts["label"] == "harmless"), "prompt"]
harmless_means = mean_activations(chat, harmless.tolist(), n_positions, cfg.direction.batch_size)
sets, directions = {}, []
for category, rows in pools.items():
    means = mean_activations(chat, rows["prompt"].tolist(), n_positions, cfg.direction.batch_size)
    vector = pinned_direction(candidate_directions(means, harmless_means), layer, position)
    candidates = cosine_candidates(saes, vector, cfg.attribution.k0)
    scores = la_ig(chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), vector, candidates,
                   **la_ig_options(chat, cfg))
    sets[category] = global_set(scores, cfg.selection.k_star, method="category")
    cosine = torch.nn.functional.cosine_similarity(vector.float(), stage.direction.float().to(vector.device), dim=0)
    directions.append({"category": category, "n_prompts": len(rows), "cosine_to_direction": float(cosine)})
roles = split_roles(sets, a.refusal_fraction).merge(pd.DataFrame(directions), on="category", how="left")
write_parquet(roles, smk.output.sets, metadata)

partners = transfer_partners(list(pools))
test_rows = datasets.loc[(datasets["split"] == "test") & (datasets["label"] == "harmful")]
nan = float("nan")
generations, metrics = [], []
for category in pools:
    rows = test_rows.loc[test_rows["category"].astype(str) == category].head(a.category_eval_prompts)
    if len(rows) < a.category_min_prompts:
        metrics.append({"method": "all", "dataset": category, "metric": "jailbreak_rate", "value": nan, "ci_low": nan,
                        "ci_high": nan, "n": len(rows),
                        "reason": f"{len(rows)} test prompts (< analysis.category_min_prompts): not evaluated"})
        continue
    ids, texts = rows["prompt_id"].tolist(), rows["prompt"].tolist()
    refused_by_condition = {}
    for condition in CONDITIONS:
        clamped, held = condition_sets(roles, category, condition, partners)
        if condition != "base" and clamped.empty:
            metrics.append(rate_row(condition, category, "jailbreak_rate", [], reason="nothing to clamp"))
            continue
        edits = ([feature_edit(as_global_set(clamped, condition), ids, saes, "scale", spec.clamp_scale)]
                 if not clamped.empty else [])
        # Every condition on the same doubled batches (an empty hold for base and all): same batch shapes.
        completions, refusal_scores = generate_scored(chat, texts, edits, e.max_new_tokens, 2 * e.batch_size,
                                                      progress=False, hold=hold_edit(held, saes))
        refused = substring_judge(completions, e.judge_ignore_case)
        refused_by_condition[condition] = refused
        generations.append(pd.DataFrame({
            "category": category, "condition": condition,
            "clamped_category": partners.get(category, "") if condition == "transfer" else category,
            "prompt_id": ids, "completion": completions, "refusal_score": refusal_scores.numpy().astype(float),
            "refused": refused, "n_clamped": len(clamped), "n_held": len(held),
        }))
        metrics.append(rate_row(condition, category, "jailbreak_rate", [not r for r in refused], reason=""))
    # Normalised jailbreak JB(condition) / JB(F*_c), on the prompts the unedited model refuses.
    base_refused = np.asarray(refused_by_condition["base"], dtype=bool)
    reference = [float(not r) for r, keep in zip(refused_by_condition.get("all", []), base_refused, strict=False) if keep]
    for condition, refused in refused_by_condition.items():
        if condition == "base" or "all" not in refused_by_condition:
            continue
        values = [float(not r) for r, keep in zip(refused, base_refused, strict=True) if keep]
        value, low, high = paired_ratio_bootstrap(values, reference, n_boot=a.n_bootstrap, seed=cfg.seed)
        reason = "" if value == value else "no refused prompt jailbroken by clamping all of F*_c"
        metrics.append({"method": condition, "dataset": category, "metric": "normalised_jailbreak", "value": value,
                        "ci_low": low, "ci_high": high, "n": len(values), "reason": reason})
    # Upstream check: each refusal layer's R features under the category's harm features clamped below it.
    cases = upstream_checks(roles, category)
    if not cases:
        metrics.append({"method": "harm", "dataset": category, "metric": "refusal_feature_drop", "value": nan,
                        "ci_low": nan, "ci_high": nan, "n": 0, "reason": "no harm feature below a refusal layer"})
        continue
    read = pd.concat([refusal_here for _, refusal_here, _ in cases], ignore_index=True)
    n_read = len(read)
    # One unedited read of every case's refusal features; one clamped read per case (its own harm set).
    clean_mean = latent_activations(chat, saes, texts, read, a.last_tokens, a.batch_size).mean(axis=(1, 2))
    under = [latent_activations(chat, saes, texts, refusal_here, a.last_tokens, a.batch_size, edits=[
        feature_edit(as_global_set(harm_below, "harm"), ids, saes, "scale", spec.clamp_scale)])
        for _, refusal_here, harm_below in cases]
    under_mean = np.concatenate(under, axis=2).mean(axis=(1, 2))
    metrics.append(mean_row("harm", category, "refusal_feature_drop", relative_drop(clean_mean, under_mean).tolist(),
                            reason=f"{n_read} refusal features at {len(cases)} layers, harm features below each"))

columns = ["category", "condition", "clamped_category", "prompt_id", "completion", "refusal_score", "refused",
           "n_clamped", "n_held"]
table = pd.concat(generations, ignore_index=True) if generations else pd.DataFrame(columns=columns)
write_parquet(table, smk.output.generations, metadata)
summary = pd.DataFrame(metrics, columns=["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "reason"])
summary = summary.assign(n_refusal_features=len(refusal_features(roles)))
write_parquet(summary, smk.output.metrics, metadata)
