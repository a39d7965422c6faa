"""The intervention layer: exact splices, planted directions, position masks under a KV cache,
row-restricted feature edits, straight-through targets, early stopping and the nnsight backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch
from tiny import make_tiny_chat_model, make_tiny_sae
from torch import Tensor, nn
from transformers import DynamicCache

from refusal_sae.interventions import (
    ActivationAddition,
    DirectionAblation,
    FeatureEdit,
    GenerationStateError,
    PositionMask,
    Recorder,
    SAEReconstruction,
    StraightThroughTarget,
    StreamState,
    ZeroAblation,
    call_offset,
    decoder_layers,
    intervene,
    run_until,
)
from refusal_sae.models import ChatModel
from refusal_sae.scoring import last_position_logits, refusal_scores

PROMPTS = ["x", "Write a persuasive article about recycling", "How do I make a bomb?"]


@torch.no_grad()
def _logits(chat: ChatModel, prompts: Sequence[str], edits: Sequence = ()) -> Tensor:
    batch = chat.tokenize(prompts)
    with intervene(chat.model, edits):
        return chat.model(**batch, use_cache=False).logits


def _recorded(chat: ChatModel, prompts: Sequence[str], layer: int) -> Tensor:
    recorder = Recorder([layer])
    _logits(chat, prompts, [recorder])
    return recorder.outputs[layer][0]


def _active_latents(sae, hidden: Tensor, row: int, n: int) -> Tensor:
    """The ``n`` latents with the largest total activation over ``row``'s positions."""
    with torch.no_grad():
        return sae.encode(hidden[row]).sum(0).topk(n).indices


@dataclass
class StateProbe:
    """Snapshots of the :class:`StreamState` an edit sees, one per forward call; changes nothing."""

    layers: Sequence[int]
    snapshots: list[tuple[int, int | None, Tensor | None, int]] = field(default_factory=list)

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        pads = None if state.pad_lengths is None else state.pad_lengths.clone()
        self.snapshots.append((state.offset, state.prompt_length, pads, hidden.shape[1]))
        return hidden


# --- SAE splicing -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[None, 4], ids=["standard", "topk"])
def saes(request, tiny_chat: ChatModel) -> dict[int, nn.Module]:
    d = tiny_chat.facts.d_model
    return {
        layer: make_tiny_sae(d, 2 * d, seed=10 + layer, k=request.param) for layer in range(tiny_chat.facts.n_layers)
    }


@pytest.mark.parametrize(("mode", "value"), [("scale", 1.0), ("keep", -3.0)])
def test_unedited_splice_at_every_layer_is_the_plain_forward(
    tiny_chat: ChatModel, saes: dict[int, nn.Module], mode: str, value: float
) -> None:
    features = {layer: torch.tensor([0, 3, 7, 20]) for layer in saes}
    edit = FeatureEdit(saes, features, mode=mode, value=value)  # type: ignore[arg-type]
    plain = _logits(tiny_chat, PROMPTS)
    torch.testing.assert_close(_logits(tiny_chat, PROMPTS, [edit]), plain, atol=1e-5, rtol=0)


def test_feature_edit_is_the_hand_computed_splice(tiny_chat: ChatModel, saes: dict[int, nn.Module]) -> None:
    layer = 1
    sae = saes[layer]
    hidden = _recorded(tiny_chat, PROMPTS, layer)
    index = _active_latents(sae, hidden, row=2, n=3)
    with torch.no_grad():
        latents = sae.encode(hidden)
        edited = latents.clone()
        edited[..., index] *= -3.0
        by_hand = sae.decode(edited) + (hidden - sae.decode(latents))  # dec(f') + error

    edit = FeatureEdit(saes, {layer: index}, mode="scale", value=-3.0)
    after = Recorder([layer])
    edited_logits = _logits(tiny_chat, PROMPTS, [edit, after])
    torch.testing.assert_close(after.outputs[layer][0], by_hand, atol=1e-5, rtol=0)
    # Downstream: the model continued from exactly the hand-spliced stream.
    replaced = _logits(tiny_chat, PROMPTS, [StraightThroughTarget({layer: by_hand})])
    torch.testing.assert_close(edited_logits, replaced, atol=1e-5, rtol=0)
    assert (edited_logits - _logits(tiny_chat, PROMPTS)).abs().max() > 1e-3  # the edit is not trivial


