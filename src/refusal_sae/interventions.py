"""The one implementation of every edit to the residual stream.

All interventions act on ``h_l``, the residual stream after decoder block ``l`` (``resid_post``);
layer ``-1`` is the embedding output, so directional ablation also covers the stream entering block 0.
The same edit objects work in a plain forward, a forward+backward and ``generate`` (KV cache): a
:class:`StreamState` tracks which padded positions each call sees, so position masks such as
"prompt only" or "BOS only" stay right on generated tokens.

SAE splicing keeps the SAE error: ``h' = dec(f') + (h - dec(f)) = h + dec(f') - dec(f)``, so an
unedited splice returns ``h`` exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from transformers import Cache

PositionKind = Literal["all", "prompt", "bos", "from"]


@dataclass(frozen=True)
class PositionMask:
    """Which token positions an edit touches.

    ``all``: every position, prompt and generated; ``prompt``: prompt tokens only; ``bos``: the first
    real (non-pad) token of each row; ``from``: positions ``>= start`` counted from the first real
    token of each row.
    """

    kind: PositionKind = "all"
    start: int = 0


@dataclass
class StreamState:
    """Positions seen by the current forward call, in left-padded coordinates."""

    offset: int = 0
    prompt_length: int | None = None
    pad_lengths: Tensor | None = None

    def mask(self, spec: PositionMask, batch: int, length: int, device: torch.device) -> Tensor:
        """Boolean ``[batch, length]`` mask of the positions ``spec`` selects in this call."""
        if spec.kind == "all":
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        index = torch.arange(self.offset, self.offset + length, device=device).expand(batch, length)
        pads = (
            self.pad_lengths.to(device).view(-1, 1)
            if self.pad_lengths is not None
            else torch.zeros(batch, 1, dtype=torch.long, device=device)
        )
        if spec.kind == "prompt":
            limit = self.prompt_length if self.prompt_length is not None else self.offset + length
            return (index < limit) & (index >= pads)
        if spec.kind == "bos":
            return index == pads
        return index >= pads + spec.start


class ResidualEdit(Protocol):
    """An edit of ``h_l``; ``layers`` lists where it acts (``-1`` = embeddings)."""

    layers: Sequence[int]

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor: ...


def _unit(vector: Tensor) -> Tensor:
    return vector / vector.norm().clamp_min(1e-12)


@dataclass
class DirectionAblation:
    """``h <- h - (r̂·h) r̂`` at every layer and position (METHOD.md section 2)."""

    direction: Tensor
    layers: Sequence[int]

    @classmethod
    def everywhere(cls, direction: Tensor, n_layers: int) -> DirectionAblation:
        """Ablation from the embeddings (layer -1) and every block output of an ``n_layers`` model."""
        return cls(direction, list(range(-1, n_layers)))

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        r = _unit(self.direction).to(hidden)
        return hidden - (hidden @ r).unsqueeze(-1) * r


@dataclass
class ActivationAddition:
    """``h_l <- h_l + alpha * r`` at one layer, on the masked positions."""

    direction: Tensor
    layer: int
    alpha: float = 1.0
    positions: PositionMask = field(default_factory=PositionMask)

    @property
    def layers(self) -> Sequence[int]:
        return [self.layer]

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        b, t, _ = hidden.shape
        mask = state.mask(self.positions, b, t, hidden.device).unsqueeze(-1).to(hidden.dtype)
        return hidden + self.alpha * mask * self.direction.to(hidden)


class SparseAutoencoder(Protocol):
    """What the splice needs from an SAE (sae-lens ``SAE`` satisfies it)."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, feature_acts: Tensor) -> Tensor: ...


def splice(sae: SparseAutoencoder, hidden: Tensor, edit_latents) -> Tensor:
    """Replace ``h`` by ``dec(edit(f)) + error`` with ``f = enc(h)``; the error term is preserved."""
    latents = sae.encode(hidden)
    edited = edit_latents(latents)
    if edited is latents:
        return hidden
    return hidden + (sae.decode(edited) - sae.decode(latents)).to(hidden.dtype)


def decoder_directions(sae: SparseAutoencoder, index: Tensor, like: Tensor) -> Tensor:
    """``dec(e_i) - dec(0)`` for the latents in ``index``: their write directions ``[n, d]``."""
    one_hot = torch.zeros(len(index) + 1, int(sae.cfg.d_sae), dtype=like.dtype, device=like.device)
    one_hot[torch.arange(len(index)), index.to(like.device)] = 1
    decoded = sae.decode(one_hot)
    return decoded[:-1] - decoded[-1:]


