"""The same residual edits, run inside an nnsight trace (so remote execution is a setting).

:func:`refusal_sae.interventions.intervene` applies :class:`~refusal_sae.interventions.ResidualEdit`
objects with PyTorch hooks on a local model. Here the very same edit objects are applied inside an
nnsight ``TransformersModel`` trace: each edited decoder block's output (``h_l``; layer ``-1`` is the
embedding output) is read, passed through the edits in order and written back. With ``remote=True``
the trace runs on NDIF instead of locally; nothing else changes.

Only prefill is supported (one forward over the prompt batch): the :class:`StreamState` the edits see
has ``offset = 0``, ``prompt_length = T`` and ``pad_lengths`` from the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .interventions import ResidualEdit, StreamState, decoder_layers, embedding_module
from .models import ChatModel


def _module_path(root: nn.Module, target: nn.Module) -> str:
    """Dotted attribute path of ``target`` inside ``root`` (found structurally)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def _envoy(lm: Any, path: str) -> Any:
    """The nnsight envoy at a dotted module path (``"model.layers"`` then an index)."""
    node = lm
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def wrap_model(chat: ChatModel) -> Any:
    """An nnsight ``TransformersModel`` around ``chat``'s already loaded model and tokenizer."""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(chat.model, tokenizer=chat.tokenizer)


def prefill_state(attention_mask: Tensor) -> StreamState:
    """The :class:`StreamState` of a single prefill forward over a left-padded batch."""
    return StreamState(
        offset=0,
        prompt_length=int(attention_mask.shape[1]),
        pad_lengths=(attention_mask.cumsum(-1) == 0).sum(-1),
    )


def forward_with_edits_nnsight(
    chat: ChatModel,
    prompts: Sequence[str],
    edits: Sequence[ResidualEdit] = (),
    batch_size: int = 16,
    lm: Any = None,
    remote: bool = False,
) -> Tensor:
    """Logits ``[n, vocab]`` (float32, CPU) at the last prompt position under ``edits``, via nnsight.

    Equivalent to :func:`refusal_sae.scoring.last_position_logits` (hook backend). ``lm`` may be a
    prepared nnsight model (default: :func:`wrap_model`); ``remote=True`` executes on NDIF.
    """
    lm = lm if lm is not None else wrap_model(chat)
    by_layer: dict[int, list[ResidualEdit]] = {}
    for edit in edits:
        for layer in edit.layers:
            by_layer.setdefault(int(layer), []).append(edit)
    layers = decoder_layers(chat.model)
    paths = {
        layer: _module_path(chat.model, embedding_module(chat.model) if layer == -1 else layers[layer])
        for layer in by_layer
    }

    out: list[Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch = chat.tokenize(prompts[start:start + batch_size])
        state = prefill_state(batch["attention_mask"])
        with lm.trace(dict(batch), remote=remote):
            # Modules must be visited in execution order: embeddings first, then blocks ascending.
            for layer in sorted(by_layer):
                envoy = _envoy(lm, paths[layer])
                output = envoy.output
                hidden = output[0] if isinstance(output, tuple) else output
                for edit in by_layer[layer]:
                    hidden = edit(layer, hidden, state)
                envoy.output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            logits = lm.output.logits[:, -1].save()
        out.append(logits.detach().float().cpu())
    return torch.cat(out) if out else torch.empty(0)