def test_feature_edit_row_active_leaves_inactive_rows_bit_identical(
    tiny_chat: ChatModel, tiny_saes: dict[int, nn.Module]
) -> None:
    layer = 1
    hidden = _recorded(tiny_chat, PROMPTS[:2], layer)
    index = _active_latents(tiny_saes[layer], hidden, row=0, n=3)
    rows = torch.tensor([[True, True, True], [False, False, False]])
    plain = _logits(tiny_chat, PROMPTS[:2])
    restricted = _logits(
        tiny_chat, PROMPTS[:2], [FeatureEdit(tiny_saes, {layer: index}, value=-3.0, row_active={layer: rows})]
    )
    everywhere = _logits(tiny_chat, PROMPTS[:2], [FeatureEdit(tiny_saes, {layer: index}, value=-3.0)])
    assert torch.equal(restricted[1], plain[1])
    assert (restricted[0] - plain[0]).abs().max() > 1e-3
    torch.testing.assert_close(restricted[0], everywhere[0], atol=1e-6, rtol=0)
    assert (everywhere[1] - plain[1]).abs().max() > 1e-3  # row 1 would have changed had it been active


def test_activation_addition_with_alpha_zero_is_identity(tiny_chat: ChatModel) -> None:
    direction = torch.randn(tiny_chat.facts.d_model, generator=torch.Generator().manual_seed(0))
    plain = _logits(tiny_chat, PROMPTS)
    assert torch.equal(_logits(tiny_chat, PROMPTS, [ActivationAddition(direction, layer=1, alpha=0.0)]), plain)
    moved = _logits(tiny_chat, PROMPTS, [ActivationAddition(direction, layer=1, alpha=2.0)])
    assert (moved - plain).abs().max() > 1e-3


# --- directional ablation of a planted direction -------------------------------------------------


@pytest.fixture(scope="module")
def planted() -> tuple[ChatModel, Tensor]:
    """A tiny model whose refusal logit is ``20 * r̂·norm(h)`` and whose stream carries ``8 r̂``.

    The embeddings all get ``+8 r̂`` (the stream is dominated by it, so "I" wins by a wide margin);
    the final RMSNorm gain is 1, so once ``h ⟂ r̂`` the refusal logit is exactly 0 while the other
    logits are random and their maximum is positive.
    """
    chat = make_tiny_chat_model(seed=1)
    model = chat.model
    (refusal,) = chat.facts.refusal_token_ids
    r = torch.randn(chat.facts.d_model, generator=torch.Generator().manual_seed(7))
    r = r / r.norm()
    with torch.no_grad():
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # untie
        model.lm_head.weight[refusal] = 20.0 * r
        model.model.embed_tokens.weight += 8.0 * r
        model.model.norm.weight.fill_(1.0)
    return chat, r


def test_ablating_the_planted_direction_removes_refusal(planted: tuple[ChatModel, Tensor]) -> None:
    chat, r = planted
    (refusal,) = chat.facts.refusal_token_ids
    n = chat.facts.n_layers
    score, first = refusal_scores(chat, PROMPTS)
    assert (first == refusal).all() and (score > 10).all()

    ablation = DirectionAblation(3.0 * r, layers=range(-1, n))  # the direction's scale must not matter
    score_ablated, first_ablated = refusal_scores(chat, PROMPTS, [ablation])
    assert (first_ablated != refusal).all() and (score_ablated < 0).all()
    logits = last_position_logits(chat, PROMPTS, [ablation])
    assert logits[:, refusal].abs().max() < 1e-3


