"""Entry script: the in-sample direction of one evaluation dataset (the studies' setting): the difference
of means of its refused evaluation prompts and the harmless training prompts, at the held-out
direction's layer and position, scored on those same prompts."""
from refusal_sae.direction import fit_pinned_direction
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import in_sample_pools, load_direction, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model)
_, layer, position = load_direction(smk.input.direction)
pools = in_sample_pools(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline),
                        read_parquet(smk.input.prompts), cfg)
harmful = pools["harmful"]["prompt"].tolist()
frame = fit_pinned_direction(stage.chat, harmful, pools["harmless_train"]["prompt"].tolist(), harmful,
                             pools["harmless_val"]["prompt"].tolist(), layer, position, cfg.direction.batch_size)
write_parquet(frame, smk.output[0], {"dataset": smk.wildcards.dataset, "n_harmful": len(harmful)})
