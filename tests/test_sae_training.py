"""SAE training, activation caching and quality metrics (offline, tiny)."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    JumpReLUSAE,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata, TrainStepInput
from torch.utils._python_dispatch import TorchDispatchMode

from refusal_sae.config import SAESpec
from refusal_sae.interventions import decoder_layers
from refusal_sae.sae_training import (
    SparseDecodeTopKTrainingSAE,
    collect_activations,
    geometric_median,
    reconstruction_stats,
    sae_quality,
    train_sae,
)

TEXTS = [
    "Explain how photosynthesis works in simple words.",
    "Hi",
    "Write a persuasive article about recycling and clean energy, with three short sections.",
    "How do I bake bread?",
    "The quick brown fox",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core box OpenMP spin-waits make
    them ~10x slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rendered(chat, prompts=TEXTS):
    return [chat.render([p])[0] + "Sure, here are the steps." for p in prompts]


def _sparse_dictionary_data(n: int = 8192, d: int = 32, atoms: int = 128, active: int = 3, seed: int = 0):
    """Samples that are exact sparse combinations of a known random unit-norm dictionary."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    index = torch.rand(n, atoms, generator=g).argsort(-1)[:, :active]
    coeff = torch.rand(n, active, generator=g) * 2 + 0.5
    return torch.einsum("na,nad->nd", coeff, dictionary[index])


def _manual_sae(w_enc: torch.Tensor, w_dec: torch.Tensor) -> StandardSAE:
    """A ReLU SAE with the given weights and zero biases (``enc(h) = relu(h W_enc)``)."""
    d, m = w_enc.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=m, dtype="float32", device="cpu"))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_topk_sae_learns_a_planted_sparse_dictionary():
    data = _sparse_dictionary_data(atoms=64)
    train, held_out = data[:7168], data[7168:]
    spec = SAESpec(type="train", width_multiplier=8, k=4, training_tokens=76_800, batch_size=256, lr=1e-2)
    sae = train_sae(train, spec, seed=0, layer=2)
    assert isinstance(sae, TopKSAE)
    assert sae.cfg.d_sae == 256 and sae.cfg.d_in == 32
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert not any(p.requires_grad for p in sae.parameters())
    stats = reconstruction_stats(sae, held_out)
    assert stats["fraction_variance_explained"] >= 0.9, stats
    assert stats["l0"] <= 4.0


@pytest.mark.parametrize("dead_every", [5, 37], ids=["more_dead_than_k_aux", "fewer_dead_than_k_aux"])
@pytest.mark.parametrize("rescale", [True, False])
def test_sparse_decode_training_sae_has_sae_lens_losses_and_gradients(rescale, dead_every):
    """The faster TopK training SAE computes sae-lens's TopK model: same losses (MSE and the dead-latent
    auxiliary loss) and same gradients, to float precision, whether the auxiliary loss picks the top
    ``k_aux = 16`` of 52 dead latents or takes all 7."""
    cfg = TopKTrainingSAEConfig(k=8, d_in=32, d_sae=256, dtype="float32", device="cpu",
                                rescale_acts_by_decoder_norm=rescale, metadata=SAEMetadata(hook_name="h"))
    torch.manual_seed(0)
    reference = TopKTrainingSAE(cfg)
    with torch.no_grad():
        for parameter in reference.parameters():  # non-zero biases and non-unit decoder rows
            parameter.add_(torch.randn_like(parameter) * 0.1)
    sparse = SparseDecodeTopKTrainingSAE(cfg)
    sparse.load_state_dict(reference.state_dict())
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 2
    dead = torch.arange(256) % dead_every == 0
    outputs = []
    for sae in (reference, sparse):
        step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0,
                              is_logging_step=False)
        out = sae.training_forward_pass(step)
        out.loss.backward()
        outputs.append(out)
    assert outputs[0].losses["auxiliary_reconstruction_loss"] > 0
    for name in outputs[0].losses:
        torch.testing.assert_close(outputs[1].losses[name], outputs[0].losses[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1].sae_out, outputs[0].sae_out, rtol=1e-5, atol=1e-5)
    for (name, mine), theirs in zip(sparse.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)