def test_ablation_leaves_no_projection_at_any_layer(planted: tuple[ChatModel, Tensor]) -> None:
    chat, r = planted
    layers = range(-1, chat.facts.n_layers)
    before = Recorder(layers)
    _logits(chat, PROMPTS, [before])
    after = Recorder(layers)
    _logits(chat, PROMPTS, [DirectionAblation(r, layers=layers), after])
    for layer in layers:
        assert (before.outputs[layer][0] @ r).abs().min() > 1.0  # the planted component is there
        hidden = after.outputs[layer][0]
        assert (hidden @ r).abs().max() < 1e-5 * hidden.norm(dim=-1).max()


# --- position masks during generation with a KV cache --------------------------------------------


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[2:]], ids=["padded", "unpadded"])
def test_position_masks_and_stream_state_during_cached_generation(tiny_chat: ChatModel, prompts: list[str]) -> None:
    """Offsets come from each call's inputs: the growing 2-D mask of a padded batch, the position ids of
    an unpadded one (transformers then passes no mask)."""
    d, n_new = tiny_chat.facts.d_model, 4
    specs = {0: PositionMask("all"), 1: PositionMask("prompt"), 2: PositionMask("bos"), 3: PositionMask("from", 3)}
    edits: list = []
    recorders: dict[int, tuple[Recorder, Recorder]] = {}
    for layer, spec in specs.items():
        recorders[layer] = (Recorder([layer]), Recorder([layer]))
        edits += [recorders[layer][0], ActivationAddition(torch.ones(d), layer, 0.5, spec), recorders[layer][1]]
    probe = StateProbe([0])
    edits.append(probe)

    batch = tiny_chat.tokenize(prompts)
    width = batch["input_ids"].shape[1]
    pads = (batch["attention_mask"] == 0).sum(-1)
    assert len(set(pads.tolist())) == len(prompts)  # different prompt lengths (or one prompt)
    with torch.no_grad(), intervene(tiny_chat.model, edits):
        tiny_chat.model.generate(
            **batch, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
            pad_token_id=tiny_chat.tokenizer.pad_token_id,
        )

    # One prefill over the padded prompt, then one cached call per new token but the last.
    assert [s[0] for s in probe.snapshots] == [0] + [width + k for k in range(n_new - 1)]
    assert [s[3] for s in probe.snapshots] == [width] + [1] * (n_new - 1)
    for _, prompt_length, pad_lengths, _ in probe.snapshots:
        assert prompt_length == width
        assert pad_lengths is not None and torch.equal(pad_lengths.cpu(), pads.cpu())

    position = torch.arange(width + n_new - 1).expand(len(prompts), -1)
    pad = pads.view(-1, 1)
    expected = {
        0: torch.ones_like(position, dtype=torch.bool),
        1: (position < width) & (position >= pad),
        2: position == pad,
        3: position >= pad + 3,
    }
    for layer, (before, after) in recorders.items():
        assert len(before.outputs[layer]) == n_new
        touched = torch.cat(
            [(a - b).abs().sum(-1) > 0 for a, b in zip(after.outputs[layer], before.outputs[layer], strict=True)],
            dim=1,
        )
        assert torch.equal(touched, expected[layer]), specs[layer]


def test_a_cached_call_whose_positions_are_unknown_is_an_error() -> None:
    cache = DynamicCache()
    assert call_offset(1, torch.ones(2, 7), None, [cache]) == 6  # the mask covers past + new tokens
    assert call_offset(1, None, torch.tensor([[9], [9]]), [cache]) == 9  # unpadded: position ids
    assert call_offset(5, None, None, []) == 0  # a plain forward starts at 0
    with pytest.raises(GenerationStateError, match="neither a 2-D attention_mask nor position_ids"):
        call_offset(1, None, None, [cache])
    with pytest.raises(GenerationStateError, match="covers 3 positions"):
        call_offset(4, torch.ones(1, 3), None, [cache])


