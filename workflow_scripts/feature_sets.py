"""Entry script: the global feature sets of every method (METHOD.md section 5), one Parquet per method, and
where their latents peak on the harmful training prompts."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import aggregation_start, open_stage
from refusal_sae.runtime import start
from refusal_sae.selection import actdiff_set, cossim_set, global_set, peak_regions, random_set, ranked_set

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
k = cfg.fitted_set_size()
prompts = read_parquet(smk.input.prompts)
kept = prompts.loc[prompts["kept"] & (prompts["role"] == "train")]
sets = {
    "ours_global": global_set(read_parquet(smk.input.train), k, "ours_global"),
    "cossim": cossim_set(saes, direction, k),
    "actdiff": actdiff_set(chat, saes, kept.loc[kept["label"] == "harmful", "prompt"].tolist(),
                           kept.loc[kept["label"] == "harmless", "prompt"].tolist(), k,
                           start=aggregation_start(chat, cfg)),
    "ap": ranked_set(read_parquet(smk.input.ap), k, "ap"),
    "random": random_set(saes, k, cfg.seed),
}
for path in smk.output.sets:
    method = Path(path).stem
    write_parquet(sets[method].assign(method=method), path, {"k_star": k, "method": method})
# Where each set's latents peak on the harmful training prompts (why a set does or does not act).
members = pd.concat([frame.assign(method=method) for method, frame in sets.items()], ignore_index=True)
write_parquet(peak_regions(chat, saes, kept.loc[kept["label"] == "harmful", "prompt"].tolist(), members),
              smk.output.peaks, {"k_star": k})
