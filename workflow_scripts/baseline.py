"""Entry script: greedy behaviour of a model on a dataset's evaluation prompts."""
import pandas as pd

from refusal_sae.generation import generate
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.models import load_chat_model
from refusal_sae.pipeline import evaluation_rows
from refusal_sae.runtime import start
from refusal_sae.scoring import refusal_scores

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device)
rows = evaluation_rows(read_parquet(smk.input.dataset), cfg)
prompts = list(rows["prompt"])
completions = generate(chat, prompts, max_new_tokens=cfg.baseline.max_new_tokens, batch_size=cfg.baseline.batch_size)
scores, first = refusal_scores(chat, prompts, batch_size=cfg.baseline.batch_size)
frame = pd.DataFrame({
    "prompt_id": rows["prompt_id"].to_list(),
    "split": rows["split"].to_list(),
    "refusal_score": scores.numpy(),
    "first_token": chat.tokenizer.convert_ids_to_tokens(first.tolist()),
    "first_token_refusal": [int(t) in chat.facts.refusal_token_ids for t in first.tolist()],
    "completion": completions,
    "refused": substring_judge(completions, cfg.evaluation.judge_ignore_case),
})
write_parquet(frame, smk.output[0], {"model": smk.wildcards.model, "baseline": smk.config.get("baseline", {})})