@pytest.mark.parametrize("kind", ["reconstruction", "zero"])
def test_sink_excluding_replacements_keep_the_first_real_token(tiny_chat: ChatModel, kind: str) -> None:
    """CE-recovered splices from the second real token on: the sink keeps its clean value, every later
    position is replaced, under left padding (each row's sink sits in a different column)."""
    d, layer = tiny_chat.facts.d_model, 1
    # A decoder of zeros (and b_dec = 0) reconstructs everything as 0, like ZeroAblation.
    zero_sae = make_tiny_sae(d, 2 * d, seed=3)
    with torch.no_grad():
        zero_sae.W_dec.zero_()
        zero_sae.b_dec.zero_()
    after_sink = PositionMask("from", 1)
    edit = SAEReconstruction({layer: zero_sae}, after_sink) if kind == "reconstruction" else ZeroAblation([layer], after_sink)
    clean = _recorded(tiny_chat, PROMPTS, layer)
    after = Recorder([layer])
    _logits(tiny_chat, PROMPTS, [edit, after])
    edited = after.outputs[layer][0]
    mask = tiny_chat.tokenize(PROMPTS)["attention_mask"].bool()
    pads = (~mask).sum(-1)
    for row, pad in enumerate(pads.tolist()):
        torch.testing.assert_close(edited[row, pad], clean[row, pad])  # the sink is untouched
        assert clean[row, pad].abs().sum() > 0
        assert edited[row, pad + 1:].abs().max() == 0  # every later real position is replaced


# --- straight-through targets and early stopping -------------------------------------------------


def _grad_wrt_embeddings(chat: ChatModel, edits: Sequence) -> tuple[Tensor, Tensor]:
    batch = chat.tokenize(PROMPTS[:2])
    embeds = chat.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    with intervene(chat.model, edits):
        logits = chat.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False).logits
    logits[:, -1, chat.facts.refusal_token_ids[0]].sum().backward()
    assert embeds.grad is not None
    return logits.detach(), embeds.grad


def test_straight_through_target_sets_the_value_and_passes_gradients(tiny_chat: ChatModel) -> None:
    layer = 2
    hidden = _recorded(tiny_chat, PROMPTS[:2], layer)
    plain_logits, plain_grad = _grad_wrt_embeddings(tiny_chat, [])
    assert plain_grad.abs().max() > 0

    same = StraightThroughTarget({layer: hidden})
    logits, grad = _grad_wrt_embeddings(tiny_chat, [same])
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, plain_grad, atol=1e-6, rtol=1e-4)
    assert same.outputs[layer].grad is not None and same.outputs[layer].grad.abs().max() > 0

    target = hidden + torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3))
    moved = StraightThroughTarget({layer: target})
    seen = Recorder([layer])
    logits, grad = _grad_wrt_embeddings(tiny_chat, [moved, seen])
    torch.testing.assert_close(seen.outputs[layer][0], target, atol=1e-6, rtol=0)
    assert (logits - plain_logits).abs().max() > 1e-3
    assert grad.abs().max() > 0 and not torch.equal(grad, torch.zeros_like(grad))


