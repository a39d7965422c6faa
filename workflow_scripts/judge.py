"""Entry script: model-judge labels for one generation artifact (skipped, with the reason, when the
judge's weights are not available locally)."""
import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import load_model_judge
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
generations = read_parquet(smk.input.generations)
behaviors = read_parquet(smk.input.dataset).set_index("prompt_id").loc[generations["prompt_id"], "prompt"].tolist()
parts = []
for name, location in cfg.evaluation.model_judges.items():
    judge, reason = load_model_judge(name, location, device=cfg.device)
    if judge is None:
        labels, harmful = [None] * len(generations), [None] * len(generations)
    else:
        labels = judge.labels(behaviors, generations["completion"].tolist())
        harmful = [label == judge.harmful_label for label in labels]
    parts.append(pd.DataFrame({
        "prompt_id": generations["prompt_id"], "method": generations["method"], "judge": name,
        "judge_label": labels, "harmful": pd.array(harmful, dtype="boolean"), "note": reason,
    }))
frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
    columns=["prompt_id", "method", "judge", "judge_label", "harmful", "note"])
write_parquet(frame, smk.output[0], {"judges": {k: v for k, v in cfg.evaluation.model_judges.items()}})
