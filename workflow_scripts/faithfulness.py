"""Entry script: LA-IG against exact activation patching on a sample of training prompts."""
from refusal_sae.attribution import exact_patching, faithfulness_table
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
attribution = read_parquet(smk.input.attribution)
prompts = read_parquet(smk.input.prompts).set_index("prompt_id")
sample = list(dict.fromkeys(attribution["prompt_id"]))[: cfg.attribution.faithfulness_prompts]
exact = exact_patching(
    chat, saes, prompts.loc[sample, "prompt"].tolist(), sample, direction, read_parquet(smk.input.candidates),
    cfg.attribution.target_token, cfg.attribution.batch_size,
)
table = faithfulness_table(attribution.loc[attribution["prompt_id"].isin(sample)], exact, top_k=10, top_candidates=50)
write_parquet(table, smk.output[0], {"prompts": sample})
