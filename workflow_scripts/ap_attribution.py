"""Entry script: the AP baseline's global set, LA-IG over all latents of the training prompts with a
memory-safe top-k."""
from refusal_sae.attribution import all_feature_attribution_topk
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import la_ig_options, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
prompts = read_parquet(smk.input.prompts)
rows = prompts.loc[prompts["kept"] & (prompts["label"] == "harmful") & (prompts["role"] == "train")]
rows = rows.head(cfg.attribution.max_prompts)
_, global_ = all_feature_attribution_topk(
    chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), direction, cfg.fitted_set_size(),
    **la_ig_options(chat, cfg),
)
meta = {"attribution": smk.config.get("attribution", {}), "k": cfg.fitted_set_size()}
write_parquet(global_, smk.output[0], meta)
