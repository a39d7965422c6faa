"""Batched greedy generation under interventions, and resumable sharded runs.

Every edit goes through :func:`refusal_sae.interventions.intervene`, so a clamp acts on the prompt
and on every generated token (the KV-cached steps included). Per-prompt feature sets arrive as a
callable that receives the batch's rows *in input order*; :func:`rows_of` restricts a
:class:`~refusal_sae.interventions.FeatureEdit`'s ``row_active`` to those rows, which keeps each
prompt paired with its own feature set even though batches are formed after sorting by length
(METHOD.md section 14: the original misaligned per-prompt lists with prompt indices).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .interventions import (
    EditsForRows,
    HoldLatents,
    ResidualEdit,
    SecondHalf,
    Simultaneous,
    edits_for_rows,
    intervene,
)
from .io import read_metadata, read_parquet, write_parquet
from .models import ChatModel
from .scoring import refusal_score_from_logits

log = logging.getLogger(__name__)

ShardRunner = Callable[[list[str], list[str]], pd.DataFrame]


def prompt_lengths(chat: ChatModel, prompts: Sequence[str]) -> list[int]:
    """Token count of each chat-rendered prompt (as :meth:`ChatModel.tokenize` would see it)."""
    if not prompts:
        return []
    ids = chat.tokenizer(chat.render(prompts), add_special_tokens=False)["input_ids"]
    return [len(row) for row in ids]


@contextlib.contextmanager
def _first_logits(model: torch.nn.Module) -> Iterator[list[Tensor]]:
    """Collects the unembedding's output at the last position of the first forward call (the prefill).

    Read from the output layer itself rather than from generate's returned scores, which would keep
    every step's full-vocabulary logits (gigabytes for a 256k vocabulary) or pass them through
    logits processors first.
    """
    captured: list[Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        if not captured:
            captured.append(output[:, -1].detach().float().cpu())

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class _CopyFollowsEdited(LogitsProcessor):
    """Greedy steps of a doubled batch: the unedited copy (first half) takes the edited rows' tokens."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        half = scores.shape[0] // 2
        scores = scores.clone()
        scores[:half] = scores[half:]
        return scores


@torch.no_grad()
def generate_scored(
    chat: ChatModel,
    prompts: Sequence[str],
    edits: Sequence[ResidualEdit] | EditsForRows = (),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
    hold: HoldLatents | None = None,
) -> tuple[list[str], Tensor]:
    """Greedy completions of ``prompts`` under ``edits`` and the refusal score of their first token.

    Completions are in input order, decoded without special tokens. The score is
    :func:`~refusal_sae.scoring.refusal_score_from_logits` of the first generation step's logits
    (the prompt's last position, under the same edits): a continuous measure of how much the edited
    model still leans towards refusing, read from the forward pass generation runs anyway.

    Prompts are batched longest first (less padding per batch, and an out-of-memory batch fails at
    once rather than at the end). A callable ``edits`` receives each batch's rows as a ``LongTensor``
    of input indices, in the order of the batch's rows.

    ``hold``: latents kept at their unedited values while ``edits`` act. Each batch of ``batch_size // 2``
    prompts then runs beside an unedited copy of itself that is fed the edited rows' tokens (``batch_size``
    rows per forward); :class:`~refusal_sae.interventions.HoldLatents` copies the held latents from the
    copy, in one splice with the edits of the same layer (:class:`~refusal_sae.interventions.Simultaneous`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hold is not None:
        batch_size = max(1, batch_size // 2)
    n = len(prompts)
    lengths = prompt_lengths(chat, prompts)
    # sorted() is stable, so equal-length prompts keep their input order (deterministic batches).
    order = sorted(range(n), key=lambda i: -lengths[i])
    out: list[str | None] = [None] * n
    scores = torch.full((n,), float("nan"))
    pad_id = chat.tokenizer.pad_token_id
    with tqdm(total=n, desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            rows = torch.tensor(index, dtype=torch.long)
            batch = chat.tokenize([prompts[i] for i in index])
            batch_edits, extra = list(edits_for_rows(edits, rows)), {}
            if hold is not None:
                batch = {key: torch.cat([value, value]) for key, value in batch.items()}
                batch_edits = [Simultaneous([hold, *(SecondHalf(edit) for edit in batch_edits)])]
                extra["logits_processor"] = LogitsProcessorList([_CopyFollowsEdited()])
            with intervene(chat.model, batch_edits), _first_logits(chat.model) as first:
                generated = chat.model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, **extra
                )
            new = generated[:, batch["input_ids"].shape[1]:][-len(index):]
            scores[rows] = refusal_score_from_logits(first[0][-len(index):], chat.facts.refusal_token_ids)
            for i, text in zip(index, chat.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text
            bar.update(len(index))
    return [text if text is not None else "" for text in out], scores


def generate(
    chat: ChatModel,
    prompts: Sequence[str],
    edits: Sequence[ResidualEdit] | EditsForRows = (),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` under ``edits``, in input order (see :func:`generate_scored`)."""
    return generate_scored(chat, prompts, edits, max_new_tokens, batch_size, progress)[0]


