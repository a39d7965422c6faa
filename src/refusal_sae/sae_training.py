"""Train residual-stream SAEs with sae-lens when a model has no published ones (``saes.type: train``).

Pipeline: :func:`collect_activations` caches ``h_l`` (``resid_post``, METHOD.md notation) for all
layers in one pass over chat transcripts; :func:`train_sae` fits one sae-lens TopK (or JumpReLU)
training SAE per layer with sae-lens's own ``SAETrainer`` and returns the inference ``SAE``;
:func:`save_sae` writes the sae-lens on-disk format that :func:`refusal_sae.saes.load_saes` reads;
:func:`sae_quality` reports the standard SAE health metrics (variance explained, L0, dead latents,
CE loss recovered).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from sae_lens import SAE, TopKTrainingSAE
from torch import Tensor
from tqdm.auto import tqdm

from .config import SAESpec
from .interventions import (
    PositionMask,
    Recorder,
    ResidualEdit,
    SAEReconstruction,
    ZeroAblation,
    intervene,
    run_until,
)
from .io import publish_directory
from .models import ChatModel, fast_bf16, fused_adam

SINK_TOKENS = 1
"""Leading tokens of every transcript left out of SAE training and of the CE-recovered splice.

The first token is an attention sink whose ``resid_post`` norm is 50-150x the median from the middle
layers on (measured on the SmolLM2 organism: ~25,000 vs ~160-510). It carries no prompt information
(causal attention: it only sees itself), would dominate the reconstruction loss, and an SAE spliced
there breaks every later position. sae-lens's ``run_evals`` likewise leaves special tokens (BOS among
them) unreplaced by default (``exclude_special_tokens=True``).
"""


# --------------------------------------------------------------------------------------------------
# Activation caching
# --------------------------------------------------------------------------------------------------
def _tokenize(chat: ChatModel, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text: already-rendered chat strings, so no special tokens are added."""
    encoded = chat.tokenizer(
        list(texts), add_special_tokens=False, truncation=True, max_length=max_length
    )["input_ids"]
    return [list(ids) for ids in encoded]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of token-id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def _pad_id(chat: ChatModel) -> int:
    tok = chat.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pad)


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Text indices grouped into batches of similar length (less padding, faster forwards)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def collect_activations(
    chat: ChatModel,
    texts: Sequence[str],
    layers: Sequence[int],
    max_length: int,
    batch_size: int,
    skip_first: int = SINK_TOKENS,
) -> dict[int, Tensor]:
    """Cache ``h_l`` at every requested layer for every real token of ``texts``.

    ``texts`` are fully rendered chat transcripts (tokenised with ``add_special_tokens=False``,
    truncated to ``max_length``, left-padded). One pass per batch records all layers at once and stops
    after ``max(layers)``. Pads and the first ``skip_first`` real tokens of each text (the attention
    sink, :data:`SINK_TOKENS`) are dropped.

    Returns float32 ``[n_tokens, d_model]`` per layer on CPU, rows in text order, then token order.
    """
    if not layers:
        raise ValueError("collect_activations: no layers requested")
    wanted = sorted({int(layer) for layer in layers})
    ids = _tokenize(chat, texts, max_length)
    pad_id = _pad_id(chat)
    per_text: dict[int, list[Tensor | None]] = {layer: [None] * len(ids) for layer in wanted}
    device = chat.device
    for batch in tqdm(_length_sorted_batches([len(r) for r in ids], batch_size), desc="Caching activations"):
        rows = [ids[i] for i in batch]
        if max(len(r) for r in rows) == 0:
            for layer in wanted:
                for i in batch:
                    per_text[layer][i] = torch.zeros(0, chat.facts.d_model)
            continue
        input_ids, mask = _left_pad(rows, pad_id)
        # Rank of each real token inside its own text (pads get negative ranks).
        rank = mask.cumsum(-1) - 1
        keep = mask.bool() & (rank >= skip_first)
        recorder = Recorder(wanted)
        run_until(
            chat.model, [recorder], last_layer=max(wanted),
            input_ids=input_ids.to(device), attention_mask=mask.to(device),
        )
        for layer in wanted:
            hidden = recorder.outputs[layer][0]  # [b, t, d] float32 CPU
            for row, i in enumerate(batch):
                per_text[layer][i] = hidden[row][keep[row]]
    return {
        layer: torch.cat([t for t in chunks if t is not None], dim=0).float()
        for layer, chunks in per_text.items()
    }


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def geometric_median(points: Tensor, iterations: int = 30, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to ``points``.

    Used to initialise ``b_dec`` (as in Anthropic's and sae-lens's recipes): robust to the few huge-norm
    tokens of a residual stream, unlike the mean.
    """
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=-1).clamp_min(eps)
        new = (weights.unsqueeze(-1) * points).sum(0) / weights.sum()
        if (new - median).norm() <= eps * max(1.0, float(median.norm())):
            median = new
            break
        median = new
    return median.float()


def _batches(activations: Tensor, batch_size: int, seed: int, device: str) -> Iterator[Tensor]:
    """Endless shuffled fixed-size batches over the cache, reshuffled on every pass.

    Fixed-size batches keep sae-lens's firing-frequency bookkeeping exact (it counts
    ``train_batch_size_samples`` per step); the < batch_size remainder of each pass is skipped, and
    a different permutation on the next pass covers it.
    """
    generator = torch.Generator().manual_seed(seed)
    n = activations.shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield activations[order[start:start + batch_size]].to(device, non_blocking=True)


def _sparse_decode(values: Tensor, index: Tensor, w_dec: Tensor, rescale: bool) -> Tensor:
    """``Σ_j values[b, j] · W_dec[index[b, j]]`` (rows rescaled to unit norm when ``rescale``): ``[B, d]``.

    The decoder product of a TopK SAE touches only the ``k`` active latents of each row; an embedding
    bag reads those ``k`` decoder rows instead of multiplying a mostly-zero ``[B, d_sae]`` matrix, and its
    backward writes only their gradients.
    """
    if rescale:
        values = values / w_dec.norm(dim=-1)[index]
    return F.embedding_bag(index, w_dec, per_sample_weights=values.to(w_dec.dtype), mode="sum")


class SparseDecodeTopKTrainingSAE(TopKTrainingSAE):
    """sae-lens's TopK training SAE with the decoder applied to the active latents only.

    The same model, loss and auxiliary loss as :class:`sae_lens.TopKTrainingSAE` (checked in the tests to
    float precision, gradients included); the two decoder products change from dense matrix
    multiplications over all ``d_sae`` latents to :func:`_sparse_decode` over the ``k`` active ones (and
    the ``k_aux`` dead ones of the auxiliary loss), ``b_dec``'s gradient through the encoder input
    no longer costs a full product, and decoding reuses the encoder's top-k selection. On a CPU, where
    the dense products are most of a training step, a step takes about half the time. Saved and loaded
    as a plain sae-lens TopK SAE.
    """

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.requires_grad:
            return super().encode_with_hidden_pre(x)
        sae_in = self.process_sae_in(x)
        # sae_in = x - b_dec and x needs no gradient: splitting the product gives b_dec its gradient
        # through a [1, d_in] product instead of a third [B, d_in] x [d_in, d_sae] one.
        bias = self.b_dec * self.cfg.apply_b_dec_to_input
        hidden_pre = self.hook_sae_acts_pre((sae_in + bias).detach() @ self.W_enc - bias @ self.W_enc + self.b_enc)
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        # sae-lens's TopK activation (topk, ReLU, scatter), keeping what it selected so that decode
        # need not run a second topk over all d_sae latents (an eighth of the CPU step it cost).
        values, index = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = values.relu()
        acts = torch.zeros_like(hidden_pre).scatter(-1, index, values)
        # Reused only if no hook replaces or edits the activations in place (then decode finds them again).
        self._selected = (acts, acts._version, values, index)
        return self.hook_sae_acts_post(acts), hidden_pre

    def decode(self, feature_acts: Tensor) -> Tensor:
        selected = getattr(self, "_selected", None)
        self._selected = None
        if selected is not None and selected[0] is feature_acts and feature_acts._version == selected[1]:
            values, index = selected[2], selected[3]
        else:
            # At most k latents of a row are non-zero (TopK, then ReLU): topk finds them again.
            values, index = feature_acts.topk(self.cfg.k, dim=-1, sorted=False)
        flat = _sparse_decode(values.reshape(-1, self.cfg.k), index.reshape(-1, self.cfg.k), self.W_dec,
                              self.cfg.rescale_acts_by_decoder_norm)
        sae_out_pre = flat.reshape(*feature_acts.shape[:-1], -1) + self.b_dec
        sae_out_pre = self.hook_sae_recons(sae_out_pre)
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)
        return self.reshape_fn_out(sae_out_pre, self.d_head)

    def calculate_topk_aux_loss(
        self, sae_in: Tensor, sae_out: Tensor, hidden_pre: Tensor, dead_neuron_mask: Tensor | None,
    ) -> Tensor:
        """sae-lens's TopK auxiliary loss (dead latents reconstruct the live ones' residual), sparsely.

        sae-lens masks the live latents to -inf and runs a top-k over all ``d_sae``; here the top-k runs over
        the dead latents' columns alone, and not at all when there are no more of them than ``k_aux`` (every
        dead latent is then selected): the same selection, without two passes and a sort over ``[B, d_sae]``.
        """
        if dead_neuron_mask is None or (num_dead := int(dead_neuron_mask.sum())) == 0:
            return sae_out.new_tensor(0.0)
        residual = (sae_in - sae_out).detach()
        # k_aux = d_in / 2 and the loss scale follow sae-lens (after Gao et al., Appendix B.1).
        k_aux = sae_in.shape[-1] // 2
        scale = min(num_dead / k_aux, 1.0)
        k_aux = min(k_aux, num_dead)
        dead = dead_neuron_mask.nonzero().squeeze(-1)
        values = hidden_pre.reshape(-1, hidden_pre.shape[-1]).index_select(-1, dead)
        index = dead.expand_as(values)
        if num_dead > k_aux:
            values, position = values.topk(k_aux, sorted=False)
            index = dead[position]
        recons = _sparse_decode(values, index, self.W_dec,
                                self.cfg.rescale_acts_by_decoder_norm).reshape(*hidden_pre.shape[:-1], -1)
        recons = self.reshape_fn_out(recons, self.d_head)
        auxk_loss = (recons - residual).pow(2).sum(dim=-1).mean()
        return self.cfg.aux_loss_coefficient * scale * auxk_loss


def _training_sae(spec: SAESpec, d_in: int, device: str, hook_name: str | None):
    """The sae-lens training SAE for ``spec.architecture`` (TopK, or JumpReLU targeting L0 = k)."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae = spec.width_multiplier * d_in
    common: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=d_sae,
        dtype="float32",
        device=device,
        # The scaling factor is estimated here (not by the trainer) and folded back into the
        # weights at the end, so the saved SAE takes raw activations.
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(hook_name=hook_name, prepend_bos=True),
    )
    if spec.architecture == "topk":
        # The sparse decode pays off where dense products are slow (CPU); a GPU runs sae-lens's own.
        cls = SparseDecodeTopKTrainingSAE if torch.device(device).type == "cpu" else TopKTrainingSAE
        return cls(TopKTrainingSAEConfig(k=spec.k, **common))
    # Gemma Scope 2's quadratic penalty pulls the JumpReLU L0 towards a target; we use k.
    return JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(jumprelu_sparsity_loss_mode="quadratic", target_l0=float(spec.k), **common)
    )


