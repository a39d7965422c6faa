"""Linear probes on last-token activations for the OOD probe study (Study A, METHOD.md §10).

A probe is a logistic regression trained on vanilla harmful (label 1) vs vanilla harmless (label 0)
prompts, validated on held-out vanilla prompts and tested out of distribution on held-out vanilla
harmful prompts (1) plus adversarial harmful variants that jailbreak the model (0: the model treats
them as non-refused). Three probe kinds share this code and differ only in their feature columns: the
sparse refusal-feature probe (a handful of SAE latents), a random-feature probe (the same number of
random SAE latents, :func:`random_feature_columns`) and a dense probe on the residual stream at the
layer chosen on the *validation* split by :func:`best_layer` (the original study scored the dense
probe at the last layer, which is not where the signal need be).

Metrics are long-format rows ``probe, split, metric, value, ci_low, ci_high, n``
(:func:`probe_metrics`): AUROC with a seeded bootstrap percentile interval, and overall and
per-class accuracy with Wilson intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .metrics import wilson_interval

__all__ = [
    "PROBE_METRIC_COLUMNS",
    "Probe",
    "ProbeConfig",
    "best_layer",
    "bootstrap_auroc",
    "compare_probes",
    "fit_probe",
    "probe_metrics",
    "random_feature_columns",
]

PROBE_METRIC_COLUMNS = ["probe", "split", "metric", "value", "ci_low", "ci_high", "n"]


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are fitted and scored.

    Attributes:
        C: inverse L2 regularisation strength of the logistic regression (sklearn's ``C``).
        max_iter: iteration cap of the lbfgs solver.
        standardize: z-score every column with a ``StandardScaler`` fitted on the training rows only
            (never on validation/test rows, which would leak their statistics). Dense residual
            dimensions differ in scale by orders of magnitude (a few massive-activation dims), and
            an L2 penalty on unscaled columns would effectively regularise each dimension by a
            different amount; constant columns (dead SAE latents) are left at scale 1 by sklearn.
        n_bootstrap: number of bootstrap resamples for the AUROC interval (0: no interval, NaN).
        seed: seed of the bootstrap resampling, so intervals are reproducible.
        threshold: a row is predicted 1 when its class-1 probability is strictly above this
            (0.5 matches sklearn's ``predict``).
    """

    C: float = 1.0
    max_iter: int = 1000
    standardize: bool = True
    n_bootstrap: int = 1000
    seed: int = 0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.C > 0:
            raise ValueError(f"C={self.C}: must be positive")
        if self.max_iter < 1:
            raise ValueError(f"max_iter={self.max_iter}: must be at least 1")
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap={self.n_bootstrap}: must be non-negative")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold}: must lie strictly between 0 and 1")


@dataclass(frozen=True)
class Probe:
    """A fitted probe: the sklearn pipeline (optional scaler, then logistic regression)."""

    pipeline: Pipeline
    n_features: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class-1 (refused / harmful) probability of each row of ``x`` ``[n, d]``; shape ``[n]``."""
        x = _check_x(x)
        if x.shape[1] != self.n_features:
            raise ValueError(f"x has {x.shape[1]} columns, the probe was fitted on {self.n_features}")
        clf = self.pipeline[-1]
        # Look the column up rather than assume position 1, so the meaning of the output is explicit.
        col = int(np.flatnonzero(clf.classes_ == 1)[0])
        return self.pipeline.predict_proba(x)[:, col]


def _check_x(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D [rows, features], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x has no rows")
    if not np.isfinite(x).all():
        raise ValueError(f"x has {int((~np.isfinite(x)).sum())} non-finite values")
    return x


def _check_y(y: np.ndarray, n_rows: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if len(y) != n_rows:
        raise ValueError(f"{n_rows} rows of x for {len(y)} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got {sorted(set(np.unique(y).tolist()))}")
    return y.astype(np.int64)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, cfg: ProbeConfig | None = None) -> Probe:
    """Fit a logistic-regression probe on ``x_train`` ``[n, d]`` with 0/1 labels ``y_train`` ``[n]``.

    Both classes must be present in the training rows; with ``cfg.standardize`` the scaler sees only
    these rows.
    """
    cfg = cfg or ProbeConfig()
    x = _check_x(x_train)
    y = _check_y(y_train, x.shape[0])
    if len(np.unique(y)) < 2:
        raise ValueError(f"training labels have one class only ({int(y[0])}); a probe needs both")
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter)
    pipeline = make_pipeline(StandardScaler(), clf) if cfg.standardize else make_pipeline(clf)
    pipeline.fit(x, y)
    return Probe(pipeline=pipeline, n_features=x.shape[1])


def _weighted_aurocs(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` ``[n]`` for labels ``y`` ``[n]`` under each row of ``weights`` ``[B, n]``.

    A bootstrap resample is a vector of multiplicities over the original rows, so every resample's
    AUROC comes out of one sort: ``P(score_pos > score_neg) + 0.5 P(tie)`` with pairs weighted by
    multiplicity (equal to sklearn's ``roc_auc_score`` with ``sample_weight``). NaN where a row of
    ``weights`` puts no mass on one of the classes.
    """
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], y[order] == 1
    w = weights[:, order]
    # Tied scores form one group: a tie between a positive and a negative counts one half.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w_pos = np.add.reduceat(w * pos, starts, axis=1)
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    denom = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, wins / denom, np.nan)


