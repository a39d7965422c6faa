"""Adversarial variants of explicit harmful requests and how they suppress refusal features (Study A,
METHOD.md §9), and the activations the OOD probes read (§10).

A *variant* turns an explicit request into an adversarial prompt: a ``template`` holds a
``{{ prompt }}`` slot the request goes into (PyRIT's slot syntax, so its templates are read as they
ship), a ``suffix`` is appended after the request. :func:`build_pairs` makes one pair per (request,
variant) and names it after both, so a pair can only ever hold a request and *its own* variant.

After generation, a pair is a ``jailbreak`` when the model refuses the explicit request and complies
with the variant, ``failed`` when it refuses both, and ``not_refused`` when it does not refuse the
explicit request (nothing to suppress). :func:`latent_activations` reads SAE latents at the last
prompt positions; :func:`relative_drop` is the study's measure, ``(a_explicit - a_variant) /
a_explicit`` of the refusal features' mean activation over the last 5 prompt tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .interventions import Recorder, ResidualEdit, SparseAutoencoder, run_until
from .models import ChatModel

__all__ = [
    "OUTCOMES",
    "PAIR_COLUMNS",
    "SUPPRESSION_COLUMNS",
    "WORD_COLUMNS",
    "Variant",
    "build_pairs",
    "encode_latents",
    "last_token_residuals",
    "latent_activations",
    "outcome",
    "read_variants",
    "refusal_activation",
    "relative_drop",
    "render",
    "suffix_prefixes",
    "suffix_word_table",
    "token_mean_activation",
]

SLOT = re.compile(r"\{\{\s*prompt\s*\}\}")
PAIR_COLUMNS = ["pair_id", "prompt_id", "dataset", "source", "variant_id", "kind", "explicit", "adversarial"]
OUTCOMES = ("jailbreak", "failed", "not_refused")
SUPPRESSION_COLUMNS = ["pair_id", "prompt_id", "dataset", "source", "variant_id", "kind", "outcome",
                       "refusal_explicit", "refusal_adversarial", "refusal_drop", "n_features",
                       "harm_explicit", "harm_adversarial", "harm_drop", "n_harm_features"]
WORD_COLUMNS = ["pair_id", "source", "outcome", "n_words", "word", "refusal_activation", "increment", "top"]


@dataclass(frozen=True)
class Variant:
    """One adversarial rewrite rule: ``kind`` ``template`` (``text`` has a ``{{ prompt }}`` slot) or
    ``suffix`` (``text`` follows the request after a space); ``variant_id`` is unique within ``source``."""

    source: str
    variant_id: str
    kind: str
    text: str


def _check(variant: Variant, where: str) -> Variant:
    if variant.kind not in ("template", "suffix"):
        raise ValueError(f"{where}: kind {variant.kind!r} is not template or suffix")
    if variant.kind == "template" and not SLOT.search(variant.text):
        raise ValueError(f"{where}: template has no {{{{ prompt }}}} slot")
    leftover = SLOT.sub("", variant.text)
    if variant.kind == "template" and ("{{" in leftover or "{%" in leftover):
        raise ValueError(f"{where}: template uses Jinja syntax other than the {{{{ prompt }}}} slot")
    return variant


def read_variants(path: str | Path, fmt: str, kind: str, source: str, limit: int | None = None) -> list[Variant]:
    """The variants of one file: ``lines`` (one per non-empty line, ``#`` lines are comments; ids
    ``{stem}:line{n}``) or ``pyrit_yaml`` (a PyRIT jailbreak template: its ``value``, id = the file stem).
    ``limit`` keeps the first ones in file order. A malformed entry is an error naming file and line.
    Ids are prefixed with the file's stem, so the files of one source never share an id."""
    path = Path(path)
    if fmt == "lines":
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                out.append(_check(Variant(source, f"{path.stem}:line{number}", kind, text), f"{path}:{number}"))
        return out[:limit]
    if fmt == "pyrit_yaml":
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping) or not isinstance(data.get("value"), str):
            raise ValueError(f"{path}: not a PyRIT template (no string `value`)")
        return [_check(Variant(source, path.stem, kind, data["value"].strip()), str(path))][:limit]
    raise ValueError(f"{path}: unknown variant format {fmt!r} (lines, pyrit_yaml)")


def render(variant: Variant, request: str) -> str:
    """The adversarial prompt of ``request`` under ``variant``. A trailing full stop of the request is
    dropped inside templates (several add their own punctuation after the slot)."""
    request = request.strip()
    if variant.kind == "suffix":
        return f"{request} {variant.text}"
    slotted = request[:-1] if request.endswith(".") else request
    return SLOT.sub(lambda _: slotted, variant.text)