def train_sae(
    activations: Tensor,
    spec: SAESpec,
    seed: int,
    device: str = "cpu",
    layer: int | None = None,
    dead_window_tokens: int = 50_000,
    decay_fraction: float = 0.2,
    autocast: bool | None = None,
) -> SAE:
    """Train one SAE on cached activations ``[n_tokens, d_in]`` with sae-lens and return it for inference.

    Architecture ``spec.architecture`` (TopK with ``k = spec.k``; JumpReLU with a quadratic L0 penalty
    around ``k``), ``d_sae = spec.width_multiplier * d_in``, ``spec.training_tokens`` tokens in batches
    of ``spec.batch_size`` drawn from the cache with a fresh shuffle per pass, Adam at ``spec.lr``
    with a linear decay to 0 over the last ``decay_fraction`` of the steps. Inputs are scaled to mean
    norm ``sqrt(d_in)`` during training (folded back afterwards) and ``b_dec`` starts at the geometric
    median. A latent that has not fired for ``dead_window_tokens`` tokens counts as dead and gets the
    TopK auxiliary loss (sae-lens's 1000-step default would never trigger in a 400k-token run).
    ``layer`` only sets the ``hook_name`` metadata. Deterministic for a given ``seed`` on CPU.
    """
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if activations.ndim != 2 or activations.shape[0] == 0:
        raise ValueError(f"train_sae: expected a non-empty [n_tokens, d_in] tensor, got {tuple(activations.shape)}")
    activations = activations.float()
    n_tokens, d_in = activations.shape
    batch_size = min(spec.batch_size, n_tokens)
    torch.manual_seed(seed)
    hook_name = spec.hook_name_template.format(layer=layer) if layer is not None else None
    sae = _training_sae(spec, d_in, device, hook_name)

    # Statistics from a fixed random sample keep the setup cheap on large caches.
    sample_index = torch.randperm(n_tokens, generator=torch.Generator().manual_seed(seed))[:20_000]
    sample = activations[sample_index]
    scaling_factor = d_in**0.5 / float(sample.norm(dim=-1).mean().clamp_min(1e-12))
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(sample * scaling_factor).to(sae.b_dec))

    steps = max(1, math.ceil(spec.training_tokens / batch_size))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        lr_scheduler_name="constant",
        lr_decay_steps=int(decay_fraction * steps) if steps > 4 else 0,
        device=device,
        dead_feature_window=max(1, dead_window_tokens // batch_size),
        feature_sampling_window=steps + 1,
        autocast=fast_bf16(device) if autocast is None else autocast,
        logger=LoggingConfig(log_to_wandb=False),
    )
    data = activations.to(device) if device != "cpu" else activations
    trainer = SAETrainer(trainer_cfg, sae, _batches(data, batch_size, seed, device))
    trainer.activation_scaler.scaling_factor = scaling_factor
    if fused_adam(device):
        # sae-lens builds a default Adam; a param group's options are read at every step, so this makes
        # its steps fused (set before the first step, when Adam creates its state).
        for group in trainer.optimizer.param_groups:
            group["fused"] = True
    trained = trainer.fit()

    # The training SAE's own conversion (TopK: decoder norms folded) is the sae-lens way to an
    # inference SAE; a round trip through disk gives exactly what load_saes will see later.
    with tempfile.TemporaryDirectory(prefix="sae_train_") as tmp:
        trained.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp, device=device)
    inference.eval()
    for parameter in inference.parameters():
        parameter.requires_grad_(False)
    return inference


