"""Entry script: Study B's activations design (METHOD.md §12, the study's FM): the candidate latents' peak
activations on harmful vs harmless prompts, an FM and a linear classifier fitted on the training prompts
and scored on the validation prompts."""
import json

import pandas as pd
import torch

from refusal_sae.interactions import FMConfig, evaluate, fit, weights_frame
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import aggregation_start, open_stage
from refusal_sae.runtime import start
from refusal_sae.studyb import feature_names, peak_activations

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
b = cfg.studyb
pool = read_parquet(smk.input.candidates)[["layer", "feature"]].reset_index(drop=True)
prompts = read_parquet(smk.input.prompts)
kept = prompts.loc[prompts["kept"]]
data = {}
for role in ("train", "val"):
    part = kept.loc[kept["role"] == role]
    x = peak_activations(stage.chat, stage.saes, part["prompt"].tolist(), pool, aggregation_start(stage.chat, cfg))
    data[role] = (x, torch.tensor((part["label"] == "harmful").to_numpy(), dtype=torch.float32))
fm = FMConfig(rank=b.activations_rank, lr=b.activations_lr, epochs=b.activations_epochs, seed=cfg.seed)
rows, weights = [], []
for name, pairwise in (("fm", True), ("linear", False)):
    model = fit(*data["train"], "classification", pairwise, fm)
    for split, (x, y) in data.items():
        rows += [{"model": name, "split": split, "metric": m, "value": float(v)}
                 for m, v in evaluate(model, x, y, "classification").items()]
    weights.append(weights_frame(model, feature_names(pool), name))
write_parquet(pd.DataFrame(rows), smk.output.fit, {"settings": json.loads(smk.params.settings)})
write_parquet(pd.concat(weights, ignore_index=True), smk.output.weights)
