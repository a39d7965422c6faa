"""Entry script: prompts shared by several datasets; fails when one is fitted on and evaluated on."""
from pathlib import Path

from refusal_sae.data import check_no_leak
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
overlaps = check_no_leak({Path(p).stem: read_parquet(p) for p in smk.input})
write_parquet(overlaps, smk.output[0])
