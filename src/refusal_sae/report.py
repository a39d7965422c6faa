"""Tables and figures for the report: the Markdown summary (rule ``summary``) and the figures of the HTML
report (rules/report.smk, ``snakemake --report``), one public function per figure in :data:`FIGURES`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .io import publish


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


STUDY_BOS_HOLDS = ("bos_clean", "bos_woken")
"""The BOS experiment's holds of the study (its hydras held at BOS); ``bos_silent_*`` hold every silent latent."""
# The BOS experiment's holds (hydra.bos_hold_edits), as the report words them, in the order it prints them.
_BOS_HOLDS = {
    "bos_clean": "the hydras held at BOS at their clean value (zero there, free after it)",
    "bos_woken": "the hydras held at BOS at their woken value (ablated after it)",
    "bos_silent_clean": "every silent latent of the set held at BOS at zero (free after it)",
    "bos_silent_woken": "every silent latent of the set held at BOS at its woken value (ablated after it)",
}


# What the study reports (issues 15 and 16, from a summary of its body: a secondary source), per finding.
STUDY_B_REFERENCE: dict[str, str] = {
    "stage3": "Llama: FM set 330/372 jailbroken (0.89), linear 101/372 (0.27), random 0-5/372",
    "activations_fit": "FM test accuracy 0.98",
    "hydra_count": "77 (Llama) / 1,656 (Gemma)",
    "hydra_where": "Llama: 74% on system-template tokens, 97% fire on <|begin_of_text|>; Gemma: BOS the most "
                   "common position (16%)",
    "bos_drop": "holding them at BOS cuts jailbreak success by about 80%",
    "stage3_only": "3% (Gemma) / 12% (Llama) of stage-2 features switch off; Llama's drop 81%",
    "ce_on_policy": "Alpaca on-policy: Gemma 1.88 base / 1.83 feature ablation; Llama 1.79 / 2.17 +- 0.27",
    "ce_generic": "Pile: Gemma 3.40 -> 3.55; Llama 2.46 -> 3.35 +- 0.39",
}


def _cell(row: pd.Series | None, digits: int = 2) -> str:
    if row is None:
        return "not measured"
    if pd.notna(row.get("ci_low")) and pd.notna(row.get("ci_high")):
        return format_rate(row["value"], row["ci_low"], row["ci_high"], int(row["n"]), digits)
    return f"{row['value']:.{digits}f} (n={int(row['n'])})"