def build_pairs(explicit: pd.DataFrame, variants: Sequence[Variant]) -> pd.DataFrame:
    """One row per (explicit request, variant) with :data:`PAIR_COLUMNS`.

    ``explicit`` has ``prompt_id, prompt, dataset``. ``pair_id`` is ``{prompt_id}|{source}/{variant_id}``
    and each row's adversarial prompt is rendered from that row's own request.
    """
    keys = [(v.source, v.variant_id) for v in variants]
    if len(set(keys)) != len(keys):
        raise ValueError("variant ids repeat within a source")
    rows = [
        {"pair_id": f"{pid}|{v.source}/{v.variant_id}", "prompt_id": pid, "dataset": dataset, "source": v.source,
         "variant_id": v.variant_id, "kind": v.kind, "explicit": prompt, "adversarial": render(v, prompt)}
        for pid, prompt, dataset in zip(explicit["prompt_id"], explicit["prompt"], explicit["dataset"], strict=True)
        for v in variants
    ]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def outcome(explicit_refused: bool, variant_refused: bool) -> str:
    """``jailbreak`` (refused, then complied with), ``failed`` (refused both), ``not_refused``."""
    if not explicit_refused:
        return "not_refused"
    return "failed" if variant_refused else "jailbreak"


def _residuals(chat: ChatModel, prompts: Sequence[str], layers: Sequence[int], last_tokens: int,
               batch_size: int, edits: Sequence[ResidualEdit] = ()) -> dict[int, torch.Tensor]:
    """``h_l`` at the last ``last_tokens`` prompt positions: ``{layer: [n, last_tokens, d]}`` (float32, CPU),
    after ``edits`` (those of a recorded layer included)."""
    layers = sorted(set(int(layer) for layer in layers))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        batch = chat.tokenize(list(prompts[start:start + batch_size]))
        if batch["attention_mask"].sum(1).min() < last_tokens:
            raise ValueError(f"a prompt has fewer than {last_tokens} tokens")
        recorder = Recorder(layers)
        # Left padding: the last positions are every prompt's own last tokens.
        run_until(chat.model, [*edits, recorder], last_layer=max(layers), **batch)
        for layer in layers:
            # A copy, not a view: a view would keep every batch's whole [B, T, d] alive until the end.
            out[layer].append(recorder.outputs[layer][0][:, -last_tokens:].clone())
    return {layer: torch.cat(parts) if parts else torch.zeros(0, last_tokens, chat.model.config.hidden_size)
            for layer, parts in out.items()}


@torch.no_grad()
def latent_activations(chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str],
                       features: pd.DataFrame, last_tokens: int, batch_size: int = 16,
                       edits: Sequence[ResidualEdit] = ()) -> np.ndarray:
    """``[n_prompts, last_tokens, n_features]``: the latents ``features`` (``layer, feature`` rows, in
    that order) at each prompt's last ``last_tokens`` positions, read from the model under ``edits``
    (none: the unedited model)."""
    layers = sorted(set(features["layer"].astype(int).tolist()))
    return encode_latents(saes, _residuals(chat, prompts, layers, last_tokens, batch_size, edits), features)


@torch.no_grad()
def encode_latents(saes: Mapping[int, SparseAutoencoder], residuals: Mapping[int, torch.Tensor | np.ndarray],
                   features: pd.DataFrame) -> np.ndarray:
    """``[n, positions, n_features]``: the latents ``features`` encoded from recorded residuals
    (``{layer: [n, positions, d]}``, e.g. from :func:`last_token_residuals` with a position axis)."""
    layers = features["layer"].astype(int).to_numpy()
    columns = features["feature"].astype(int).to_numpy()
    residuals = {int(k): torch.as_tensor(v) for k, v in residuals.items()}
    n, positions = next(iter(residuals.values())).shape[:2]
    out = np.zeros((n, positions, len(features)), dtype=np.float32)
    for layer in sorted(set(layers.tolist())):
        hidden, sae = residuals[layer], saes[layer]
        weight = sae.W_dec
        acts = sae.encode(hidden.to(device=weight.device, dtype=weight.dtype)).float().cpu().numpy()
        rows = np.flatnonzero(layers == layer)
        out[:, :, rows] = acts[:, :, columns[rows]]
    return out


