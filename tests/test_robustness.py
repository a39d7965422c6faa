"""Robustness of the whole tiny workflow (issue 19): a second clean run writes the same Parquet artifacts
as the first (determinism), and a run SIGKILLed in the middle of a sharded generation job, then unlocked
and rerun with ``--rerun-incomplete``, writes the same artifacts too, reusing the shards it had finished.

All three runs read one set of inputs through one config, so an artifact's embedded settings are the same
in each and the files can be compared byte for byte, not only by their frames."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from tiny_workflow import ROOT, SNAKEMAKE, run_workflow, tiny_config

pytestmark = pytest.mark.slow

COMPARED = ("results", "resources/datasets")
"""Where the compared Parquet files live, relative to a workdir."""

SHARD = re.compile(r"^results/(?P<model>[^/]+)/generations/(?P<dataset>[^/]+)/\.(?P<method>[^/]+)\.shards/"
                   r"shard_\d{5}\.parquet$")
"""A finished shard of a generation job (``workflow_scripts/generate.py``'s ``shard_dir``)."""


def parquet_files(workdir: Path) -> dict[str, Path]:
    """Every Parquet file under the compared folders, by path relative to ``workdir``."""
    return {str(path.relative_to(workdir)): path
            for folder in COMPARED for path in sorted((workdir / folder).rglob("*.parquet"))}


def first_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """The first column (in ``a``'s order) whose values or type differ, with the first differing row."""
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} != {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} rows != {len(b)} rows"
    for column in a.columns:
        x, y = a[column], b[column]
        if x.equals(y):
            continue
        if x.dtype != y.dtype:
            return f"column {column!r}: dtype {x.dtype} != {y.dtype}"
        same = (x == y) | (x.isna() & y.isna())
        row = int((~same.to_numpy(dtype=bool)).argmax())
        return f"column {column!r}, row {row}: {x.iloc[row]!r} != {y.iloc[row]!r}"
    return "index differs"


def artifact_differences(reference: Path, other: Path) -> list[str]:
    """One line per Parquet file that is missing from either run, or whose frame or bytes differ."""
    ours, theirs = parquet_files(reference), parquet_files(other)
    problems = [f"{name}: only in {'the reference' if name in ours else 'the other run'}"
                for name in sorted(ours.keys() ^ theirs.keys())]
    for name in sorted(ours.keys() & theirs.keys()):
        if ours[name].read_bytes() == theirs[name].read_bytes():
            continue
        a, b = pd.read_parquet(ours[name]), pd.read_parquet(theirs[name])
        if not a.equals(b):
            problems.append(f"{name}: {first_difference(a, b)}")
            continue
        # Same frame, other bytes: name the key-value metadata entries that differ, if any do.
        meta_a = pq.read_schema(ours[name]).metadata or {}
        meta_b = pq.read_schema(theirs[name]).metadata or {}
        keys = sorted(k.decode() for k in meta_a.keys() | meta_b.keys() if meta_a.get(k) != meta_b.get(k))
        problems.append(f"{name}: same frame, other bytes (metadata keys differing: {keys})")
    return problems


@dataclass(frozen=True)
class Kill:
    """Where the killed run stood when it was killed."""

    output: str
    """The generation job's output, relative to the workdir (absent at the kill)."""
    log: str
    """That job's log, relative to the workdir."""
    shards: dict[str, float]
    """The shards it had finished: path relative to the workdir -> modification time."""
    killed_at: float


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> dict:
    """The tiny workflow's config over one set of input files, shared by every run of this module."""
    return tiny_config(tmp_path_factory.mktemp("inputs"))


def new_workdir(tmp_path_factory, name: str, config: dict) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def complete_run(workdir: Path, *args: str) -> Path:
    started = time.monotonic()
    result = run_workflow(workdir, *args)
    assert result.returncode == 0, result.stderr[-6000:]
    print(f"{workdir.name}: {' '.join(args) or 'run'} took {time.monotonic() - started:.0f} s")
    return workdir


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_inputs) -> Path:
    """One uninterrupted run, the one the others are compared with."""
    return complete_run(new_workdir(tmp_path_factory, "reference", tiny_inputs))


