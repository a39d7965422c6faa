"""Entry script: hydra features of one dataset (Study B, METHOD.md §13): for every refused prompt whose
FM-extended set jailbreaks the model, which of the set's latents are silent but critical (first-token flip,
re-checked by generation), where they wake, the BOS experiment on the verified ones and on every silent
latent of the set (with the jailbreak ablation alone generated the same way as its matched baseline) and
the stage-3-only ablation."""
import json

import pandas as pd

from refusal_sae.generation import generate_scored
from refusal_sae.greedy import intersect_orders
from refusal_sae.hydra import (
    HYDRA_COLUMNS,
    bos_hold_edits,
    hold_is_set_ablation,
    hydra_table,
    stage3_only_deactivation,
)
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import feature_edit
from refusal_sae.pipeline import open_stage, studyb_prompts
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
chat, saes = stage.chat, stage.saes
rows = studyb_prompts(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline), cfg)
selected = read_parquet(smk.input.selected)
generations = read_parquet(smk.input.generations).set_index("prompt_id")
minimal = intersect_orders(read_parquet(smk.input.greedy))
minimal = minimal.loc[minimal["tau"] == cfg.studyb.stage3_tau]


def judged(prompt: str, edits: list) -> tuple[float, bool]:
    """The first-token refusal score and the substring verdict of the greedy completion under ``edits``."""
    (text,), scores = generate_scored(chat, [prompt], edits, cfg.evaluation.max_new_tokens, 1, progress=False)
    return float(scores[0]), substring_judge([text], cfg.evaluation.judge_ignore_case)[0]


def zeroed(members: pd.DataFrame, pid: str) -> list:
    sets = members.assign(scope=pid, rank=0, score=0.0, method="hydra")
    return [feature_edit(sets, [pid], saes, "zero", 0.0)]


tables, experiments = [], []
for pid, prompt in zip(rows["prompt_id"], rows["prompt"], strict=True):
    full = selected.loc[(selected["prompt_id"] == pid) & (selected["method"] == "fm_added"), ["layer", "feature"]]
    if full.empty or pid not in generations.index or bool(generations.loc[pid, "refused"]):
        continue  # only sets that jailbreak have hydras to find
    table = hydra_table(chat, saes, prompt, pid, full)
    # A flip of the first token is re-checked by generation: the jailbreak must really fail without it.
    table["critical_verified"] = pd.array([pd.NA] * len(table), dtype="boolean")
    for i in table.index[table["critical"]]:
        rest = full.merge(table.loc[[i], ["layer", "feature"]], how="left", indicator=True)
        rest = rest.loc[rest["_merge"] == "left_only", ["layer", "feature"]]
        table.loc[i, "critical_verified"] = judged(prompt, zeroed(rest, pid) if len(rest) else [])[1]
    tables.append(table)
    verified = table["critical_verified"].fillna(False).astype(bool)
    silent = table.loc[table["silent"]]
    hydras = table.loc[table["silent"] & verified]
    # The study holds its hydras at BOS; holding every silent latent of the set the same way asks whether
    # they matter together when none matters alone. The jailbreak ablation alone is built like the holds
    # and generated beside them (batch 1).
    holds = {"": hydras, "silent_": silent if len(silent) > len(hydras) else silent.iloc[0:0]}
    if any(len(held) for held in holds.values()):
        set_alone = judged(prompt, bos_hold_edits(saes, full, silent.iloc[0:0], "woken"))
        runs = [("bos_none", silent.iloc[0:0], "woken")]
        runs += [(f"bos_{group}{reading}", held, reading) for group, held in holds.items() if len(held)
                 for reading in ("clean", "woken")]
        for name, held, reading in runs:
            if name == "bos_none" or hold_is_set_ablation(held, reading):
                score, refused = set_alone
            else:
                score, refused = judged(prompt, bos_hold_edits(saes, full, held, reading))
            experiments.append({"prompt_id": pid, "experiment": name, "refusal_score": score,
                                "refused": refused, "n_hydras": len(held), "value": float("nan")})
    mine = minimal.loc[minimal["prompt_id"] == pid, ["layer", "feature"]]
    additions = full.merge(mine, how="left", indicator=True)
    additions = additions.loc[additions["_merge"] == "left_only", ["layer", "feature"]]
    if len(mine) and len(additions):
        for name, value in stage3_only_deactivation(chat, saes, prompt, mine, additions).items():
            experiments.append({"prompt_id": pid, "experiment": f"stage3_only_{name}", "refusal_score": float("nan"),
                                "refused": pd.NA, "n_hydras": len(hydras), "value": value})
hydra = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*HYDRA_COLUMNS, "critical_verified"])
columns = ["prompt_id", "experiment", "refusal_score", "refused", "n_hydras", "value"]
exp = pd.DataFrame(experiments, columns=columns).astype({"refused": "boolean", "n_hydras": "int64"})
write_parquet(hydra, smk.output.hydra, {"settings": json.loads(smk.params.settings)})
write_parquet(exp, smk.output.experiments, {"settings": json.loads(smk.params.settings)})
