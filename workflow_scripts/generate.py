"""Entry script: greedy completions of one dataset's evaluation prompts under one method, sharded."""
import shutil
from pathlib import Path

import pandas as pd

from refusal_sae.generation import generate_scored, generate_sharded
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import FEATURE_SET_METHODS, method_edits
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.get("saes"), smk.input.get("direction"))
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
feature_set = read_parquet(smk.input.features) if method in FEATURE_SET_METHODS else None
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
setting = f"scale={spec.clamp_scale}" if method in FEATURE_SET_METHODS else ""


def run_shard(ids, prompts):
    edits = method_edits(method, ids, chat.facts.n_layers, direction, saes, feature_set, "scale", spec.clamp_scale,
                         k=cfg.selection.k_star)
    completions, scores = generate_scored(chat, prompts, edits, cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
    return pd.DataFrame({"prompt_id": ids, "completion": completions, "refusal_score": scores.numpy()})


output = Path(smk.output[0])
shard_dir = output.parent / f".{output.stem}.shards"
frame = generate_sharded(
    rows["prompt_id"].tolist(), rows["prompt"].tolist(), shard_dir, cfg.evaluation.shard_size, run_shard,
    metadata={"method": method, "setting": setting, "max_new_tokens": cfg.evaluation.max_new_tokens},
)
refused = substring_judge(frame["completion"].tolist(), cfg.evaluation.judge_ignore_case)
frame = frame.assign(
    method=method, setting=setting, refused=refused, judge="substring",
    judge_label=["refusal" if r else "compliance" for r in refused],
)[["prompt_id", "method", "setting", "completion", "refusal_score", "refused", "judge", "judge_label"]]
write_parquet(frame, output, {"method": method, "setting": setting, "evaluation": smk.config.get("evaluation", {})})
shutil.rmtree(shard_dir, ignore_errors=True)
