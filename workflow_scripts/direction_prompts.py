"""Entry script: refusal-filtered prompt pools for direction fitting and selection.

Harmful prompts are kept when the model's first token is a refusal token, harmless ones when it is
not (METHOD.md section 1).
"""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import load_chat_model
from refusal_sae.pipeline import fitting_pools
from refusal_sae.runtime import start
from refusal_sae.scoring import refusal_scores

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
frames = {Path(p).stem: read_parquet(p) for p in smk.input.datasets}
limits = {"train": cfg.direction.max_train, "val": cfg.direction.max_val}
parts = []
for name, rows in fitting_pools(frames).items():
    label, role = name.split("_")
    scores, first = refusal_scores(chat, list(rows["prompt"]), batch_size=cfg.direction.batch_size)
    refused = [int(t) in chat.facts.refusal_token_ids for t in first.tolist()]
    frame = rows[["prompt_id", "prompt"]].assign(
        label=label, role=role, refusal_score=scores.numpy(), first_token_refusal=refused
    )
    eligible = frame["first_token_refusal"] == (label == "harmful")
    chosen = frame.loc[eligible].sample(frac=1.0, random_state=cfg.seed).head(limits[role]).index
    parts.append(frame.assign(kept=frame.index.isin(chosen)))
out = pd.concat(parts, ignore_index=True)
write_parquet(out, smk.output[0], {"direction": smk.config.get("direction", {})})
