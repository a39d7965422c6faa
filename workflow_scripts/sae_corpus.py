"""Entry script: chat transcripts (training prompts + the model's own greedy answers) for SAE training."""
import pandas as pd

from refusal_sae.data import select_prompts
from refusal_sae.generation import generate
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import bf16_enabled, load_chat_model, pick_device, render_chat
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
bf16 = bf16_enabled(spec.saes.corpus_bf16, pick_device(cfg.device))
chat = load_chat_model(smk.input.model, spec.refusal_tokens, cfg.device, dtype="bfloat16" if bf16 else None)
# Never test prompts: the SAE must not have seen the evaluation set.
prompts = pd.concat([read_parquet(p) for p in smk.input.datasets], ignore_index=True)
rows = pd.concat([select_prompts(prompts, ["train"], spec.saes.corpus_max_prompts, cfg.seed),
                  select_prompts(prompts, ["val"])], ignore_index=True)
responses = generate(chat, list(rows["prompt"]), max_new_tokens=spec.saes.corpus_new_tokens, batch_size=spec.saes.corpus_batch_size)
texts = [render_chat(chat.tokenizer, p, r) for p, r in zip(rows["prompt"], responses, strict=True)]
# Hold out the validation prompts' transcripts for the SAE quality table.
frame = pd.DataFrame({
    "prompt_id": rows["prompt_id"].to_list(), "label": rows["label"].to_list(),
    "role": ["heldout" if s == "val" else "train" for s in rows["split"]],
    "response": responses, "text": texts,
})
write_parquet(frame, smk.output[0], {"model": smk.wildcards.model, "bf16": bf16})
