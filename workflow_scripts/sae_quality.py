"""Entry script: per-layer SAE quality (variance explained, L0, dead latents, CE recovered)."""
from pathlib import Path

import torch

from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import load_chat_model
from refusal_sae.runtime import start
from refusal_sae.sae_training import sae_quality
from refusal_sae.saes import load_saes

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
layers = [int(Path(p).parent.name.removeprefix("layer_")) for p in smk.input.saes]
saes = load_saes(spec.saes, layers, chat.facts.d_model, local_dir=Path(smk.input.saes[0]).parent.parent)
corpus = read_parquet(smk.input.corpus)
heldout = corpus.loc[corpus["role"] == "heldout", "text"].tolist()
cache = torch.load(smk.input.activations)
table = sae_quality(chat, saes, heldout, cache["heldout"], spec.saes.max_length, spec.saes.forward_batch_size)
write_parquet(table, smk.output[0], {"model": smk.wildcards.model, "saes": smk.config["models"][smk.wildcards.model]["saes"]})
