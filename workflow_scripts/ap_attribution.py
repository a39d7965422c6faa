"""Entry script: the AP baseline, LA-IG over all latents with a memory-safe top-k."""
from refusal_sae.attribution import all_feature_attribution_topk
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
prompts = read_parquet(smk.input.prompts)
rows = prompts.loc[prompts["kept"] & (prompts["label"] == "harmful") & (prompts["role"] == "train")]
rows = rows.head(cfg.attribution.max_prompts)
per_prompt, global_ = all_feature_attribution_topk(
    chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), direction, cfg.selection.k_star,
    cfg.attribution.n_steps, cfg.attribution.target_token, cfg.attribution.batch_size,
)
meta = {"attribution": smk.config.get("attribution", {}), "k": cfg.selection.k_star}
write_parquet(per_prompt, smk.output.per_prompt, meta)
write_parquet(global_, smk.output.global_, meta)