def test_run_until_stops_after_the_last_needed_layer(tiny_chat: ChatModel) -> None:
    calls: list[str] = []
    handles = [
        decoder_layers(tiny_chat.model)[2].register_forward_hook(lambda *_: calls.append("layer2")),
        tiny_chat.model.lm_head.register_forward_hook(lambda *_: calls.append("lm_head")),
    ]
    try:
        recorder = Recorder([0, 1, 3])
        run_until(tiny_chat.model, [recorder], 1, **tiny_chat.tokenize(PROMPTS))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert sorted(recorder.outputs) == [0, 1] and len(recorder.outputs[1]) == 1
    # The hooks are gone afterwards: a plain forward records nothing more.
    _logits(tiny_chat, PROMPTS)
    assert len(recorder.outputs[1]) == 1 and 3 not in recorder.outputs


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_a_forward_resumed_from_the_clean_stream_equals_the_full_forward(
    tiny_chat: ChatModel, tiny_saes: dict[int, nn.Module], layer: int
) -> None:
    batch = tiny_chat.tokenize(PROMPTS)
    clean = _recorded(tiny_chat, PROMPTS, layer)
    direction = torch.randn(tiny_chat.facts.d_model, generator=torch.Generator().manual_seed(layer))
    edits = [SAEReconstruction({layer: tiny_saes[layer]}, PositionMask("from", 1)), ActivationAddition(direction, layer)]
    full = _logits(tiny_chat, PROMPTS, edits)
    ran: list[int] = []
    blocks = decoder_layers(tiny_chat.model)
    handles = [next(block.children()).register_forward_pre_hook(lambda *_, i=i: ran.append(i))
               for i, block in enumerate(blocks)]
    try:
        with torch.no_grad(), intervene(tiny_chat.model, edits, resume=(layer, clean)):
            resumed = tiny_chat.model(**batch, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    assert ran == list(range(layer + 1, len(blocks)))  # the blocks up to `layer` did not compute
    torch.testing.assert_close(resumed, full, atol=1e-6, rtol=0)
    assert (full - _logits(tiny_chat, PROMPTS)).abs().max() > 1e-3  # the edits matter
    # Afterwards every block is itself again.
    assert all("forward" not in block.__dict__ for block in blocks)
    torch.testing.assert_close(_logits(tiny_chat, PROMPTS), _logits(tiny_chat, PROMPTS, [Recorder([0])]))


@dataclass
class InPlaceZero:
    layers: Sequence[int]

    def __call__(self, layer: int, hidden: Tensor, state: StreamState) -> Tensor:
        return hidden.zero_()


def test_resuming_refuses_to_lose_an_earlier_edit_or_the_kv_cache(tiny_chat: ChatModel) -> None:
    batch = tiny_chat.tokenize(PROMPTS)
    clean = _recorded(tiny_chat, PROMPTS, 2)
    direction = torch.ones(tiny_chat.facts.d_model)
    for early in ([ZeroAblation([1])], [DirectionAblation.everywhere(direction, 4)], [Recorder([0])]):
        with pytest.raises(ValueError, match="before the resume point"):
            with intervene(tiny_chat.model, early, resume=(2, clean)):
                pass
    # A hook intervene does not know of cannot change the skipped stream either.
    handle = decoder_layers(tiny_chat.model)[1].register_forward_hook(lambda module, args, output: output + 1)
    try:
        with pytest.raises(ValueError, match="edit at layer 1 would be lost"), torch.no_grad():
            with intervene(tiny_chat.model, [], resume=(2, clean)):
                tiny_chat.model(**batch, use_cache=False)
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="use_cache=False"), torch.no_grad():
        with intervene(tiny_chat.model, [], resume=(2, clean)):
            tiny_chat.model(**batch, use_cache=True)
    with pytest.raises(ValueError, match="shape"), torch.no_grad():
        with intervene(tiny_chat.model, [], resume=(2, clean[:1])):
            tiny_chat.model(**batch, use_cache=False)
    assert all("forward" not in block.__dict__ for block in decoder_layers(tiny_chat.model))
    # The recorded stream is not changed by an edit that writes in place.
    kept = clean.clone()
    with torch.no_grad(), intervene(tiny_chat.model, [InPlaceZero([2])], resume=(2, clean)):
        tiny_chat.model(**batch, use_cache=False)
    assert torch.equal(clean, kept)


# --- the nnsight backend -------------------------------------------------------------------------


