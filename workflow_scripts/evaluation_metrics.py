"""Entry script: jailbreak rates per variant x dataset x method (every judge) and refusal induction, with
95% Wilson intervals, and the paired comparisons of "ours" against every other method, at the default
operating point and at every point of the clamp x K* grid."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import BASE, PER_PROMPT_METHODS, n_features
from refusal_sae.metrics import (
    PAIRED_COLUMNS,
    grid_tables,
    jailbreak_rows,
    mean_row,
    paired_comparisons,
    pool_outcomes,
    rate_row,
)
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)


def keys(path: str) -> tuple[str, str | None, str]:
    """(variant, dataset, method) of a generation, judgment or feature-set path (dataset None: global set)."""
    parts = Path(path).parts
    variant = "in_sample" if "in_sample" in parts else "held_out"
    if variant == "in_sample":
        return variant, parts[parts.index("in_sample") + 1], Path(path).stem
    folder = Path(path).parent.name
    return variant, None if folder == "features" else folder, Path(path).stem


sizes = {keys(p): n_features(read_parquet(p), cfg.selection.k_star) for p in smk.input.features}


def set_size(variant: str, dataset: str, method: str) -> float:
    return sizes.get((variant, dataset, method), sizes.get((variant, None, method), 0.0))


entries = [(*keys(g), g, j) for g, j in zip(smk.input.generations, smk.input.judgments, strict=True)]
# The in-sample variant shares the unedited model's (base) generations with the held-out one, on the
# datasets it runs on (evaluation.in_sample_datasets).
in_sample_datasets = {d for v, d, *_ in entries if v == "in_sample"}
entries += [("in_sample", d, m, g, j) for v, d, m, g, j in list(entries)
            if v == "held_out" and m == BASE and d in in_sample_datasets]
rows, outcomes = [], {}
for variant, dataset, method, generations_path, judgments_path in entries:
    generations = read_parquet(generations_path)
    rows += jailbreak_rows(generations, read_parquet(judgments_path), method, dataset, variant=variant,
                           n_features=set_size(variant, dataset, method))
    outcomes.setdefault((variant, dataset), {})[method] = pd.DataFrame({
        "prompt_id": generations["prompt_id"], "jailbroken": ~generations["refused"],
        "refusal_score": generations["refusal_score"]})
write_parquet(pd.DataFrame(rows), smk.output.jailbreak)

induction_rows = []
for path in smk.input.induction:
    frame = read_parquet(path)
    for (method, value), group in frame.groupby(["method", "value"], sort=False):
        extra = {"set_value": float(value), "n_features": set_size("held_out", None, method), "judge": "substring"}
        induction_rows.append(rate_row(method, Path(path).parent.name, "refusal_induction", group["refused"].tolist(),
                                       **extra))
        # The first token's refusal log-odds: whether the model still leans to refusing where the text no
        # longer reads as a refusal (e.g. degenerate text at large set values).
        induction_rows.append(mean_row(method, Path(path).parent.name, "first_token_refusal_logodds",
                                       group["refusal_score"].tolist(), **extra))
write_parquet(pd.DataFrame(induction_rows), smk.output.induction)

# Prompts of every dataset together: the comparison with the most power.
for variant in dict.fromkeys(v for v, _ in list(outcomes)):
    by_dataset = {d: by_method for (v, d), by_method in list(outcomes.items()) if v == variant}
    outcomes[(variant, "pooled")] = pool_outcomes(by_dataset)
paired = []
for (variant, dataset), by_method in outcomes.items():
    for row in paired_comparisons(by_method, PER_PROMPT_METHODS + ("ours_global",), dataset, "substring", cfg.seed):
        paired.append({**row, "variant": variant})
write_parquet(pd.DataFrame(paired, columns=[*PAIRED_COLUMNS, "variant"]), smk.output.paired)

# The paired comparisons at every operating point too: a difference hidden at the default's ceiling can
# show at a weaker clamp or a smaller set.
grid_generations = {}
for path in smk.input.grid:  # one file per dataset x method
    grid_generations.setdefault(Path(path).parent.name, []).append(read_parquet(path))
grid, grid_paired = grid_tables({d: pd.concat(f, ignore_index=True) for d, f in grid_generations.items()},
                                PER_PROMPT_METHODS + ("ours_global",), cfg.seed)
write_parquet(grid, smk.output.grid)
write_parquet(grid_paired, smk.output.grid_paired)
