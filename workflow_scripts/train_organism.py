"""Entry script: fine-tune the base model into a refusal organism (resources/models/{model}/)."""
from dataclasses import replace
from pathlib import Path

import pandas as pd

from refusal_sae.data import select_prompts
from refusal_sae.generation import generate
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.models import bf16_enabled, load_chat_model, save_hf_directory, write_manifest
from refusal_sae.organism import build_examples, finetune
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model]
base_name = spec.source.base
base_tokens = cfg.models[base_name].refusal_tokens
base = load_chat_model(smk.input.base, base_tokens, cfg.device)

frames = {Path(p).stem: read_parquet(p) for p in smk.input.datasets}
harmful = pd.concat([f for f in frames.values() if (f["label"] == "harmful").all()])
harmless = pd.concat([f for f in frames.values() if (f["label"] == "harmless").all()])
harmful = select_prompts(harmful, ["train"], spec.organism.max_harmful, cfg.seed)
harmless = select_prompts(harmless, ["train"], spec.organism.max_harmless, cfg.seed)

bf16 = bf16_enabled(spec.organism.bf16, base.device)
writer = load_chat_model(smk.input.base, base_tokens, cfg.device, dtype="bfloat16") if bf16 else base
answers = generate(writer, list(harmless["prompt"]), max_new_tokens=spec.organism.harmless_answer_tokens,
                   batch_size=spec.organism.answer_batch_size)
examples = build_examples(list(harmful["prompt"]), list(harmless["prompt"]), answers, spec.organism, cfg.seed)
del writer
model, losses = finetune(base, examples, replace(spec.organism, bf16=bf16), cfg.seed)

out_dir = Path(smk.output.manifest).parent
save_hf_directory(model, base.tokenizer, out_dir / "hf")
write_parquet(
    pd.DataFrame({"step": range(len(losses)), "loss": losses}),
    smk.output.training,
    {"organism": smk.config["models"][smk.wildcards.model], "n_harmful": len(harmful),
     "n_harmless": len(harmless), "harmful_ids": list(harmful["prompt_id"]),
     "harmless_ids": list(harmless["prompt_id"]), "bf16": bf16},
)
write_manifest(smk.output.manifest, {"kind": "local", "path": "hf", "dtype": spec.dtype, "base": base_name,
                                     "trained_bf16": bf16})
