"""Process setup shared by the workflow's entry scripts: logging to the rule's log, threads, seeds."""

from __future__ import annotations

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
