"""Entry script: Markdown table of every model's baseline refusal rates."""
import pandas as pd

from refusal_sae.io import read_parquet
from refusal_sae.report import rates_markdown
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
metrics = pd.concat([read_parquet(p) for p in smk.input])
text = "# Baseline refusal rates (held-out prompts, greedy, 95% Wilson intervals)\n\n" + rates_markdown(
    metrics, row="model", column="dataset"
)
with open(smk.output[0], "w") as handle:
    handle.write(text)