def studyb_markdown(model: str, studyb: pd.DataFrame) -> str:
    """Study B's results (``metrics/studyb.parquet``) beside what the study reports, finding by finding,
    with what differs on this model said where the numbers show it."""

    def rows(**where: object) -> pd.DataFrame:
        mask = np.ones(len(studyb), dtype=bool)
        for key, value in where.items():
            mask &= (studyb[key] == value).to_numpy()
        return studyb.loc[mask]

    def first(**where: object) -> pd.Series | None:
        found = rows(**where)
        return None if found.empty else found.iloc[0]

    datasets = list(dict.fromkeys(rows(method="greedy_minimal", metric="jailbreak_rate")["dataset"]))
    ref = STUDY_B_REFERENCE
    out = [f"# {model}: Study B next to the study\n",
           "Rates with 95% Wilson intervals, means with normal intervals; n = prompts (sets for the CE table). "
           "The study's numbers are for Gemma-2-2B-it / Llama-3.1-8B-Instruct with 16k-65k-latent SAEs on 26-32 "
           "layers and hundreds of prompts.\n",
           "## Minimal sets (greedy filtering)\n",
           "| dataset | tau | unique latents | mean size of the non-empty sets | jailbreak rate |", "|---|---|---|---|---|"]
    for dataset in datasets:
        for r in rows(method="greedy_minimal", dataset=dataset, metric="jailbreak_rate").itertuples():
            unique = first(method="greedy_minimal", dataset=dataset, metric="unique_features", setting=r.setting)
            size = first(method="greedy_minimal", dataset=dataset, metric="mean_set_size", setting=r.setting)
            out.append(f"| {dataset} | {r.setting.removeprefix('tau=')} | "
                       f"{'0' if unique is None else f'{unique.value:g}'} | {'-' if size is None else _cell(size)} | "
                       f"{_cell(pd.Series(r._asdict()))} |")
    out += ["", "## Extensions at equal N (stage 3)\n", f"The study: {ref['stage3']}.\n",
            "| dataset | N added | fm_added | linear_added | random_added | FM - linear, McNemar p |",
            "|---|---|---|---|---|---|"]
    for dataset in datasets:
        cells = {m: first(method=m, dataset=dataset, metric="jailbreak_rate") for m in
                 ("fm_added", "linear_added", "random_added")}
        setting = next((c["setting"] for c in cells.values() if c is not None), "")
        paired = first(method="fm_added", dataset=dataset, metric="jailbreak_rate_diff", setting="paired")
        test = "not measured" if paired is None else f"{paired['value']:+.2f}, p = {paired['p_value']:.3g}"
        out.append(f"| {dataset} | {setting.removeprefix('n_added=')} | "
                   + " | ".join(_cell(c) for c in cells.values()) + f" | {test} |")
    fm_acc = first(method="activations_fm", dataset="val", metric="accuracy")
    linear_acc = first(method="activations_linear", dataset="val", metric="accuracy")
    out += ["", "## Interaction fits\n",
            f"Activations design (harmful vs harmless, validation prompts): FM accuracy {_cell(fm_acc, 3)}, "
            f"linear {_cell(linear_acc, 3)}; the study: {ref['activations_fit']}.\n"]
    for dataset in datasets:
        fm_r2 = first(method="masks_fm", dataset=dataset, metric="heldout_r2")
        lin_r2 = first(method="masks_linear", dataset=dataset, metric="heldout_r2")
        if fm_r2 is not None:
            out.append(f"Masks design, {dataset} (held-out masks, R^2): FM {_cell(fm_r2)}, linear {_cell(lin_r2)}.\n")
    out += ["## Hydra latents\n",
            "Where a latent peaks with the active part of its set ablated: BOS (sink), the template before the user "
            "text, the user text, the template after it, or still silent.\n",
            "| dataset | prompts whose set jailbreaks | silent | silent and critical (verified) | where they peak | "
            "where every silent one peaks |",
            "|---|---|---|---|---|---|"]
    for dataset in datasets:
        counts = {m: first(method="hydra", dataset=dataset, metric=m, setting="count")
                  for m in ("silent", "silent_but_critical_verified")}
        where = []
        for setting in ("position", "position_silent"):
            peaks = rows(method="hydra", dataset=dataset, setting=setting)
            peaks = peaks.loc[peaks["metric"].str.startswith("peak_")]
            where.append(", ".join(f"{r.metric.removeprefix('peak_')} {r.value:g}" for r in peaks.itertuples())
                         or "none")
        n = 0 if counts["silent"] is None else int(counts["silent"]["n"])
        out.append(f"| {dataset} | {n} | " + " | ".join("0" if c is None else f"{c['value']:g}" for c in counts.values())
                   + f" | {where[0]} | {where[1]} |")
    out.append(f"\nThe study: {ref['hydra_count']} silent-but-critical latents; {ref['hydra_where']}.\n")
    drops = rows(method="hydra", metric="jailbreak_relative_drop")
    for dataset in datasets:
        if not ((drops["dataset"] == dataset) & drops["setting"].isin(STUDY_BOS_HOLDS)).any():
            out.append(f"BOS experiment, {dataset}: not run (no verified hydra latent). The study: {ref['bos_drop']}.\n")
    order = {name: i for i, name in enumerate(_BOS_HOLDS)}
    for r in sorted(drops.itertuples(), key=lambda r: (datasets.index(r.dataset) if r.dataset in datasets else 0,
                                                       order.get(r.setting, len(order)))):
        held = first(method="hydra", dataset=r.dataset, metric="jailbreak_rate", setting=r.setting)
        alone = first(method="hydra", dataset=r.dataset, metric="jailbreak_rate_set_alone", setting=r.setting)
        paired = first(method="hydra", dataset=r.dataset, metric="jailbreak_rate_diff", setting=r.setting)
        p_value = "" if paired is None else f", McNemar p = {paired['p_value']:.3g}"
        study = f" The study: {ref['bos_drop']}." if r.setting in STUDY_BOS_HOLDS else ""
        out.append(f"BOS experiment, {r.dataset}, {_BOS_HOLDS.get(r.setting, r.setting)}: jailbreak rate "
                   f"{_cell(alone)} with the set ablated, {_cell(held)} with the hold; relative drop {r.value:.2f}"
                   f"{p_value}.{study}\n")
    for dataset in datasets:
        off = first(method="hydra", dataset=dataset, metric="switched_off", setting="stage3_only")
        drop = first(method="hydra", dataset=dataset, metric="mean_relative_drop", setting="stage3_only")
        if off is not None:
            out.append(f"Stage-3 additions ablated alone, {dataset}: share of active minimal-set latents switched off "
                       f"{_cell(off)}, mean relative activation drop {_cell(drop)}.\n")
    out.append(f"The study, stage-3-only ablation: {ref['stage3_only']}.\n")
    out += ["## Cross-entropy (the study's CE table)\n",
            "| text | base | direction ablation | feature ablation (mean +- sd over per-prompt sets) | change vs base "
            "(direction / features) | the study |",
            "|---|---|---|---|---|---|"]
    for metric, label, study in (("ce_on_policy_response", "on-policy harmless answers", ref["ce_on_policy"]),
                                 ("ce_generic_text", "generic text", ref["ce_generic"])):
        base = first(method="base", metric=metric, setting="ce_table")
        ablation = first(method="direction_ablation", metric=metric, setting="ce_table")
        sets = first(method="fm_added_sets", metric=metric, setting="ce_table")
        sd = first(method="fm_added_sets", metric=f"{metric}_sd", setting="ce_table")
        feature = ("not measured" if sets is None else
                   f"{sets['value']:.3f} +- {sd['value']:.3f} (n={int(sets['n'])})" if sd is not None
                   else f"{sets['value']:.3f} (n={int(sets['n'])})")
        change = " / ".join("-" if base is None or x is None else f"{x['value'] / base['value'] - 1:+.1%}"
                            for x in (ablation, sets))
        out.append(f"| {label} | {_cell(base, 3)} | {_cell(ablation, 3)} | {feature} | {change} | {study} |")
    jailbreaks = rows(metric="jailbreak_rate").loc[lambda f: f["method"].isin(["fm_added", "linear_added",
                                                                               "random_added"])]
    examined = rows(method="hydra", metric="silent", setting="count")["n"].sum()
    sizes = rows(method="greedy_minimal", metric="mean_set_size")
    out += ["", "## What differs\n",
            "The study's models are 2-8B chat models with SAEs of 16k-65k latents on every layer. Here the "
            f"largest mean minimal set holds {sizes['value'].max() if len(sizes) else 0:.2f} latents and the "
            f"extended sets jailbreak at most {jailbreaks['value'].max() if len(jailbreaks) else float('nan'):.2f} "
            f"of the prompts (the study: 0.89 for the FM set), so {int(examined)} prompts had a jailbreaking set to "
            f"look for hydra latents in. {_redundancy_sentence(rows)}Absolute cross-entropies are not comparable "
            "across models and texts; the change against the same model's base is.\n"]
    return "\n".join(out) + "\n"


