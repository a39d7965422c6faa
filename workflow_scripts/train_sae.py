"""Entry script: train one layer's SAE with sae-lens from the activation cache."""
from pathlib import Path

import torch

from refusal_sae.runtime import start
from refusal_sae.sae_training import save_sae, train_sae

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
layer = int(smk.wildcards.layer)
cache = torch.load(smk.input[0])
seed = spec.saes.seed if spec.saes.seed is not None else cfg.seed
sae = train_sae(cache["train"][layer], spec.saes, seed=seed + layer, device="cpu")
save_sae(sae, Path(smk.output[0]).parent, metadata={"hook_name": spec.saes.hook_name_template.format(layer=layer), "model_name": smk.wildcards.model})
