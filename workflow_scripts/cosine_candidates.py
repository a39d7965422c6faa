"""Entry script: top-K0 SAE features per layer by signed cosine to the chosen direction."""
from refusal_sae.attribution import cosine_candidates
from refusal_sae.io import write_parquet
from refusal_sae.pipeline import load_direction, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
direction, layer, position = load_direction(smk.input.direction)
saes = stage.saes
frame = cosine_candidates(saes, direction, cfg.attribution.k0)
write_parquet(frame, smk.output[0], {"k0": cfg.attribution.k0, "direction_layer": layer, "direction_position": position})
