"""Entry script: the global feature sets of every method (METHOD.md section 5), one Parquet per method."""
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start
from refusal_sae.selection import actdiff_set, cossim_set, global_set, random_set, ranked_set

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
k = cfg.selection.k_star
prompts = read_parquet(smk.input.prompts)
kept = prompts.loc[prompts["kept"] & (prompts["role"] == "train")]
sets = {
    "ours_global": global_set(read_parquet(smk.input.train), k, "ours_global"),
    "cossim": cossim_set(saes, direction, k),
    "actdiff": actdiff_set(chat, saes, kept.loc[kept["label"] == "harmful", "prompt"].tolist(),
                           kept.loc[kept["label"] == "harmless", "prompt"].tolist(), k),
    "ap": ranked_set(read_parquet(smk.input.ap), k, "ap"),
    "random": random_set(saes, k, cfg.seed),
}
for path in smk.output:
    method = path.rsplit("/", 1)[1].removesuffix(".parquet")
    write_parquet(sets[method].assign(method=method), path, {"k_star": k, "method": method})
