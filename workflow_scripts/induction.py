"""Entry script: refusal induction on harmless prompts, by *setting* a feature set's latents to each
induction value, or by adding each multiple of the refusal direction at its layer."""
import pandas as pd

from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import ACTIVATION_ADDITION, method_edits
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.get("saes"), smk.input.get("direction"))
spec, chat = stage.spec, stage.chat
adding = method == ACTIVATION_ADDITION
feature_set = None if adding else read_parquet(smk.input.features)
values, label = (spec.addition_alphas, "alpha") if adding else (spec.induction_values, "set")
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
ids, prompts = rows["prompt_id"].tolist(), rows["prompt"].tolist()
new_tokens = cfg.evaluation.induction_new_tokens or cfg.evaluation.max_new_tokens
parts = []
for value in values:
    edits = method_edits(method, ids, chat.facts.n_layers, stage.direction, stage.saes, feature_set, "set", value,
                         stage.direction_layer, k=cfg.selection.k_star)
    completions, scores = generate_scored(chat, prompts, edits, new_tokens, cfg.evaluation.batch_size)
    refused = substring_judge(completions, cfg.evaluation.judge_ignore_case)
    parts.append(pd.DataFrame({
        "prompt_id": ids, "method": method, "setting": f"{label}={value}", "value": value,
        "completion": completions, "refusal_score": scores.numpy(), "refused": refused, "judge": "substring",
    }))
write_parquet(pd.concat(parts, ignore_index=True), smk.output[0], {"method": method, "values": list(values)})
