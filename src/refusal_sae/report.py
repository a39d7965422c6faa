"""Tables and figures for the report."""

from __future__ import annotations

import pandas as pd


def format_rate(value: float, low: float, high: float, n: int) -> str:
    """``0.85 [0.77, 0.91] (n=100)``."""
    return f"{value:.2f} [{low:.2f}, {high:.2f}] (n={n})"


def rates_markdown(metrics: pd.DataFrame, row: str, column: str) -> str:
    """One Markdown table per metric: ``row`` values down, ``column`` values across."""
    parts = []
    for metric, group in metrics.groupby("metric", sort=False):
        cells = group.assign(cell=[
            format_rate(v, lo, hi, n) for v, lo, hi, n in zip(group["value"], group["ci_low"], group["ci_high"], group["n"], strict=True)
        ])
        table = cells.pivot_table(index=row, columns=column, values="cell", aggfunc="first", sort=False)
        header = f"| {row} | " + " | ".join(map(str, table.columns)) + " |"
        rule = "|" + "---|" * (len(table.columns) + 1)
        body = [f"| {idx} | " + " | ".join(str(v) for v in table.loc[idx]) + " |" for idx in table.index]
        parts.append(f"## {metric}\n\n" + "\n".join([header, rule, *body]) + "\n")
    return "\n".join(parts)
