"""Greedy filtering of refusal candidates to a minimal set per prompt (Study B stage 2, METHOD.md §11).

Per harmful prompt, every candidate latent that is active on the prompt starts ablated (zeroed at every
position). Blocks of candidates are then tentatively restored in a fixed order: when restoring a block
raises the refusal-token probability ``P(R)`` by less than ``tau`` times its unablated value, the block
is not needed and stays restored for good; otherwise it stays ablated. The same pass then runs over
the single latents of the kept blocks. What stays ablated is the minimal set ``M(x)``.

The pass is sequential, but its trials are batched (rows = trials of one prompt, each row its own
ablation set through one :class:`~refusal_sae.interventions.FeatureEdit`): a batch holds the cumulative
restores of the next blocks, ``S - b1``, ``S - b1 - b2``, ...; the first block whose restore raises
``P(R)`` by ``tau`` or more is kept, the blocks before it are dropped, exactly as one-at-a-time trials
would decide, and the next batch starts after it. A prompt costs about one batched forward per kept
block instead of one forward per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .interventions import FeatureEdit, Recorder, SparseAutoencoder, intervene, run_until
from .models import ChatModel

GREEDY_COLUMNS = ["prompt_id", "layer", "feature", "tau", "order", "kept", "delta", "p_clean", "p_ablated"]

ScoreFn = Callable[[Tensor], Tensor]
"""Refusal probability ``[R]`` of one prompt under each row of an ablation mask ``[R, n]`` (True = ablated)."""


@dataclass(frozen=True)
class GreedyResult:
    """Outcome of one greedy pass: which candidates stay ablated and what each decision measured."""

    kept: np.ndarray
    """``[n]`` bool: in the minimal set."""
    delta: np.ndarray
    """``[n]`` float: the rise of ``P(R)`` when the candidate's last trial restored it (its block's, or its
    own in the single-latent pass); NaN for candidates that were not active."""
    forwards: int
    """Batched forward calls spent."""
    rows: int
    """Trial rows scored (the number of prompt forwards one-at-a-time trials would cost is about this)."""


def _restore_pass(
    score: ScoreFn, state: np.ndarray, groups: Sequence[np.ndarray], p_state: float, threshold: float,
    delta: np.ndarray, max_rows: int,
) -> tuple[np.ndarray, float, int, int]:
    """Try restoring each group of candidate indices in order; keep a group ablated when its restore raises
    ``P(R)`` by ``threshold`` or more. Returns the final ablation state, its ``P(R)`` and the cost."""
    forwards = rows = 0
    position = 0
    while position < len(groups):
        batch = groups[position:position + max_rows]
        masks = np.repeat(state[None], len(batch), axis=0)
        for r, group in enumerate(batch):
            masks[r:, group] = False  # row r restores groups position .. position + r
        probs = score(torch.from_numpy(masks)).double().numpy()
        forwards, rows = forwards + 1, rows + len(batch)
        previous = p_state
        decided = len(batch)
        for r, group in enumerate(batch):
            rise = probs[r] - previous
            delta[group] = rise
            if rise >= threshold:  # needed: stays ablated; later rows assumed it restored, so redo them
                decided = r + 1
                state = masks[r - 1].copy() if r > 0 else state.copy()
                p_state = float(previous)
                break
            previous = probs[r]
        else:
            state, p_state = masks[-1].copy(), float(probs[-1])
        position += decided
    return state, p_state, forwards, rows


def greedy_filter(
    score: ScoreFn, active: np.ndarray, order: Sequence[int], p_clean: float, tau: float, block_size: int = 5,
    max_rows: int = 32,
) -> GreedyResult:
    """Backward elimination of the ``active`` candidates (``[n]`` bool) in ``order``, blocks then latents.

    ``p_clean``: ``P(R)`` of the unedited prompt; a block (then a latent) stays ablated when restoring it
    raises ``P(R)`` by at least ``tau * p_clean``. ``max_rows`` caps the trials per batched forward.
    """
    if block_size < 1 or max_rows < 1:
        raise ValueError("block_size and max_rows must be >= 1")
    n = len(active)
    delta = np.full(n, np.nan)
    state = np.asarray(active, dtype=bool).copy()
    ranked = [i for i in order if state[i]]
    if not ranked:
        return GreedyResult(state, delta, 0, 0)
    p_state = float(score(torch.from_numpy(state[None])).double()[0])
    threshold = tau * p_clean
    blocks = [np.asarray(ranked[i:i + block_size]) for i in range(0, len(ranked), block_size)]
    state, p_state, forwards, rows = _restore_pass(score, state, blocks, p_state, threshold, delta, max_rows)
    singles = [np.asarray([i]) for i in ranked if state[i]]
    if block_size > 1 and len(singles) > 1:
        state, p_state, f, r = _restore_pass(score, state, singles, p_state, threshold, delta, max_rows)
        forwards, rows = forwards + f, rows + r
    return GreedyResult(state, delta, forwards + 1, rows + 1)


def _feature_index(candidates: pd.DataFrame) -> tuple[dict[int, Tensor], list[tuple[int, int]]]:
    """Latent indices per layer and, for each candidate row, its (layer, column in that layer's index)."""
    features = {int(layer): torch.as_tensor(np.unique(group["feature"].astype(int))) for layer, group
                in candidates.groupby("layer")}
    columns = [(int(layer), int(torch.searchsorted(features[int(layer)], torch.tensor(int(feature)))))
               for layer, feature in zip(candidates["layer"], candidates["feature"], strict=True)]
    return features, columns


def ablation_scorer(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, candidates: pd.DataFrame,
) -> ScoreFn:
    """``P(R)`` at the last position of ``prompt`` with each row's masked candidates zeroed at every position.

    One forward per call: the prompt repeated once per row, one ``FeatureEdit`` whose ``row_active``
    gives each row its own ablation set.
    """
    features, columns = _feature_index(candidates)
    batch = chat.tokenize([prompt])
    refusal = list(chat.facts.refusal_token_ids)

    @torch.no_grad()
    def score(masks: Tensor) -> Tensor:
        rows = masks.shape[0]
        active = {layer: torch.zeros(rows, len(index), dtype=torch.bool) for layer, index in features.items()}
        for j, (layer, column) in enumerate(columns):
            active[layer][:, column] |= masks[:, j]
        edit = FeatureEdit({layer: saes[layer] for layer in features}, features, mode="zero", row_active=active)
        inputs = {k: v.expand(rows, -1) for k, v in batch.items()}
        with intervene(chat.model, [edit]):
            logits = chat.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return torch.softmax(logits, -1)[:, refusal].sum(-1).cpu()

    return score


@torch.no_grad()
def active_on_prompt(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, candidates: pd.DataFrame,
    ablated: np.ndarray | None = None,
) -> np.ndarray:
    """``[n]`` bool: candidates with a non-zero activation at some position of the prompt.

    With ``ablated`` (``[n]`` bool), the candidates it marks are zeroed at every position first, so
    latents that wake up only once others are removed count as active (Study B's ``R(x)``). Each layer is
    read before its own edits, as ``hydra`` reads it: only ablations at earlier layers can wake a latent.
    """
    layers = sorted(int(layer) for layer in candidates["layer"].unique())
    recorder = Recorder(layers)
    edits: list = []
    if ablated is not None and ablated.any():
        # Only the ablated latents enter the edit: over a whole SAE, splicing every candidate would decode
        # thousands of write directions to change a few.
        features, _ = _feature_index(candidates.loc[np.asarray(ablated, dtype=bool)])
        edits.append(FeatureEdit({layer: saes[layer] for layer in features}, features, mode="zero"))
    # Edits run in list order at each layer: the recorder reads each layer before its own edits (a latent
    # cannot be woken by ablating latents of its own layer, only re-encoded), and after earlier layers'.
    run_until(chat.model, [recorder, *edits], last_layer=max(layers), **chat.tokenize([prompt]))
    active = np.zeros(len(candidates), dtype=bool)
    for layer in layers:
        sae = saes[layer]
        weight = sae.W_dec
        acts = sae.encode(recorder.outputs[layer][0].to(device=weight.device, dtype=weight.dtype))[0]  # [T, d_sae]
        fired = (acts != 0).any(0).cpu().numpy()
        rows = np.flatnonzero(candidates["layer"].to_numpy() == layer)
        active[rows] = fired[candidates["feature"].to_numpy()[rows].astype(int)]
    return active


def woken_latents(
    chat: ChatModel, saes: Mapping[int, SparseAutoencoder], prompt: str, members: pd.DataFrame,
) -> pd.DataFrame:
    """Latents of the whole SAEs (every latent of every layer in ``saes``) that are zero at every position of
    the clean prompt and fire once ``members`` (``layer, feature``) are zeroed: the hydra candidates, which a
    stage-1 pool of decoder-cosine candidates need not hold. Returns their ``layer, feature``."""
    every = pd.DataFrame([(layer, feature) for layer in sorted(saes) for feature in range(int(saes[layer].cfg.d_sae))],
                         columns=["layer", "feature"])
    ablated = every.merge(members[["layer", "feature"]].drop_duplicates().assign(member=True),
                          on=["layer", "feature"], how="left")["member"].fillna(False).to_numpy(dtype=bool)
    clean = active_on_prompt(chat, saes, prompt, every)
    woken = active_on_prompt(chat, saes, prompt, every, ablated=ablated)
    return every.loc[woken & ~clean].reset_index(drop=True)


def candidate_orders(candidates: pd.DataFrame, n_orders: int, seed: int) -> list[tuple[str, list[int]]]:
    """The restore orders: ascending attribution score first (METHOD.md §11's default), then seeded random
    permutations, ``n_orders`` in all; named ``attribution`` and ``random{i}``."""
    orders = [("attribution", list(np.argsort(candidates["score"].to_numpy(), kind="stable")))]
    rng = np.random.default_rng(seed)
    orders += [(f"random{i}", list(rng.permutation(len(candidates)))) for i in range(1, n_orders)]
    return orders[:n_orders]


def minimal_sets(
    chat: ChatModel,
    saes: Mapping[int, SparseAutoencoder],
    prompts: Sequence[str],
    prompt_ids: Sequence[str],
    candidates: pd.DataFrame,
    taus: Sequence[float],
    n_orders: int = 3,
    block_size: int = 5,
    seed: int = 0,
    max_rows: int = 32,
) -> pd.DataFrame:
    """Greedy minimal sets of every prompt at every ``tau`` and restore order (``GREEDY_COLUMNS``).

    ``candidates``: ``layer, feature, score`` rows (stage 1: the cosine candidates with an attribution
    score, which orders the default pass). One row per prompt, tau, order and candidate active on the
    prompt; ``kept`` marks the minimal set of that pass (:func:`intersect_orders` combines the orders).
    """
    candidates = candidates.reset_index(drop=True)
    orders = candidate_orders(candidates, n_orders, seed)
    frames = []
    for prompt, pid in zip(prompts, prompt_ids, strict=True):
        score = ablation_scorer(chat, saes, prompt, candidates)
        active = active_on_prompt(chat, saes, prompt, candidates)
        p_clean = float(score(torch.zeros(1, len(candidates), dtype=torch.bool))[0])
        p_ablated = float(score(torch.from_numpy(active[None]))[0])
        where = np.flatnonzero(active)
        for tau in taus:
            for name, order in orders:
                result = greedy_filter(score, active, order, p_clean, tau, block_size, max_rows)
                frames.append(pd.DataFrame({
                    "prompt_id": str(pid), "layer": candidates["layer"].to_numpy()[where].astype(int),
                    "feature": candidates["feature"].to_numpy()[where].astype(int), "tau": float(tau),
                    "order": name, "kept": result.kept[where], "delta": result.delta[where],
                    "p_clean": p_clean, "p_ablated": p_ablated,
                }))
    return pd.concat(frames, ignore_index=True)[GREEDY_COLUMNS] if frames else pd.DataFrame(columns=GREEDY_COLUMNS)


def intersect_orders(greedy: pd.DataFrame) -> pd.DataFrame:
    """Per prompt and tau, the latents kept under every restore order (the studies' intersection):
    ``prompt_id, tau, layer, feature``."""
    kept = greedy.groupby(["prompt_id", "tau", "layer", "feature"])["kept"].all().reset_index()
    return kept.loc[kept["kept"], ["prompt_id", "tau", "layer", "feature"]].reset_index(drop=True)
