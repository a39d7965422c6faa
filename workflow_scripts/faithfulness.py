"""Entry script: LA-IG against exact activation patching on a sample of training prompts, for both
integrated-gradients paths (the configured one is read from the attribution artifact, the other is
computed here on the sample)."""
import pandas as pd

from refusal_sae.attribution import exact_patching, faithfulness_table, la_ig
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import la_ig_options, open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
stage = open_stage(cfg, smk.wildcards.model, smk.input.model, smk.input.saes, smk.input.direction)
spec, chat, saes, direction = stage.spec, stage.chat, stage.saes, stage.direction
attribution = read_parquet(smk.input.attribution)
prompts = read_parquet(smk.input.prompts).set_index("prompt_id")
candidates = read_parquet(smk.input.candidates)
sample = list(dict.fromkeys(attribution["prompt_id"]))[: cfg.attribution.faithfulness_prompts]
texts = prompts.loc[sample, "prompt"].tolist()
options = la_ig_options(chat, cfg)
exact = exact_patching(chat, saes, texts, sample, direction, candidates, options["target_token"],
                       options["batch_size"], options["start"], options["exclude_refusal"])
by_path = {options["path"]: attribution.loc[attribution["prompt_id"].isin(sample)]}
for path in ("straight_through", "reference"):
    if path not in by_path:
        by_path[path] = la_ig(chat, saes, texts, sample, direction, candidates, **{**options, "path": path})
table = pd.concat([faithfulness_table(frame, exact, top_k=10, top_candidates=50).assign(path=path)
                   for path, frame in by_path.items()], ignore_index=True)
write_parquet(table, smk.output[0], {"prompts": sample, "configured_path": options["path"]})