def sparse_splice(sae: SparseAutoencoder, hidden: Tensor, index: Tensor, edit_columns) -> Tensor:
    """:func:`splice` when only the latents ``index`` change: ``h + (f'_S - f_S) @ D_S``.

    Exact for affine decoders (every sae-lens SAE used here), and it never decodes the full
    ``d_sae``-wide latent vector, which keeps clamped generation close to plain generation speed.
    """
    current = sae.encode(hidden)[..., index]
    delta = edit_columns(current) - current
    return hidden + (delta @ decoder_directions(sae, index, delta)).to(hidden.dtype)


FeatureMode = Literal["scale", "set", "zero", "keep"]


@dataclass
class FeatureEdit:
    """Scale, set or zero SAE latents at chosen layers and positions (METHOD.md section 6).

    ``features[l]`` lists latent indices at layer ``l``. ``row_active`` (optional, ``[batch, n_l]``
    booleans per layer) restricts each batch row to its own feature set, so per-prompt sets are applied
    in one batched pass. ``mode``: ``scale`` (``f <- value * f``), ``set`` (``f <- value``), ``zero``,
    or ``keep`` (latents unchanged: a no-op control that still runs the splice path).
    """

    saes: Mapping[int, SparseAutoencoder]
    features: Mapping[int, Tensor]
    mode: FeatureMode = "scale"
    value: float = -3.0
    positions: PositionMask = field(default_factory=PositionMask)
    row_active: Mapping[int, Tensor] | None = None

    @property
    def layers(self) -> Sequence[int]:
        return sorted(self.features)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        index = self.features[layer].to(hidden.device)
        if index.numel() == 0:
            return hidden
        b, t, _ = hidden.shape
        where = state.mask(self.positions, b, t, hidden.device).unsqueeze(-1)  # [b, t, 1]
        if self.row_active is not None:
            active = self.row_active[layer]
            if active.shape[0] != b:
                raise ValueError(
                    f"FeatureEdit.row_active has {active.shape[0]} rows for a batch of {b}: slice it per batch "
                    "with rows_of (per-prompt sets must stay aligned with their prompts)"
                )
            rows = active.to(hidden.device).unsqueeze(1)  # [b, 1, n]
            where = where & rows

        if self.mode == "keep":
            return hidden

        def edit(current: Tensor) -> Tensor:
            if self.mode == "scale":
                target = current * self.value
            elif self.mode == "set":
                target = torch.full_like(current, self.value)
            else:
                target = torch.zeros_like(current)
            return torch.where(where, target, current)

        return sparse_splice(self.saes[layer], hidden, index, edit)


@dataclass
class SecondHalf:
    """``inner`` applied to the second half of a doubled batch only (rows ``B..2B-1``); the first half
    (an unedited copy of the same prompts) passes through. See :class:`HoldLatents`."""

    inner: ResidualEdit

    @property
    def layers(self) -> Sequence[int]:
        return self.inner.layers

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        half = _half(hidden)
        pads = state.pad_lengths[half:] if state.pad_lengths is not None else None
        sub = StreamState(offset=state.offset, prompt_length=state.prompt_length, pad_lengths=pads)
        return torch.cat([hidden[:half], self.inner(layer, hidden[half:], sub)])


@dataclass
class Simultaneous:
    """Edits that all read the stream as it arrives at a layer: ``h + sum_e (e(h) - h)``.

    For SAE splices with disjoint latents this is one splice, ``f'`` taking each edit's columns from the
    same ``f = enc(h)``; applied one after another, a later splice would re-encode the earlier one's output.
    """

    edits: Sequence[ResidualEdit]

    @property
    def layers(self) -> Sequence[int]:
        return sorted({int(layer) for edit in self.edits for layer in edit.layers})

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        mine = [edit for edit in self.edits if layer in edit.layers]
        if len(mine) == 1:
            return mine[0](layer, hidden, state)
        out = hidden
        for edit in mine:
            out = out + (edit(layer, hidden, state) - hidden)
        return out


