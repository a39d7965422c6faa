"""Process setup shared by the workflow's entry scripts: logging to the rule's log, threads, seeds."""

from __future__ import annotations

import ast
import atexit
import functools
import hashlib
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import PipelineConfig, load_pipeline_config


def start(log_path: str | None, threads: int, config: Mapping[str, Any]) -> PipelineConfig:
    """Send stderr (progress bars, warnings) to ``log_path``, set torch threads and seeds, and log the
    process's exact CPU and wall time when it exits (the ``job resources:`` line).

    torch is set up only when the entry script has imported it by now (through the library modules it
    imports): the table and report jobs never load it (it costs seconds of CPU per job), and a script
    that imports it later still gets ``threads`` through ``OMP_NUM_THREADS`` (and seeds it with
    :func:`seed_everything`). Returns the typed config.
    """
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives for the whole job
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _log_resources_at_exit()
    threads = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    cfg = load_pipeline_config(config)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
        seed_everything(cfg.seed)
    else:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
    return cfg


JOB_RESOURCES = "job resources:"
"""Start of the log line :func:`start` writes when the job's process exits (``benchmarks/utilisation.py``
reads it)."""


@functools.cache  # one line per process, however often start() runs
def _log_resources_at_exit() -> None:
    atexit.register(_log_job_resources, _process_start())


def _process_start() -> float:
    """Epoch seconds at which this process started (when :func:`start` ran, where that is unknown)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return time.time()


def _log_job_resources(started: float) -> None:
    """Log the whole process's CPU (all threads, and children waited for) and wall seconds.

    Snakemake's benchmark files sample a job's CPU every 30 s after its first seconds and keep the last
    sample, so they miss up to 30 s of each job; this line is exact.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    end = time.time()
    logging.getLogger(__name__).info("%s cpu_s=%.3f wall_s=%.3f start=%.3f end=%.3f max_rss_mib=%.0f",
                                     JOB_RESOURCES, cpu, end - started, started, end, own.ru_maxrss / 1024)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def source_fingerprint(path: str | Path) -> str:
    """SHA-256 of a Python module's code with docstrings, comments and layout removed.

    The workflow hashes the modules each rule imports into its params; fingerprinting the syntax tree
    instead of the bytes means a docstring or comment edit does not rerun hours of jobs.
    """
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            # Bare string statements are docstrings (module, class, function or attribute ones).
            kept = [
                stmt for stmt in body
                if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                        and isinstance(stmt.value.value, str))
            ]
            node.body = kept or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()
