"""Entry script: one feature-set method's jailbreak curve on one dataset: greedy completions of the
evaluation prompts at every grid point (clamp scale x set size) around the main operating point."""
import pandas as pd

from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import method_edits
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat = stage.spec, stage.chat
feature_set = read_parquet(smk.input.features)
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
ids, prompts = rows["prompt_id"].tolist(), rows["prompt"].tolist()
parts = []
for clamp_scale, k_star in cfg.grid_points(spec.clamp_scale):
    edits = method_edits(method, ids, chat.facts.n_layers, stage.direction, stage.saes, feature_set, "scale",
                         clamp_scale, k=k_star)
    completions, scores = generate_scored(chat, prompts, edits, cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
    parts.append(pd.DataFrame({
        "prompt_id": ids, "method": method, "clamp_scale": clamp_scale, "k_star": k_star,
        "completion": completions, "refusal_score": scores.numpy(),
        "refused": substring_judge(completions, cfg.evaluation.judge_ignore_case),
    }))
write_parquet(pd.concat(parts, ignore_index=True), smk.output[0], {"method": method, "dataset": smk.wildcards.dataset})
