"""Stage glue shared by entry scripts: a model's SAEs, its chosen direction, and prompt pools.

Each function reads artifacts written by an earlier stage, so scripts stay one call per step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from .config import ModelConfig, PipelineConfig
from .data import select_prompts
from .io import read_parquet
from .models import ChatModel, load_chat_model, pick_device
from .saes import load_saes


def load_model_saes(saes_manifest: str | os.PathLike, spec: ModelConfig, d_model: int, device: str = "auto"):
    """The SAEs listed by ``resources/saes/{model}/saes.json`` (trained locally or pretrained)."""
    entry = json.loads(Path(saes_manifest).read_text())
    device_name = str(pick_device(device))
    if entry["type"] == "pretrained":
        layers = sorted(int(layer) for layer in entry["ids"])
        return load_saes(spec.saes, layers, d_model, device=device_name)
    if entry["type"] == "local":
        return load_saes(spec.saes, entry["layers"], d_model, device=device_name, local_dir=Path(entry["dir"]))
    raise ValueError(f"{saes_manifest}: model has no SAEs (type {entry['type']!r})")


def load_direction(direction_path: str | os.PathLike) -> tuple[Tensor, int, int]:
    """The chosen refusal direction (unnormalised), its layer and position."""
    frame = read_parquet(direction_path)
    row = frame.loc[frame["chosen"]].iloc[0]
    return torch.tensor(list(row["vector"]), dtype=torch.float32), int(row["layer"]), int(row["position"])


def pool(frames: Sequence[pd.DataFrame], label: str, splits: Sequence[str], limit: int | None = None,
         seed: int = 0) -> pd.DataFrame:
    """Rows with ``label`` from the given splits of several datasets (seeded subset of ``limit``)."""
    rows = pd.concat([f.loc[f["label"] == label] for f in frames], ignore_index=True)
    return select_prompts(rows, list(splits), limit, seed)


def evaluation_rows(dataset_frame: pd.DataFrame, cfg: PipelineConfig) -> pd.DataFrame:
    """The evaluation prompts of one dataset: its test split, at most ``evaluation.max_prompts``."""
    return select_prompts(dataset_frame, ["test"], cfg.evaluation.max_prompts, cfg.seed)


def fitting_pools(frames: dict[str, pd.DataFrame], cfg: PipelineConfig) -> dict[str, pd.DataFrame]:
    """Prompts that directions and feature sets are fitted on: ``harmful``/``harmless`` x ``train``/``val``.

    Held-out (default): the train and val splits of every dataset. In-sample variant
    (``evaluation.in_sample``, the studies' original setting): the harmful training pool is the
    evaluation prompts themselves.
    """
    values = list(frames.values())
    pools = {
        "harmful_train": pool(values, "harmful", ["train"]),
        "harmless_train": pool(values, "harmless", ["train"]),
        "harmful_val": pool(values, "harmful", ["val"]),
        "harmless_val": pool(values, "harmless", ["val"]),
    }
    if cfg.evaluation.in_sample:
        pools["harmful_train"] = pd.concat(
            [evaluation_rows(frames[name], cfg) for name in cfg.evaluation.datasets], ignore_index=True
        )
    return pools


@dataclass
class Stage:
    """What a discovery or evaluation job works with: the model, its settings, SAEs and direction."""

    spec: ModelConfig
    chat: ChatModel
    saes: dict | None = None
    direction: Tensor | None = None


def open_stage(
    cfg: PipelineConfig,
    model: str,
    model_manifest: str | os.PathLike,
    saes_manifest: str | os.PathLike | None = None,
    direction_path: str | os.PathLike | None = None,
) -> Stage:
    """Load the model (on ``cfg.device``) and, when their artifacts are given, its SAEs and direction."""
    spec = cfg.models[model]
    chat = load_chat_model(model_manifest, spec.refusal_tokens, cfg.device)
    saes = load_model_saes(saes_manifest, spec, chat.facts.d_model, cfg.device) if saes_manifest else None
    direction = load_direction(direction_path)[0] if direction_path else None
    return Stage(spec, chat, saes, direction)