@dataclass
class HoldLatents:
    """Hold latents at their unedited values (METHOD.md section 8: "keeping R at its original values").

    Runs on a doubled batch: rows ``0..B-1`` are an unedited copy of rows ``B..2B-1``, which carry the
    other edits (wrapped in :class:`SecondHalf`). At each layer of ``features`` the second half's latents
    are set to the first half's, at every position; during generation the copy must be fed the edited
    rows' tokens (``generation.generate_scored(hold=...)`` does), so "unedited" means "the same tokens
    without the edits". Combine it with the edits of its own layers in :class:`Simultaneous`, so that the
    held and the edited (disjoint) latents are one splice of the incoming stream: ``f'_held`` from the
    copy, ``f'_edited`` from the edit, both relative to the same ``f``. ``features`` may be empty (nothing
    held: the doubled batch alone, e.g. a condition's control).
    """

    saes: Mapping[int, SparseAutoencoder]
    features: Mapping[int, Tensor]

    @property
    def layers(self) -> Sequence[int]:
        return sorted(layer for layer, index in self.features.items() if index.numel())

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        index = self.features[layer].to(hidden.device)
        half = _half(hidden)
        return sparse_splice(self.saes[layer], hidden, index, lambda current: torch.cat([current[:half], current[:half]]))


def _half(hidden: Tensor) -> int:
    if hidden.shape[0] % 2:
        raise ValueError(f"a held batch pairs each row with an unedited copy: {hidden.shape[0]} rows is odd")
    return hidden.shape[0] // 2


def _where(state: StreamState, positions: PositionMask, edited: Tensor, hidden: Tensor) -> Tensor:
    """``edited`` on the positions ``positions`` selects, ``hidden`` elsewhere."""
    if positions.kind == "all":
        return edited
    b, t, _ = hidden.shape
    return torch.where(state.mask(positions, b, t, hidden.device).unsqueeze(-1), edited, hidden)


@dataclass
class SAEReconstruction:
    """``h <- dec(enc(h))`` (error dropped) on ``positions``: the SAE-replaced stream of CE-recovered.

    SAEs trained without the attention-sink token (see ``sae_training.SINK_TOKENS``) are spliced
    with ``PositionMask("from", SINK_TOKENS)``, the positions they were trained on.
    """

    saes: Mapping[int, SparseAutoencoder]
    positions: PositionMask = field(default_factory=PositionMask)

    @property
    def layers(self) -> Sequence[int]:
        return sorted(self.saes)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        sae = self.saes[layer]
        return _where(state, self.positions, sae.decode(sae.encode(hidden)).to(hidden.dtype), hidden)


@dataclass
class ZeroAblation:
    """``h <- 0`` at the given layers on ``positions`` (the reference point of CE-recovered)."""

    layers: Sequence[int]
    positions: PositionMask = field(default_factory=PositionMask)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        return _where(state, self.positions, torch.zeros_like(hidden), hidden)


@dataclass
class Recorder:
    """Records ``h_l`` (detached, float32, on CPU) at the given layers; changes nothing."""

    layers: Sequence[int]
    outputs: dict[int, list[Tensor]] = field(default_factory=dict)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        self.outputs.setdefault(layer, []).append(hidden.detach().float().cpu())
        return hidden


