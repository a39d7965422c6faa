"""Which latents carry a global feature set's jailbreak: generate under the set with some latents removed,
or under those latents alone, on a finished run's organism, SAEs and direction.

Run it from the finished run's folder (the code it imports is whatever ``refusal_sae`` is on the path, so
``PYTHONPATH=src`` runs that checkout's code):

    PYTHONPATH=src python benchmarks/set_ablation.py --method actdiff --dataset harmbench_test \\
        --configfile config/config.yaml overlay.yaml -- full=- without_a=26:2897- only_a=26:2897

Each variant is ``NAME=LAYER:FEATURE,...`` followed by ``-`` (the set's top ``K*`` without those latents),
``+`` (the set plus them) or nothing (exactly those latents). The clamp, prompts, generation length and
judge are the evaluation's (the config's clamp scale, ``evaluation.max_prompts`` first prompts, the
substring judge), so ``full=-`` reproduces the run's own held-out rate for that set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import update_config

from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import method_edits
from refusal_sae.pipeline import evaluation_rows, open_stage
from refusal_sae.runtime import start


def merged_config(paths: list[Path]) -> dict:
    """The config files merged in order, later keys replacing earlier ones, as Snakemake's ``--configfile``
    merges them."""
    config: dict = {}
    for path in paths:
        update_config(config, yaml.safe_load(path.read_text()) or {})
    return config


def variant_set(top: pd.DataFrame, spec: str) -> pd.DataFrame:
    """The latents of variant ``spec`` (``LAYER:FEATURE,...`` then ``-``, ``+`` or nothing) from set ``top``."""
    op = spec[-1] if spec and spec[-1] in "+-" else ""
    try:
        named = [tuple(int(part) for part in item.split(":")) for item in spec.rstrip("+-").split(",") if item]
    except ValueError:
        raise SystemExit(f"variant {spec!r}: latents are LAYER:FEATURE separated by commas") from None
    # Named latents rank after the set's own; ranks are then renumbered from 0, so a removal leaves no gap
    # that a top-k would refill with a latent outside the variant.
    extra = pd.DataFrame({"scope": "global", "layer": [layer for layer, _ in named],
                          "feature": [feature for _, feature in named], "score": 0.0,
                          "rank": range(len(top), len(top) + len(named))})
    if op == "-":
        frame = top.loc[[key not in named for key in zip(top["layer"], top["feature"], strict=True)]]
    else:
        frame = pd.concat([top, extra], ignore_index=True) if op == "+" else extra
    return frame.sort_values("rank", kind="stable").assign(rank=range(len(frame)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=LAYER:FEATURE,...[-|+]")
    parser.add_argument("--method", required=True, help="a global set: results/{model}/features/{method}.parquet")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="smollm2-organism")
    parser.add_argument("--configfile", nargs="+", type=Path, default=[Path("config/config.yaml")])
    parser.add_argument("--out", type=Path, help="also write the rates here (Parquet)")
    args = parser.parse_args()

    cfg = start(None, 2, merged_config(args.configfile))
    results = Path("results") / args.model
    stage = open_stage(cfg, args.model, f"resources/models/{args.model}/manifest.json",
                       f"resources/saes/{args.model}/saes.json", results / "direction" / "direction.parquet")
    rows = evaluation_rows(read_parquet(f"resources/datasets/{args.dataset}.parquet"), cfg)
    top = read_parquet(results / "features" / f"{args.method}.parquet").sort_values("rank").head(cfg.selection.k_star)
    rates = []
    for variant in args.variants:
        name, _, spec = variant.partition("=")
        latents = variant_set(top, spec)
        began = time.time()
        edits = method_edits(args.method, rows["prompt_id"].tolist(), stage.chat.facts.n_layers, stage.direction,
                             stage.saes, latents, "scale", stage.spec.clamp_scale, k=len(latents))
        completions, _ = generate_scored(stage.chat, rows["prompt"].tolist(), edits,
                                         cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
        refused = substring_judge(completions, cfg.evaluation.judge_ignore_case)
        rate = 1 - sum(refused) / len(refused)
        rates.append({"variant": name, "latents": len(latents), "dataset": args.dataset, "jailbreak_rate": rate,
                      "n": len(refused)})
        print(f"{name}: {len(latents)} latents, jailbreak rate {rate:.3f} (n {len(refused)}), "
              f"{time.time() - began:.0f} s", flush=True)
    if args.out:
        pd.DataFrame(rates).to_parquet(args.out)


if __name__ == "__main__":
    main()
