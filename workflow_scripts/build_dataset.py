"""Entry script: one configured dataset -> resources/datasets/{dataset}.parquet."""
from pathlib import Path

from refusal_sae.data import build_dataset
from refusal_sae.io import write_parquet
from refusal_sae.runtime import start

cfg = start(snakemake.log[0], snakemake.threads, snakemake.config)  # noqa: F821
name = snakemake.wildcards.dataset  # noqa: F821
frame = build_dataset(name, cfg.datasets[name], cfg.seed, Path("resources/cache"))
write_parquet(frame, snakemake.output[0], {"dataset": snakemake.config["datasets"][name], "seed": cfg.seed})  # noqa: F821