def _redundancy_sentence(rows: Callable[..., pd.DataFrame]) -> str:
    """What the hydra rows say about backups vs redundancy, for Study B's "what differs" paragraph."""
    silent = rows(method="hydra", metric="silent", setting="count")["value"].sum()
    critical = rows(method="hydra", metric="silent_but_critical_verified", setting="count")["value"].sum()
    if not silent:
        return ""
    text = (f"Of the {int(silent)} set latents silent on the clean prompt, {int(critical)} "
            f"{'is' if critical == 1 else 'are'} critical alone (the study counts only these as hydras)")
    closest = rows(method="hydra", metric="silent_loo_refusal_logodds_max", setting="count")["value"].max()
    if pd.notna(closest) and closest <= 0:
        text += (f"; dropping any one of them leaves refusal's first-token log-odds at or below {closest:.2f} "
                 "(a flip needs > 0)")
    paired = rows(method="hydra", metric="jailbreak_rate_diff", setting="bos_silent_clean")
    if len(paired):
        # Pooled over datasets: the discordant prompts of the release against the set alone.
        restored, broke = int(paired["second_only"].sum()), int(paired["first_only"].sum())
        n = int(paired["n"].sum())
        from .metrics import mcnemar_p  # torch comes with it: only here, not for every figure job

        p_value = mcnemar_p(broke, restored)
        text += (f". Released together after BOS, they bring refusal back on {restored} of {n} prompts "
                 f"(and break it on {broke}; McNemar p = {p_value:.3g})")
        if restored + broke == 0:
            text += (": the jailbreak needs none of them, even together; they are passengers of the set, not "
                     "backups. A likely reason, not tested here: the extensions add many latents at once, ranked "
                     "by a fit on a few dozen random masks, so latents the jailbreak does not need enter the set; "
                     "the study's sets, on SAEs of every layer of a 2-8B model, leave single woken latents that "
                     "the jailbreak then depends on")
        elif p_value < 0.05 and restored > broke:
            text += ": together they matter, redundant backups rather than single ones"
        else:
            text += ": too few prompts to tell whether they matter together"
    return text + ". "


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


# ---------------------------------------------------------------------------------------------------------------
# Figures of the HTML report (rules/report.smk). One public function per figure: it takes the artifact(s) as
# DataFrames and the output path, writes a PNG (Agg canvas, atomically) and returns the matplotlib Figure, so
# that callers and tests can inspect what was drawn. Each draws a labelled placeholder when its frame is empty
# (a stage that ran and found nothing), so the report says so instead of missing the figure.

FIGURE_DPI = 110
BAR_WIDTH = 0.8
"""Total width of a group of bars (one bar per hue value)."""
PLACEHOLDER_GID = "placeholder"
"""``gid`` of the text an empty figure shows (tests find it by this)."""
CHOSEN_LABEL = "chosen"
"""Legend label (and ``gid``) of the marker on the chosen direction candidate."""


def _figure(nrows: int = 1, ncols: int = 1, panel: tuple[float, float] = (4.2, 3.2),
            title: str = "") -> tuple[Figure, np.ndarray]:
    """A Figure on an Agg canvas (no pyplot state) with a ``nrows x ncols`` grid of axes, each ``panel`` inches."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + (0.4 if title else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return fig


def _placeholder(path: str | os.PathLike, title: str, message: str) -> Figure:
    """A one-panel figure saying why there is nothing to draw."""
    # Wide enough for the title: a placeholder's panel is otherwise narrower than a one-line model title.
    fig, axes = _figure(1, 1, panel=(max(6.0, 0.1 * len(title)), 2.0), title=title)
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10, gid=PLACEHOLDER_GID,
            transform=ax.transAxes)
    return _save(fig, path)


def _ordered_values(values: Iterable[object], order: Sequence[object] = ()) -> list:
    """Distinct ``values`` in first-seen order, those listed in ``order`` first (in that order)."""
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def _interval_bars(ax: Axes, frame: pd.DataFrame, x: str, hue: str, x_order: Sequence[object] | None = None,
                   hue_order: Sequence[object] | None = None, hue_labels: Mapping[object, str] | None = None,
                   colors: Mapping[object, object] | None = None) -> list[BarContainer]:
    """Grouped bars of ``value`` (``x`` groups, one bar per ``hue``) with ``ci_low``/``ci_high`` error bars.

    Rows with a NaN value draw no bar. Returns one BarContainer per hue value that has a bar.
    """
    x_values = list(x_order) if x_order is not None else _ordered_values(frame[x])
    hues = list(hue_order) if hue_order is not None else _ordered_values(frame[hue])
    width = BAR_WIDTH / max(len(hues), 1)
    containers = []
    for i, h in enumerate(hues):
        part = frame.loc[(frame[hue] == h) & frame["value"].notna() & frame[x].isin(x_values)]
        part = part.drop_duplicates(x)
        if part.empty:
            continue
        positions = np.array([x_values.index(v) for v in part[x]], dtype=float) - BAR_WIDTH / 2 + width * (i + 0.5)
        values = part["value"].to_numpy(dtype=float)
        low = np.clip(values - part["ci_low"].to_numpy(dtype=float), 0, None)
        high = np.clip(part["ci_high"].to_numpy(dtype=float) - values, 0, None)
        err = np.nan_to_num(np.vstack([low, high]))
        color = None if colors is None else colors.get(h)
        label = str(h) if hue_labels is None else hue_labels.get(h, str(h))
        containers.append(ax.bar(positions, values, width, yerr=err, capsize=2, label=label, color=color,
                                 error_kw={"elinewidth": 0.8}))
    ax.set_xticks(np.arange(len(x_values)), [str(v) for v in x_values], rotation=30 if len(x_values) > 3 else 0,
                  ha="right" if len(x_values) > 3 else "center")
    ax.set_xlim(-0.6, len(x_values) - 0.4)
    return containers


def organism_baseline_figure(base: pd.DataFrame, organism: pd.DataFrame, path: str | os.PathLike,
                             title: str = "") -> Figure:
    """Refusal of the base model (before) and of the organism fine-tuned from it (after), per dataset.

    ``base`` and ``organism`` are ``results/{model}/metrics/baseline.parquet`` of the two models. One panel
    per metric (substring judge, first-token refusal), bars per dataset with 95% Wilson intervals.
    """
    frame = pd.concat([base, organism], ignore_index=True)
    if frame.empty:
        return _placeholder(path, title, "no baseline rows")
    models = _ordered_values(list(base["model"]) + list(organism["model"]))
    roles = {m: f"{m} (before)" for m in base["model"].unique()} | {m: f"{m} (after)" for m in organism["model"].unique()}
    metrics = _ordered_values(frame["metric"], ["refusal_rate_substring", "refusal_rate_first_token"])
    fig, axes = _figure(1, len(metrics), title=title)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _interval_bars(ax, frame.loc[frame["metric"] == metric], x="dataset", hue="model", hue_order=models,
                       hue_labels=roles)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric.replace("_", " "))
        ax.legend(fontsize=7)
    return _save(fig, path)


SAE_QUALITY_PANELS = (("fraction_variance_explained", "fraction of variance explained", 1.0),
                      ("ce_recovered", "CE loss recovered", 1.0), ("l0", "L0 (active latents per token)", None),
                      ("dead_fraction", "dead latents (fraction)", None))
"""(column, axis label, reference line) of each panel of :func:`sae_quality_figure`."""


def sae_quality_figure(quality: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Quality of the trained SAEs per layer, on held-out transcripts (``results/{model}/saes/quality.parquet``).

    Four panels (fraction of variance explained, CE loss recovered, L0, dead fraction), one bar per layer;
    a dashed line marks a perfect 1 where there is one.
    """
    if quality.empty:
        return _placeholder(path, title, "no SAE layers evaluated")
    frame = quality.sort_values("layer")
    layers = [str(v) for v in frame["layer"]]
    fig, axes = _figure(1, len(SAE_QUALITY_PANELS), panel=(3.2, 3.0), title=title)
    for ax, (column, label, reference) in zip(axes[0], SAE_QUALITY_PANELS, strict=True):
        ax.bar(layers, frame[column].to_numpy(dtype=float), color="tab:blue")
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    widths = ", ".join(sorted({str(v) for v in frame["d_sae"]}))
    fig.supxlabel(f"latents per SAE (d_sae): {widths}", fontsize=7)
    return _save(fig, path)


