"""Entry script: LA-IG attribution of the cosine candidates on one prompt set (METHOD.md section 4).

``train``: the refusal-filtered harmful training prompts (global sets are fitted here); a dataset
name: that dataset's evaluation prompts (per-prompt sets; held out: the direction fitted on training;
in sample: the direction fitted on those evaluation prompts).
"""
from refusal_sae.attribution import la_ig
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import evaluation_rows, la_ig_options, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
attr_set = smk.wildcards.get("attr_set", smk.wildcards.get("dataset"))
if smk.input.get("prompts"):
    prompts = read_parquet(smk.input.prompts)
    rows = prompts.loc[prompts["kept"] & (prompts["label"] == "harmful") & (prompts["role"] == "train")]
    rows = rows.head(cfg.attribution.max_prompts)
else:
    rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
frame = la_ig(
    chat, saes, rows["prompt"].tolist(), rows["prompt_id"].tolist(), direction,
    read_parquet(smk.input.candidates), **la_ig_options(chat, cfg),
)
write_parquet(frame, smk.output[0], {"attribution": smk.config.get("attribution", {}), "set": attr_set})
