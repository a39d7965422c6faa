"""Entry script: Study B stage 2 on one dataset: greedy minimal sets of the refused evaluation prompts at
every tau and restore order (METHOD.md §11)."""
import json

import pandas as pd

from refusal_sae.greedy import minimal_sets
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import open_stage, studyb_prompts
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
rows = studyb_prompts(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline), cfg)
candidates = read_parquet(smk.input.candidates)[["layer", "feature"]]
attribution = read_parquet(smk.input.attribution)
b = cfg.studyb
frames = []
for pid, prompt in zip(rows["prompt_id"], rows["prompt"], strict=True):
    # The default restore order is the prompt's own ascending LA-IG score (least refusal-supporting first).
    scores = attribution.loc[attribution["prompt_id"] == pid, ["layer", "feature", "score"]]
    pool = candidates.merge(scores, on=["layer", "feature"], how="left").fillna({"score": 0.0})
    frames.append(minimal_sets(stage.chat, stage.saes, [prompt], [pid], pool, b.taus, b.orders, b.block_size, cfg.seed))
write_parquet(pd.concat(frames, ignore_index=True), smk.output[0], {"settings": json.loads(smk.params.settings)})
