"""Next-token scores at the last prompt position: refusal score and first-token distributions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .interventions import EditsForRows, ResidualEdit, edits_for_rows, intervene
from .models import ChatModel


def refusal_score_from_logits(logits: Tensor, refusal_ids: Sequence[int]) -> Tensor:
    """``log p(R) - log(1 - p(R))`` with ``p(R)`` the total probability of the refusal tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    log_pr = torch.logsumexp(logp[..., list(refusal_ids)], dim=-1)
    log_not = torch.log1p(-log_pr.exp().clamp(max=1 - 1e-7))
    return log_pr - log_not


@torch.no_grad()
def last_position_logits(
    chat: ChatModel,
    prompts: Sequence[str],
    edits: Sequence[ResidualEdit] | EditsForRows = (),
    batch_size: int = 16,
    resume_from: tuple[int, Sequence[Tensor]] | None = None,
) -> Tensor:
    """Logits ``[n, vocab]`` (float32, CPU) at the last prompt position, under ``edits``.

    ``edits`` may be a callable taking the row slice of the batch, for per-prompt interventions.
    ``resume_from=(layer, streams)``: each batch starts from its clean ``h_layer`` (``streams[i]`` for
    the ``i``-th batch, as a :class:`~refusal_sae.interventions.Recorder` at ``layer`` of an earlier
    call over the same prompts and ``batch_size`` holds them) instead of recomputing it (``resume`` of
    :func:`~refusal_sae.interventions.intervene`); ``edits`` must then act at ``layer`` or later.
    """
    n_batches = math.ceil(len(prompts) / batch_size)
    if resume_from is not None and len(resume_from[1]) != n_batches:
        raise ValueError(f"resume_from holds {len(resume_from[1])} streams for {n_batches} batches: record them "
                         "over the same prompts and batch_size")
    out = []
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        rows = slice(start, min(start + batch_size, len(prompts)))
        batch_edits = edits_for_rows(edits, rows)
        batch = chat.tokenize(prompts[rows])
        resume = (resume_from[0], resume_from[1][index]) if resume_from is not None else None
        with intervene(chat.model, batch_edits, resume=resume):
            # Only the last position is read: skip the unembedding of every other one.
            logits = chat.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def refusal_scores(
    chat: ChatModel,
    prompts: Sequence[str],
    edits: Sequence[ResidualEdit] | EditsForRows = (),
    batch_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Refusal score and argmax first token per prompt under ``edits``."""
    logits = last_position_logits(chat, prompts, edits, batch_size)
    return refusal_score_from_logits(logits, chat.facts.refusal_token_ids), logits.argmax(-1)


def first_token_kl(reference_logits: Tensor, other_logits: Tensor) -> Tensor:
    """Per-prompt ``KL(reference || other)`` of the next-token distributions."""
    p = torch.log_softmax(reference_logits.float(), -1)
    q = torch.log_softmax(other_logits.float(), -1)
    return (p.exp() * (p - q)).sum(-1)
