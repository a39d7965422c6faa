"""Entry script: capability cost per method on harmless prompts (METHOD.md section 7): cross-entropy of
the unedited model's own answers (on-policy, response tokens only), cross-entropy of a generic-text
corpus, and first-token KL."""
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
# The same tokens are scored under every method: the unedited model's own answers, and the generic text.
scored = {"ce_on_policy_response": response_loss_inputs(chat, prompts, answers)}
if smk.input.get("generic"):
    documents = read_parquet(smk.input.generic)["prompt"].head(cfg.evaluation.generic_documents).tolist()
    scored["ce_generic_text"] = text_loss_inputs(chat, documents, cfg.evaluation.generic_max_tokens)
sets = {p.rsplit("/", 1)[1].removesuffix(".parquet"): read_parquet(p) for p in smk.input.features}
batch = cfg.evaluation.batch_size
reference = last_position_logits(chat, prompts, (), batch)
rows = []
dataset = cfg.evaluation.harmless_dataset
for method in [BASE, DIRECTION_ABLATION, *sets]:
    edits = method_edits(method, ids, chat.facts.n_layers, direction, saes, sets.get(method), "scale", spec.clamp_scale,
                         k=cfg.selection.k_star)
    for metric, inputs in scored.items():
        # Generic documents are not prompts: per-prompt sets never reach this (global sets only).
        rows.append(mean_row(method, dataset, metric, masked_cross_entropy(chat, *inputs, edits=edits, batch_size=batch)))
    kl = first_token_kl(reference, last_position_logits(chat, prompts, edits, batch))
    rows.append(mean_row(method, dataset, "first_token_kl", kl))
write_parquet(pd.DataFrame(rows), smk.output[0], {"clamp_scale": spec.clamp_scale,
                                                  "generic_text": cfg.evaluation.generic_text})
