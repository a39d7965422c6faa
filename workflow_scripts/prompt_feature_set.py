"""Entry script: per-prompt feature sets F*_x (top K* candidates by each prompt's own LA-IG score) for one
evaluation dataset (METHOD.md section 5)."""
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.runtime import start
from refusal_sae.selection import per_prompt_sets

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
sets = per_prompt_sets(read_parquet(smk.input.attribution), cfg.fitted_set_size(), method)
write_parquet(sets, smk.output[0], {"k_star": cfg.fitted_set_size(), "method": method, "dataset": smk.wildcards.dataset})
