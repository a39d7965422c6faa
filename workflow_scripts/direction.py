"""Entry script: difference-of-means directions per layer x position and Arditi-style selection."""
from pathlib import Path

import pandas as pd

from refusal_sae.direction import NoDirectionError, candidate_directions, mean_activations, score_candidates
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import load_chat_model
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
prompts = read_parquet(smk.input.prompts)
kept = prompts.loc[prompts["kept"]]


def subset(label, role):
    return kept.loc[(kept["label"] == label) & (kept["role"] == role), "prompt"].tolist()


n_positions = cfg.direction.positions or chat.facts.suffix_length
harmful_means = mean_activations(chat, subset("harmful", "train"), n_positions, cfg.direction.batch_size)
harmless_means = mean_activations(chat, subset("harmless", "train"), n_positions, cfg.direction.batch_size)
candidates = candidate_directions(harmful_means, harmless_means)
pinned = None
if spec.direction_layer is not None:
    pinned = (spec.direction_layer, spec.direction_position if spec.direction_position is not None else -1)
meta = {"direction": smk.config.get("direction", {}), "pinned": pinned, "n_positions": n_positions}
try:
    scored = score_candidates(
        chat, candidates, subset("harmful", "val"), subset("harmless", "val"), cfg.direction.kl_threshold,
        cfg.direction.exclude_last_fraction, cfg.direction.batch_size, pinned=pinned,
        when_all_filtered=cfg.direction.when_all_filtered, relax_min_candidates=cfg.direction.relax_min_candidates,
        refusal_removed_below=cfg.direction.refusal_removed_below,
    )
except NoDirectionError as error:
    # Keep the scores for diagnosis; the rule still fails (Snakemake removes declared outputs).
    write_parquet(error.frame, Path(smk.log[0]).with_suffix(".candidates.parquet"), meta)
    raise
write_parquet(scored, smk.output.candidates, meta)
write_parquet(scored.loc[scored["chosen"]].reset_index(drop=True), smk.output.direction, meta)
means = [
    {"label": label, "layer": layer, "position": p - n_positions, "activation": tensor[layer, p].numpy()}
    for label, tensor in (("harmful", harmful_means), ("harmless", harmless_means))
    for layer in range(tensor.shape[0]) for p in range(tensor.shape[1])
]
write_parquet(pd.DataFrame(means), smk.output.means, meta)
