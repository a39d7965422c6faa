"""Assemble RESULTS.md from a finished run's artifacts (every number is read from an artifact).

Usage: python benchmarks/results_md.py [model] > RESULTS.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from refusal_sae.report import rates_markdown

sys.path.insert(0, str(Path(__file__).parent))
from stage_times import stage_times  # noqa: E402


def direction_markdown(frame: pd.DataFrame, lowest: int = 12) -> str:
    """The scored direction candidates with the lowest harmless KL, plus the chosen one."""
    scored = frame[frame["reason"] != "late_layer"].sort_values("kl")
    shown = pd.concat([scored.head(lowest), scored[scored["chosen"]]]).drop_duplicates(["layer", "position"])
    bound = float(frame["kl_threshold_used"].iloc[0])
    lines = [
        "## Direction candidates (validation prompts)\n",
        f"{len(scored)} non-late candidates scored; the {lowest} with the lowest harmless first-token KL and the "
        f"chosen one. Ablation score: mean refusal log-odds of harmful prompts under ablation (lower removes "
        f"more refusal); steering: of harmless prompts with the direction added. KL bound used: {bound:.3f}.\n",
        "| layer | position | ablation score | steering score | KL | filtered by | chosen |\n|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.layer} | {r.position} | {r.ablation_score:.2f} | {r.steering_score:.2f} | {r.kl:.3f} | "
              f"{r.reason or '-'} | {'yes' if r.chosen else ''} |" for r in shown.itertuples()]
    return "\n".join(lines) + "\n"


def metrics_markdown(frame: pd.DataFrame, keys: list[str], title: str, note: str) -> str:
    """A long metrics table as markdown: the ``keys`` columns, then value [interval] (n)."""
    lines = [f"## {title}\n", note + "\n", "| " + " | ".join([*keys, "value", "n"]) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for r in frame.itertuples():
        value = f"{r.value:.3f}"
        if pd.notna(getattr(r, "ci_low", float("nan"))):
            value += f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        if pd.notna(getattr(r, "p_value", float("nan"))):
            value += f" p={r.p_value:.3g}"
        cells = ["" if pd.isna(getattr(r, k)) else str(getattr(r, k)) for k in keys]
        lines.append("| " + " | ".join([*cells, value, str(r.n)]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-organism"
    out = [f"# Results of the embedded default ({model})\n",
           "Measured by `make run` on 2 CPU cores (no GPU). Rates: greedy decoding, substring judge, "
           "95% Wilson intervals; held-out prompts (test splits).\n"]
    baseline = pd.concat(pd.read_parquet(p) for p in sorted(Path("results").glob("*/metrics/baseline.parquet")))
    out.append("## Baseline refusal: base SmolLM2 vs the refusal organism\n")
    out.append(rates_markdown(baseline.loc[baseline["metric"] == "refusal_rate_substring"], row="model", column="dataset"))
    quality = Path(f"results/{model}/saes/quality.parquet")
    if quality.exists():
        q = pd.read_parquet(quality)
        out.append("## SAE quality per layer (held-out transcripts)\n")
        out.append("Variance explained on held-out activations; CE with the SAE (or zeros) replacing `resid_post` "
                   "at every position after the first (attention-sink) token, the positions the SAE was trained "
                   "on (sae-lens's `run_evals` likewise keeps special tokens clean, `exclude_special_tokens`). Targets: variance explained "
                   ">= 0.8, CE recovered >= 0.9.\n")
        out.append("| layer | d_sae | variance explained | L0 | dead fraction | CE clean | CE with SAE | CE zero-ablated | CE recovered |\n|---|---|---|---|---|---|---|---|---|")
        out += [f"| {r.layer} | {r.d_sae} | {r.fraction_variance_explained:.3f} | {r.l0:.1f} | {r.dead_fraction:.3f} | "
                f"{r.ce_clean:.3f} | {r.ce_sae:.3f} | {r.ce_zero:.3f} | {r.ce_recovered:.3f} |" for r in q.itertuples()]
        out.append("")
    candidates = Path(f"results/{model}/direction/candidates.parquet")
    if candidates.exists():
        out.append(direction_markdown(pd.read_parquet(candidates)))
    summary = Path(f"results/{model}/report/summary.md")
    if summary.exists():
        out.append(summary.read_text().replace(f"# {model}: evaluation summary", "## Evaluation summary"))
    long_tables = (
        ("grid", ["method", "dataset", "metric", "clamp_scale", "k_star"], "Operating-point grid (held-out)",
         "Clamp scale x set size for each grid method: jailbreak rate (Wilson interval) and mean first-token "
         "refusal log-odds (bootstrap interval)."),
        ("studyb", ["method", "dataset", "metric", "setting", "baseline"], "Study B: minimal sets, interactions, hydra",
         "Refused held-out prompts only. Rates with Wilson intervals; paired rows: difference vs `baseline` on "
         "the same prompts with McNemar's p."),
        ("suppression", ["method", "dataset", "metric", "group"], "Study A: adversarial pairs and jailbreak suppression",
         "`method` is the variant source. Jailbreak rate among pairs whose explicit request is refused (Wilson); "
         "mean relative drop of the refusal features' activation (last prompt tokens) for pairs that jailbreak "
         "and that fail (normal interval), and their difference (bootstrap)."),
    )
    for name, keys, title, note in long_tables:
        path = Path(f"results/{model}/metrics/{name}.parquet")
        if path.exists():
            out.append(metrics_markdown(pd.read_parquet(path), keys, title, note))
    probes = Path(f"results/{model}/probes/metrics.parquet")
    if probes.exists():
        out.append(metrics_markdown(
            pd.read_parquet(probes).rename(columns={"probe": "method", "split": "dataset"}), ["method", "dataset", "metric"],
            "Study A: OOD probes",
            "Trained on vanilla harmful vs harmless fitting prompts. `test_id`: held-out explicit requests vs "
            "held-out harmless; `test_ood`: the explicit requests (1) vs the variants that jailbreak the model (0). "
            "AUROC with a bootstrap interval, accuracy per class with Wilson intervals."))
    times = stage_times(Path("benchmarks/out"))
    if not times.empty:
        out.append("## Wall time per job (Snakemake benchmark files)\n")
        out.append("| model | job | seconds |\n|---|---|---|")
        out += [f"| {r.model} | {r.job} | {r.seconds:.0f} |" for r in times.itertuples()]
        for name, group in times.groupby("model"):
            out.append(f"| {name} | **total** | {group['seconds'].sum():.0f} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
