"""Entry script: harm vs refusal features by harm category (METHOD.md §8). Per category of the refused
harmful training prompts: a direction at the held-out direction's layer and position, LA-IG of its cosine
candidates, ``F*_c``; ``R`` and ``H_c``; each category's test prompts generated under every condition
(clamps with the other part held at its unedited values); the upstream check."""
import pandas as pd
import torch

from refusal_sae.adversarial import refusal_activation, relative_drop
from refusal_sae.attribution import cosine_candidates, la_ig
from refusal_sae.categories import (
    CONDITIONS,
    as_global_set,
    category_pools,
    condition_sets,
    harm_features,
    hold_edit,
    later_refusal_features,
    refusal_features,
    split_roles,
    transfer_partners,
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

prompts = read_parquet(smk.input.prompts)
fitting = pd.concat([read_parquet(p) for p in smk.input.fitting], ignore_index=True)
category_of = fitting.drop_duplicates("prompt_id").set_index("prompt_id")["category"]
fitted = prompts.loc[prompts["kept"] & (prompts["role"] == "train")]
harmful = fitted.loc[fitted["label"] == "harmful"].assign(category=lambda f: f["prompt_id"].map(category_of).fillna(""))
pools = category_pools(harmful, a.category_min_prompts, a.category_max_prompts)
if len(pools) < 2:
    counts = harmful.loc[harmful["category"] != "", "category"].value_counts().to_dict()
    raise ValueError(f"analysis.category_min_prompts: {len(pools)} harm categories have >= {a.category_min_prompts} "
                     f"refused training prompts (need 2; counts: {counts})")

n_positions = -position
harmless_means = mean_activations(chat, fitted.loc[fitted["label"] == "harmless", "prompt"].tolist(), n_positions,
                                  cfg.direction.batch_size)
sets, directions = {}, []
for category, rows in pools.items():
    means = mean_activations(chat, rows["prompt"].tolist(), n_positions, cfg.direction.batch_size)
    vector = pinned_direction(candidate_directions(means, harmless_means), layer, position)
    candidates = cosine_candidates(saes, vector, cfg.attribution.k0)
    scores = la_ig(chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), vector, candidates,
                   **la_ig_options(chat, cfg))
    sets[category] = global_set(scores, cfg.selection.k_star, method="category")
    directions.append({"category": category, "n_prompts": len(rows),
                       "cosine_to_direction": float(torch.nn.functional.cosine_similarity(
                           vector.float(), stage.direction.float().to(vector.device), dim=0))})
roles = split_roles(sets, a.refusal_fraction)
roles = roles.merge(pd.DataFrame(directions), on="category", how="left")
write_parquet(roles, smk.output.sets, {"analysis": smk.config.get("analysis", {})})

partners = transfer_partners(list(pools))
evaluated = pd.concat([read_parquet(p) for p in smk.input.evaluated], ignore_index=True).drop_duplicates("prompt_id")
test_rows = evaluated.loc[(evaluated["split"] == "test") & (evaluated["label"] == "harmful")]
generations, metrics = [], []
for category in pools:
    rows = test_rows.loc[test_rows["category"] == category].head(a.category_eval_prompts)
    ids, texts = rows["prompt_id"].tolist(), rows["prompt"].tolist()
    refused_by_condition = {}
    for condition in CONDITIONS:
        clamped, held = condition_sets(roles, category, condition, partners)
        if condition != "base" and clamped.empty:
            metrics.append(rate_row(condition, category, "jailbreak_rate", [], reason="nothing to clamp"))
            continue
        edits = ([feature_edit(as_global_set(clamped, condition), ids, saes, "scale", spec.clamp_scale)]
                 if not clamped.empty else [])
        completions, refusal_scores = generate_scored(chat, texts, edits, e.max_new_tokens, e.batch_size,
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
    if "all" in refused_by_condition:
        reference = [float(not r) for r in refused_by_condition["all"]]
        for condition, refused in refused_by_condition.items():
            value, low, high = paired_ratio_bootstrap([float(not r) for r in refused], reference,
                                                      n_boot=a.n_bootstrap, seed=cfg.seed)
            metrics.append({"method": condition, "dataset": category, "metric": "normalised_jailbreak",
                            "value": value, "ci_low": low, "ci_high": high, "n": len(refused),
                            "reason": "" if value == value else "no jailbreak when clamping all of F*_c"})
    # Upstream check: clamping H_c alone (nothing held) and the later-layer refusal features' activation.
    later = later_refusal_features(roles, category)
    harm = harm_features(roles, category)
    if later.empty or not texts:
        metrics.append({"method": "harm", "dataset": category, "metric": "refusal_feature_drop", "value": float("nan"),
                        "ci_low": float("nan"), "ci_high": float("nan"), "n": 0,
                        "reason": "no refusal feature after the first harm-feature layer"})
        continue
    clean = refusal_activation(chat, saes, texts, later, a.last_tokens, a.batch_size)
    clamp = feature_edit(as_global_set(harm, "harm"), ids, saes, "scale", spec.clamp_scale)
    under = refusal_activation(chat, saes, texts, later, a.last_tokens, a.batch_size, edits=[clamp])
    metrics.append(mean_row("harm", category, "refusal_feature_drop", relative_drop(clean, under).tolist(),
                            reason=f"{len(later)} refusal features after layer {int(harm['layer'].min())}"))

table = pd.concat(generations, ignore_index=True)
write_parquet(table, smk.output.generations, {"analysis": smk.config.get("analysis", {})})
summary = pd.DataFrame(metrics, columns=["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "reason"])
summary = summary.assign(n_refusal_features=len(refusal_features(roles)))
write_parquet(summary, smk.output.metrics, {"analysis": smk.config.get("analysis", {})})
