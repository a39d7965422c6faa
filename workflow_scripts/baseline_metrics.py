"""Entry script: refusal rates (Wilson 95% intervals) of a model's baseline behaviour."""
from pathlib import Path

import pandas as pd

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.metrics import rate_row
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
rows = []
for path in smk.input:
    frame = read_parquet(path)
    dataset = Path(path).stem
    rows.append(rate_row("base", dataset, "refusal_rate_substring", frame["refused"].tolist()))
    rows.append(rate_row("base", dataset, "refusal_rate_first_token", frame["first_token_refusal"].tolist()))
metrics = pd.DataFrame(rows)
metrics.insert(0, "model", smk.wildcards.model)
write_parquet(metrics, smk.output[0], {"model": smk.wildcards.model})