class _CountTopk(TorchDispatchMode):
    """Counts every topk torch runs (method or function, whoever calls it)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.topk.default:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def _training_step(sae, x):
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0,
                          is_logging_step=False)
    out = sae.training_forward_pass(step)
    out.loss.backward()
    return out


def test_training_step_selects_the_top_k_once():
    """Decoding reuses the encoder's top-k selection: one topk over all d_sae latents per training forward
    without dead latents (a second one was an eighth of a CPU step at the organism's shape)."""
    cfg = TopKTrainingSAEConfig(k=8, d_in=32, d_sae=256, dtype="float32", device="cpu", metadata=SAEMetadata(hook_name="h"))
    with _CountTopk() as counter:
        _training_step(SparseDecodeTopKTrainingSAE(cfg), torch.randn(64, 32))
    assert counter.shapes == [(64, 256)]


def test_a_hook_that_edits_the_activations_is_decoded():
    """A hook on the activations that replaces or edits them in place is what decode sees, as in sae-lens."""
    cfg = TopKTrainingSAEConfig(k=8, d_in=32, d_sae=256, dtype="float32", device="cpu", metadata=SAEMetadata(hook_name="h"))
    x = torch.randn(16, 32)
    for edit in (lambda module, args, out: out * 0, lambda module, args, out: out.mul_(0)):
        sae = SparseDecodeTopKTrainingSAE(cfg)
        handle = sae.hook_sae_acts_post.register_forward_hook(edit)
        out = _training_step(sae, x)
        handle.remove()
        torch.testing.assert_close(out.sae_out, sae.b_dec.detach().expand_as(out.sae_out))


@pytest.mark.parametrize("threads", [1, 2])
def test_training_is_bitwise_reproducible_for_a_seed(threads):
    """Run-to-run spread comes from the seed alone: the same seed gives the same SAE bit for bit (also with
    two threads, where a parallel scatter could reorder sums), another seed a different one."""
    torch.set_num_threads(threads)
    data = _sparse_dictionary_data(n=1024)
    spec = SAESpec(type="train", width_multiplier=2, k=3, training_tokens=4096, batch_size=256)
    a, b = train_sae(data, spec, seed=3), train_sae(data, spec, seed=3)
    c = train_sae(data, spec, seed=4)
    for name, parameter in a.state_dict().items():
        assert torch.equal(parameter, b.state_dict()[name]), name
    assert not torch.equal(a.W_dec, c.W_dec)


def test_fused_adam_trains_the_sae_that_sae_lens_adam_trains(monkeypatch):
    """train_sae switches sae-lens's Adam to the fused kernel; the SAE it trains is the one sae-lens's own
    optimiser trains, to float precision (dead latents and the auxiliary loss included)."""
    from sae_lens.training.sae_trainer import SAETrainer

    data = _sparse_dictionary_data(n=2048)
    spec = SAESpec(type="train", width_multiplier=4, k=3, training_tokens=4096, batch_size=256, lr=1e-2)
    fused = train_sae(data, spec, seed=5, dead_window_tokens=512)
    fit, flags = SAETrainer.fit, []

    def unfused_fit(trainer):
        flags.extend(group["fused"] for group in trainer.optimizer.param_groups)
        for group in trainer.optimizer.param_groups:
            group["fused"] = None
        return fit(trainer)

    monkeypatch.setattr(SAETrainer, "fit", unfused_fit)
    plain = train_sae(data, spec, seed=5, dead_window_tokens=512)
    assert flags and all(flags)
    for name, parameter in fused.state_dict().items():
        torch.testing.assert_close(parameter, plain.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_jumprelu_training_returns_inference_jumprelu():
    data = _sparse_dictionary_data(n=1024)
    spec = SAESpec(type="train", architecture="jumprelu", width_multiplier=2, k=3, training_tokens=1024, batch_size=256)
    sae = train_sae(data, spec, seed=0)
    assert isinstance(sae, JumpReLUSAE)
    assert sae.encode(data[:8]).shape == (8, 64)


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.zeros(99, 3), torch.full((1, 3), 1e4)])
    assert geometric_median(points).norm() < 1.0
    assert points.mean(0).norm() > 100