DIRECTION_PANELS = (("ablation_score", "ablation score (harmful; lower removes refusal)"),
                    ("steering_score", "steering score (harmless; higher induces refusal)"),
                    ("kl", "KL on harmless (log scale)"))
"""(column, title) of each heatmap of :func:`direction_candidates_figure`."""


FILTER_MARKERS = {"kl": ("x", "filtered: KL above the configured bound"),
                  "steering": ("_", "filtered: steering score < 0"),
                  "late_layer": (".", "filtered: late layer (not scored)")}
"""Marker and legend label of each filter reason of a direction candidate (others: ``+``)."""


def direction_candidates_figure(candidates: pd.DataFrame, direction: pd.DataFrame, path: str | os.PathLike,
                                title: str = "") -> Figure:
    """Every candidate direction as a layer x position heatmap of its ablation score, steering score and KL.

    ``candidates`` is ``results/{model}/direction/candidates.parquet``, ``direction`` the one-row
    ``direction.parquet``. A filtered candidate carries a grey marker for its reason (:data:`FILTER_MARKERS`);
    the chosen one (``direction``'s layer and position) a star with ``gid`` :data:`CHOSEN_LABEL` in every panel,
    and its scores are in the title. Heatmap coordinates are the layer and the position themselves (missing
    or unscored cells blank), so a marker's data position is its candidate's.
    """
    if candidates.empty:
        return _placeholder(path, title, "no direction candidates")
    layers = np.arange(int(candidates["layer"].min()), int(candidates["layer"].max()) + 1)
    positions = np.arange(int(candidates["position"].min()), int(candidates["position"].max()) + 1)
    extent = (layers[0] - 0.5, layers[-1] + 0.5, positions[0] - 0.5, positions[-1] + 0.5)
    chosen = direction.iloc[0] if len(direction) else None
    if chosen is not None:
        rejected = f" (flagged: {chosen['reason']})" if bool(chosen["filtered"]) else ""
        title = (f"{title}\n" if title else "") + (
            f"chosen: layer {chosen['layer']}, position {chosen['position']}{rejected}\nablation "
            f"{chosen['ablation_score']:.3g}, steering {chosen['steering_score']:.3g}, KL {chosen['kl']:.3g}")
    fig, axes = _figure(len(DIRECTION_PANELS), 1, panel=(max(6.5, 0.28 * len(layers) + 2.0), 0.45 * len(positions) + 1.3),
                        title=title)
    filtered = candidates.loc[candidates["filtered"].astype(bool)]
    if chosen is not None:
        filtered = filtered.loc[(filtered["layer"] != chosen["layer"]) | (filtered["position"] != chosen["position"])]
    for ax, (column, label) in zip(axes[:, 0], DIRECTION_PANELS, strict=True):
        grid = np.full((len(positions), len(layers)), np.nan)
        for row in candidates.itertuples():
            grid[int(row.position) - positions[0], int(row.layer) - layers[0]] = getattr(row, column)
        finite = grid[np.isfinite(grid)]
        if column == "kl":
            positive = finite[finite > 0]
            floor = float(positive.min()) if positive.size else 1e-6
            norm = LogNorm(vmin=floor, vmax=max(float(positive.max()) if positive.size else floor, floor * 10))
            image = ax.imshow(np.where(np.isnan(grid), np.nan, np.maximum(grid, floor)), origin="lower",
                              aspect="auto", extent=extent, cmap="viridis", norm=norm, interpolation="nearest")
            bound = candidates["kl_threshold_used"].dropna()
            if len(bound):
                label = f"{label}; bound used for the choice {bound.iloc[0]:.3g}"
        else:
            span = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
            image = ax.imshow(grid, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r", vmin=-span,
                              vmax=span, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
        for reason, rows in filtered.groupby("reason", sort=True):
            marker, name = FILTER_MARKERS.get(str(reason), ("+", f"filtered: {reason}"))
            ax.scatter(rows["layer"], rows["position"], marker=marker, s=18, color="0.3", linewidths=0.9, label=name)
        if chosen is not None:
            ax.scatter([chosen["layer"]], [chosen["position"]], marker="*", s=170, color="gold", edgecolors="black",
                       linewidths=0.8, zorder=3, label=CHOSEN_LABEL, gid=CHOSEN_LABEL)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("position")
        ax.set_yticks(positions)
        ax.set_xticks(layers if len(layers) <= 40 else layers[::2])
    axes[-1, 0].set_xlabel("layer")
    handles, names = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=len(handles), fontsize=7)
    return _save(fig, path)


