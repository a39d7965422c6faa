"""Entry script: OOD probes (METHOD.md §10) on last-token activations. Trained on vanilla harmful (1) vs
harmless (0) fitting prompts, the dense probe's layer chosen on validation; scored in distribution
(held-out explicit requests vs held-out harmless) and out of distribution (the explicit requests vs the
adversarial variants that jailbreak the model, labelled 0 as the model treats them)."""
import numpy as np
import pandas as pd

from refusal_sae.adversarial import encode_latents, last_token_residuals
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.methods import top_of
from refusal_sae.pipeline import open_stage, pool
from refusal_sae.probes import ProbeConfig, compare_probes, random_feature_columns
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
a = cfg.analysis
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
chat, saes = stage.chat, stage.saes
refusal = top_of(read_parquet(smk.input.refusal_set), cfg.selection.k_star)[["layer", "feature"]]
frames = [read_parquet(path) for path in dict.fromkeys([*smk.input.datasets, *smk.input.harmless])]
pairs = pd.concat([read_parquet(path) for path in smk.input.adversarial], ignore_index=True)
explicit = pairs.drop_duplicates("prompt_id")["explicit"].tolist()
harmless_test = pool(frames, "harmless", ["test"], len(explicit), cfg.seed)["prompt"].tolist()
jailbreaks = pairs.loc[pairs["outcome"] == "jailbreak", "adversarial"].tolist()
prompts = {
    "train": (pool(frames, "harmful", ["train"], a.probe_max_per_class, cfg.seed)["prompt"].tolist(),
              pool(frames, "harmless", ["train"], a.probe_max_per_class, cfg.seed)["prompt"].tolist()),
    "val": (pool(frames, "harmful", ["val"], a.probe_max_per_class, cfg.seed)["prompt"].tolist(),
            pool(frames, "harmless", ["val"], a.probe_max_per_class, cfg.seed)["prompt"].tolist()),
    "test_id": (explicit, harmless_test),
    "test_ood": (explicit, jailbreaks),
}
labels = {split: np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int) for split, (pos, neg) in prompts.items()}
texts = {split: pos + neg for split, (pos, neg) in prompts.items()}

# Random latents: as many per layer as the refusal features have there, never one of them.
rng_rows = []
for i, (layer, group) in enumerate(refusal.groupby("layer")):
    picked = random_feature_columns(saes[int(layer)].W_dec.shape[0], len(group), cfg.seed + i, group["feature"].tolist())
    rng_rows += [(int(layer), int(f)) for f in picked]
random_set = pd.DataFrame(rng_rows, columns=["layer", "feature"])
latents = pd.concat([refusal, random_set], ignore_index=True)
columns = {"refusal_features": {}, "random_features": {}}
dense = {layer: {} for layer in range(chat.facts.n_layers)}
for split, batch in texts.items():
    # One forward per prompt: every layer's last-token residual feeds the dense probe and the SAE latents.
    residuals = last_token_residuals(chat, batch, list(dense), a.batch_size)
    acts = encode_latents(saes, {layer: x[:, None] for layer, x in residuals.items()}, latents)[:, 0]
    columns["refusal_features"][split] = acts[:, :len(refusal)]
    columns["random_features"][split] = acts[:, len(refusal):]
    for layer, x in residuals.items():
        dense[layer][split] = x
probe_cfg = ProbeConfig(C=a.probe_C, n_bootstrap=a.n_bootstrap, seed=cfg.seed)
metrics, layers = compare_probes(columns, dense, labels, probe_cfg)
metrics["n_features"] = [len(refusal) if p != "dense" else chat.facts.d_model for p in metrics["probe"]]
write_parquet(metrics, smk.output.metrics, {"analysis": smk.config.get("analysis", {})})
write_parquet(layers, smk.output.layers, {"analysis": smk.config.get("analysis", {})})
