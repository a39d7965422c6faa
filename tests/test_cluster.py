"""Snakemake's SLURM executor on a real single-node Slurm cluster (tools/slurm_cluster.sh: munged,
MariaDB, slurmdbd, slurmctld, slurmd; partitions cpu and gpu, one fake GPU), through the test profile
profiles/slurm-local.

The cluster tests run only when selected (`pytest -m cluster`, `make test-cluster`), as root on a
Debian-like machine: the script installs the Slurm packages if missing and starts system daemons. The
module starts the cluster once and stops it at the end (a cluster that was already up is left up).

- test_small_workflow_runs_as_slurm_jobs: a few trivial jobs; every job is an sbatch submission that
  sacct (the plugin's status command) tracks to COMPLETED, and the rule with `resources: gpu=1` is
  submitted with `--gpus=1` and allocated `gres/gpu=1`.
- test_project_job_on_slurm_sees_the_command_line_config: one cheap job of the project's workflow
  (a tiny dataset) gives the same Parquet through the profile as locally.
- test_tiny_workflow_on_slurm_matches_local_run (also `slow`: tens of minutes on 2 cores): the project's
  tiny workflow through the profile gives the same Parquet artifacts as a local run of the same config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "slurm_cluster.sh"
PROFILE = ROOT / "profiles" / "slurm-local"

SMALL_SNAKEFILE = """
localrules: all

rule all:
    input:
        expand("out/{i}.txt", i=range(3)),
        "gpu.txt",

rule work:
    output:
        "out/{i}.txt",
    shell:
        "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION {wildcards.i} > {output}"

rule gpu:
    output:
        "gpu.txt",
    resources:
        gpu=1,
    shell:
        "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION gpu > {output}"
"""


def test_local_profile_keeps_the_slurm_profile_behaviour():
    """profiles/slurm-local repeats profiles/slurm (profiles do not inherit) except for sizes and polling."""
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    local = yaml.safe_load((PROFILE / "config.yaml").read_text())
    sized = {"jobs", "default-resources", "set-resources", "slurm-init-seconds-before-status-checks"}
    assert {k: v for k, v in slurm.items() if k not in sized} == {k: v for k, v in local.items() if k not in sized}
    assert local["default-resources"]["slurm_partition"] == "cpu" and local["jobs"] == 2
    assert set(local["default-resources"]) == set(slurm["default-resources"])
    assert local["default-resources"]["cpus_per_task"] <= (os.cpu_count() or 1)


def _cluster_selected(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr") or ""
    return "cluster" in markexpr and "not cluster" not in markexpr


def _script(command: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster(request):
    """The cluster, started by tools/slurm_cluster.sh (installing packages on first use)."""
    if not _cluster_selected(request.config):
        pytest.skip("starts system daemons: run with -m cluster (make test-cluster)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("tools/slurm_cluster.sh needs root on a Debian-like machine")
    was_up = _script("status", 60).returncode == 0
    started = _script("start", 1800)
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not was_up:
        stopped = _script("stop", 300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def snakemake_on_slurm(workdir: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--profile", str(PROFILE),
           "--verbose", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout)


def submitted_jobids(log: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", log)


def sacct_rows(jobids: list[str], timeout: float = 60) -> dict[str, dict[str, str]]:
    """sacct's record of each job once every job is in a final state (slurmdbd may lag a few seconds)."""
    fields = ["JobIDRaw", "JobName", "State", "Partition", "AllocTRES", "Comment"]
    cmd = ["sacct", "-X", "--parsable2", "--noheader", "--clusters", "all", "-j", ",".join(jobids),
           f"--format={','.join(fields)}"]
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows = {line.split("|")[0]: dict(zip(fields, line.split("|"), strict=True))
                for line in out.splitlines() if line.strip()}
        final = all(rows.get(j, {}).get("State") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                      "OUT_OF_MEMORY", "NODE_FAIL"} for j in jobids)
        if final or time.monotonic() > deadline:
            return rows
        time.sleep(2)


