"""Entry script: the AP baseline, LA-IG over all latents with a memory-safe top-k."""
from refusal_sae.attribution import all_feature_attribution_topk
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import load_chat_model
from refusal_sae.pipeline import load_direction, load_model_saes
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
saes = load_model_saes(smk.input.saes, spec, chat.facts.d_model, cfg.device)
direction, _, _ = load_direction(smk.input.direction)
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
