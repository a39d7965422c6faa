"""Entry script: one configured dataset -> resources/datasets/{dataset}.parquet."""
from pathlib import Path

import pandas as pd

from refusal_sae.data import build_dataset
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
name = smk.wildcards.dataset
spec = cfg.datasets[name]
excluded = [read_parquet(f"resources/datasets/{other}.parquet")["prompt"] for other in spec.exclude]
frame = build_dataset(name, spec, cfg.seed, Path("resources/cache"), pd.concat(excluded) if excluded else ())
write_parquet(frame, smk.output[0], {"dataset": smk.config["datasets"][name], "seed": cfg.seed})