def test_reconstruction_stats_match_hand_computation():
    # enc = relu(h) on 2 of 3 latents, dec copies them back: ĥ = relu(h); latent 2 can never fire.
    sae = _manual_sae(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([[1.0, 0], [0, 1.0], [0, 0]]))
    h = torch.tensor([[1.0, 2.0], [-1.0, 3.0], [2.0, -2.0]])
    # residuals: (0,0), (-1,0), (0,-2) -> 5; mean (2/3, 1): 1/9+1 + 25/9+4 + 16/9+9 = 168/9
    stats = reconstruction_stats(sae, h, chunk=2)
    assert stats["fraction_variance_explained"] == pytest.approx(1 - 5 / (168 / 9))
    assert stats["l0"] == pytest.approx(4 / 3)
    assert stats["dead_fraction"] == pytest.approx(1 / 3)


def test_collect_activations_matches_hidden_states_and_stops_early(tiny_chat):
    texts = _rendered(tiny_chat)
    layers, max_length, skip = [0, 2], 60, 1
    last_block_calls = []
    handle = decoder_layers(tiny_chat.model)[-1].register_forward_hook(lambda *a: last_block_calls.append(1))
    try:
        acts = collect_activations(tiny_chat, texts, layers, max_length=max_length, batch_size=2, skip_first=skip)
    finally:
        handle.remove()
    assert last_block_calls == []  # layer 3 never ran: the forward stopped after layer 2

    tok = tiny_chat.tokenizer
    batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                add_special_tokens=False)
    assert batch["input_ids"][:, 0].eq(tok.pad_token_id).any()  # the batch really is left padded
    with torch.no_grad():
        hidden = tiny_chat.model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(-1)
    assert (lengths == max_length).any()  # truncation exercised
    for layer in layers:
        expected = torch.cat([hidden[layer + 1][row][mask[row]][skip:] for row in range(len(texts))])
        assert acts[layer].dtype == torch.float32
        assert acts[layer].shape == (int((lengths - skip).sum()), tiny_chat.facts.d_model)
        torch.testing.assert_close(acts[layer], expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fitted_chat():
    """A private tiny chat model fitted briefly on the test texts, so its clean CE is far below the
    uniform ln(V) of a random model and zero-ablating a layer visibly hurts (CE-recovered needs a gap)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import make_tiny_chat_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    chat = make_tiny_chat_model(seed=1)
    texts = _rendered(chat)
    batch = chat.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(chat.model.parameters(), lr=1e-2)
    chat.model.train()
    for _ in range(40):
        optimizer.zero_grad()
        chat.model(**batch, labels=labels).loss.backward()
        optimizer.step()
    chat.model.eval()
    torch.set_num_threads(threads)
    return chat


def test_ce_recovered_perfect_and_zero_saes(fitted_chat):
    tiny_chat = fitted_chat
    d = tiny_chat.facts.d_model
    eye = torch.eye(d)
    # relu(h) - relu(-h) = h: a perfect reconstruction with both signs
    perfect = _manual_sae(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0))
    zero = _manual_sae(torch.cat([eye, -eye], dim=1), torch.zeros(2 * d, d))
    texts = _rendered(tiny_chat)
    held_out = collect_activations(tiny_chat, texts, [1, 2], max_length=60, batch_size=3)
    table = sae_quality(tiny_chat, {1: perfect, 2: zero}, texts, held_out, max_length=60, batch_size=3)
    assert list(table["layer"]) == [1, 2]
    assert list(table.columns) == [
        "layer", "d_sae", "fraction_variance_explained", "l0", "dead_fraction",
        "ce_clean", "ce_sae", "ce_zero", "ce_recovered",
    ]
    perfect_row, zero_row = table.iloc[0], table.iloc[1]
    assert perfect_row["ce_clean"] < 3.0  # the fitted model predicts its texts
    assert perfect_row["ce_zero"] > perfect_row["ce_clean"] + 0.5  # zero ablation does hurt
    assert perfect_row["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert perfect_row["fraction_variance_explained"] == pytest.approx(1.0, abs=1e-5)
    assert perfect_row["l0"] == pytest.approx(d, abs=0.5)  # one sign per dimension fires
    assert zero_row["ce_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert zero_row["ce_sae"] == pytest.approx(zero_row["ce_zero"])
    assert zero_row["fraction_variance_explained"] < 0.5
