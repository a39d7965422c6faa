"""Entry script: capability cost per method on harmless prompts: CE of the model's own (unedited)
responses, CE of the same responses as plain text, and first-token KL (METHOD.md section 7)."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import BASE, DIRECTION_ABLATION, method_edits
from refusal_sae.metrics import masked_cross_entropy, mean_row, response_loss_inputs, text_loss_inputs
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start
from refusal_sae.scoring import first_token_kl, last_position_logits

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
responses = read_parquet(smk.input.responses)
prompts = read_parquet(smk.input.dataset).set_index("prompt_id").loc[responses["prompt_id"], "prompt"].tolist()
ids, answers = responses["prompt_id"].tolist(), responses["completion"].tolist()
# The same tokens are scored under every method: the unedited model's own answers.
on_policy = response_loss_inputs(chat, prompts, answers)
plain_text = text_loss_inputs(chat, answers)
sets = {Path(p).stem: read_parquet(p) for p in smk.input.features}
batch = cfg.evaluation.batch_size
reference = last_position_logits(chat, prompts, (), batch)
rows = []
for method in [BASE, DIRECTION_ABLATION, *sets]:
    edits = method_edits(method, ids, chat.facts.n_layers, direction, saes, sets.get(method), "scale", spec.clamp_scale)
    dataset = cfg.evaluation.harmless_dataset
    rows.append(mean_row(method, dataset, "ce_on_policy_response", masked_cross_entropy(chat, *on_policy, edits=edits, batch_size=batch)))
    rows.append(mean_row(method, dataset, "ce_plain_text", masked_cross_entropy(chat, *plain_text, edits=edits, batch_size=batch)))
    kl = first_token_kl(reference, last_position_logits(chat, prompts, edits, batch))
    rows.append(mean_row(method, dataset, "first_token_kl", kl))
write_parquet(pd.DataFrame(rows), smk.output[0], {"clamp_scale": spec.clamp_scale})
