"""Throughput of greedy generation: plain ``model.generate`` vs a 20-feature SAE clamp.

Same batch, same greedy settings, same number of new tokens (EOS is suppressed with
``min_new_tokens`` so both conditions decode exactly ``--new-tokens`` tokens). The clamp is a
:class:`refusal_sae.interventions.FeatureEdit` (scale by -3, all positions) over sae-lens SAEs at
several layers, i.e. what the evaluation stage runs.

Examples::

    python benchmarks/bench_generation.py --tiny
    python benchmarks/bench_generation.py --manifest resources/models/gemma/manifest.json \\
        --sae-release gemma-scope-2b-pt-res-canonical --sae-id "layer_{layer}/width_16k/canonical" \\
        --layers 6 10 14 18 --batch-size 16 --new-tokens 64 --json results/bench_generation.json
    # without SAE weights at hand: random SAEs of a realistic width
    python benchmarks/bench_generation.py --manifest ... --random-sae-width 16384
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from refusal_sae.interventions import FeatureEdit, intervene
from refusal_sae.models import ChatModel, load_chat_model

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how photosynthesis works in simple words.",
    "Give step-by-step instructions for baking bread at home.",
    "Write a persuasive article about recycling and clean energy.",
    "What are three tips for staying focused while studying?",
    "Describe the water cycle to a ten-year-old.",
    "Summarise the plot of a detective story in two sentences.",
    "List five fruits that are high in vitamin C.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="tiny random model and SAEs (tests/tiny.py)")
    src.add_argument("--manifest", type=Path, help="model manifest (resources/models/{model}/manifest.json)")
    p.add_argument("--sae-release", help="sae-lens release id (with --sae-id)")
    p.add_argument("--sae-id", help="sae-lens id template with {layer}, e.g. 'layer_{layer}/width_16k/canonical'")
    p.add_argument("--sae-dir", type=Path, help="directory with sae-lens SAEs in layer_{l}/ subfolders")
    p.add_argument("--random-sae-width", type=int, default=None,
                   help="random SAEs of this width (default for a real model without --sae-*: 16384)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="SAE layers (default: 4 layers spread over the model)")
    p.add_argument("--features", type=int, default=20, help="features clamped in total, spread over layers")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="model dtype (default: the manifest's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace) -> ChatModel:
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import make_tiny_chat_model

        return make_tiny_chat_model()
    return load_chat_model(args.manifest, device=args.device, dtype=args.dtype)


def load_saes(args: argparse.Namespace, chat: ChatModel, layers: list[int]) -> dict[int, torch.nn.Module]:
    """sae-lens SAEs for ``layers``: pretrained, from disk, or random (same compute as trained ones)."""
    device, dtype = chat.device, next(chat.model.parameters()).dtype
    dtype_name = str(dtype).removeprefix("torch.")
    if args.sae_release:
        from sae_lens import SAE

        return {layer: SAE.from_pretrained(args.sae_release, args.sae_id.format(layer=layer),
                                           device=str(device), dtype=dtype_name) for layer in layers}
    if args.sae_dir:
        from sae_lens import SAE

        return {layer: SAE.load_from_disk(args.sae_dir / f"layer_{layer}", device=str(device), dtype=dtype_name)
                for layer in layers}
    from sae_lens import StandardSAE, StandardSAEConfig

    d = chat.facts.d_model
    width = args.random_sae_width or (4 * d if args.tiny else 16384)
    saes = {}
    for i, layer in enumerate(layers):
        torch.manual_seed(i)
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=width, dtype=dtype_name, device=str(device)))
        with torch.no_grad():
            for param in sae.parameters():
                param.normal_(0, d ** -0.5)
        saes[layer] = sae.eval()
    return saes


def spread(total: int, layers: list[int], width: int) -> dict[int, torch.Tensor]:
    """``total`` distinct feature indices split as evenly as possible over ``layers``."""
    out = {}
    for i, layer in enumerate(layers):
        count = total // len(layers) + (i < total % len(layers))
        out[layer] = torch.randperm(width, generator=torch.Generator().manual_seed(layer))[:count]
    return out


def timed_generate(chat: ChatModel, batch: dict[str, torch.Tensor], new_tokens: int, edits) -> float:
    if chat.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad(), intervene(chat.model, edits):
        out = chat.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=chat.tokenizer.pad_token_id)
    if chat.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    chat = load_model(args)
    n_layers = chat.facts.n_layers
    layers = args.layers or sorted({round(n_layers * f) for f in (0.25, 0.4, 0.55, 0.7)})
    saes = load_saes(args, chat, layers)
    width = int(next(iter(saes.values())).cfg.d_sae)
    edit = FeatureEdit(saes, spread(args.features, layers, width), mode="scale", value=-3.0)
    prompts = (PROMPTS * (args.batch_size // len(PROMPTS) + 1))[: args.batch_size]
    batch = chat.tokenize(prompts)
    conditions = {"plain": [], f"feature_edit_{args.features}f_{len(layers)}l": [edit]}

    for edits in conditions.values():  # warm-up: allocator, kernels, lazy imports
        timed_generate(chat, batch, min(4, args.new_tokens), edits)
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for _ in range(args.repeats):
        for name, edits in conditions.items():  # interleaved so drift hits both conditions alike
            times[name].append(timed_generate(chat, batch, args.new_tokens, edits))

    tokens = args.batch_size * args.new_tokens
    base = statistics.median(times["plain"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"condition": name, "median_s": med, "min_s": min(ts), "tokens_per_s": tokens / med,
                     "slowdown": med / base})
    result = {
        "model": "tiny" if args.tiny else str(args.manifest),
        "device": str(chat.device),
        "device_name": torch.cuda.get_device_name(chat.device) if chat.device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(next(chat.model.parameters()).dtype),
        "batch_size": args.batch_size, "new_tokens": args.new_tokens, "prompt_tokens": int(batch["input_ids"].shape[1]),
        "repeats": args.repeats, "sae_layers": layers, "sae_width": width, "features": args.features,
        "rows": rows,
    }
    print(f"model={result['model']} device={result['device']} ({result['device_name']}) dtype={result['dtype']} "
          f"threads={result['torch_threads']} batch={args.batch_size} new_tokens={args.new_tokens} "
          f"prompt_tokens={result['prompt_tokens']} repeats={args.repeats} sae_layers={layers} width={width}")
    print(f"{'condition':<28}{'median s':>10}{'min s':>10}{'tokens/s':>12}{'slowdown':>10}")
    for r in rows:
        print(f"{r['condition']:<28}{r['median_s']:>10.3f}{r['min_s']:>10.3f}{r['tokens_per_s']:>12.1f}"
              f"{r['slowdown']:>9.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
