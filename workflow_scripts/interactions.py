"""Entry script: Study B stage 3 on one dataset (METHOD.md §12): per refused prompt, the masks design over
its minimal set and the latents that wake up without it (stage-1 candidates, and with ``studyb.wake_pool``
any latent of the SAEs silent on the clean prompt); FM vs linear fits, and the sets each extends the
minimal set to."""
import json

import pandas as pd

from refusal_sae.greedy import intersect_orders
from refusal_sae.interactions import FMConfig
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import open_stage, studyb_prompts
from refusal_sae.runtime import start
from refusal_sae.studyb import STAGE3_COLUMNS, extend_minimal_set

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes)
b = cfg.studyb
rows = studyb_prompts(read_parquet(smk.input.dataset), read_parquet(smk.input.baseline), cfg)
pool = read_parquet(smk.input.candidates)[["layer", "feature"]].reset_index(drop=True)
minimal = intersect_orders(read_parquet(smk.input.greedy))
minimal = minimal.loc[minimal["tau"] == b.stage3_tau]
fm = FMConfig(rank=b.fm_rank, lr=b.fm_lr, epochs=b.fm_epochs, batch_size=b.fm_batch_size, seed=cfg.seed)
parts: dict[str, list[pd.DataFrame]] = {"selected": [], "weights": [], "samples": [], "fit": []}
for pid, prompt in zip(rows["prompt_id"], rows["prompt"], strict=True):
    mine = minimal.loc[minimal["prompt_id"] == pid]
    members = pool.merge(mine[["layer", "feature"]].assign(member=True), on=["layer", "feature"], how="left")
    result = extend_minimal_set(stage.chat, stage.saes, prompt, pid, pool, members["member"].fillna(False).to_numpy(),
                                b.n_masks, b.mask_density, b.test_fraction, fm, b.n_added, cfg.seed, b.wake_pool)
    for name in parts:
        parts[name].append(getattr(result, name))
meta = {"settings": json.loads(smk.params.settings)}
for name, frames in parts.items():
    frames = [f for f in frames if len(f)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STAGE3_COLUMNS[name])
    write_parquet(frame[STAGE3_COLUMNS[name]], getattr(smk.output, name), meta)
