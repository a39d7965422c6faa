"""Linear probes for the OOD probe study: planted signal, noise, per-class rows, layer choice, columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from refusal_sae.probes import (
    PROBE_METRIC_COLUMNS,
    ProbeConfig,
    best_layer,
    bootstrap_auroc,
    compare_probes,
    fit_probe,
    probe_metrics,
    random_feature_columns,
)

CFG = ProbeConfig()


def _planted(seed: int, n: int = 400, n_noise: int = 10, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels; ``n_noise`` N(0, 1) columns plus one column = label + N(0, 0.1^2) (+ ``shift``)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    x = rng.normal(size=(n, n_noise + 1))
    x[:, -1] = y + 0.1 * rng.normal(size=n) + shift
    return x, y


def _noise(seed: int, n: int, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Labels independent of the features."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 2, size=n)


def _by_metric(rows: list[dict]) -> dict[str, dict]:
    return {r["metric"]: r for r in rows}


def test_planted_feature_is_found_held_out():
    x, y = _planted(seed=0)
    probe = fit_probe(x[:200], y[:200], CFG)
    rows = probe_metrics(probe, x[200:], y[200:], CFG, "planted", "test")
    assert [list(r) for r in rows] == [PROBE_METRIC_COLUMNS] * 4
    assert all(r["probe"] == "planted" and r["split"] == "test" for r in rows)
    m = _by_metric(rows)
    auroc = m["auroc"]
    # Measured (seed 0): auroc 1.0 with interval [1.0, 1.0]; accuracy 1.0 (Wilson [0.981, 1.0]), n=200.
    assert auroc["value"] >= 0.99
    assert auroc["n"] == 200
    assert 0.95 <= auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"] <= 1.0
    assert m["accuracy"]["value"] >= 0.95
    assert m["accuracy"]["ci_low"] >= 0.9
    # The probe reads the planted column: its weight dwarfs every noise column's.
    coef = np.abs(probe.pipeline[-1].coef_[0])
    assert coef[-1] > 5 * coef[:-1].max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_features_auroc_interval_covers_chance(seed):
    # Train 300 / test 300 rows, 10 noise columns, 1000 resamples. Measured AUROC [95% interval]:
    # seed 0: 0.466 [0.402, 0.534]; seed 1: 0.507 [0.444, 0.575]; seed 2: 0.513 [0.448, 0.578]
    # (width ~0.13). Coverage is ~95% per seed by construction (seed 7 misses: 0.411 [0.350, 0.476]),
    # so these seeds are fixed, not a property that holds for any seed.
    x, y = _noise(seed, 600)
    probe = fit_probe(x[:300], y[:300], CFG)
    auroc = _by_metric(probe_metrics(probe, x[300:], y[300:], CFG, "noise", "test"))["auroc"]
    assert auroc["ci_low"] < 0.5 < auroc["ci_high"]
    assert abs(auroc["value"] - 0.5) < 0.1
    # An interval this wide or wider would cover 0.5 for any probe, so bound its width too.
    assert 0.05 < auroc["ci_high"] - auroc["ci_low"] < 0.2


def test_bootstrap_auroc_matches_sklearn_per_resample():
    # The vectorised resample AUROC (ties included) against sklearn on the same documented draws.
    rng = np.random.default_rng(3)
    n = 40
    scores = np.round(rng.normal(size=n), 1)  # rounding makes ties between classes
    y = rng.integers(0, 2, size=n)
    point, low, high = bootstrap_auroc(y, scores, n_bootstrap=100, seed=5)
    assert point == pytest.approx(roc_auc_score(y, scores))
    draws = np.random.default_rng(5).integers(0, n, size=(100, n))
    expected = [roc_auc_score(y[i], scores[i]) for i in draws if len(np.unique(y[i])) == 2]
    assert (low, high) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])), abs=1e-12)
    assert bootstrap_auroc(y, scores, n_bootstrap=100, seed=5) == (point, low, high)
    assert math.isnan(bootstrap_auroc(y, scores, n_bootstrap=0)[1])


def test_per_class_rows_and_single_class_split():
    x, y = _planted(seed=1)
    probe = fit_probe(x[:200], y[:200], CFG)
    # An imbalanced test split: 30 harmful (1), 70 harmless (0); 1 row of each flipped to a wrong value.
    xt, yt = x[200:], y[200:]
    rows1, rows0 = np.flatnonzero(yt == 1)[:30], np.flatnonzero(yt == 0)[:70]
    xs, ys = xt[np.r_[rows1, rows0]].copy(), yt[np.r_[rows1, rows0]]
    xs[0, -1], xs[30, -1] = 0.0, 1.0  # first class-1 row looks like 0, first class-0 row looks like 1
    m = _by_metric(probe_metrics(probe, xs, ys, CFG, "planted", "imbalanced"))
    assert m["accuracy_class1"]["n"] == 30 and m["accuracy_class0"]["n"] == 70
    assert m["accuracy"]["n"] == m["auroc"]["n"] == 100
    assert m["accuracy_class1"]["value"] == pytest.approx(29 / 30)
    assert m["accuracy_class0"]["value"] == pytest.approx(69 / 70)
    assert m["accuracy"]["value"] == pytest.approx(98 / 100)
    assert m["accuracy_class1"]["ci_low"] < 29 / 30 < m["accuracy_class1"]["ci_high"]

    # All-harmful split (e.g. the vanilla half of the OOD test): no AUROC, no class-0 accuracy.
    only1 = _by_metric(probe_metrics(probe, xs[:30], ys[:30], CFG, "planted", "all_harmful"))
    assert math.isnan(only1["auroc"]["value"]) and math.isnan(only1["auroc"]["ci_low"])
    assert only1["auroc"]["n"] == 30
    assert math.isnan(only1["accuracy_class0"]["value"]) and only1["accuracy_class0"]["n"] == 0
    assert math.isnan(only1["accuracy_class0"]["ci_high"])
    assert only1["accuracy_class1"]["value"] == pytest.approx(29 / 30) and only1["accuracy_class1"]["n"] == 30
    assert only1["accuracy"]["value"] == pytest.approx(29 / 30)


def _layer_data(seed: int, signal: bool, shift_val: float = 0.0):
    x, y = _planted(seed) if signal else _noise(seed, 400, 11)
    x_val = x[200:].copy()
    x_val[:, -1] += shift_val
    return x[:200], y[:200], x_val, y[200:]


def test_best_layer_picks_the_planted_layer_not_the_last():
    layers = {layer: _layer_data(10 + layer, signal=(layer == 2)) for layer in range(4)}
    chosen, frame = best_layer(layers, CFG)
    assert chosen == 2
    assert list(frame.columns) == ["layer", "val_auroc", "val_accuracy"]
    assert frame["layer"].tolist() == [0, 1, 2, 3]
    by_layer = frame.set_index("layer")
    assert by_layer.loc[2, "val_auroc"] >= 0.99 and by_layer.loc[2, "val_accuracy"] >= 0.95
    assert by_layer.drop(index=2)["val_auroc"].max() < 0.7


def test_best_layer_ties_go_to_accuracy_then_lower_layer():
    # Layers 1 and 3 rank validation rows perfectly (AUROC 1.0); layer 1's validation rows are shifted
    # by +1 so every row is predicted 1 (accuracy = class-1 share, 0.48): accuracy breaks the tie in favour of layer 3.
    layers = {0: _layer_data(20, False), 1: _layer_data(21, True, shift_val=1.0), 3: _layer_data(23, True)}
    chosen, frame = best_layer(layers, CFG)
    by_layer = frame.set_index("layer")
    assert by_layer.loc[1, "val_auroc"] == by_layer.loc[3, "val_auroc"] == 1.0
    assert by_layer.loc[1, "val_accuracy"] == pytest.approx(layers[1][3].mean())  # all predicted 1
    assert chosen == 3
    # Identical data at two layers: the lower one.
    same = _layer_data(30, True)
    assert best_layer({4: same, 2: same, 0: _layer_data(31, False)}, CFG)[0] == 2


def test_random_feature_columns():
    exclude = [3, 7, 11, 40]
    cols = random_feature_columns(50, 10, seed=0, exclude=exclude)
    assert cols.shape == (10,) and len(set(cols.tolist())) == 10
    assert not set(cols.tolist()) & set(exclude)
    assert cols.min() >= 0 and cols.max() < 50
    assert np.array_equal(cols, random_feature_columns(50, 10, seed=0, exclude=exclude))
    assert not np.array_equal(cols, random_feature_columns(50, 10, seed=1, exclude=exclude))
    # Exactly as many as remain is fine; one more is an error.
    assert random_feature_columns(10, 7, seed=0, exclude=[0, 1, 2]).tolist() == list(range(3, 10))
    with pytest.raises(ValueError, match="only 7"):
        random_feature_columns(10, 8, seed=0, exclude=[0, 1, 2])
    with pytest.raises(ValueError):
        random_feature_columns(10, 2, seed=0, exclude=[10])
    # Uniform over the pool: 1000 draws of 2 from 8 columns give each ~250 picks (sd ~14).
    counts = np.bincount(np.concatenate([random_feature_columns(10, 2, s, exclude=[0, 5]) for s in range(1000)]),
                         minlength=10)
    assert counts[0] == counts[5] == 0
    assert np.all(np.abs(np.delete(counts, [0, 5]) - 250) < 70)


def test_validation_errors():
    x, y = _planted(seed=0, n=20)
    with pytest.raises(ValueError, match="one class"):
        fit_probe(x, np.ones(20, dtype=int), CFG)
    with pytest.raises(ValueError, match="19 labels"):
        fit_probe(x, y[:19], CFG)
    with pytest.raises(ValueError, match="non-finite"):
        fit_probe(np.where(np.eye(20, 11, dtype=bool), np.nan, x), y, CFG)
    with pytest.raises(ValueError, match="2-D"):
        fit_probe(x[:, 0], y, CFG)
    with pytest.raises(ValueError, match="0/1"):
        fit_probe(x, y + 1, CFG)
    probe = fit_probe(x, y, CFG)
    with pytest.raises(ValueError, match="columns"):
        probe.predict_proba(x[:, :5])
    with pytest.raises(ValueError, match="19 labels"):
        probe_metrics(probe, x, y[:19], CFG, "p", "test")
    with pytest.raises(ValueError):
        ProbeConfig(threshold=1.0)


def test_compare_probes_planted_sparse_noise_and_dense_layer():
    """A planted separable column (the refusal features), noise (random features), and a dense probe whose
    signal sits at layer 1 of 3: AUROC ~1, ~0.5 with an interval covering it, and layer 1 chosen."""
    x, y = _planted(seed=3, n=600)
    splits = {"train": slice(0, 300), "val": slice(300, 450), "test": slice(450, 600)}
    labels = {name: y[s] for name, s in splits.items()}
    noise = np.random.default_rng(4).normal(size=(600, 5))
    columns = {"refusal_features": {name: x[s, -1:] for name, s in splits.items()},
               "random_features": {name: noise[s] for name, s in splits.items()}}
    dense = {layer: {name: (x[s] if layer == 1 else noise[s]) for name, s in splits.items()} for layer in range(3)}
    metrics, layers = compare_probes(columns, dense, labels, ProbeConfig(n_bootstrap=300))
    assert set(metrics["split"]) == {"val", "test"} and set(metrics["probe"]) == {"refusal_features", "random_features", "dense"}
    auroc = metrics.loc[(metrics["metric"] == "auroc") & (metrics["split"] == "test")].set_index("probe")
    assert auroc.loc["refusal_features", "value"] >= 0.99 and auroc.loc["dense", "value"] >= 0.99
    assert auroc.loc["random_features", "ci_low"] <= 0.5 <= auroc.loc["random_features", "ci_high"]
    assert layers.loc[layers["chosen"], "layer"].tolist() == [1]
