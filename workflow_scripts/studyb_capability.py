"""Entry script: Study B's CE table (METHOD.md §13): each refused prompt's jailbreaking set (its minimal set
plus the FM's additions) zeroed at every position of the unedited model's harmless answers (response tokens
only) and of the generic text; studyb_metrics reports the mean and sd over sets beside the base model and
direction ablation of the capability table."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import feature_edit
from refusal_sae.metrics import masked_cross_entropy, response_loss_inputs, text_loss_inputs
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start
from refusal_sae.selection import GLOBAL

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
chat, saes = stage.chat, stage.saes
responses = read_parquet(smk.input.responses)
prompts = read_parquet(smk.input.dataset).set_index("prompt_id").loc[responses["prompt_id"], "prompt"].tolist()
scored = {"ce_on_policy_response": response_loss_inputs(chat, prompts, responses["completion"].tolist())}
if smk.input.get("generic"):
    documents = read_parquet(smk.input.generic)["prompt"].head(cfg.evaluation.generic_documents).tolist()
    scored["ce_generic_text"] = text_loss_inputs(chat, documents, cfg.evaluation.generic_max_tokens)
rows = []
for path in smk.input.selected:
    selected = read_parquet(path)
    for pid, members in selected.loc[selected["method"] == "fm_added"].groupby("prompt_id"):
        edit = feature_edit(members.assign(scope=GLOBAL, rank=0, score=0.0), [], saes, "zero", 0.0)
        for metric, inputs in scored.items():
            ce = masked_cross_entropy(chat, *inputs, edits=[edit], batch_size=cfg.evaluation.batch_size)
            rows.append({"prompt_id": pid, "dataset": Path(path).parent.name, "method": "fm_added",
                         "n_features": len(members), "metric": metric, "value": float(ce.nanmean())})
columns = ["prompt_id", "dataset", "method", "n_features", "metric", "value"]
write_parquet(pd.DataFrame(rows, columns=columns), smk.output[0])
