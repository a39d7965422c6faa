"""Entry script: Study B's tables: minimal sets per tau (unique latents, mean size, jailbreak rate), the
stage-3 jailbreak rates at equal N with FM vs linear paired, both designs' held-out fits, the hydra
experiments and the CE table; and the Markdown report of them beside the study's numbers."""
from pathlib import Path

import pandas as pd

from refusal_sae.greedy import intersect_orders
from refusal_sae.hydra import hydra_metric_rows
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.metrics import mean_row, paired_rows, rate_row
from refusal_sae.report import studyb_markdown
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
rows = []
for path in smk.input.greedy:
    dataset = Path(path).stem
    minimal = intersect_orders(read_parquet(path))
    for tau, group in minimal.groupby("tau"):
        sizes = group.groupby("prompt_id").size()
        rows.append({"method": "greedy_minimal", "dataset": dataset, "metric": "unique_features",
                     "value": float(len(group[["layer", "feature"]].drop_duplicates())), "n": int(sizes.size),
                     "setting": f"tau={tau}"})
        rows.append(mean_row("greedy_minimal", dataset, "mean_set_size", sizes.tolist(), setting=f"tau={tau}"))
generations = {}
for path in smk.input.generations:
    frame = read_parquet(path)
    dataset = Path(path).parent.parent.name
    for (method, setting), group in frame.groupby(["method", "setting"], sort=False):
        rows.append(rate_row(method, dataset, "jailbreak_rate", (~group["refused"]).tolist(), setting=setting,
                             n_features=float(group["n_features"].mean())))
        generations[(dataset, method)] = group.set_index("prompt_id")
for dataset in dict.fromkeys(d for d, _ in generations):  # input order: a set's order differs per process
    if (dataset, "fm_added") in generations and (dataset, "linear_added") in generations:
        fm, linear = generations[(dataset, "fm_added")], generations[(dataset, "linear_added")]
        for row in paired_rows("fm_added", "linear_added", dataset, (~fm["refused"]).tolist(),
                               (~linear.loc[fm.index, "refused"]).tolist(), fm["refusal_score"].tolist(),
                               linear.loc[fm.index, "refusal_score"].tolist(), seed=cfg.seed):
            rows.append({**row, "setting": "paired"})
for path in smk.input.fits:
    fits = read_parquet(path)
    if fits.empty:
        continue
    for (model, metric), group in fits.loc[fits["metric"].isin(["r2", "spearman"])].groupby(["model", "metric"]):
        rows.append(mean_row(f"masks_{model}", Path(path).parent.name, f"heldout_{metric}", group["value"].tolist(),
                             setting="masks"))
activations = read_parquet(smk.input.activations)
counts = activations.loc[activations["metric"] == "n"].set_index(["model", "split"])["value"]
for r in activations.loc[activations["metric"] != "n"].itertuples():
    rows.append({"method": f"activations_{r.model}", "dataset": r.split, "metric": r.metric, "value": r.value,
                 "n": int(counts[(r.model, r.split)]), "setting": "activations"})
for path, exp_path in zip(smk.input.hydra, smk.input.experiments, strict=True):
    rows += hydra_metric_rows(read_parquet(path), read_parquet(exp_path), Path(path).stem, seed=cfg.seed)
# The study's CE table: base and direction ablation (the capability table) beside the per-prompt sets'
# ablation, mean and sd over sets.
capability = read_parquet(smk.input.capability)
set_capability = read_parquet(smk.input.set_capability)
for metric, group in set_capability.groupby("metric"):
    for r in capability.loc[capability["method"].isin(["base", "direction_ablation"])
                            & (capability["metric"] == metric)].itertuples():
        rows.append({"method": r.method, "dataset": r.dataset, "metric": metric, "value": r.value,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "setting": "ce_table"})
    rows.append(mean_row("fm_added_sets", "all", metric, group["value"].tolist(), setting="ce_table",
                         n_features=float(group["n_features"].mean())))
    rows.append({"method": "fm_added_sets", "dataset": "all", "metric": f"{metric}_sd",
                 "value": float(group["value"].std(ddof=1)) if len(group) > 1 else float("nan"),
                 "n": len(group), "setting": "ce_table"})
columns = ["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "setting", "n_features", "baseline",
           "p_value", "first_only", "second_only"]
table = pd.DataFrame(rows).reindex(columns=columns)
write_parquet(table, smk.output.table)
Path(smk.output.markdown).write_text(studyb_markdown(smk.wildcards.model, table))
