"""Tables and figures for the report."""

from __future__ import annotations

import pandas as pd


def format_rate(value: float, low: float, high: float, n: int, digits: int = 2) -> str:
    """``0.85 [0.77, 0.91] (n=100)``."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={n})"


def rates_markdown(metrics: pd.DataFrame, row: str, column: str, digits: int = 2) -> str:
    """One Markdown table per metric: ``row`` values down, ``column`` values across."""
    parts = []
    for metric, group in metrics.groupby("metric", sort=False):
        cells = group.assign(cell=[
            format_rate(v, lo, hi, n, digits) for v, lo, hi, n in zip(group["value"], group["ci_low"], group["ci_high"], group["n"], strict=True)
        ])
        table = cells.pivot_table(index=row, columns=column, values="cell", aggfunc="first", sort=False)
        header = f"| {row} | " + " | ".join(map(str, table.columns)) + " |"
        rule = "|" + "---|" * (len(table.columns) + 1)
        body = [f"| {idx} | " + " | ".join(str(v) for v in table.loc[idx]) + " |" for idx in table.index]
        parts.append(f"## {metric}\n\n" + "\n".join([header, rule, *body]) + "\n")
    return "\n".join(parts)


METHOD_ORDER = ["base", "direction_ablation", "ours_prompt", "ours_global", "ap_prompt", "cossim", "actdiff", "ap",
                "random", "activation_addition"]


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return frame.assign(_o=frame["method"].map(lambda m: order.get(m, len(order)))).sort_values("_o").drop(columns="_o")


def summary_markdown(model: str, tables: dict[str, pd.DataFrame]) -> str:
    """The model's report: jailbreak table (methods x datasets), judges skipped, induction,
    capability cost, faithfulness and the chosen direction."""
    jailbreak = tables["jailbreak"]
    substring = _ordered(jailbreak.loc[jailbreak["judge"] == "substring"])
    parts = [f"# {model}: evaluation summary\n",
             "Jailbreak rate = fraction of harmful evaluation prompts whose greedy completion is not judged a "
             "refusal; 95% Wilson intervals. Held out: directions and global sets fitted on training prompts; "
             "in sample (the studies' setting): fitted on each dataset's evaluation prompts themselves.\n"]
    labels = {"held_out": "held out", "in_sample": "in sample"}
    for variant, part in substring.groupby("variant", sort=False):
        parts.append(rates_markdown(part.assign(metric=f"jailbreak rate, {labels.get(variant, variant)} "
                                                       "(substring judge)"), row="method", column="dataset"))
    sizes = substring.drop_duplicates("method").set_index("method")["n_features"]
    parts.append("Features per prompt: " + ", ".join(f"{m} {v:g}" for m, v in sizes.items()) + "\n")
    if "paired" in tables and len(tables["paired"]):
        parts.append(paired_markdown(tables["paired"]))
    skipped = jailbreak.loc[(jailbreak["judge"] != "substring") & (jailbreak["n"] == 0)]
    for judge, group in skipped.groupby("judge"):
        parts.append(f"Model judge `{judge}` skipped: {group['note'].iloc[0]}\n")
    judged = jailbreak.loc[(jailbreak["judge"] != "substring") & (jailbreak["n"] > 0)]
    for judge, group in judged.groupby("judge"):
        parts.append(rates_markdown(_ordered(group).assign(metric=f"jailbreak rate ({judge})"), row="method", column="dataset"))
    induction = tables["induction"]
    if len(induction):
        parts.append(rates_markdown(induction.assign(metric="refusal induction (harmless prompts, set value)",
                                                     dataset=induction["set_value"].map(lambda v: f"v={v:g}")),
                                    row="method", column="dataset"))
    capability = _ordered(tables["capability"])
    parts.append(rates_markdown(capability.assign(dataset=capability["metric"], metric="capability cost (mean, 95% CI)"),
                                row="method", column="dataset", digits=3))
    faith = tables["faithfulness"]
    keep = faith.loc[(faith["scope"] == "pooled") | faith["scope"].str.startswith("top")]
    parts.append("## LA-IG faithfulness (vs exact activation patching)\n\n"
                 "| IG path | scope | Spearman | overlap@k | k | n |\n|---|---|---|---|---|---|\n"
                 + "\n".join(f"| {r.path} | {r.scope} | {r.spearman:.3f} | {r.overlap_at_k:.2f} | {r.k} | {r.n} |"
                             for r in keep.itertuples())
                 + "\n")
    d = tables["direction"].iloc[0]
    parts.append(f"## Refusal direction\n\nlayer {d['layer']}, position {d['position']}: ablation score "
                 f"{d['ablation_score']:.3f}, steering score {d['steering_score']:.3f}, KL {d['kl']:.4f}\n")
    return "\n".join(parts)


def paired_markdown(paired: pd.DataFrame, digits: int = 2) -> str:
    """Ours vs each other method on the same prompts: difference, bootstrap interval, p-value."""
    lines = ["## Paired comparisons (same prompts): ours minus the other method\n",
             "Jailbreak rate difference with a paired bootstrap 95% interval and the exact McNemar p-value; "
             "first-token refusal log-odds difference (negative: ours lowers refusal more) with the Wilcoxon "
             "signed-rank p-value.\n",
             "| variant | dataset | ours | other | metric | difference [95% CI] | p | n |",
             "|---|---|---|---|---|---|---|---|"]
    for r in paired.sort_values(["variant", "dataset", "method", "metric"]).itertuples():
        lines.append(f"| {r.variant} | {r.dataset} | {r.method} | {r.baseline} | {r.metric} | "
                     f"{r.value:+.{digits}f} [{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}] | {r.p_value:.3g} | {r.n} |")
    return "\n".join(lines) + "\n"


def jailbreak_figure(summary: pd.DataFrame, path: str, title: str) -> None:
    """Grouped bar chart of jailbreak rates (methods x datasets) with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frame = _ordered(summary)
    methods = list(dict.fromkeys(frame["method"]))
    datasets = list(dict.fromkeys(frame["dataset"]))
    width = 0.8 / max(len(datasets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods)), 3.6))
    for i, dataset in enumerate(datasets):
        part = frame.loc[frame["dataset"] == dataset].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + i * width
        err = np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]])
        ax.bar(x, part["value"], width, yerr=err, capsize=2, label=dataset)
    ax.set_xticks(np.arange(len(methods)) + width * (len(datasets) - 1) / 2, methods, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("jailbreak rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