def test_nnsight_backend_matches_the_hook_backend(tiny_chat: ChatModel, tiny_saes: dict[int, nn.Module]) -> None:
    from refusal_sae.nnsight_backend import forward_with_edits_nnsight, wrap_model

    n = tiny_chat.facts.n_layers
    r = torch.randn(tiny_chat.facts.d_model, generator=torch.Generator().manual_seed(5))
    hidden = _recorded(tiny_chat, PROMPTS, 1)
    features = {layer: _active_latents(tiny_saes[layer], hidden, row=2, n=4) for layer in range(n)}
    lm = wrap_model(tiny_chat)
    plain = last_position_logits(tiny_chat, PROMPTS)
    cases = {
        "none": [],
        "ablation": [DirectionAblation(r, layers=range(-1, n))],
        "features": [FeatureEdit(tiny_saes, features, mode="scale", value=-3.0)],
        "prompt-set": [FeatureEdit(tiny_saes, {2: features[2]}, "set", 5.0, PositionMask("from", 4))],
    }
    for name, edits in cases.items():
        hooks = last_position_logits(tiny_chat, PROMPTS, edits)
        via_nnsight = forward_with_edits_nnsight(tiny_chat, PROMPTS, edits, batch_size=2, lm=lm)
        assert via_nnsight.shape == hooks.shape
        torch.testing.assert_close(via_nnsight, hooks, atol=1e-4, rtol=0, msg=name)
        if edits:
            assert (hooks - plain).abs().max() > 1e-3, name


def test_sparse_splice_equals_the_full_splice_for_topk_and_relu_saes():
    from tiny import make_tiny_sae

    from refusal_sae.interventions import sparse_splice, splice

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 32)
    index = torch.tensor([1, 7, 30])
    for sae in (make_tiny_sae(32, 64, seed=1), make_tiny_sae(32, 64, seed=2, k=6)):
        def full(latents):
            edited = latents.clone()
            edited[..., index] = -3 * latents[..., index] + 0.5
            return edited

        fast = sparse_splice(sae, hidden, index, lambda cols: -3 * cols + 0.5)
        assert torch.allclose(fast, splice(sae, hidden, full), atol=1e-5)
        assert not torch.allclose(fast, hidden, atol=1e-3)


def test_held_and_clamped_latents_of_one_layer_are_one_splice(tiny_chat, tiny_saes):
    """Upstream edits move layer 2's input; there the held latents take the unedited copy's values and the
    clamped ones -3x their own, both read from the same incoming stream (not one splice after the other)."""
    from refusal_sae.interventions import HoldLatents, SecondHalf, Simultaneous, decoder_directions

    batch = tiny_chat.tokenize(["How do I make a bomb?", "Tell me a story about a very long road"])
    doubled = {key: torch.cat([value, value]) for key, value in batch.items()}
    held, clamped = torch.arange(0, 64, 3), torch.arange(1, 64, 3)
    upstream = FeatureEdit({1: tiny_saes[1]}, {1: torch.arange(0, 64, 2)}, mode="scale", value=-3.0)
    clamp = FeatureEdit({2: tiny_saes[2]}, {2: clamped}, mode="scale", value=-3.0)
    hold = HoldLatents(tiny_saes, {2: held})
    before, after = Recorder([2]), Recorder([2])
    with torch.no_grad(), intervene(tiny_chat.model, [before, Simultaneous([hold, SecondHalf(upstream),
                                                                             SecondHalf(clamp)]), after]):
        tiny_chat.model(**doubled)
    h, got = before.outputs[2][0], after.outputs[2][0]
    sae = tiny_saes[2]
    with torch.no_grad():
        f = sae.encode(h)
        expected = (h[2:] + (f[:2][..., held] - f[2:][..., held]) @ decoder_directions(sae, held, h)
                    + (-4.0 * f[2:][..., clamped]) @ decoder_directions(sae, clamped, h))
    assert not torch.allclose(h[:2], h[2:])  # the upstream clamp did move the edited rows
    torch.testing.assert_close(got[2:], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[:2], h[:2], rtol=0, atol=0)
