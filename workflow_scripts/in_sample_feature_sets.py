"""Entry script: every feature set of the in-sample variant for one evaluation dataset, fitted on its own
prompts with its own direction (METHOD.md sections 5 and 14)."""
from pathlib import Path

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import aggregation_start, in_sample_pools, open_stage
from refusal_sae.runtime import start
from refusal_sae.selection import actdiff_set, cossim_set, global_set, per_prompt_sets, random_set, ranked_set

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
chat, saes, direction = stage.chat, stage.saes, stage.direction
k = cfg.fitted_set_size()
pools = in_sample_pools(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline),
                        read_parquet(smk.input.prompts), cfg)
la_ig = read_parquet(smk.input.la_ig)
ap = read_parquet(smk.input.ap_prompt)
sets = {
    "ours_prompt": per_prompt_sets(la_ig, k, "ours_prompt"),
    "ours_global": global_set(la_ig, k, "ours_global"),
    "ap_prompt": per_prompt_sets(ap, k, "ap_prompt"),
    "ap": ranked_set(read_parquet(smk.input.ap_global), k, "ap"),
    "cossim": cossim_set(saes, direction, k),
    "actdiff": actdiff_set(chat, saes, pools["harmful"]["prompt"].tolist(), pools["harmless_train"]["prompt"].tolist(),
                           k, start=aggregation_start(chat, cfg)),
    "random": random_set(saes, k, cfg.seed),
}
for path in smk.output:
    method = Path(path).stem
    write_parquet(sets[method].assign(method=method), path, {"k_star": k, "method": method, "variant": "in_sample"})