def top_features_figure(features: pd.DataFrame, path: str | os.PathLike, title: str = "", top: int = 30) -> Figure:
    """The ``top`` members of a global feature set by rank (``results/{model}/features/ours_global.parquet``):
    one horizontal bar per latent (``L{layer}/{feature}``) of its attribution score, coloured by layer."""
    if features.empty:
        return _placeholder(path, title, "empty feature set")
    frame = features.sort_values("rank").head(top).iloc[::-1]
    layers = sorted(frame["layer"].unique())
    cmap = colormaps["viridis"]
    color = {layer: cmap(i / max(len(layers) - 1, 1)) for i, layer in enumerate(layers)}
    fig, axes = _figure(1, 1, panel=(6.0, 0.22 * len(frame) + 1.2), title=title)
    ax = axes[0, 0]
    names = [f"L{r.layer}/{r.feature}" for r in frame.itertuples()]
    ax.barh(names, frame["score"].to_numpy(dtype=float), color=[color[v] for v in frame["layer"]])
    ax.set_xlabel("LA-IG attribution score (mean over training prompts)")
    ax.tick_params(axis="y", labelsize=7)
    handles = [Patch(color=color[v], label=f"layer {v}") for v in layers]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return _save(fig, path)


VARIANT_ORDER = ["held_out", "in_sample"]
JUDGE_ORDER = ["substring"]


