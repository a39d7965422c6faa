"""Entry script: a configured model -> resources/models/{model}/manifest.json (+ HF directory)."""
from pathlib import Path

from refusal_sae.models import prepare_model_artifact
from refusal_sae.runtime import start

cfg = start(snakemake.log[0], snakemake.threads, snakemake.config)  # noqa: F821
model = cfg.models[snakemake.wildcards.model]  # noqa: F821
prepare_model_artifact(model.source, model.dtype, Path(snakemake.output[0]).parent, Path("resources/cache"))  # noqa: F821
