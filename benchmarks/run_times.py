"""Wall time of a full run and of the no-change rerun, on this machine.

Runs ``snakemake --cores N --workflow-profile profiles/default`` in the working directory (the first
run does whatever is not done yet: on a fresh checkout, everything), then once more with nothing
changed, and prints both wall times, the CPU time of all their processes, and the first run's
utilisation from its benchmark files and from the exact resources line each job logs
(``benchmarks/utilisation.py``).

Usage: python benchmarks/run_times.py [--cores 2] [-- extra snakemake arguments]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from utilisation import job_table, logged_jobs, summary  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of every child process) of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="further snakemake arguments (after --)")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--workflow-profile",
           "profiles/default", *args.extra]
    started = time.time()
    first_wall, first_cpu = timed(cmd)
    again_wall, again_cpu = timed(cmd)
    print(f"first run: wall {first_wall / 60:.1f} min, CPU {first_cpu / 60:.1f} min "
          f"({first_cpu / (args.cores * first_wall):.3f} of {args.cores} cores)")
    print(f"no-change rerun: wall {again_wall:.1f} s, CPU {again_cpu:.1f} s")
    jobs = job_table(Path("benchmarks/out"))
    if not jobs.empty:
        total = summary(jobs, args.cores)
        print(f"benchmark files: {total['jobs']} jobs, CPU {total['cpu_s'] / 60:.1f} min, "
              f"utilisation {total['utilisation']:.3f}")
    jobs = logged_jobs(Path("logs"), since=started)
    if not jobs.empty:
        total = summary(jobs, args.cores)
        print(f"job logs (exact): {total['jobs']} jobs, CPU {total['cpu_s'] / 60:.1f} min, "
              f"utilisation {total['utilisation']:.3f}")


if __name__ == "__main__":
    main()
