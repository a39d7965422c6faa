"""Entry script: jailbreak rates per dataset x method (every judge) and refusal induction, with
95% Wilson intervals."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import n_features
from refusal_sae.metrics import rate_row
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
# Global sets live in features/, per-prompt sets in features/{dataset}/: key sizes by (dataset, method).
sizes = {(None if Path(p).parent.name == "features" else Path(p).parent.name, Path(p).stem): n_features(read_parquet(p))
         for p in smk.input.features}


def set_size(dataset, method):
    return sizes.get((dataset, method), sizes.get((None, method), 0.0))


rows = []
for generations_path, judgments_path in zip(smk.input.generations, smk.input.judgments, strict=True):
    generations = read_parquet(generations_path)
    dataset, method = Path(generations_path).parent.name, Path(generations_path).stem
    extra = {"n_features": set_size(dataset, method), "judge": "substring", "note": ""}
    rows.append(rate_row(method, dataset, "jailbreak_rate", (~generations["refused"]).tolist(), **extra))
    judgments = read_parquet(judgments_path)
    for judge, group in judgments.groupby("judge", sort=False):
        note = str(group["note"].iloc[0])
        if group["harmful"].isna().all():
            rows.append({"method": method, "dataset": dataset, "metric": "jailbreak_rate", "value": float("nan"),
                         "ci_low": float("nan"), "ci_high": float("nan"), "n": 0,
                         "n_features": extra["n_features"], "judge": judge, "note": note})
        else:
            rows.append(rate_row(method, dataset, "jailbreak_rate", group["harmful"].fillna(False).tolist(),
                                 n_features=extra["n_features"], judge=judge, note=note))
write_parquet(pd.DataFrame(rows), smk.output.jailbreak)
induction_rows = []
for path in smk.input.induction:
    frame = read_parquet(path)
    for (method, value), group in frame.groupby(["method", "value"], sort=False):
        induction_rows.append(rate_row(method, Path(path).parent.name, "refusal_induction", group["refused"].tolist(),
                                       set_value=float(value), n_features=set_size(None, method), judge="substring"))
write_parquet(pd.DataFrame(induction_rows), smk.output.induction)
