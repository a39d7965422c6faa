"""Process setup shared by the workflow's entry scripts: logging to the rule's log, threads, seeds."""

from __future__ import annotations

import ast
import hashlib
import logging
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import PipelineConfig, load_pipeline_config


def start(log_path: str | None, threads: int, config: Mapping[str, Any]) -> PipelineConfig:
    """Send stderr (progress bars, warnings) to ``log_path``, set torch threads and seeds.

    Returns the typed config.
    """
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives for the whole job
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, int(threads)))
    cfg = load_pipeline_config(config)
    seed_everything(cfg.seed)
    return cfg


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
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
