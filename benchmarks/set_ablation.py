"""Which latents carry a global feature set's jailbreak: generate under the set with some latents removed,
or under those latents alone, on a finished run's organism, SAEs and direction.

Run it from the finished run's folder (the code it imports is whatever ``refusal_sae`` is on the path, so
``PYTHONPATH=src`` runs that checkout's code):

    PYTHONPATH=src python benchmarks/set_ablation.py --method actdiff --dataset harmbench_test \\
        --configfile config/config.yaml overlay.yaml -- full=- without_a=26:2897- only_a=26:2897

Each variant is ``NAME=LAYER:FEATURE,...`` followed by ``-`` (the set's top ``K*`` without those latents),
``+`` (the set plus them) or nothing (exactly those latents). The clamp, prompts, generation length and
judge are the evaluation's (the config's clamp scale, the prompts ``evaluation_rows`` selects as the
evaluation does, the substring judge), so ``full=-`` reproduces the run's own held-out rate for that set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import update_config

from refusal_sae.generation import generate_scored
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.judges import substring_judge
from refusal_sae.methods import method_edits
from refusal_sae.metrics import rate_row
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
    """The latents of variant ``spec`` (``LAYER:FEATURE,...`` then ``-``, ``+`` or nothing) from set ``top``.

    Raises ``SystemExit`` with one line for a malformed latent, a removal of a latent the set lacks, an
    addition of one it has, or an empty result: each would report a rate under a name it does not measure.
    """
    op = spec[-1] if spec and spec[-1] in "+-" else ""
    named = []
    for item in filter(None, spec.rstrip("+-").split(",")):
        parts = item.split(":")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise SystemExit(f"variant {spec!r}: {item!r} is not LAYER:FEATURE")
        named.append((int(parts[0]), int(parts[1])))
    keys = list(zip(top["layer"], top["feature"], strict=True))
    if op == "-" and not set(named) <= set(keys):
        raise SystemExit(f"variant {spec!r}: the set has no latent {sorted(set(named) - set(keys))}")
    if op == "+" and set(named) & set(keys):
        raise SystemExit(f"variant {spec!r}: the set already has {sorted(set(named) & set(keys))}")
    if op == "-":
        frame = top.loc[[key not in named for key in keys]]
    else:
        # Named latents rank after the set's own.
        extra = pd.DataFrame({"scope": "global", "layer": [layer for layer, _ in named],
                              "feature": [feature for _, feature in named], "score": 0.0,
                              "rank": range(len(top), len(top) + len(named))})
        frame = pd.concat([top, extra], ignore_index=True) if op == "+" else extra
    if frame.empty:
        raise SystemExit(f"variant {spec!r}: no latent left (its rate would be the unedited model's)")
    # Ranks renumbered from 0: a removal leaves no gap that a top-k would refill with a latent outside the variant.
    return frame.sort_values("rank", kind="stable").assign(rank=range(len(frame)))


def main() -> None:
    """Check every variant against the set, then generate and judge each in turn and print its rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=LAYER:FEATURE,...[-|+]")
    parser.add_argument("--method", required=True, help="a global set: results/{model}/features/{method}.parquet")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="smollm2-organism")
    parser.add_argument("--configfile", nargs="+", type=Path, default=[Path("config/config.yaml")])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the rates here (Parquet)")
    args = parser.parse_args()

    cfg = start(None, args.threads, merged_config(args.configfile))
    results = Path("results") / args.model
    ranked = read_parquet(results / "features" / f"{args.method}.parquet")
    if (ranked["scope"] != "global").any():
        raise SystemExit(f"--method {args.method}: a per-prompt set; this script takes global sets only")
    top = ranked.sort_values("rank").head(cfg.selection.k_star)
    variants = {}
    for variant in args.variants:
        name, _, spec = variant.partition("=")
        if not name or not spec:
            raise SystemExit(f"variant {variant!r}: write NAME=LAYER:FEATURE,...[-|+] (NAME=- for the whole set)")
        variants[name] = variant_set(top, spec)
    stage = open_stage(cfg, args.model, f"resources/models/{args.model}/manifest.json",
                       f"resources/saes/{args.model}/saes.json", results / "direction" / "direction.parquet")
    rows = evaluation_rows(read_parquet(f"resources/datasets/{args.dataset}.parquet"), cfg)
    rates = []
    for name, latents in variants.items():
        began = time.time()
        edits = method_edits(args.method, rows["prompt_id"].tolist(), stage.chat.facts.n_layers, stage.direction,
                             stage.saes, latents, "scale", stage.spec.clamp_scale, k=len(latents))
        completions, _ = generate_scored(stage.chat, rows["prompt"].tolist(), edits,
                                         cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
        refused = substring_judge(completions, cfg.evaluation.judge_ignore_case)
        row = rate_row(args.method, args.dataset, "jailbreak_rate", [not r for r in refused], judge="substring",
                       variant=name, latents=len(latents))
        rates.append(row)
        print(f"{name}: {len(latents)} latents, jailbreak rate {row['value']:.3f} "
              f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n {row['n']}), {time.time() - began:.0f} s", flush=True)
    if args.out:
        write_parquet(pd.DataFrame(rates), args.out)


if __name__ == "__main__":
    main()
