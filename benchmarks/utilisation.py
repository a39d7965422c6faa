"""CPU time and core utilisation of a workflow run, from Snakemake's benchmark files.

Every rule writes ``benchmarks/out/.../*.tsv`` (wall seconds ``s`` and ``cpu_time``, user + system
seconds of the job's processes). A file's modification time is the job's end, so ``end - s`` is its
start; the run's wall time is the first start to the last end, and

    utilisation = sum(cpu_time) / (cores x wall)

(1.0: every core busy for the whole run). Snakemake samples a job's CPU time every 30 s after its first
~15 s and keeps the last sample, so each job's last seconds are missing and this undercounts
(``benchmarks/benchmark_sampling.py`` measures by how much). ``--logs logs`` reads instead the line every
entry script logs when its process exits (``refusal_sae.runtime.start``: the exact CPU of the process,
its threads and children, with its start and end), the latest one of each log, grouped by the log's
folder. Benchmark files are grouped by rule (the file name without its wildcards is not recoverable in
general, so the grouping is the file stem with trailing wildcard values cut at the first ``_`` that
follows a known prefix); ``--by-file`` lists every job.

Usage: python benchmarks/utilisation.py [benchmarks/out] [--cores 2] [--by-file] [--logs logs]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

# Benchmark file stems start with the rule name; these rules append wildcard values after an underscore.
_PREFIXES = ("dataset", "baseline_metrics", "baseline_report", "baseline", "train_sae_layer", "generate", "judge",
             "induction", "attribution", "prompt_feature_set", "evaluation_metrics")


def job_table(root: Path) -> pd.DataFrame:
    """One row per benchmark file: path, rule group, start, end, wall and CPU seconds."""
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if frame.empty:
            continue
        wall, cpu = float(frame["s"].iloc[-1]), float(frame["cpu_time"].iloc[-1])
        end = path.stat().st_mtime
        stem = path.stem
        group = next((p for p in _PREFIXES if stem == p or stem.startswith(p + "_")), stem)
        rows.append({"file": str(path.relative_to(root)), "rule": group, "start": end - wall, "end": end,
                     "wall_s": wall, "cpu_s": cpu})
    return pd.DataFrame(rows)


_RESOURCES = re.compile(r"job resources: cpu_s=(?P<cpu>[\d.]+) wall_s=(?P<wall>[\d.]+) "
                        r"start=(?P<start>[\d.]+) end=(?P<end>[\d.]+)")


def logged_jobs(root: Path, since: float | None = None) -> pd.DataFrame:
    """One row per job log (``root/**/*.log``) whose latest resources line ended after ``since`` (epoch
    seconds; every one when None): the same columns as :func:`job_table`, the rule group being the
    log's folder under ``root``."""
    rows = []
    for path in sorted(root.rglob("*.log")):
        found = _RESOURCES.findall(path.read_text(errors="replace"))
        if not found:
            continue
        cpu, wall, start, end = (float(v) for v in found[-1])
        if since is not None and end < since:
            continue
        relative = path.relative_to(root)
        rows.append({"file": str(relative), "rule": str(relative.parent if len(relative.parts) > 1 else relative.stem),
                     "start": start, "end": end, "wall_s": wall, "cpu_s": cpu})
    return pd.DataFrame(rows, columns=["file", "rule", "start", "end", "wall_s", "cpu_s"])


def summary(jobs: pd.DataFrame, cores: int) -> dict[str, float]:
    """Run wall time, total CPU time and utilisation of the jobs in ``jobs``."""
    wall = float(jobs["end"].max() - jobs["start"].min())
    cpu = float(jobs["cpu_s"].sum())
    return {"jobs": len(jobs), "wall_s": wall, "cpu_s": cpu, "utilisation": cpu / (cores * wall) if wall else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="benchmarks/out", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--by-file", action="store_true", help="one row per job instead of per rule")
    parser.add_argument("--logs", type=Path, help="read the jobs' exact resources lines under this folder instead")
    args = parser.parse_args()
    jobs = logged_jobs(args.logs) if args.logs else job_table(args.root)
    if jobs.empty:
        raise SystemExit(f"{args.logs or args.root}: no " + ("job resources lines" if args.logs else "benchmark files"))
    key = "file" if args.by_file else "rule"
    table = jobs.groupby(key).agg(jobs=("wall_s", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"))
    table = table.sort_values("cpu_s", ascending=False)
    table["cpu_share"] = table["cpu_s"] / table["cpu_s"].sum()
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    total = summary(jobs, args.cores)
    print(f"\n{total['jobs']} jobs; wall {total['wall_s'] / 60:.1f} min; CPU {total['cpu_s'] / 60:.1f} min; "
          f"utilisation {total['utilisation']:.3f} on {args.cores} cores")


if __name__ == "__main__":
    main()