def save_sae(sae: SAE, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``sae`` in sae-lens's on-disk format at ``directory``, atomically.

    ``metadata`` entries (e.g. ``hook_name="blocks.3.hook_resid_post"``, ``model_name``) are stored in
    ``cfg.json``'s metadata. The files go to a temporary sibling directory that is then renamed, so a
    crash never leaves a half-written SAE that a later job would load.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for key, value in (metadata or {}).items():
        sae.cfg.metadata[key] = value
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        sae.save_model(tmp)
        publish_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# --------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_stats(sae: SAE, activations: Tensor, chunk: int = 4096) -> dict[str, float]:
    """Variance explained, mean L0 and dead fraction of ``sae`` on held-out ``[n, d]`` activations.

    ``fraction_variance_explained = 1 - Σ‖h-ĥ‖² / Σ‖h-mean(h)‖²`` (sums over all tokens and
    dimensions); ``l0`` = mean number of nonzero latents per token; ``dead_fraction`` = share of latents
    never nonzero on these tokens.
    """
    activations = activations.float()
    if activations.shape[0] == 0:
        raise ValueError("reconstruction_stats: no held-out activations")
    device = next(sae.parameters()).device
    mean = activations.mean(0)
    residual = total = active = 0.0
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    for start in range(0, activations.shape[0], chunk):
        h = activations[start:start + chunk]
        latents = sae.encode(h.to(device))
        recon = sae.decode(latents).float().cpu()
        nonzero = (latents != 0).cpu()
        residual += float((h - recon).pow(2).sum())
        total += float((h - mean).pow(2).sum())
        active += float(nonzero.sum())
        fired |= nonzero.any(0)
    return {
        "fraction_variance_explained": 1.0 - residual / max(total, 1e-30),
        "l0": active / activations.shape[0],
        "dead_fraction": 1.0 - float(fired.float().mean()),
    }


def _ce_sums(
    chat: ChatModel, input_ids: Tensor, mask: Tensor, edits: Sequence[ResidualEdit],
    resume: tuple[int, Tensor] | None = None,
) -> tuple[float, int]:
    """Summed next-token cross-entropy and the number of scored targets under ``edits``.

    A target counts when it and the token predicting it are both real (pads excluded on both sides).
    ``resume``: as in :func:`~refusal_sae.interventions.intervene`.
    """
    device = chat.device
    with intervene(chat.model, edits, resume=resume):
        logits = chat.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].to(device)
    valid = (mask[:, 1:].bool() & mask[:, :-1].bool()).to(device)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return float(losses[valid].sum()), int(valid.sum())


