"""Entry script: the AP baseline on one dataset's evaluation prompts: LA-IG over every latent (no cosine
restriction), each prompt's top K* latents (and, for the in-sample variant, the top K* of their mean)."""
from refusal_sae.attribution import all_feature_attribution_topk
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import evaluation_rows, la_ig_options, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
per_prompt, global_ = all_feature_attribution_topk(
    stage.chat, stage.saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), stage.direction, cfg.fitted_set_size(),
    **la_ig_options(stage.chat, cfg),
)
meta = {"attribution": smk.config.get("attribution", {}), "k": cfg.fitted_set_size()}
write_parquet(per_prompt, smk.output.per_prompt, meta)
if smk.output.get("global_"):  # the in-sample variant's AP set: the mean over these prompts
    write_parquet(global_, smk.output.global_, meta)
