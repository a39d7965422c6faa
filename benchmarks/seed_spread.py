"""Run-to-run spread: each method's jailbreak rate as mean and spread over runs that differ in one seed.

Give it the result folders of runs of the same config with different ``models.<name>.saes.seed`` (the
organism and datasets shared, e.g. copies of one run's ``resources/`` with ``results/`` removed):

    python benchmarks/seed_spread.py runA runB runC [--model smollm2-organism]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def spread(runs: list[Path], model: str) -> pd.DataFrame:
    """Mean, standard deviation, min and max of every substring-judge jailbreak rate over ``runs``."""
    frames = []
    for run in runs:
        table = pd.read_parquet(run / "results" / model / "metrics" / "jailbreak.parquet")
        frames.append(table.loc[table["judge"] == "substring"].assign(run=run.name))
    rates = pd.concat(frames, ignore_index=True)
    keys = ["variant", "dataset", "method"]
    return rates.groupby(keys)["value"].agg(["mean", "std", "min", "max", "count"]).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-organism")
    args = parser.parse_args()
    table = spread(args.runs, args.model)
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