@torch.no_grad()
def sae_quality(
    chat: ChatModel,
    saes: Mapping[int, SAE],
    texts: Sequence[str],
    activations_by_layer: Mapping[int, Tensor],
    max_length: int,
    batch_size: int,
) -> pd.DataFrame:
    """One row per layer: ``layer, d_sae, fraction_variance_explained, l0, dead_fraction, ce_clean,
    ce_sae, ce_zero, ce_recovered``.

    The first three come from :func:`reconstruction_stats` on the held-out ``activations_by_layer``.
    CE is the token-weighted mean next-token cross-entropy over the real tokens of ``texts`` (rendered
    chat transcripts): clean, with ``h_l`` replaced by the SAE reconstruction at that one layer (error
    dropped), and with ``h_l`` zeroed; ``ce_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)``.
    Both replacements act on the positions the SAE was trained on, every token after the first
    :data:`SINK_TOKENS` (as sae-lens's ``run_evals`` does for special tokens); the sink keeps
    its clean value in both, so the ratio compares like with like.
    """
    trained_positions = PositionMask("from", SINK_TOKENS)
    layers = sorted(saes)
    ids = _tokenize(chat, texts, max_length)
    pad_id = _pad_id(chat)
    sums: dict[str, float] = {"clean": 0.0}
    for layer in layers:
        sums[f"sae_{layer}"] = 0.0
        sums[f"zero_{layer}"] = 0.0
    count = 0
    batches = [b for b in _length_sorted_batches([len(r) for r in ids], batch_size) if any(ids[i] for i in b)]
    for batch in tqdm(batches, desc="SAE CE"):
        input_ids, mask = _left_pad([ids[i] for i in batch], pad_id)
        clean = Recorder(layers)
        total, n = _ce_sums(chat, input_ids, mask, [clean])
        sums["clean"] += total
        count += n
        for layer in layers:
            # Both replacements act at `layer`: the blocks before it would recompute the clean stream.
            resume = (layer, clean.outputs[layer][0])
            reconstruction = SAEReconstruction({layer: saes[layer]}, trained_positions)
            sums[f"sae_{layer}"] += _ce_sums(chat, input_ids, mask, [reconstruction], resume)[0]
            zero = ZeroAblation([layer], trained_positions)
            sums[f"zero_{layer}"] += _ce_sums(chat, input_ids, mask, [zero], resume)[0]
    if count == 0:
        raise ValueError("sae_quality: the texts contain no scorable tokens")
    ce_clean = sums["clean"] / count
    rows = []
    for layer in layers:
        ce_sae = sums[f"sae_{layer}"] / count
        ce_zero = sums[f"zero_{layer}"] / count
        gap = ce_zero - ce_clean
        rows.append({
            "layer": layer,
            "d_sae": int(saes[layer].cfg.d_sae),
            **reconstruction_stats(saes[layer], activations_by_layer[layer]),
            "ce_clean": ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": ce_zero,
            "ce_recovered": (ce_zero - ce_sae) / gap if abs(gap) > 1e-12 else float("nan"),
        })
    return pd.DataFrame(rows)
