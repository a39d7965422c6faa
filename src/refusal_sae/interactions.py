"""Pairwise feature interactions with a second-order factorization machine (Study B, METHOD.md §12).

The model is the rank-``k`` factorization machine (FM)

    ŷ(z) = w0 + Σ_i w_i z_i + Σ_{i<j} ⟨v_i, v_j⟩ z_i z_j,   V ∈ R^{n×k},

always fitted next to the same model without the pairwise term (the linear baseline), so any gain is
attributable to interactions. No maintained FM library exists for this (the known packages are
unmaintained, CPU-only C extensions or recommender-specific), so it is a small torch module here.

Two designs use it:

* ``"masks"`` (regression): a row ``z ∈ {0,1}^n`` says which SAE features were ablated (zeroed);
  the target is the model's refusal score under that ablation.
* ``"activations"`` (classification): a row is the (non-negative) SAE activations of a prompt; the
  target is 1 for harmful and 0 for harmless, and the model outputs a logit.

Inputs are used as given: nothing is standardised or rescaled, so a fitted model predicts on raw
``z`` exactly as it was trained. Inputs are cast to float32 (bool masks included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import Tensor

__all__ = [
    "MaskDesign",
    "WEIGHT_COLUMNS",
    "FMConfig",
    "FactorizationMachine",
    "Task",
    "evaluate",
    "fit",
    "interaction_scores",
    "mask_design",
    "weights_frame",
]

Task = Literal["regression", "classification"]
WEIGHT_COLUMNS = ["model", "term", "feature_i", "feature_j", "weight"]
_TASKS = ("regression", "classification")
# Small enough that the pairwise term starts near zero (the FM starts as the linear model), large
# enough to break the symmetry between the rank dimensions.
_V_INIT_STD = 0.01


class FactorizationMachine(torch.nn.Module):
    """Second-order factorization machine; with ``pairwise=False`` the linear model ``w0 + w·z``.

    Parameters: ``w0`` (scalar), ``w`` ``[n_features]`` (zero init) and, for the FM only, ``V``
    ``[n_features, rank]`` drawn from N(0, 0.01²) with ``generator`` (pass a seeded one for
    reproducible fits; the global torch RNG is used otherwise). The output is a regression value or
    a classification logit, depending on the loss it was fitted with.
    """

    def __init__(
        self, n_features: int, rank: int = 20, pairwise: bool = True, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if n_features <= 0:
            raise ValueError(f"n_features={n_features}: must be positive")
        if pairwise and rank <= 0:
            raise ValueError(f"rank={rank}: must be positive for a pairwise model")
        self.n_features = n_features
        self.rank = rank if pairwise else 0
        self.pairwise = pairwise
        self.w0 = torch.nn.Parameter(torch.zeros(()))
        self.w = torch.nn.Parameter(torch.zeros(n_features))
        self.V: torch.nn.Parameter | None = None
        if pairwise:
            self.V = torch.nn.Parameter(torch.randn(n_features, rank, generator=generator) * _V_INIT_STD)

    def forward(self, z: Tensor) -> Tensor:
        """Predictions ``[B]`` for inputs ``z`` ``[B, n_features]``, in O(B·n·k).

        Uses Σ_{i<j} ⟨v_i, v_j⟩ z_i z_j = ½ Σ_f ((z V)_f² − (z² V²)_f): the square of the sum counts
        every pair twice plus the diagonal i = j, which the second term removes.
        """
        if z.ndim != 2 or z.shape[1] != self.n_features:
            raise ValueError(f"z has shape {tuple(z.shape)}, expected [batch, {self.n_features}]")
        out = self.w0 + z @ self.w
        if self.V is not None:
            zv = z @ self.V
            out = out + 0.5 * (zv.square() - z.square() @ self.V.square()).sum(dim=1)
        return out

    def intercept(self) -> float:
        """The bias ``w0``."""
        return float(self.w0.detach())

    def unary(self) -> Tensor:
        """Unary weights ``w`` ``[n_features]`` (a detached copy)."""
        return self.w.detach().clone()

    def pair_weights(self) -> Tensor:
        """Pair weights ``⟨v_i, v_j⟩`` ``[n_features, n_features]``: symmetric, zero diagonal (a copy).

        All zeros for the linear model. Only i ≠ j enters the model, so the diagonal ``|v_i|²`` is
        zeroed rather than reported as if it were a weight.
        """
        if self.V is None:
            return torch.zeros(self.n_features, self.n_features, dtype=self.w.dtype, device=self.w.device)
        v = self.V.detach()
        gram = v @ v.T
        return gram.fill_diagonal_(0.0)


@dataclass(frozen=True)
class FMConfig:
    """Training settings for :func:`fit` (study defaults: rank 20, Adam lr 1e-3, 20 epochs)."""

    rank: int = 20
    """Dimension ``k`` of the factor vectors ``v_i``; ignored by the linear model."""
    lr: float = 1e-3
    """Adam learning rate."""
    epochs: int = 20
    """Full passes over the training rows."""
    batch_size: int = 64
    """Rows per Adam step; the last batch of an epoch may be smaller."""
    weight_decay: float = 0.0
    """Adam's L2 penalty, applied to every parameter (bias included)."""
    seed: int = 0
    """Seeds both the initialisation of ``V`` and the shuffling of mini-batches."""

    def __post_init__(self) -> None:
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FMConfig.{name}={getattr(self, name)}: must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"FMConfig.lr={self.lr}: must be positive and finite")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"FMConfig.weight_decay={self.weight_decay}: must be non-negative and finite")


