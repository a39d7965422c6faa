"""Entry script: refusal induction on harmless prompts by *setting* a feature set's latents."""
import pandas as pd

from refusal_sae.generation import generate
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import method_edits
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
spec, chat, saes = stage.spec, stage.chat, stage.saes
feature_set = read_parquet(smk.input.features)
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
ids, prompts = rows["prompt_id"].tolist(), rows["prompt"].tolist()
parts = []
for value in spec.induction_values:
    edits = method_edits(method, ids, chat.facts.n_layers, None, saes, feature_set, "set", value)
    completions = generate(chat, prompts, edits, cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
    refused = substring_judge(completions)
    parts.append(pd.DataFrame({
        "prompt_id": ids, "method": method, "setting": f"set={value}", "value": value,
        "completion": completions, "refused": refused, "judge": "substring",
    }))
write_parquet(pd.concat(parts, ignore_index=True), smk.output[0], {"method": method, "values": spec.induction_values})
