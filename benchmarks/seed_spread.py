"""Run-to-run spread: each method's jailbreak rate, and its paired difference from ours_global, as mean
and spread over runs that differ in one seed.

Give it the run folders of the same config with different ``models.<name>.saes.seed`` (e.g. copies of one
finished run, each rerun with an overlay setting the seed: the SAEs and everything that reads them are
redone, the organism, datasets and direction are kept):

    python benchmarks/seed_spread.py runA runB runC [--model smollm2-organism]

Rows present in only some runs (a variant or dataset one run did not evaluate) count only those runs
(``count``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["variant", "dataset", "method"]


def _collect(runs: list[Path], model: str, name: str) -> pd.DataFrame:
    frames = [pd.read_parquet(run / "results" / model / "metrics" / f"{name}.parquet").assign(run=run.name)
              for run in runs]
    return pd.concat(frames, ignore_index=True)


def spread(runs: list[Path], model: str) -> pd.DataFrame:
    """Mean, standard deviation, min and max over ``runs`` of every substring-judge jailbreak rate."""
    rates = _collect(runs, model, "jailbreak")
    rates = rates.loc[rates["judge"] == "substring"]
    return rates.groupby(KEYS)["value"].agg(["mean", "std", "min", "max", "count"]).reset_index()


def paired_spread(runs: list[Path], model: str, reference: str = "ours_global") -> pd.DataFrame:
    """Per run, ``reference`` minus each other method's jailbreak rate on the same prompts
    (``metrics/paired.parquet``) and its McNemar p; over runs: mean, sd, min, max of the difference and
    how many runs have p < 0.05 with each sign."""
    paired = _collect(runs, model, "paired")
    paired = paired.loc[(paired["metric"] == "jailbreak_rate_diff") & (paired["method"] == reference)]
    significant = paired["p_value"] < 0.05
    paired = paired.assign(ours_better=significant & (paired["value"] > 0),
                           ours_worse=significant & (paired["value"] < 0))
    grouped = paired.groupby(["variant", "dataset", "baseline"])
    table = grouped["value"].agg(["mean", "std", "min", "max", "count"])
    table["runs_ours_better_p05"] = grouped["ours_better"].sum()
    table["runs_ours_worse_p05"] = grouped["ours_worse"].sum()
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-organism")
    args = parser.parse_args()
    print(spread(args.runs, args.model).to_markdown(index=False, floatfmt=".3f"))
    print()
    print(paired_spread(args.runs, args.model).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