def finished_shards(workdir: Path) -> dict[str, list[str]]:
    """Shards on disk of generation jobs whose output does not exist yet, by that output."""
    found: dict[str, list[str]] = {}
    for path in (workdir / "results").glob("*/generations/*/.*.shards/shard_*.parquet"):
        rel = str(path.relative_to(workdir))
        match = SHARD.match(rel)
        if match is None:
            continue
        output = "results/{model}/generations/{dataset}/{method}.parquet".format(**match.groupdict())
        if not (workdir / output).exists():
            found.setdefault(output, []).append(rel)
    return found


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL the Snakemake process group (its jobs run in it) and any descendant that left it."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group had already exited
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(descendants, timeout=60)


def run_until_a_shard(workdir: Path, *args: str) -> Kill | None:
    """Run the workflow and SIGKILL it as soon as a generation job has finished a shard but not its output.

    Returns ``None`` if, by the time the kill landed, that job had finished anyway (a lost race)."""
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", "--max-threads", "1", *args]
    with open(workdir / f"killed_run_{len(list(workdir.glob('killed_run_*')))}.log", "w") as out:
        # A new session makes Snakemake a process group leader, so one killpg reaches every job it started.
        process = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                found = finished_shards(workdir)
                if found:
                    kill_process_tree(process)
                    killed_at = time.time()
                    break
                if process.poll() is not None:
                    pytest.fail(f"the workflow ended (rc {process.returncode}) before any shard was seen: "
                                f"see {out.name}")
                time.sleep(0.01)
        finally:
            if process.poll() is None:
                kill_process_tree(process)
    output, shards = next(iter(found.items()))
    if (workdir / output).exists() or not all((workdir / s).exists() for s in shards):
        return None
    log = output.replace("results/", "logs/", 1).removesuffix(".parquet") + ".log"
    return Kill(output, log, {s: (workdir / s).stat().st_mtime for s in shards}, killed_at)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_inputs) -> tuple[Path, Kill]:
    """A run SIGKILLed during a sharded generation job, then unlocked and run to the end."""
    workdir = new_workdir(tmp_path_factory, "resumed", tiny_inputs)
    kill = run_until_a_shard(workdir)
    for _ in range(3):  # a lost race (the job finished as the kill landed) is retried on a later job
        if kill is not None:
            break
        assert run_workflow(workdir, "--unlock").returncode == 0
        kill = run_until_a_shard(workdir, "--rerun-incomplete")
    assert kill is not None, "no kill landed between a generation job's first shard and its output"
    print(f"killed during {kill.output} with {sorted(kill.shards)} on disk")
    # Snakemake's lock outlives a SIGKILL; without --unlock the rerun refuses to start.
    locked = run_workflow(workdir)
    assert locked.returncode != 0 and "cannot be locked" in locked.stderr + locked.stdout
    assert run_workflow(workdir, "--unlock").returncode == 0
    return complete_run(workdir, "--rerun-incomplete"), kill


def test_a_second_clean_run_writes_the_same_artifacts(tmp_path_factory, tiny_inputs, reference_run):
    second = complete_run(new_workdir(tmp_path_factory, "second", tiny_inputs))
    assert len(parquet_files(reference_run)) > 50, "the reference run wrote too few artifacts to compare"
    assert artifact_differences(reference_run, second) == []


def test_a_killed_and_resumed_run_reuses_its_shards_and_writes_the_same_artifacts(resumed_run, request):
    workdir, kill = resumed_run
    assert all(mtime <= kill.killed_at for mtime in kill.shards.values())
    log = (workdir / kill.log).read_text()  # Snakemake deletes a job's old log before it reruns the job
    for shard in kill.shards:
        assert f"{shard}: reusing the stored shard" in log, f"{shard} was recomputed, not reused:\n{log[-3000:]}"
    assert not (workdir / kill.output).with_name(f".{Path(kill.output).stem}.shards").exists()
    # The reference is asked for last, so a resume that fails the checks above fails without a second run.
    assert artifact_differences(request.getfixturevalue("reference_run"), workdir) == []