@torch.no_grad()
def last_token_residuals(chat: ChatModel, prompts: Sequence[str], layers: Sequence[int],
                         batch_size: int = 16) -> dict[int, np.ndarray]:
    """``{layer: [n_prompts, d_model]}``: the residual stream after each layer at the last prompt token
    (the dense probe's inputs)."""
    return {layer: hidden[:, -1].numpy() for layer, hidden in _residuals(chat, prompts, layers, 1, batch_size).items()}


def relative_drop(explicit: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """``(explicit - adversarial) / explicit`` elementwise; NaN where the explicit activation is not
    positive (a drop relative to nothing is undefined)."""
    explicit = np.asarray(explicit, dtype=float)
    adversarial = np.asarray(adversarial, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(explicit > 0, (explicit - adversarial) / explicit, np.nan)


def suffix_prefixes(request: str, suffix: str) -> list[tuple[int, str, str]]:
    """``(n_words, word, prompt)`` for the request followed by the first 0, 1, ... words of ``suffix``
    (the word-by-word suffix increments)."""
    words = suffix.split()
    request = request.strip()
    return [(n, words[n - 1] if n else "", " ".join([request, *words[:n]])) for n in range(len(words) + 1)]


@torch.no_grad()
def token_mean_activation(chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str],
                          features: pd.DataFrame, batch_size: int = 16, skip_first: int = 1) -> np.ndarray:
    """``[n_prompts]``: the mean activation of ``features`` over each prompt's tokens (from its
    ``skip_first``-th real token on: the attention sink, which the SAEs were not trained on, is left out)
    and over the features; the study's harm-feature activation (METHOD.md section 9)."""
    if not len(prompts) or features.empty:
        return np.full(len(prompts), np.nan)
    layers = sorted(set(features["layer"].astype(int).tolist()))
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = chat.tokenize(list(prompts[start:start + batch_size]))
        recorder = Recorder(layers)
        run_until(chat.model, [recorder], last_layer=max(layers), **batch)
        mask = batch["attention_mask"].bool().cpu()
        real = mask & (mask.cumsum(-1) > skip_first)  # left padding: a row's real tokens are its last ones
        latents = encode_latents(saes, {layer: recorder.outputs[layer][0] for layer in layers}, features)
        per_token = torch.as_tensor(latents).mean(-1)  # [b, t]: mean over the features
        # where(), not a product: a padded position's latents may be non-finite (fully masked attention rows).
        out.append((torch.where(real, per_token, 0.0).sum(-1) / real.sum(-1).clamp(min=1)).numpy())
    return np.concatenate(out)


def refusal_activation(chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompts: Sequence[str],
                       features: pd.DataFrame, last_tokens: int, batch_size: int = 16,
                       edits: Sequence[ResidualEdit] = ()) -> np.ndarray:
    """``[n_prompts]``: the mean activation of ``features`` over each prompt's last ``last_tokens``
    positions (and over the features), the study's refusal-feature activation, under ``edits``."""
    if not len(prompts):
        return np.zeros(0)
    return latent_activations(chat, saes, prompts, features, last_tokens, batch_size, edits).mean(axis=(1, 2))


def suffix_word_table(pairs: pd.DataFrame, activation) -> pd.DataFrame:
    """Word-by-word suffix increments (:data:`WORD_COLUMNS`) of suffix pairs (``pair_id, source, outcome,
    explicit, adversarial``): the refusal-feature activation (``activation(prompts) -> [n]``) after the
    request plus the first ``n`` words of its suffix, its change from ``n - 1`` words, and ``top`` marking
    each pair's most suppressing word (the most negative increment)."""
    frames = []
    for row in pairs.itertuples(index=False):
        request = row.explicit.strip()
        if not row.adversarial.startswith(request + " "):
            raise ValueError(f"pair {row.pair_id}: the adversarial prompt does not extend its request")
        prefixes = suffix_prefixes(request, row.adversarial[len(request) + 1:])
        values = np.asarray(activation([prompt for _, _, prompt in prefixes]), dtype=float)
        increments = np.concatenate([[np.nan], np.diff(values)])
        top = np.zeros(len(values), dtype=bool)
        if len(values) > 1:
            top[1 + int(np.argmin(increments[1:]))] = True
        frames.append(pd.DataFrame({"pair_id": row.pair_id, "source": row.source, "outcome": row.outcome,
                                    "n_words": [n for n, _, _ in prefixes], "word": [w for _, w, _ in prefixes],
                                    "refusal_activation": values, "increment": increments, "top": top}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=WORD_COLUMNS)
