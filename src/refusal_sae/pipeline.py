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
from .data import normalised_prompts, select_prompts
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
    if entry["type"] == "local":  # trained here: under "dir"; given as sae-lens directories: path_template
        local_dir = Path(entry["dir"]) if "dir" in entry else None
        return load_saes(spec.saes, entry["layers"], d_model, device=device_name, local_dir=local_dir)
    raise ValueError(f"{saes_manifest}: model has no SAEs (type {entry['type']!r})")


def load_direction(direction_path: str | os.PathLike) -> tuple[Tensor, int, int]:
    """The chosen refusal direction (unnormalised), its layer and position."""
    frame = read_parquet(direction_path)
    row = frame.loc[frame["chosen"]].iloc[0]
    return torch.tensor(list(row["vector"]), dtype=torch.float32), int(row["layer"]), int(row["position"])


def pool(frames: Sequence[pd.DataFrame], label: str, splits: Sequence[str], limit: int | None = None,
         seed: int = 0) -> pd.DataFrame:
    """Rows with ``label`` from the given splits of several datasets (seeded subset of ``limit``).

    A prompt that two datasets share (ignoring case and whitespace) is kept once, from the first.
    """
    rows = pd.concat([f.loc[f["label"] == label] for f in frames], ignore_index=True)
    rows = rows.loc[~normalised_prompts(rows["prompt"]).duplicated()]
    return select_prompts(rows.reset_index(drop=True), list(splits), limit, seed)


def evaluation_rows(dataset_frame: pd.DataFrame, cfg: PipelineConfig) -> pd.DataFrame:
    """The evaluation prompts of one dataset: its test split, at most ``evaluation.max_prompts`` (a seeded
    subset, or the first in file order with ``evaluation.selection: first``)."""
    return select_prompts(dataset_frame, ["test"], cfg.evaluation.max_prompts, cfg.seed,
                          first=cfg.evaluation.selection == "first")


def fitting_pools(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Prompts that directions and feature sets are fitted on: ``harmful``/``harmless`` x ``train``/``val``
    of every dataset (the in-sample variant fits on evaluation prompts in its own rules)."""
    values = list(frames.values())
    return {
        "harmful_train": pool(values, "harmful", ["train"]),
        "harmless_train": pool(values, "harmless", ["train"]),
        "harmful_val": pool(values, "harmful", ["val"]),
        "harmless_val": pool(values, "harmless", ["val"]),
    }


@dataclass
class Stage:
    """What a discovery or evaluation job works with: the model, its settings, SAEs and direction."""

    spec: ModelConfig
    chat: ChatModel
    saes: dict | None = None
    direction: Tensor | None = None
    direction_layer: int | None = None


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
    direction, layer, _ = load_direction(direction_path) if direction_path else (None, None, None)
    return Stage(spec, chat, saes, direction, layer)


def aggregation_start(chat: ChatModel, cfg: PipelineConfig) -> int:
    """First position (from each row's first real token) that attributions average over."""
    if cfg.attribution.aggregate_from == "after_system":
        return chat.facts.system_length
    return chat.facts.prefix_length


def la_ig_options(chat: ChatModel, cfg: PipelineConfig) -> dict:
    """Keyword arguments of :func:`~refusal_sae.attribution.la_ig` (and the AP baseline) from the config."""
    a = cfg.attribution
    return {"n_steps": a.n_steps, "target_token": a.target_token, "batch_size": a.batch_size,
            "start": aggregation_start(chat, cfg), "exclude_refusal": a.target_excludes_refusal, "path": a.ig_path}


def in_sample_pools(
    dataset_frame: pd.DataFrame, baseline: pd.DataFrame, fitting_prompts: pd.DataFrame, cfg: PipelineConfig,
) -> dict[str, pd.DataFrame]:
    """What the in-sample variant fits on for one evaluation dataset.

    ``harmful``: the dataset's evaluation prompts that the model refuses (first greedy token a refusal
    token, from its baseline artifact), as the studies filtered their fitting prompts; ``harmless_train`` /
    ``harmless_val``: the refusal-filtered harmless prompts of the held-out fitting pools
    (``direction/prompts.parquet``). Raises ``ValueError`` when the model refuses none of the prompts.
    """
    rows = evaluation_rows(dataset_frame, cfg)
    refused = set(baseline.loc[baseline["first_token_refusal"], "prompt_id"])
    harmful = rows.loc[rows["prompt_id"].isin(refused)].reset_index(drop=True)
    if harmful.empty:
        raise ValueError("in-sample variant: the model refuses none of this dataset's evaluation prompts")
    kept = fitting_prompts.loc[fitting_prompts["kept"] & (fitting_prompts["label"] == "harmless")]
    return {
        "harmful": harmful,
        "harmless_train": kept.loc[kept["role"] == "train"].reset_index(drop=True),
        "harmless_val": kept.loc[kept["role"] == "val"].reset_index(drop=True),
    }


def studyb_prompts(dataset_frame: pd.DataFrame, baseline: pd.DataFrame, cfg: PipelineConfig) -> pd.DataFrame:
    """Study B's prompts of one dataset: the evaluation prompts the model refuses (first greedy token a
    refusal token), the first ``studyb.max_prompts`` of them."""
    rows = evaluation_rows(dataset_frame, cfg)
    refused = set(baseline.loc[baseline["first_token_refusal"], "prompt_id"])
    return rows.loc[rows["prompt_id"].isin(refused)].head(cfg.studyb.max_prompts).reset_index(drop=True)
