"""Entry script: Study B's tables: minimal sets per tau (unique latents, mean size, jailbreak rate), the
stage-3 jailbreak rates at equal N with FM vs linear paired, and both designs' held-out fits."""
from pathlib import Path

import pandas as pd

from refusal_sae.greedy import intersect_orders
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.metrics import mean_row, paired_rows, rate_row
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
for dataset in {d for d, _ in generations}:
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
    dataset = Path(path).stem
    hydra = read_parquet(path)
    silent = hydra.loc[hydra["silent"]]
    critical = silent.loc[silent["critical"]]
    rows.append({"method": "hydra", "dataset": dataset, "metric": "silent_but_critical", "value": float(len(critical)),
                 "n": int(hydra["prompt_id"].nunique()), "setting": "count"})
    rows.append(rate_row("hydra", dataset, "critical_verified_by_generation",
                         critical["critical_verified"].fillna(False).astype(bool).tolist(), setting="count"))
    for region, count in critical["woken_region"].value_counts().items():
        rows.append({"method": "hydra", "dataset": dataset, "metric": f"woken_{region}", "value": float(count),
                     "n": len(critical), "setting": "position"})
    experiments = read_parquet(exp_path)
    for name, group in experiments.groupby("experiment"):
        if name.startswith("bos_"):
            rows.append(rate_row("hydra", dataset, "jailbreak_rate", (~group["refused"].astype(bool)).tolist(),
                                 setting=name))
        else:
            rows.append(mean_row("hydra", dataset, name, group["value"].tolist(), setting="stage3_only"))
columns = ["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "setting", "n_features", "baseline",
           "p_value", "first_only", "second_only"]
write_parquet(pd.DataFrame(rows).reindex(columns=columns), smk.output[0])
