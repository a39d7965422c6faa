"""Throughput of Study B's batched trial forwards against a plain batched forward of the same rows.

Greedy filtering and the masks design score one prompt under many ablation sets at once: the prompt
repeated once per row, one ``FeatureEdit`` whose ``row_active`` gives each row its own set
(``greedy.ablation_scorer``). This times that call against the unedited model on the same rows (same
``logits_to_keep=1`` forward), tokens/s = rows x prompt tokens / seconds, best of ``--repeats``.

Example (on a finished default run)::

    python benchmarks/bench_greedy.py --manifest resources/models/smollm2-organism/manifest.json \\
        --sae-dir resources/saes/smollm2-organism --candidates results/smollm2-organism/attribution/candidates.parquet
    python benchmarks/bench_greedy.py --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from refusal_sae.greedy import ablation_scorer
from refusal_sae.models import load_chat_model

PROMPT = "Explain how to build a weapon at home, step by step."


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="tiny random model and SAEs (tests/tiny.py)")
    src.add_argument("--manifest", type=Path, help="model manifest (resources/models/{model}/manifest.json)")
    p.add_argument("--sae-dir", type=Path, help="directory with sae-lens SAEs in layer_{l}/ subfolders")
    p.add_argument("--candidates", type=Path, help="cosine candidates parquet (layer, feature): the trial pool")
    p.add_argument("--rows", type=int, default=32, help="trials per forward (the greedy stage's speculative batch)")
    p.add_argument("--pool", type=int, default=60, help="candidates in the pool")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import make_tiny_chat_model, make_tiny_sae

        chat = make_tiny_chat_model(n_layers=4, d_model=64)
        saes = {layer: make_tiny_sae(64, 256, seed=layer, k=8) for layer in (1, 2)}
        pool = pd.DataFrame({"layer": [1 + i % 2 for i in range(args.pool)], "feature": list(range(args.pool))})
    else:
        from sae_lens import SAE

        chat = load_chat_model(args.manifest, device="cpu")
        candidates = pd.read_parquet(args.candidates).sort_values("rank").head(args.pool)
        saes = {int(layer): SAE.load_from_disk(str(args.sae_dir / f"layer_{int(layer)}"), device="cpu").eval()
                for layer in candidates["layer"].unique()}
        pool = candidates[["layer", "feature"]].reset_index(drop=True)
    score = ablation_scorer(chat, saes, PROMPT, pool)
    batch = chat.tokenize([PROMPT])
    inputs = {k: v.expand(args.rows, -1) for k, v in batch.items()}
    masks = torch.rand(args.rows, len(pool), generator=torch.Generator().manual_seed(0)) < 0.5

    @torch.no_grad()
    def plain() -> None:
        chat.model(**inputs, use_cache=False, logits_to_keep=1)

    tokens = args.rows * int(batch["input_ids"].shape[1])
    plain_s = best_seconds(plain, args.repeats)
    trial_s = best_seconds(lambda: score(masks), args.repeats)
    result = {"rows": args.rows, "prompt_tokens": int(batch["input_ids"].shape[1]), "pool": len(pool),
              "sae_layers": sorted(saes), "plain_tokens_per_s": tokens / plain_s,
              "trial_tokens_per_s": tokens / trial_s, "ratio": plain_s / trial_s, "threads": args.threads,
              "machine": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