def bootstrap_auroc(
    y: np.ndarray, scores: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
) -> tuple[float, float, float]:
    """AUROC of ``scores`` ``[n]`` for 0/1 labels ``y`` ``[n]`` with a 95% bootstrap percentile interval.

    Returns ``(auroc, ci_low, ci_high)``. Rows are resampled with replacement (``n`` per resample,
    ``numpy.random.default_rng(seed)``); resamples holding one class only have no AUROC and are
    skipped, and if fewer than half of the resamples are usable the interval is NaN (it would
    describe a strongly conditioned subset). Everything is NaN when ``y`` has one class only.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores have non-finite values")
    y = _check_y(y, len(scores))
    if len(np.unique(y)) < 2:
        return math.nan, math.nan, math.nan
    point = float(roc_auc_score(y, scores))
    if n_bootstrap == 0:
        return point, math.nan, math.nan
    n = len(y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    # Multiplicity of each original row in each resample: one bincount over offset indices.
    offsets = (idx + n * np.arange(n_bootstrap)[:, None]).ravel()
    weights = np.bincount(offsets, minlength=n_bootstrap * n).reshape(n_bootstrap, n).astype(np.float64)
    aurocs = _weighted_aurocs(y, scores, weights)
    usable = aurocs[np.isfinite(aurocs)]
    if 2 * len(usable) < n_bootstrap:
        return point, math.nan, math.nan
    low, high = np.percentile(usable, [2.5, 97.5])
    return point, float(low), float(high)


def _row(probe_name: str, split: str, metric: str, value: float, ci: tuple[float, float], n: int) -> dict[str, Any]:
    return {"probe": probe_name, "split": split, "metric": metric, "value": value,
            "ci_low": ci[0], "ci_high": ci[1], "n": n}


def _accuracy_row(probe_name: str, split: str, metric: str, correct: np.ndarray) -> dict[str, Any]:
    n = len(correct)
    k = int(correct.sum())
    return _row(probe_name, split, metric, k / n if n else math.nan, wilson_interval(k, n), n)


def probe_metrics(
    probe: Probe, x: np.ndarray, y: np.ndarray, cfg: ProbeConfig | None, probe_name: str, split: str,
) -> list[dict[str, Any]]:
    """Score ``probe`` on ``x`` ``[n, d]`` with 0/1 labels ``y`` ``[n]``; long rows (:data:`PROBE_METRIC_COLUMNS`).

    ``cfg=None`` means :class:`ProbeConfig` defaults. Metrics, in this order:

    * ``auroc``: bootstrap percentile 95% interval (:func:`bootstrap_auroc`, ``cfg.n_bootstrap``
      resamples, ``cfg.seed``); NaN value and interval when the split has one class only (an
      all-harmful split), ``n`` still the row count.
    * ``accuracy``: predictions ``proba > cfg.threshold`` against ``y``, Wilson interval.
    * ``accuracy_class1`` / ``accuracy_class0``: accuracy within that class (the recall of the
      class), Wilson interval, ``n`` = that class's count; NaN with ``n = 0`` when it is absent. On
      the OOD split these separate "still flags vanilla harmful" from "flags the jailbreaks as
      non-refused", which one pooled accuracy would mix.
    """
    cfg = cfg or ProbeConfig()
    proba = probe.predict_proba(x)
    y = _check_y(y, len(proba))
    auroc, low, high = bootstrap_auroc(y, proba, cfg.n_bootstrap, cfg.seed)
    correct = (proba > cfg.threshold).astype(np.int64) == y
    return [
        _row(probe_name, split, "auroc", auroc, (low, high), len(y)),
        _accuracy_row(probe_name, split, "accuracy", correct),
        _accuracy_row(probe_name, split, "accuracy_class1", correct[y == 1]),
        _accuracy_row(probe_name, split, "accuracy_class0", correct[y == 0]),
    ]


def best_layer(
    xs_by_layer: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    cfg: ProbeConfig | None = None,
) -> tuple[int, pd.DataFrame]:
    """Choose the dense probe's layer on the validation split.

    ``xs_by_layer[layer] = (x_train [n, d], y_train [n], x_val [m, d], y_val [m])``. A probe is fitted
    per layer and scored on its validation rows; the layer with the highest validation AUROC wins,
    ties broken by higher validation accuracy, then by the lower layer (a NaN AUROC, from a
    one-class validation split, ranks below every number). The test split never enters the choice.

    Returns the chosen layer and a frame ``layer, val_auroc, val_accuracy`` with one row per layer,
    sorted by layer.
    """
    if not xs_by_layer:
        raise ValueError("no layers to choose from")
    cfg = cfg or ProbeConfig()
    rows = []
    for layer in sorted(xs_by_layer):
        x_train, y_train, x_val, y_val = xs_by_layer[layer]
        probe = fit_probe(x_train, y_train, cfg)
        proba = probe.predict_proba(x_val)
        y = _check_y(y_val, len(proba))
        auroc = float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else math.nan
        accuracy = float(((proba > cfg.threshold).astype(np.int64) == y).mean())
        rows.append({"layer": int(layer), "val_auroc": auroc, "val_accuracy": accuracy})
    frame = pd.DataFrame(rows, columns=["layer", "val_auroc", "val_accuracy"])

    def key(row: dict[str, Any]) -> tuple[float, float, int]:
        auroc = row["val_auroc"]
        return (-auroc if not math.isnan(auroc) else math.inf, -row["val_accuracy"], row["layer"])

    return min(rows, key=key)["layer"], frame


def random_feature_columns(n_total: int, k: int, seed: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """``k`` distinct column indices ``[k]`` drawn uniformly from ``range(n_total)`` minus ``exclude``.

    The random-feature probe's columns: pass the refusal features as ``exclude`` so the baseline never
    shares a latent with the probe it is compared with. Deterministic per ``(n_total, k, seed,
    exclude)``; returned sorted (the draw is a set, the order carries nothing).
    """
    if k < 0:
        raise ValueError(f"k={k}: must be non-negative")
    excluded = np.unique(np.asarray(exclude, dtype=np.int64))
    if excluded.size and (excluded[0] < 0 or excluded[-1] >= n_total):
        raise ValueError(f"exclude holds indices outside range({n_total})")
    pool = np.setdiff1d(np.arange(n_total, dtype=np.int64), excluded)
    if k > len(pool):
        raise ValueError(f"k={k} columns requested but only {len(pool)} of {n_total} are not excluded")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=k, replace=False))


def compare_probes(
    columns: Mapping[str, Mapping[str, np.ndarray]],
    dense: Mapping[int, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    cfg: ProbeConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The probe comparison of METHOD.md §10: every probe fitted on split ``train`` and scored on every
    other split in ``labels`` (e.g. ``val``, ``test_id``, ``test_ood``).

    ``columns[probe][split]``: ``[n_split, d]`` inputs of a fixed-column probe (the refusal features,
    random features); ``dense[layer][split]``: residual inputs per layer, the dense probe's layer chosen
    on ``val`` by :func:`best_layer` and reported as probe ``dense``. Returns the metric rows
    (:data:`PROBE_METRIC_COLUMNS`) and the per-layer validation table with the chosen layer marked.
    """
    cfg = cfg or ProbeConfig()
    scored = [split for split in labels if split != "train"]
    rows: list[dict[str, Any]] = []
    for name, xs in columns.items():
        probe = fit_probe(xs["train"], labels["train"], cfg)
        for split in scored:
            rows += probe_metrics(probe, xs[split], labels[split], cfg, name, split)
    layer_table = pd.DataFrame(columns=["layer", "val_auroc", "val_accuracy", "chosen"])
    if dense:
        layer, layer_table = best_layer(
            {lay: (x["train"], labels["train"], x["val"], labels["val"]) for lay, x in dense.items()}, cfg)
        layer_table = layer_table.assign(chosen=layer_table["layer"] == layer)
        probe = fit_probe(dense[layer]["train"], labels["train"], cfg)
        for split in scored:
            rows += probe_metrics(probe, dense[layer][split], labels[split], cfg, "dense", split)
    return pd.DataFrame(rows, columns=PROBE_METRIC_COLUMNS), layer_table
