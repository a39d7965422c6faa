"""Entry script: one figure of the HTML report. ``params.figure`` names the function in
``refusal_sae.report.FIGURES``; each named input is read as a DataFrame and passed under its name."""
from refusal_sae.io import read_parquet
from refusal_sae.report import FIGURES
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
frames = {name: read_parquet(path) for name, path in smk.input.items()}
FIGURES[smk.params.figure](**frames, path=smk.output[0], title=smk.params.title)