def jailbreak_rates_figure(jailbreak: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Jailbreak rate per method x dataset with 95% Wilson intervals (``results/{model}/metrics/jailbreak.parquet``).

    One panel per variant (held out, in sample) and judge that judged anything (``n > 0``); a model judge that
    was skipped (``n == 0`` everywhere) is named with its note under the panels.
    """
    judged = jailbreak.loc[jailbreak["n"] > 0]
    if judged.empty:
        return _placeholder(path, title, "no judged jailbreak rows")
    panels = [(v, j) for v in _ordered_values(judged["variant"], VARIANT_ORDER)
              for j in _ordered_values(judged["judge"], JUDGE_ORDER)
              if len(judged.loc[(judged["variant"] == v) & (judged["judge"] == j)])]
    methods = _ordered_values(_ordered(judged)["method"], METHOD_ORDER)
    fig, axes = _figure(len(panels), 1, panel=(max(6.0, 0.75 * len(methods)), 3.0), title=title)
    for ax, (variant, judge) in zip(axes[:, 0], panels, strict=True):
        part = judged.loc[(judged["variant"] == variant) & (judged["judge"] == judge)]
        _interval_bars(ax, part, x="method", hue="dataset", x_order=[m for m in methods if m in set(part["method"])])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("jailbreak rate")
        ax.set_title(f"{variant.replace('_', ' ')}, {judge} judge", fontsize=9)
        ax.legend(fontsize=7)
    skipped = jailbreak.loc[~jailbreak["judge"].isin(judged["judge"])].drop_duplicates("judge")
    if len(skipped):
        fig.supxlabel("; ".join(str(note)[:120] for note in skipped["note"]), fontsize=6)
    return _save(fig, path)


INDUCTION_METRICS = (("refusal_induction", "refusal rate (harmless prompts)"),
                     ("first_token_refusal_logodds", "first-token refusal log-odds"))


def _method_lines(ax: Axes, frame: pd.DataFrame, x: str) -> None:
    """One line per method of ``frame`` (value over column ``x``, interval bars), methods in report order."""
    for method in _ordered_values(frame["method"], METHOD_ORDER):
        line = frame.loc[frame["method"] == method].sort_values(x)
        err = np.nan_to_num(np.clip(np.vstack([line["value"] - line["ci_low"], line["ci_high"] - line["value"]]),
                                    0, None))
        ax.errorbar(line[x], line["value"], yerr=err, marker="o", capsize=2, label=method)


def induction_figure(induction: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Refusal induced on harmless prompts over the set value (``results/{model}/metrics/induction.parquet``).

    Rows: refusal rate (Wilson interval) and mean first-token refusal log-odds (interval). Columns: feature sets
    (latents *set* to the value) and the direction added (the value is alpha, a multiple of it: rows with
    ``n_features == 0``), since the two x axes mean different things. One line per method.
    """
    frame = induction
    if "judge" in frame and (frame["judge"] == "substring").any():
        frame = frame.loc[frame["judge"] == "substring"]
    if frame.empty:
        return _placeholder(path, title, "no induction rows")
    frame = frame.assign(kind=np.where(frame["n_features"].fillna(0) > 0, "feature sets", "direction added"))
    kinds = _ordered_values(frame["kind"], ["feature sets", "direction added"])
    metrics = [(m, label) for m, label in INDUCTION_METRICS if (frame["metric"] == m).any()]
    fig, axes = _figure(len(metrics), len(kinds), panel=(4.2, 2.8), title=title)
    for r, (metric, label) in enumerate(metrics):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            part = frame.loc[(frame["metric"] == metric) & (frame["kind"] == kind)]
            _method_lines(ax, part, "set_value")
            if metric == "refusal_induction":
                ax.set_ylim(-0.02, 1.05)
            else:
                ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_ylabel(label)
            ax.set_xlabel("value the latents are set to" if kind == "feature sets" else "alpha (multiples of the direction)")
            ax.set_title(kind, fontsize=9)
            ax.legend(fontsize=7)
    return _save(fig, path)


def grid_figure(grid: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Jailbreak rate over the operating points (``results/{model}/metrics/grid.parquet``, substring judge):
    one row per dataset; left, over the clamp scale at the K* with the most clamp values; right, over K* at
    the clamp with the most K* values. One line per method, Wilson intervals."""
    frame = grid.loc[grid["metric"] == "jailbreak_rate"] if "metric" in grid else grid
    if frame.empty:
        return _placeholder(path, title, "no grid rows")
    datasets = _ordered_values(frame["dataset"])
    fig, axes = _figure(len(datasets), 2, panel=(4.2, 2.8), title=title)
    for r, dataset in enumerate(datasets):
        rows = frame.loc[frame["dataset"] == dataset]
        # The clamp axis at the K* with most clamp values; the K* axis at the clamp with most K* values.
        axes_spec = [("clamp_scale", "k_star", rows.groupby("k_star")["clamp_scale"].nunique().idxmax(), "clamp scale"),
                     ("k_star", "clamp_scale", rows.groupby("clamp_scale")["k_star"].nunique().idxmax(),
                      "K* (latents in the set)")]
        for c, (x, fixed, value, label) in enumerate(axes_spec):
            ax = axes[r, c]
            part = rows.loc[rows[fixed] == value]
            _method_lines(ax, part, x)
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlabel(label)
            ax.set_ylabel("jailbreak rate")
            fixed_label = f"K* = {int(value)}" if fixed == "k_star" else f"clamp {value:g}"
            ax.set_title(f"{dataset}, {fixed_label}", fontsize=9)
            ax.legend(fontsize=7)
    return _save(fig, path)


CAPABILITY_ORDER = ["ce_on_policy_response", "ce_generic_text", "first_token_kl"]


def capability_figure(capability: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Capability cost on harmless prompts (``results/{model}/metrics/capability.parquet``): one panel per
    metric (CE on the base model's own answers, CE on generic text, first-token KL), one bar per method
    with its 95% interval; a dashed line at the unedited model's value."""
    if capability.empty:
        return _placeholder(path, title, "no capability rows")
    metrics = _ordered_values(capability["metric"], CAPABILITY_ORDER)
    methods = _ordered_values(_ordered(capability)["method"], METHOD_ORDER)
    fig, axes = _figure(1, len(metrics), panel=(max(3.6, 0.5 * len(methods) + 1), 3.2), title=title)
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = capability.loc[capability["metric"] == metric]
        order = [m for m in methods if m in set(part["method"])]
        for container in _interval_bars(ax, part.assign(group="method"), x="method", hue="group", x_order=order):
            drawn = part.loc[part["value"].notna()].drop_duplicates("method")["method"]
            for bar, method in zip(container, drawn, strict=True):
                bar.set_color("0.6" if method == "base" else "tab:blue")
        base = part.loc[part["method"] == "base", "value"]
        if len(base):
            ax.axhline(float(base.iloc[0]), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    return _save(fig, path)


def faithfulness_figure(faithfulness: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Agreement of LA-IG with exact activation patching (``results/{model}/attribution/faithfulness.parquet``).

    The artifact holds agreement statistics, not the paired scores: per prompt, pooled over prompts and over
    the top candidates' means, for each integrated-gradients path. Two panels (Spearman rank correlation,
    overlap of the top k); x: the scope (every prompt a point), colour: the IG path.
    """
    if faithfulness.empty:
        return _placeholder(path, title, "no faithfulness rows")
    frame = faithfulness.assign(group=[s if s == "pooled" or s.startswith("top") else "per prompt"
                                       for s in faithfulness["scope"]])
    groups = _ordered_values(frame["group"], ["per prompt", "pooled"])
    paths = _ordered_values(frame["path"])
    fig, axes = _figure(1, 2, panel=(4.4, 3.2), title=title)
    for ax, (column, label) in zip(axes[0], (("spearman", "Spearman rank correlation"),
                                             ("overlap_at_k", "overlap of the top k")), strict=True):
        width = BAR_WIDTH / max(len(paths), 1)
        for i, ig_path in enumerate(paths):
            part = frame.loc[frame["path"] == ig_path]
            xs = []
            for g, n in zip(part["group"], part.groupby("group").cumcount(), strict=True):
                count = int((part["group"] == g).sum())
                xs.append(groups.index(g) - BAR_WIDTH / 2 + width * (i + 0.5) + (n - (count - 1) / 2) * width / max(count, 1) * 0.8)
            ax.scatter(xs, part[column].to_numpy(dtype=float), s=22, label=ig_path, alpha=0.8)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylim(min(-0.05, float(np.nanmin(frame[column])) - 0.05) if frame[column].notna().any() else -0.05, 1.05)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, title="IG path", title_fontsize=7)
    ks = sorted({int(k) for k in frame["k"]})
    fig.supxlabel(f"top k: {', '.join(map(str, ks))} (per scope)", fontsize=7)
    return _save(fig, path)


def fm_interactions_figure(weights: pd.DataFrame, path: str | os.PathLike, title: str = "",
                           max_prompts: int = 4) -> Figure:
    """Pairwise weights of the Study B factorization machines (``results/{model}/interactions/{dataset}/weights.parquet``).

    One heatmap per prompt (the first ``max_prompts`` by prompt id): rows and columns are the latents of that
    prompt's FM (``L{layer}/{feature}``, in the artifact's order), a cell the pair weight (symmetric, diverging
    colours centred at 0; the diagonal is blank). Prompts have their own latents, so panels are not aligned.
    """
    fm = weights.loc[weights["model"] == "fm"]
    pairs = fm.loc[fm["term"] == "pair"]
    if pairs.empty:
        return _placeholder(path, title, "no factorization machine fitted (no refused prompt with a minimal set "
                                         "to extend)")
    prompts = sorted(pairs["prompt_id"].unique())[:max_prompts]
    fig, axes = _figure(1, len(prompts), panel=(4.4, 4.0), title=title)
    for ax, prompt in zip(axes[0], prompts, strict=True):
        rows = fm.loc[fm["prompt_id"] == prompt]
        names = _ordered_values(list(rows.loc[rows["term"] == "unary", "feature_i"])
                                + list(rows.loc[rows["term"] == "pair", "feature_i"])
                                + list(rows.loc[rows["term"] == "pair", "feature_j"]))
        index = {name: i for i, name in enumerate(names)}
        grid = np.full((len(names), len(names)), np.nan)
        for r in rows.loc[rows["term"] == "pair"].itertuples():
            grid[index[r.feature_i], index[r.feature_j]] = grid[index[r.feature_j], index[r.feature_i]] = r.weight
        span = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        if len(names) <= 24:
            ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=6)
            ax.set_yticks(np.arange(len(names)), names, fontsize=6)
        else:
            ax.set_xlabel(f"{len(names)} latents")
        ax.set_title(f"{prompt} ({len(names)} latents)", fontsize=8)
    return _save(fig, path)


def hydra_figure(hydra: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Hydra latents (``results/{model}/hydra/{dataset}.parquet``): where the latents of a jailbreaking set that
    are silent on the clean prompt wake once the set's active latents are zeroed.

    Left: histogram of the position (from the prompt's first real token) of their peak, stacked by whether
    the latent is critical (removing it restores refusal). Right: silent latents by the region they peak in.
    """
    if hydra.empty:
        return _placeholder(path, title, "no hydra rows: no jailbreaking set to examine (Study B's sets did not "
                                         "jailbreak any prompt)")
    silent = hydra.loc[hydra["silent"].astype(bool)]
    if silent.empty:
        return _placeholder(path, title, f"{len(hydra)} latents of jailbreaking sets, none silent on the clean prompt")
    fig, axes = _figure(1, 2, panel=(4.4, 3.2), title=title)
    woken = silent.loc[silent["woken_position"] >= 0]
    groups = [("critical", woken.loc[woken["critical"].astype(bool), "woken_position"]),
              ("not critical", woken.loc[~woken["critical"].astype(bool), "woken_position"])]
    if len(woken):
        top = int(woken["woken_position"].max())
        bins = np.arange(-0.5, top + 1.5, max(1, (top + 1) // 40))
        ax = axes[0, 0]
        ax.hist([g.to_numpy() for _, g in groups], bins=bins, stacked=True, label=[name for name, _ in groups],
                color=["tab:red", "tab:grey"])
        ax.legend(fontsize=7)
    else:
        axes[0, 0].text(0.5, 0.5, "no silent latent woke", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].set_xlabel("position of the peak (tokens from the first real one)")
    axes[0, 0].set_ylabel("silent latents")
    counts = silent.assign(critical=np.where(silent["critical"].astype(bool), "critical", "not critical"),
                           woken_region=silent["woken_region"].replace({"silent": "never woke"}))
    table = counts.groupby(["woken_region", "critical"]).size().unstack(fill_value=0)
    regions = _ordered_values(table.index, ["sink", "template_prefix", "user_text", "template_suffix", "never woke"])
    table = table.reindex(regions)
    bottom = np.zeros(len(regions))
    for name, color in (("critical", "tab:red"), ("not critical", "tab:grey")):
        if name in table:
            axes[0, 1].bar(regions, table[name].to_numpy(), bottom=bottom, color=color, label=name)
            bottom += table[name].to_numpy()
    axes[0, 1].set_ylabel("silent latents")
    axes[0, 1].set_xlabel("region of the peak")
    axes[0, 1].tick_params(axis="x", rotation=30)
    for ax in axes[0]:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 1].legend(fontsize=7)
    return _save(fig, path)


PROBE_METRICS = (("auroc", "AUROC"), ("accuracy_class1", "accuracy, harmful (class 1)"),
                 ("accuracy_class0", "accuracy, class 0 (harmless; OOD: jailbreaks)"))
SPLIT_ORDER = ["val", "test_id", "test_ood"]


def probes_figure(metrics: pd.DataFrame, path: str | os.PathLike, title: str = "",
                  layers: pd.DataFrame | None = None) -> Figure:
    """The OOD probes (``results/{model}/probes/metrics.parquet``): one panel per metric (AUROC with its bootstrap
    interval, accuracy within each class with Wilson intervals), bars per split, one colour per probe. With
    ``layers`` (``probes/layers.parquet``) a last panel shows the dense probe's validation AUROC and accuracy
    per layer, the chosen layer marked."""
    if metrics.empty:
        return _placeholder(path, title, "no probe rows")
    panels = [(m, label) for m, label in PROBE_METRICS if (metrics["metric"] == m).any()]
    extra = layers is not None and not layers.empty
    fig, axes = _figure(1, len(panels) + int(extra), panel=(3.8, 3.2), title=title)
    sizes = metrics.drop_duplicates("probe").set_index("probe")["n_features"]
    labels = {p: f"{p} ({n} features)" if p != "dense" else f"{p} ({n} dims)" for p, n in sizes.items()}
    for ax, (metric, label) in zip(axes[0], panels, strict=False):
        part = metrics.loc[metrics["metric"] == metric]
        _interval_bars(ax, part, x="split", hue="probe", x_order=_ordered_values(part["split"], SPLIT_ORDER),
                       hue_labels=labels)
        ax.set_ylim(0, 1.05)
        ax.set_title(label, fontsize=9)
        if metric == "auroc":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    if extra:
        ax = axes[0, -1]
        frame = layers.sort_values("layer")
        ax.plot(frame["layer"], frame["val_auroc"], marker=".", label="val AUROC")
        ax.plot(frame["layer"], frame["val_accuracy"], marker=".", label="val accuracy")
        chosen = frame.loc[frame["chosen"].astype(bool)]
        ax.scatter(chosen["layer"], chosen["val_auroc"], marker="*", s=150, color="gold", edgecolors="black",
                   zorder=3, label=CHOSEN_LABEL, gid=CHOSEN_LABEL)
        ax.set_xlabel("layer")
        ax.set_title("dense probe: layer chosen on validation", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


ROLE_COLORS = {"refusal": "tab:blue", "harm": "tab:orange"}


def category_overlap_figure(category_sets: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Figure:
    """Shared refusal features ``R`` vs category-specific harm features ``H_c`` (``results/{model}/analysis/category_sets.parquet``).

    Left: per category, the size of ``R`` and of ``H_c`` in its set ``F*_c`` (stacked bars). Middle: which
    latent is in which category's set (columns: ``R`` first, then each category's ``H_c``; colour: role).
    Right: cosine of each category's refusal direction (fitted on its prompts) to the model's.
    """
    if category_sets.empty:
        return _placeholder(path, title, "no category with enough refused training prompts")
    frame = category_sets
    categories = sorted(frame["category"].unique())
    fig, axes = _figure(1, 3, panel=(4.2, 0.3 * len(categories) + 2.6), title=title)
    counts = frame.groupby(["category", "role"]).size().unstack(fill_value=0).reindex(categories, fill_value=0)
    left = np.zeros(len(categories))
    ax = axes[0, 0]
    for role, label in (("refusal", "R (shared)"), ("harm", "H_c (specific)")):
        values = counts[role].to_numpy() if role in counts else np.zeros(len(categories))
        ax.barh(categories, values, left=left, color=ROLE_COLORS[role], label=label)
        left += values
    ax.set_xlabel("latents in F*_c")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    latents = frame.assign(name=[f"L{r.layer}/{r.feature}" for r in frame.itertuples()])
    shared = latents.loc[latents["role"] == "refusal"].sort_values(["n_categories", "rank"], ascending=[False, True])
    specific = latents.loc[latents["role"] != "refusal"].sort_values(["category", "rank"])
    columns = _ordered_values(list(shared["name"]) + list(specific["name"]))
    matrix = np.zeros((len(categories), len(columns)))
    for r in latents.itertuples():
        matrix[categories.index(r.category), columns.index(r.name)] = 1 if r.role == "refusal" else 2
    ax = axes[0, 1]
    ax.imshow(matrix, aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["white", ROLE_COLORS["refusal"], ROLE_COLORS["harm"]]), vmin=0, vmax=2)
    ax.set_yticks(np.arange(len(categories)), categories, fontsize=7)
    ax.set_xlabel(f"latent ({len(shared['name'].unique())} in R, then H_c by category)")
    ax.set_xticks([])
    ax = axes[0, 2]
    # cosine_to_direction is a property of the category (its direction vs the model's), repeated on its rows
    per_category = frame.drop_duplicates("category").set_index("category")
    cosines = per_category["cosine_to_direction"].reindex(categories)
    ax.scatter(cosines.to_numpy(dtype=float), np.arange(len(categories)), s=24, color="tab:grey")
    ax.set_yticks(np.arange(len(categories)), [])  # the rows of the middle panel
    ax.set_ylim(len(categories) - 0.5, -0.5)
    ax.set_xlim(min(0.9, float(np.nanmin(cosines.to_numpy(dtype=float))) - 0.02), 1.0)
    ax.set_xlabel("category direction: cosine to the model's")
    n_prompts = per_category["n_prompts"]
    fig.supxlabel("prompts per category: " + ", ".join(f"{c} {int(n)}" for c, n in n_prompts.items()), fontsize=6)
    return _save(fig, path)


FIGURES: dict[str, Callable[..., Figure]] = {
    "organism_baseline": organism_baseline_figure,
    "sae_quality": sae_quality_figure,
    "direction_candidates": direction_candidates_figure,
    "top_features": top_features_figure,
    "jailbreak_rates": jailbreak_rates_figure,
    "induction": induction_figure,
    "grid": grid_figure,
    "capability": capability_figure,
    "faithfulness": faithfulness_figure,
    "fm_interactions": fm_interactions_figure,
    "hydra": hydra_figure,
    "probes": probes_figure,
    "category_overlap": category_overlap_figure,
}
"""The report's figures by name (what rules/report.smk's ``params.figure`` names); each takes its artifacts
as keyword DataFrames named like the rule's inputs, ``path`` and ``title``."""