@pytest.mark.cluster
def test_small_workflow_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SMALL_SNAKEFILE)
    started = time.monotonic()
    result = snakemake_on_slurm(tmp_path, timeout=900)
    elapsed = time.monotonic() - started
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    print(f"small workflow on slurm: {elapsed:.0f} s")

    # Four jobs (work x 3, gpu) went through sbatch; the local rule `all` did not.
    jobids = submitted_jobids(log)
    assert len(jobids) == 4, log[-6000:]
    # Each output was written inside its Slurm job: the job's own id and partition.
    written = {}
    for path in [*(tmp_path / "out").glob("*.txt"), tmp_path / "gpu.txt"]:
        jobid, partition, what = path.read_text().split()
        written[jobid] = (partition, what)
    assert set(written) == set(jobids)
    assert sorted(what for _, what in written.values()) == ["0", "1", "2", "gpu"]
    assert {partition for partition, _ in written.values()} == {"cpu"}

    # The plugin tracked the jobs with sacct (its default), and accounting recorded all four as
    # completed, under the run's job name, with the rule in the comment.
    assert "command=sacct" in log
    rows = sacct_rows(jobids)
    assert set(rows) == set(jobids), rows
    assert {row["State"] for row in rows.values()} == {"COMPLETED"}, rows
    assert len({row["JobName"] for row in rows.values()}) == 1
    by_rule = {row["Comment"].split("_wildcards_")[0]: row for row in rows.values()}
    assert set(by_rule) == {"rule_work", "rule_gpu"}

    # `resources: gpu=1` became a GPU request: `--gpus=1` in the sbatch call, gres/gpu=1 allocated.
    calls = [line for line in log.splitlines() if "sbatch call:" in line]
    gpu_calls = [c for c in calls if "--comment rule_gpu " in c]
    assert len(calls) == 4 and len(gpu_calls) == 1
    assert " --gpus=1" in gpu_calls[0]
    assert not any("--gpus" in c for c in calls if c not in gpu_calls)
    assert "gres/gpu=1" in by_rule["rule_gpu"]["AllocTRES"]
    assert all("gres/gpu" not in row["AllocTRES"] for row in rows.values() if row["Comment"] != "rule_gpu")


def failure_report(result: subprocess.CompletedProcess, workdir: Path) -> str:
    """The end of Snakemake's output and of every SLURM job log (a failed job's error is only there)."""
    logs = [f"--- {p.relative_to(workdir)}\n{p.read_text()[-2000:]}"
            for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))]
    return "\n".join([(result.stdout + result.stderr)[-4000:], *logs])


def assert_same_parquet(actual: Path, expected: Path) -> None:
    from refusal_sae.io import read_metadata

    pd.testing.assert_frame_equal(pd.read_parquet(actual), pd.read_parquet(expected), check_exact=False,
                                  rtol=1e-5, atol=1e-8, obj=str(actual))
    assert read_metadata(actual) == read_metadata(expected), actual


@pytest.mark.cluster
def test_project_job_on_slurm_sees_the_command_line_config(slurm_cluster, tmp_path):
    """One job of the project's own workflow (building the tiny `harmless` dataset) through the profile
    writes what a local run writes. A SLURM job parses the Snakefile again, with the command line the
    plugin gives it; Snakemake 9.27 passes it --configfiles but not --replace-workflow-config, so unless
    the Snakefile accounts for that, the job merges config/config.yaml under the tiny config (and the
    merged `harmless` splits sum to 1.7)."""
    import tiny_workflow

    # The dataset job needs no model, but the config check wants the configured model folder to exist
    # before any job runs (a tiny model takes seconds to build).
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config = yaml.safe_dump(tiny_workflow.tiny_config(inputs))
    target = "resources/datasets/harmless.parquet"
    for name, args in (("local", []), ("slurm", ["--profile", str(PROFILE), "--verbose"])):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.yaml").write_text(config)
        result = tiny_workflow.run_workflow(workdir, *args, target)
        assert result.returncode == 0, failure_report(result, workdir)
    assert len(submitted_jobids(result.stdout + result.stderr)) == 1
    assert_same_parquet(tmp_path / "slurm" / target, tmp_path / "local" / target)


def parquet_files(workdir: Path) -> list[Path]:
    return sorted(p.relative_to(workdir) for top in ("results", "resources")
                  for p in (workdir / top).rglob("*.parquet"))


@pytest.mark.cluster
@pytest.mark.slow
def test_tiny_workflow_on_slurm_matches_local_run(slurm_cluster, request, tmp_path):
    """The tiny workflow through profiles/slurm-local writes the Parquet a local run of the same config
    writes (same config file, so the same input paths; one thread per job in both)."""
    from tiny_workflow import run_workflow

    # Only now (after the cluster fixture, which skips unless -m cluster): the local run takes minutes.
    finished_run = request.getfixturevalue("finished_run")
    shutil.copy(finished_run / "config.yaml", tmp_path / "config.yaml")
    started = time.monotonic()
    result = run_workflow(tmp_path, "--profile", str(PROFILE), "--verbose")
    print(f"tiny workflow on slurm: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, failure_report(result, tmp_path)
    jobids = submitted_jobids(result.stdout + result.stderr)
    assert jobids, "no job went through sbatch"
    assert {row["State"] for row in sacct_rows(jobids).values()} == {"COMPLETED"}

    local, slurm = parquet_files(finished_run), parquet_files(tmp_path)
    assert local and local == slurm
    for rel in local:
        assert_same_parquet(tmp_path / rel, finished_run / rel)
