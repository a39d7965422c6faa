"""Entry script: resid_post activations at every SAE layer, computed once (forward stops at the last)."""
import torch

from refusal_sae.io import read_parquet
from refusal_sae.models import load_chat_model
from refusal_sae.runtime import start
from refusal_sae.sae_training import collect_activations
from refusal_sae.saes import resolve_layers

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
layers = resolve_layers(spec.saes, chat.facts.n_layers)
corpus = read_parquet(smk.input.corpus)
cache = {}
for role in ("train", "heldout"):
    texts = corpus.loc[corpus["role"] == role, "text"].tolist()
    cache[role] = collect_activations(chat, texts, layers, spec.saes.max_length, spec.saes.forward_batch_size)
tmp = smk.output[0] + ".tmp"
torch.save(cache, tmp)
import os  # noqa: E402

os.replace(tmp, smk.output[0])
