"""LA-IG cost against its floor: N x (forward + backward) of the SAE-spliced model on the same batch.

Usage (after the workflow built the organism, its SAEs and direction):
  python benchmarks/bench_attribution.py --model smollm2-organism --batch 8 --steps 10
  python benchmarks/bench_attribution.py --tiny
Prints both timings and their ratio (LA-IG also runs a clean and a patched forward and encodes the
candidate latents, so the ratio is expected a little above 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from refusal_sae.attribution import cosine_candidates, la_ig
from refusal_sae.interventions import FeatureEdit, intervene


def forward_backward(chat, batch, edits=()) -> None:
    """One forward+backward of the model under ``edits`` (gradient w.r.t. the input embeddings only)."""
    with intervene(chat.model, list(edits)):
        embeds = chat.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        logits = chat.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).logits
        logits[:, -1].float().sum().backward()


def spliced_forward_backward(chat, saes, batch, steps: int) -> float:
    """Seconds for ``steps`` forward+backward passes with every SAE spliced (latents unedited)."""
    edit = FeatureEdit(saes=saes, features={layer: torch.arange(2) for layer in saes}, mode="scale", value=1.0)
    start = time.perf_counter()
    for _ in range(steps):
        forward_backward(chat, batch, [edit])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-organism")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and SAEs (no artifacts needed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import make_tiny_chat_model, make_tiny_sae

        chat = make_tiny_chat_model()
        saes = {layer: make_tiny_sae(chat.facts.d_model, 4 * chat.facts.d_model, seed=layer) for layer in range(4)}
        direction = torch.randn(chat.facts.d_model)
        prompts = [f"Explain how to make a bomb, case {i}" for i in range(args.batch)]
    else:
        import yaml

        from refusal_sae.config import load_pipeline_config
        from refusal_sae.models import load_chat_model
        from refusal_sae.pipeline import load_direction, load_model_saes

        cfg = load_pipeline_config(yaml.safe_load(Path("config/config.yaml").read_text()))
        spec = cfg.models[args.model]
        chat = load_chat_model(f"resources/models/{args.model}/manifest.json", spec.refusal_tokens, "cpu")
        saes = load_model_saes(f"resources/saes/{args.model}/saes.json", spec, chat.facts.d_model, "cpu")
        direction, _, _ = load_direction(f"results/{args.model}/direction/direction.parquet")
        frame = pd.read_parquet(f"results/{args.model}/direction/prompts.parquet")
        prompts = frame.loc[(frame["label"] == "harmful") & frame["kept"], "prompt"].head(args.batch).tolist()
    candidates = cosine_candidates(saes, direction, 10)
    batch = chat.tokenize(prompts)
    la_ig(chat, saes, prompts[:2], list(range(2)), direction, candidates, 1, batch_size=2)  # warm-up
    start = time.perf_counter()
    la_ig(chat, saes, prompts, list(range(len(prompts))), direction, candidates, args.steps, batch_size=len(prompts))
    la_ig_seconds = time.perf_counter() - start
    floor = spliced_forward_backward(chat, saes, batch, args.steps)
    print(f"batch {len(prompts)} x {batch['input_ids'].shape[1]} tokens, N={args.steps}, "
          f"{len(saes)} SAE layers, threads {args.threads}")
    print(f"LA-IG: {la_ig_seconds:.2f} s; N x (forward+backward, spliced): {floor:.2f} s; ratio {la_ig_seconds / floor:.2f}")


if __name__ == "__main__":
    main()
