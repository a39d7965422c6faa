"""Entry script: LA-IG against exact activation patching on a sample of training prompts."""
from refusal_sae.attribution import exact_patching, faithfulness_table
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
attribution = read_parquet(smk.input.attribution)
prompts = read_parquet(smk.input.prompts).set_index("prompt_id")
sample = list(dict.fromkeys(attribution["prompt_id"]))[: cfg.attribution.faithfulness_prompts]
exact = exact_patching(
    chat, saes, prompts.loc[sample, "prompt"].tolist(), sample, direction, read_parquet(smk.input.candidates),
    cfg.attribution.target_token, cfg.attribution.batch_size,
)
table = faithfulness_table(attribution.loc[attribution["prompt_id"].isin(sample)], exact, top_k=10, top_candidates=50)
write_parquet(table, smk.output[0], {"prompts": sample})