def _check_data(x: Tensor, y: Tensor, task: str, n_features: int | None = None) -> tuple[Tensor, Tensor]:
    """Validate ``x`` ``[N, n]`` and ``y`` ``[N]`` for ``task``; return them as float32."""
    if task not in _TASKS:
        raise ValueError(f"task={task!r}: expected one of {_TASKS}")
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected 2-D [rows, features]")
    if y.ndim != 1:
        raise ValueError(f"y has shape {tuple(y.shape)}: expected 1-D [rows]")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: needs at least one row and one feature")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"x has {x.shape[1]} features but the model has {n_features}")
    x = x.to(torch.float32)
    y = y.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")
    if not torch.isfinite(y).all():
        raise ValueError("y contains non-finite values")
    if task == "classification" and not ((y == 0) | (y == 1)).all():
        raise ValueError("y must be 0 or 1 for classification")
    return x, y


def fit(x: Tensor, y: Tensor, task: Task, pairwise: bool, cfg: FMConfig | None = None) -> FactorizationMachine:
    """Fit an FM (``pairwise=True``) or the linear baseline on rows ``x`` ``[N, n]`` and targets ``y`` ``[N]``.

    ``task="regression"`` minimises mean squared error; ``"classification"`` minimises binary
    cross-entropy on the logit with ``y ∈ {0, 1}``. Adam over shuffled mini-batches; one
    ``torch.Generator`` seeded with ``cfg.seed`` draws the initialisation and every shuffle, so two
    fits on the same inputs and seed are bitwise equal on CPU. Inputs are not rescaled. The model
    lives on ``x``'s device and is returned in eval mode.
    """
    cfg = cfg or FMConfig()
    x, y = _check_data(x, y, task)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = FactorizationMachine(x.shape[1], cfg.rank, pairwise, generator=gen).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = F.mse_loss if task == "regression" else F.binary_cross_entropy_with_logits
    n_rows = x.shape[0]
    model.train()
    for _ in range(cfg.epochs):
        # The permutation is drawn on CPU so the batch order does not depend on the device's RNG.
        order = torch.randperm(n_rows, generator=gen).to(x.device)
        for start in range(0, n_rows, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()


def evaluate(model: FactorizationMachine, x: Tensor, y: Tensor, task: Task) -> dict[str, float]:
    """Score ``model`` on rows ``x`` ``[N, n]`` against ``y`` ``[N]``.

    Regression: ``r2`` (1 − SS_res/SS_tot, NaN for constant ``y``), ``spearman`` (NaN for constant
    ``y`` or predictions), ``mse``. Classification: ``accuracy`` (predict 1 where the logit is > 0),
    ``auroc`` (NaN with a single class). Both include ``n``, the number of rows.
    """
    x, y = _check_data(x, y, task, model.n_features)
    with torch.no_grad():
        pred = model(x.to(model.w.device)).double().cpu().numpy()
    target = y.double().cpu().numpy()
    n = float(len(target))
    if task == "regression":
        ss_res = float(np.sum((target - pred) ** 2))
        ss_tot = float(np.sum((target - target.mean()) ** 2))
        constant = np.ptp(target) == 0 or np.ptp(pred) == 0
        rho = math.nan if constant else float(spearmanr(pred, target).statistic)
        return {
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
            "spearman": rho,
            "mse": ss_res / n,
            "n": n,
        }
    accuracy = float(np.mean((pred > 0) == (target == 1)))
    auroc = float(roc_auc_score(target, pred)) if len(np.unique(target)) == 2 else math.nan
    return {"accuracy": accuracy, "auroc": auroc, "n": n}


def interaction_scores(model: FactorizationMachine, members: Sequence[int], sign: float = 1.0) -> Tensor:
    """Score ``[n_features]`` for adding each feature j to the set ``members``.

    ``score_j = sign · (Σ_{i ∈ members, i ≠ j} ⟨v_i, v_j⟩ + w_j)``: the change in ŷ when z_j goes
    from 0 to 1 with the members at 1 and every other feature at 0. Members get ``-inf`` (already in
    the set); for the linear model this is ``sign · w_j``.

    Sign convention, so that larger is always "better to add": in the masks design (ŷ is the refusal
    score) call with ``sign=-1``, so larger means ablating j together with the members *lowers*
    refusal; in the activations design (ŷ is the harmful logit) use ``sign=+1``, so larger means j
    pushes towards the harmful class.
    """
    n = model.n_features
    idx = sorted({int(i) for i in members})
    if any(not 0 <= i < n for i in idx):
        raise ValueError(f"members {idx} outside [0, {n})")
    # pair_weights() has a zero diagonal, which is what excludes i = j from the sum.
    scores = sign * (model.pair_weights()[idx].sum(dim=0) + model.unary())
    scores[idx] = -math.inf
    return scores


def weights_frame(model: FactorizationMachine, feature_names: Sequence[str], model_name: str) -> pd.DataFrame:
    """All weights of ``model`` as a long frame with columns :data:`WEIGHT_COLUMNS`.

    Rows: one ``term="bias"`` (``feature_i=""``), one ``"unary"`` per feature, and for the FM one
    ``"pair"`` per i < j (``feature_i`` is feature i, ``feature_j`` feature j), none for the linear
    model. ``feature_j`` is None except on pair rows; ``model`` is ``model_name`` (e.g. ``"fm"``).
    Every pair is kept, however small: n is at most a few hundred.
    """
    names = [str(f) for f in feature_names]
    if len(names) != model.n_features:
        raise ValueError(f"{len(names)} feature names for a model with {model.n_features} features")
    if len(set(names)) != len(names):
        raise ValueError("feature names are not unique")
    rows: list[dict[str, Any]] = [
        {"model": model_name, "term": "bias", "feature_i": "", "feature_j": None, "weight": model.intercept()}
    ]
    unary = model.unary().cpu().tolist()
    rows += [
        {"model": model_name, "term": "unary", "feature_i": name, "feature_j": None, "weight": w}
        for name, w in zip(names, unary, strict=True)
    ]
    if model.pairwise:
        pairs = model.pair_weights().cpu().numpy()
        ii, jj = np.triu_indices(model.n_features, k=1)
        rows += [
            {"model": model_name, "term": "pair", "feature_i": names[i], "feature_j": names[j],
             "weight": float(pairs[i, j])}
            for i, j in zip(ii.tolist(), jj.tolist(), strict=True)
        ]
    return pd.DataFrame(rows, columns=WEIGHT_COLUMNS)


@dataclass(frozen=True)
class MaskDesign:
    """The masks design of one prompt: which latents each sample ablates and the refusal score it gave."""

    masks: Tensor
    """``[n_masks, n]`` bool, True = ablated."""
    targets: Tensor
    """``[n_masks]`` refusal log-odds of the refusal tokens under each mask."""
    train: Tensor
    """``[n_masks]`` bool: the rows the models are fitted on (the rest score their fit)."""


def mask_design(
    refusal_probability: Any, n_features: int, n_masks: int, density: float = 0.5, test_fraction: float = 0.25,
    seed: int = 0, max_rows: int = 32,
) -> MaskDesign:
    """Random ablation masks over ``n_features`` latents and the model's refusal score under each.

    ``refusal_probability`` maps ``[R, n]`` masks to ``P(R)`` ``[R]`` (e.g.
    :func:`refusal_sae.greedy.ablation_scorer`); each latent is ablated independently with probability
    ``density``; targets are log-odds ``log p - log(1 - p)``; a seeded ``test_fraction`` of the rows is
    held out.
    """
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(n_masks, n_features, generator=gen) < density
    probs = torch.cat([refusal_probability(masks[i:i + max_rows]) for i in range(0, n_masks, max_rows)])
    p = probs.double().clamp(1e-7, 1 - 1e-7)
    train = torch.ones(n_masks, dtype=torch.bool)
    train[torch.randperm(n_masks, generator=gen)[: int(round(test_fraction * n_masks))]] = False
    return MaskDesign(masks, (p.log() - (1 - p).log()).float(), train)