def _shard_path(shard_dir: Path, number: int) -> Path:
    return shard_dir / f"shard_{number:05d}.parquet"


def _ids_in_order(df: pd.DataFrame) -> list[str]:
    """Distinct prompt ids in row order (a shard may hold several rows per prompt)."""
    return [str(x) for x in dict.fromkeys(df["prompt_id"].tolist())]


def _usable_shard(path: Path, ids: list[str], metadata: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """The stored shard if it holds exactly ``ids`` and was made with ``metadata``; else ``None``."""
    if not path.exists():
        return None
    try:
        df = read_parquet(path)
        stored_meta = read_metadata(path)
    except Exception as exc:  # a truncated or foreign file is recomputed, not trusted
        log.warning("%s: unreadable shard (%s); recomputing", path, exc)
        return None
    if "prompt_id" not in df.columns or _ids_in_order(df) != ids:
        log.warning("%s: prompt ids differ from this shard's prompts; recomputing", path)
        return None
    if metadata is not None and stored_meta.get("settings") != _jsonable(metadata):
        log.warning("%s: made with other settings; recomputing", path)
        return None
    return df


def _jsonable(metadata: Mapping[str, Any]) -> Any:
    # Compare settings the way they come back from Parquet metadata (JSON round trip).
    return json.loads(json.dumps(dict(metadata), default=str, sort_keys=True))


def generate_sharded(
    prompt_ids: Sequence[str],
    prompts: Sequence[str],
    shard_dir: Path,
    shard_size: int,
    run_shard: ShardRunner,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``run_shard`` over consecutive shards of the prompts, resuming from shards on disk.

    Each finished shard is written atomically to ``shard_dir/shard_NNNNN.parquet``; a rerun reuses
    every stored shard whose prompt ids (and ``metadata``, when given) match and recomputes the rest,
    so an interrupted run only redoes unfinished shards. ``run_shard(ids, prompts)`` must return a
    frame with a ``prompt_id`` column covering exactly its prompts (any number of rows per prompt).
    Returns all shards concatenated, rows grouped by prompt in input order.
    """
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = [str(x) for x in prompt_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt_ids must be unique (shards are matched by prompt id)")
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    starts = range(0, len(ids), shard_size)
    for number, start in enumerate(tqdm(starts, desc="shards", unit="shard", disable=not progress)):
        shard_ids = ids[start:start + shard_size]
        path = _shard_path(shard_dir, number)
        df = _usable_shard(path, shard_ids, metadata)
        if df is not None:
            # Said in the job's log so a resumed run shows (and tests check) which work it skipped.
            log.info("%s: reusing the stored shard (%d prompts)", path, len(shard_ids))
        else:
            df = run_shard(shard_ids, list(prompts[start:start + shard_size]))
            df = _check_and_order(df, shard_ids)
            stored = {"settings": _jsonable(metadata)} if metadata is not None else None
            write_parquet(df, path, metadata=stored)
        frames.append(df)
    if not frames:
        return pd.DataFrame({"prompt_id": pd.Series([], dtype=object)})
    return pd.concat(frames, ignore_index=True)


def _check_and_order(df: pd.DataFrame, shard_ids: list[str]) -> pd.DataFrame:
    """Reject a shard result that misses or adds prompts; order its rows by prompt position."""
    if "prompt_id" not in df.columns:
        raise ValueError("run_shard must return a frame with a prompt_id column")
    df = df.assign(prompt_id=df["prompt_id"].astype(str))
    got = set(df["prompt_id"])
    if got != set(shard_ids):
        missing = sorted(set(shard_ids) - got)[:5]
        extra = sorted(got - set(shard_ids))[:5]
        raise ValueError(f"run_shard returned the wrong prompts (missing {missing}, unexpected {extra})")
    position = {pid: i for i, pid in enumerate(shard_ids)}
    key = df["prompt_id"].map(position)
    # A stable sort keeps a prompt's several rows (settings, judges) in the order run_shard gave them.
    return df.iloc[key.argsort(kind="stable")].reset_index(drop=True)