@dataclass
class StraightThroughTarget:
    """Forward value of ``h_l`` becomes ``targets[l]``; gradients flow through ``h_l`` unchanged.

    Used by integrated gradients: every SAE layer sits at its interpolated point while ``∂m/∂h_l``
    still includes every downstream path (later targets act as constant offsets). The edited outputs
    are kept in ``outputs`` with ``retain_grad`` so their gradients can be read after ``backward``.
    """

    targets: Mapping[int, Tensor]
    outputs: dict[int, Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> Sequence[int]:
        return sorted(self.targets)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        target = self.targets[layer].to(hidden)
        out = hidden + (target - hidden).detach()
        if out.requires_grad:
            out.retain_grad()
        self.outputs[layer] = out
        return out


@dataclass
class InterpolateTowards:
    """``h_l <- (1 - alpha) h_l + alpha targets[l]`` with the gradient through ``h_l`` (scaled by ``1 - alpha``).

    The path of the refusal-feature studies' integrated gradients: each SAE layer encodes the stream it
    receives (already moved by the layers before it) and interpolates towards the patched run, so a
    feature's effect through later layers is damped by their ``1 - alpha`` factors. Compare
    :class:`StraightThroughTarget`, which holds every layer at its clean/patched interpolation and passes
    gradients through undamped. Outputs are kept with ``retain_grad`` like there.
    """

    targets: Mapping[int, Tensor]
    alpha: float
    outputs: dict[int, Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> Sequence[int]:
        return sorted(self.targets)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        out = torch.lerp(hidden, self.targets[layer].to(hidden), self.alpha)
        if out.requires_grad:
            out.retain_grad()
        self.outputs[layer] = out
        return out


RowIndex = slice | Tensor
"""Which input rows a batch holds: a slice, or (after length sorting) a 1-D LongTensor of indices."""

EditsForRows = Callable[[RowIndex], Sequence[ResidualEdit]]
"""Per-batch edits (e.g. per-prompt feature sets): called with the batch's :data:`RowIndex`."""


def rows_of(edit: FeatureEdit, rows: RowIndex) -> FeatureEdit:
    """``edit`` with ``row_active`` restricted to ``rows`` (unchanged when it has no ``row_active``).

    Use it inside an :data:`EditsForRows` callable: ``lambda rows: [rows_of(edit, rows)]``.
    """
    if edit.row_active is None:
        return edit

    def pick(active: Tensor) -> Tensor:
        if isinstance(rows, Tensor):
            return active[rows.to(device=active.device, dtype=torch.long)]
        return active[rows]

    return dataclasses.replace(edit, row_active={layer: pick(a) for layer, a in edit.row_active.items()})


def edits_for_rows(edits: Sequence[ResidualEdit] | EditsForRows, rows: RowIndex) -> Sequence[ResidualEdit]:
    """The edits of one batch: ``edits(rows)`` for a callable, else ``edits`` unchanged."""
    return edits(rows) if callable(edits) else edits


class StopForward(Exception):
    """Raised by :func:`intervene` after the last needed layer to skip the rest of the model."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-block list of a transformers causal LM (found structurally, not by family)."""
    base = getattr(model, "model", model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(model).__name__}: cannot find the decoder layer list")


def embedding_module(model: nn.Module) -> nn.Module:
    """The token-embedding module (its output is ``h_{-1}``)."""
    return model.get_input_embeddings()


class GenerationStateError(RuntimeError):
    """The positions a cached forward call covers cannot be told from its inputs."""


def call_offset(
    length: int, attention_mask: object, position_ids: object, inputs: Iterable[object]
) -> int:
    """Index of the first position of a forward call over ``length`` new tokens, in padded coordinates.

    Read from what the model is given, never from a cache object's state. During cached generation
    transformers passes either the 2-D attention mask of the whole sequence so far (past + new
    tokens), so the call starts at ``mask.shape[1] - length``, or, when no row is padded, no mask and
    the position ids, which then equal padded positions. A call with neither starts at 0 when no KV
    cache is among its inputs (a plain forward); otherwise the offset cannot be known, and
    :class:`GenerationStateError` is raised rather than guessing 0.
    """
    if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2:
        total = int(attention_mask.shape[1])
        if total < length:
            raise GenerationStateError(
                f"attention_mask covers {total} positions but the call has {length} new tokens: "
                "position masks need the 2-D mask of the whole sequence"
            )
        return total - length
    if attention_mask is None and isinstance(position_ids, Tensor) and position_ids.numel():
        # No mask means no padding, so a row's position ids are its padded positions.
        first = position_ids.reshape(-1, position_ids.shape[-1])[:, 0]
        if not bool((first == first[0]).all()):
            raise GenerationStateError(
                "rows of an unpadded batch start at different position ids: cannot tell the call's positions"
            )
        return int(first[0])
    if any(isinstance(value, Cache) for value in inputs):
        raise GenerationStateError(
            "a cached forward call with neither a 2-D attention_mask nor position_ids: the positions it "
            "covers are unknown, so position masks (prompt / bos / from) cannot be applied"
        )
    return 0


@contextlib.contextmanager
def intervene(
    model: nn.Module,
    edits: Sequence[ResidualEdit],
    stop_after: int | None = None,
    resume: tuple[int, Tensor] | None = None,
) -> Iterator[StreamState]:
    """Apply ``edits`` in order at their layers for every forward call inside the block.

    ``stop_after``: raise :class:`StopForward` once layer ``stop_after`` has run (activation caching
    needs no later layer). ``resume=(layer, hidden)``: the forward calls start from ``h_layer = hidden``
    (a clean stream recorded earlier by a :class:`Recorder` over the same batch) and blocks
    ``0..layer`` do not run, so scoring many edits at or after one layer against one clean prefix (an
    SAE splice per layer, steering at a layer) computes only the later blocks, with the same values
    as a full forward. Edits must then act at ``layer`` or later (``ValueError`` otherwise), and the
    forward calls must not use a KV cache. Yields the :class:`StreamState` the edits see.
    """
    if resume is not None:
        early = sorted({int(layer) for edit in edits for layer in edit.layers if int(layer) < resume[0]})
        if early:
            raise ValueError(f"intervene: edits at layers {early} come before the resume point (layer "
                             f"{resume[0]}) and would never run")
    state = StreamState()
    layers = decoder_layers(model)
    base = getattr(model, "model", model)
    handles = []

    def track(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = ids if ids is not None else kwargs.get("inputs_embeds")
        batch, length = int(tokens.shape[0]), int(tokens.shape[1])
        mask = kwargs.get("attention_mask")
        offset = call_offset(length, mask, kwargs.get("position_ids"), kwargs.values())
        state.offset = offset
        if offset == 0:
            state.prompt_length = length
            if isinstance(mask, Tensor) and mask.dim() == 2:
                state.pad_lengths = (mask.cumsum(-1) == 0).sum(-1)
            elif mask is None:  # no mask: no row is padded
                state.pad_lengths = torch.zeros(batch, dtype=torch.long, device=tokens.device)
            else:
                state.pad_lengths = None

    handles.append(base.register_forward_pre_hook(track, with_kwargs=True))

    by_layer: dict[int, list[ResidualEdit]] = {}
    for edit in edits:
        for layer in edit.layers:
            by_layer.setdefault(int(layer), []).append(edit)
    if stop_after is not None:
        by_layer.setdefault(stop_after, [])

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple, output):
            hidden = output[0] if isinstance(output, tuple) else output
            for edit in by_layer.get(layer, []):
                hidden = edit(layer, hidden, state)
            if stop_after is not None and layer == stop_after:
                raise StopForward
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            return hidden

        return hook

    for layer in by_layer:
        module = embedding_module(model) if layer == -1 else layers[layer]
        handles.append(module.register_forward_hook(make_hook(layer)))
    try:
        with _resume_after(model, *resume) if resume is not None else contextlib.nullcontext():
            yield state
    finally:
        for handle in handles:
            handle.remove()


def run_until(model: nn.Module, edits: Sequence[ResidualEdit], last_layer: int, **inputs) -> None:
    """Forward ``inputs`` with ``edits``, stopping after ``last_layer`` (for activation caching)."""
    with intervene(model, edits, stop_after=last_layer), contextlib.suppress(StopForward):
        model(**inputs, use_cache=False)


@contextlib.contextmanager
def _resume_after(model: nn.Module, layer: int, hidden: Tensor) -> Iterator[None]:
    """Blocks ``0..layer`` do not compute: each skipped block returns its input and block ``layer``
    returns a copy of ``hidden`` in the stream's dtype and device (see :func:`intervene`'s ``resume``).

    The embeddings still run, so the model derives masks and positions from its usual inputs; this is
    exact for decoder stacks whose blocks communicate only through the residual stream. A skipped
    block whose output a hook changed (an edit :func:`intervene` did not know of) raises ``ValueError``.
    """
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"resume: layer {layer} is outside the model's {len(blocks)} blocks")
    passed: list[Tensor] = []  # what each skipped block of the current call returned

    def check(index: int, hidden_states: Tensor, kwargs: dict) -> None:
        if any(isinstance(value, Cache) for value in kwargs.values()):
            raise ValueError("resume: the skipped blocks would leave the KV cache empty; use use_cache=False")
        if index == 0:
            passed.clear()
        elif hidden_states is not passed[-1]:
            raise ValueError(f"resume: an edit at layer {index - 1} would be lost (the stream resumes "
                             f"after layer {layer})")

    def skip(index: int):
        def forward(hidden_states: Tensor, *args, **kwargs) -> Tensor:
            check(index, hidden_states, kwargs)
            passed.append(hidden_states)
            return hidden_states

        return forward

    def start(hidden_states: Tensor, *args, **kwargs) -> Tensor:
        check(layer, hidden_states, kwargs)
        if hidden_states.shape != hidden.shape:
            raise ValueError(f"resume: hidden has shape {tuple(hidden.shape)}, the forward's stream "
                             f"{tuple(hidden_states.shape)}")
        return hidden.to(hidden_states, copy=True)  # edits must not change the recorded stream

    # An instance attribute shadows the class's forward; anything already set there is put back.
    saved = {index: blocks[index].__dict__.get("forward") for index in range(layer + 1)}
    for index in range(layer):
        blocks[index].forward = skip(index)
    blocks[layer].forward = start
    try:
        yield
    finally:
        for index, forward in saved.items():
            if forward is None:
                del blocks[index].forward
            else:
                blocks[index].forward = forward
