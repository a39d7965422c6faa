"""Entry script: greedy completions of every adversarial prompt, judged like the evaluation (substring),
beside the explicit request's own verdict (its base evaluation generation): each pair's outcome (METHOD.md §9)."""
from refusal_sae.adversarial import outcome
from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.pipeline import open_stage
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
chat = open_stage(cfg, smk.wildcards.model, smk.input.model).chat
pairs = read_parquet(smk.input.pairs)
# The explicit request's verdict from its unedited evaluation generation: same length and judge as the variants.
baseline = read_parquet(smk.input.explicit).set_index("prompt_id")
missing = sorted(set(pairs["prompt_id"]) - set(baseline.index))
if missing:
    raise ValueError(f"{smk.input.pairs}: {len(missing)} explicit prompts have no base generation, e.g. {missing[0]}")
completions, scores = generate_scored(chat, pairs["adversarial"].tolist(), (), cfg.evaluation.max_new_tokens,
                                      cfg.evaluation.batch_size)
refused = substring_judge(completions, cfg.evaluation.judge_ignore_case)
explicit_refused = baseline.loc[pairs["prompt_id"], "refused"].astype(bool).to_numpy()
frame = pairs.assign(
    explicit_refused=explicit_refused,
    explicit_refusal_score=baseline.loc[pairs["prompt_id"], "refusal_score"].astype(float).to_numpy(),
    completion=completions, refusal_score=scores.numpy().astype(float), refused=refused,
    outcome=[outcome(e, r) for e, r in zip(explicit_refused, refused, strict=True)],
)
write_parquet(frame, smk.output[0], {"evaluation": smk.config.get("evaluation", {})})
