"""Entry script: Study B verification by generation on one dataset: greedy completions with each prompt's
own set zeroed at every position (minimal sets at every tau, or the stage-3 extensions), judged."""
import json

import pandas as pd

from refusal_sae.generation import generate_scored
from refusal_sae.greedy import intersect_orders
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import method_edits
from refusal_sae.pipeline import open_stage, studyb_prompts
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
method = smk.wildcards.method
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
rows = studyb_prompts(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline), cfg)
if method == "greedy_minimal":
    minimal = intersect_orders(read_parquet(smk.input.sets))
    settings = {f"tau={tau}": minimal.loc[minimal["tau"] == tau] for tau in cfg.studyb.taus}
else:
    selected = read_parquet(smk.input.sets)
    settings = {f"n_added={cfg.studyb.n_added}": selected.loc[selected["method"] == method]}
parts = []
for setting, members in settings.items():
    sets = members.assign(scope=members["prompt_id"].astype(str), rank=0, score=0.0, method=method)
    with_set = rows["prompt_id"].isin(set(sets["scope"]))
    for group, ablate in ((rows.loc[with_set], True), (rows.loc[~with_set], False)):
        if group.empty:
            continue
        ids, prompts = group["prompt_id"].tolist(), group["prompt"].tolist()
        edits = (method_edits(method, ids, stage.chat.facts.n_layers, None, stage.saes, sets, "zero", 0.0)
                 if ablate else ())  # an empty set ablates nothing: the unedited completion
        completions, scores = generate_scored(stage.chat, prompts, edits, cfg.evaluation.max_new_tokens,
                                              cfg.evaluation.batch_size)
        parts.append(pd.DataFrame({
            "prompt_id": ids, "method": method, "setting": setting, "n_features": group["prompt_id"].map(
                sets.groupby("scope").size()).fillna(0).astype(int).to_numpy(),
            "completion": completions, "refusal_score": scores.numpy(),
            "refused": substring_judge(completions, cfg.evaluation.judge_ignore_case)}))
frame = pd.concat(parts, ignore_index=True)
write_parquet(frame, smk.output[0], {"method": method, "settings": json.loads(smk.params.settings)})
