"""Markdown table of wall times per rule from Snakemake's benchmark files (benchmarks/out/).

Usage: python benchmarks/stage_times.py [benchmarks/out] > stage_times.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(root: Path) -> pd.DataFrame:
    """One row per benchmark file: model, job, wall seconds, max RSS (MB)."""
    rows = []
    for path in sorted(root.glob("*/*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        rows.append({"model": path.parent.name, "job": path.stem, "seconds": float(frame["s"].iloc[-1]),
                     "max_rss_mb": float(frame["max_rss"].iloc[-1]) if "max_rss" in frame else float("nan")})
    return pd.DataFrame(rows)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out")
    table = stage_times(root)
    if table.empty:
        raise SystemExit(f"{root}: no benchmark files")
    print("| model | job | wall time (s) | max RSS (MB) |\n|---|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.model} | {row.job} | {row.seconds:.1f} | {row.max_rss_mb:.0f} |")
    for model, group in table.groupby("model"):
        print(f"| {model} | **total** | {group['seconds'].sum():.1f} | |")


if __name__ == "__main__":
    main()
