"""How much CPU time Snakemake's benchmark files miss, on jobs whose CPU time is known.

Snakemake samples a job's processes (psutil) every 0.5 s for about the first 15 s, then every 30 s,
and writes the CPU time of the last sample: the CPU a job spends after its last sample is not in
``cpu_time``. This runs a throw-away workflow whose jobs each keep one core busy for a given number
of seconds and report their own CPU time (``getrusage``), then prints both per job.

Usage: python benchmarks/benchmark_sampling.py [--seconds 10 20 40 50 70 100] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

SNAKEFILE = '''
SECONDS = config["seconds"]

rule all:
    input: expand("out/{s}.txt", s=SECONDS)

rule burn:
    output: "out/{s}.txt"
    benchmark: "bench/{s}.tsv"
    shell: "{python} burn.py {wildcards.s} > {output}"
'''

BURN = '''
import resource, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 20, 40, 50, 70, 100])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "Snakefile").write_text(SNAKEFILE.replace("{python}", sys.executable))
        (root / "burn.py").write_text(BURN)
        seconds = [f"{s:g}" for s in args.seconds]
        (root / "config.json").write_text(json.dumps({"seconds": seconds}))
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--quiet", "all",
                        "--configfile", "config.json"], cwd=root, check=True)
        rows = []
        for s in seconds:
            bench = pd.read_csv(root / "bench" / f"{s}.tsv", sep="\t")
            true_cpu = float((root / "out" / f"{s}.txt").read_text())
            rows.append({"wall_s": float(bench["s"].iloc[-1]), "benchmark_cpu_s": float(bench["cpu_time"].iloc[-1]),
                         "job_cpu_s": true_cpu})
    table = pd.DataFrame(rows)
    table["missed"] = 1 - table["benchmark_cpu_s"] / table["job_cpu_s"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    missed = 1 - table["benchmark_cpu_s"].sum() / table["job_cpu_s"].sum()
    print(f"\nbenchmark files (cpu_time) vs the jobs' own getrusage: {missed:.1%} of the CPU time missed")


if __name__ == "__main__":
    main()
