"""Entry script: LA-IG attribution of the cosine candidates on one prompt set (METHOD.md section 4).

``train``: the refusal-filtered harmful training prompts (global sets are fitted here); a dataset
name: that dataset's evaluation prompts (per-prompt sets; the direction stays fitted on training).
"""
from refusal_sae.attribution import la_ig
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
attr_set = smk.wildcards.attr_set
if attr_set == "train":
    prompts = read_parquet(smk.input.prompts)
    rows = prompts.loc[prompts["kept"] & (prompts["label"] == "harmful") & (prompts["role"] == "train")]
    rows = rows.head(cfg.attribution.max_prompts)
else:
    rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
frame = la_ig(
    chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), direction,
    read_parquet(smk.input.candidates), cfg.attribution.n_steps, cfg.attribution.target_token,
    cfg.attribution.batch_size,
)
write_parquet(frame, smk.output[0], {"attribution": smk.config.get("attribution", {}), "set": attr_set})
