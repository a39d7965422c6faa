"""Entry script: how adversarial variants suppress the refusal features (METHOD.md §9). Per pair whose
explicit request is refused, the relative drop of the refusal features' mean activation over the last
prompt tokens and of the harm features' (every category's H_c, when the categories ran) mean over the
prompt's tokens; word-by-word increments of suffix variants; group means with intervals."""
import pandas as pd

from refusal_sae.adversarial import (
    SUPPRESSION_COLUMNS,
    refusal_activation,
    relative_drop,
    suffix_word_table,
    token_mean_activation,
)
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import top_of
from refusal_sae.metrics import bootstrap_difference, mean_row, rate_row
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
a = cfg.analysis
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
refusal = top_of(read_parquet(smk.input.refusal_set), cfg.selection.k_star)[["layer", "feature"]]
pairs = pd.concat([read_parquet(path) for path in smk.input.adversarial], ignore_index=True)
judged = pairs.loc[pairs["outcome"] != "not_refused"].reset_index(drop=True)


def activation(prompts):
    return refusal_activation(stage.chat, stage.saes, prompts, refusal, a.last_tokens, a.batch_size)


explicit = judged.drop_duplicates("prompt_id")
explicit_activation = dict(zip(explicit["prompt_id"], activation(explicit["explicit"].tolist()), strict=True))
table = judged.assign(
    refusal_explicit=judged["prompt_id"].map(explicit_activation).astype(float),
    refusal_adversarial=activation(judged["adversarial"].tolist()),
    n_features=len(refusal),
)
table["refusal_drop"] = relative_drop(table["refusal_explicit"], table["refusal_adversarial"])
# Harm features: every category's H_c (METHOD.md §8) when the categories ran, mean over the prompt's tokens.
harm = pd.DataFrame(columns=["layer", "feature"])
if smk.input.get("category_sets"):
    roles = read_parquet(smk.input.category_sets)
    harm = roles.loc[roles["role"] == "harm", ["layer", "feature"]].drop_duplicates().sort_values(["layer", "feature"])


def harm_activation(prompts):
    return token_mean_activation(stage.chat, stage.saes, prompts, harm, a.batch_size)


harm_explicit = dict(zip(explicit["prompt_id"], harm_activation(explicit["explicit"].tolist()), strict=True))
table["harm_explicit"] = table["prompt_id"].map(harm_explicit).astype(float)
table["harm_adversarial"] = harm_activation(table["adversarial"].tolist())
table["harm_drop"] = relative_drop(table["harm_explicit"], table["harm_adversarial"])
table["n_harm_features"] = len(harm)
write_parquet(table[SUPPRESSION_COLUMNS], smk.output.pairs, {"analysis": smk.config.get("analysis", {})})

# Word by word: every suffix pair that jailbreaks, and the first max_prompts failed ones as the comparison.
suffixes = judged.loc[judged["kind"] == "suffix"]
chosen = pd.concat([suffixes.loc[suffixes["outcome"] == "jailbreak"],
                    suffixes.loc[suffixes["outcome"] == "failed"].head(a.max_prompts)])
words = suffix_word_table(chosen, activation)
write_parquet(words, smk.output.words, {"analysis": smk.config.get("analysis", {})})

rows = []
for dataset, group in [("all", table), *table.groupby("dataset")]:
    for source, part in [("all", group), *group.groupby("source")]:
        rows.append(rate_row(source, dataset, "jailbreak_rate", (part["outcome"] == "jailbreak").tolist(),
                             group="all"))
        for outcome_name in ("jailbreak", "failed"):
            drops = part.loc[part["outcome"] == outcome_name, "refusal_drop"]
            rows.append(mean_row(source, dataset, "refusal_feature_drop", drops.tolist(), group=outcome_name))
            drops = part.loc[part["outcome"] == outcome_name, "harm_drop"]
            rows.append(mean_row(source, dataset, "harm_feature_drop", drops.tolist(), group=outcome_name))
        for outcome_name in ("jailbreak", "failed"):
            # Robust to a near-zero explicit activation, which can dominate a mean of per-pair ratios.
            group_rows = part.loc[part["outcome"] == outcome_name]
            drop = float(relative_drop(group_rows["refusal_explicit"].mean(), group_rows["refusal_adversarial"].mean()))
            rows.append({"method": source, "dataset": dataset, "metric": "refusal_feature_drop_of_means",
                         "value": drop, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(group_rows),
                         "group": outcome_name})
        jailbreak_drops = part.loc[part["outcome"] == "jailbreak", "refusal_drop"].dropna()
        failed_drops = part.loc[part["outcome"] == "failed", "refusal_drop"].dropna()
        diff, low, high = bootstrap_difference(jailbreak_drops, failed_drops, n_boot=a.n_bootstrap, seed=cfg.seed)
        rows.append({"method": source, "dataset": dataset, "metric": "refusal_feature_drop_diff", "value": diff,
                     "ci_low": low, "ci_high": high, "n": len(jailbreak_drops) + len(failed_drops),
                     "group": "jailbreak-failed"})
metrics = pd.DataFrame(rows, columns=["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "group"])
write_parquet(metrics, smk.output.metrics, {"analysis": smk.config.get("analysis", {})})
