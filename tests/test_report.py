"""The report's figures (refusal_sae.report) on small synthetic frames: each writes a PNG and draws what its
artifact holds (panels, bars, markers), and an empty artifact gives a placeholder instead of an error.

The ``browser`` test builds the HTML report of the finished tiny workflow (rules/report.smk) and renders it in
headless Chromium: every figure the config produces is embedded, captioned, listed in its category and decodes
to the image on disk."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage

from refusal_sae import report
from refusal_sae.artifacts import CONTRACTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG (from its IHDR chunk), after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def bars(ax) -> list:
    """The bars drawn on ``ax`` (rectangles of its bar containers)."""
    return [patch for container in ax.containers for patch in getattr(container, "patches", [])]


def data_axes(fig) -> list:
    """The panels of ``fig``, colour bars left out."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def rates(rows: list[dict]) -> pd.DataFrame:
    """Metric rows with a Wilson-like interval of half-width 0.1 around each value."""
    frame = pd.DataFrame(rows)
    return frame.assign(ci_low=(frame["value"] - 0.1).clip(lower=0), ci_high=(frame["value"] + 0.1).clip(upper=1),
                        n=20)


def columns_of(pattern: str) -> list[str]:
    return next(list(c.columns) for c in CONTRACTS if c.pattern == pattern)


def test_organism_baseline_has_a_bar_per_model_and_dataset(tmp_path):
    datasets = ["harmful_a", "harmful_b", "harmless"]
    rows = lambda model, values: rates([  # noqa: E731
        {"model": model, "method": "base", "dataset": d, "metric": m, "value": v}
        for m in ("refusal_rate_substring", "refusal_rate_first_token") for d, v in zip(datasets, values, strict=True)])
    base, organism = rows("base-model", [0.0, 0.1, 0.0]), rows("organism", [0.9, 1.0, 0.05])
    path = tmp_path / "baseline.png"
    fig = report.organism_baseline_figure(base, organism, path, title="t")
    assert png_size(path)[0] > 100
    panels = data_axes(fig)
    assert len(panels) == 2
    for ax in panels:
        assert len(bars(ax)) == 2 * len(datasets)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base-model (before)", "organism (after)"]
    heights = sorted(round(b.get_height(), 3) for b in bars(panels[0]))
    assert heights == sorted([0.0, 0.1, 0.0, 0.9, 1.0, 0.05])


def test_sae_quality_has_four_panels_of_one_bar_per_layer(tmp_path):
    quality = pd.DataFrame({"layer": [3, 1, 2], "d_sae": 256, "fraction_variance_explained": [0.7, 0.8, 0.9],
                            "l0": [4.0, 5.0, 6.0], "dead_fraction": [0.1, 0.2, 0.3], "ce_clean": 2.0, "ce_sae": 2.5,
                            "ce_zero": 8.0, "ce_recovered": [0.9, 0.95, 0.8]})
    assert list(quality.columns) == columns_of("results/{model}/saes/quality.parquet")
    fig = report.sae_quality_figure(quality, tmp_path / "q.png")
    panels = data_axes(fig)
    assert len(panels) == len(report.SAE_QUALITY_PANELS) == 4
    assert all(len(ax.patches) == 3 for ax in panels)
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["1", "2", "3"]  # sorted by layer
    assert [p.get_height() for p in panels[0].patches] == pytest.approx([0.8, 0.9, 0.7])


def direction_candidates(chosen: tuple[int, int]) -> pd.DataFrame:
    rows = []
    for layer in range(6):
        for position in (-2, -1):
            late = layer >= 5
            kl = 0.05 * (layer + 1) * (3 + position)
            reason = "late_layer" if late else ("kl" if kl > 0.3 else "")
            rows.append({"layer": layer, "position": position, "vector": [0.0, 1.0],
                         "ablation_score": np.nan if late else -float(layer), "steering_score": np.nan if late else 1.0,
                         "kl": np.nan if late else kl, "filtered": bool(reason), "reason": reason,
                         "chosen": (layer, position) == chosen, "kl_threshold_used": 0.3})
    return pd.DataFrame(rows)


def test_direction_heatmaps_mark_the_chosen_candidate(tmp_path):
    chosen = (3, -2)  # kl 0.2: passes every filter
    candidates = direction_candidates(chosen)
    assert list(candidates.columns) == columns_of("results/{model}/direction/candidates.parquet")
    direction = candidates.loc[candidates["chosen"]].reset_index(drop=True)
    fig = report.direction_candidates_figure(candidates, direction, tmp_path / "d.png", title="m")
    assert (tmp_path / "d.png").stat().st_size > 0
    panels = data_axes(fig)
    assert len(panels) == 3
    for ax, (column, _) in zip(panels, report.DIRECTION_PANELS, strict=True):
        image = next(a for a in ax.get_children() if isinstance(a, AxesImage))
        grid = np.ma.filled(image.get_array().astype(float), np.nan)
        assert grid.shape == (2, 6)  # positions x layers
        expected = candidates.set_index(["position", "layer"]).loc[(chosen[1], chosen[0]), column]
        assert grid[chosen[1] + 2, chosen[0]] == pytest.approx(expected)
        assert np.isnan(grid[:, 5]).all()  # late layers are not scored: blank, not the colour floor
        stars = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == report.CHOSEN_LABEL]
        assert len(stars) == 1
        assert stars[0].get_offsets().tolist() == [[chosen[0], chosen[1]]]
        labels = {c.get_label() for c in ax.collections}
        assert {"filtered: KL above the configured bound", "filtered: late layer (not scored)"} <= labels
    assert "chosen: layer 3, position -2\n" in fig.get_suptitle()


def test_direction_marks_a_pinned_candidate_even_when_filtered(tmp_path):
    candidates = direction_candidates((4, -1))  # kl 0.5 > 0.3: filtered, chosen anyway (a pinned layer)
    fig = report.direction_candidates_figure(candidates, candidates.loc[candidates["chosen"]], tmp_path / "d.png")
    for ax in data_axes(fig):
        filtered = [c for c in ax.collections if c.get_label() == "filtered: KL above the configured bound"]
        assert [4, -1] not in filtered[0].get_offsets().tolist()  # the star, not a cross, sits on it
        star = next(c for c in ax.collections if c.get_gid() == report.CHOSEN_LABEL)
        assert star.get_offsets().tolist() == [[4, -1]]
    assert "chosen: layer 4, position -1 (flagged: kl)" in fig.get_suptitle()


def test_top_features_draws_the_top_ranks_only(tmp_path):
    features = pd.DataFrame({"scope": "global", "layer": [1, 2] * 20, "feature": range(40), "rank": range(40),
                             "score": np.linspace(1, 0, 40), "method": "ours_global"})
    fig = report.top_features_figure(features.sample(frac=1, random_state=0), tmp_path / "f.png", top=12)
    ax = data_axes(fig)[0]
    assert len(ax.patches) == 12
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "L1/0" and labels[0] == "L2/11"  # rank 0 on top
    assert max(p.get_width() for p in ax.patches) == pytest.approx(1.0)


def jailbreak_rows() -> pd.DataFrame:
    rows = []
    for variant, methods in (("held_out", ["base", "ours_global", "random"]), ("in_sample", ["ours_global", "random"])):
        for method in methods:
            for dataset in ("harmful_a", "harmful_b"):
                rows.append({"method": method, "dataset": dataset, "metric": "jailbreak_rate", "value": 0.5,
                             "n_features": 3.0, "judge": "substring", "note": "", "variant": variant})
                rows.append({"method": method, "dataset": dataset, "metric": "jailbreak_rate", "value": np.nan,
                             "n_features": 3.0, "judge": "harmbench_cls", "note": "judge skipped: no weights",
                             "variant": variant})
    frame = rates(rows)
    frame.loc[frame["judge"] == "harmbench_cls", ["ci_low", "ci_high", "n"]] = [np.nan, np.nan, 0]
    return frame


def test_jailbreak_has_a_panel_per_variant_and_notes_the_skipped_judge(tmp_path):
    jailbreak = jailbreak_rows()
    assert sorted(jailbreak.columns) == sorted(columns_of("results/{model}/metrics/jailbreak.parquet"))
    fig = report.jailbreak_rates_figure(jailbreak, tmp_path / "j.png")
    held_out, in_sample = data_axes(fig)
    assert held_out.get_title().startswith("held out") and in_sample.get_title().startswith("in sample")
    assert len(bars(held_out)) == 3 * 2 and len(bars(in_sample)) == 2 * 2
    assert [t.get_text() for t in held_out.get_xticklabels()] == ["base", "ours_global", "random"]
    assert "judge skipped: no weights" in fig.get_supxlabel()


def test_jailbreak_panel_for_a_model_judge_that_judged(tmp_path):
    jailbreak = jailbreak_rows()
    judged = jailbreak["judge"] == "harmbench_cls"
    jailbreak.loc[judged, ["value", "ci_low", "ci_high", "n"]] = [0.2, 0.1, 0.3, 20]
    fig = report.jailbreak_rates_figure(jailbreak, tmp_path / "j.png")
    assert len(data_axes(fig)) == 4
    assert fig.get_supxlabel() == ""


def test_induction_has_a_line_per_method_and_a_column_per_kind_of_value(tmp_path):
    rows = []
    for method, values, n_features in (("ours_global", [2.0, 4.0, 8.0], 3.0), ("cossim", [2.0, 4.0, 8.0], 3.0),
                                       ("activation_addition", [0.5, 1.0], 0.0)):
        for v in values:
            rows.append({"method": method, "dataset": "harmless", "metric": "refusal_induction", "value": v / 10,
                         "set_value": v, "n_features": n_features, "judge": "substring"})
            rows.append({"method": method, "dataset": "harmless", "metric": "first_token_refusal_logodds",
                         "value": v - 3, "set_value": v, "n_features": n_features, "judge": "substring"})
    induction = rates(rows)
    assert sorted(induction.columns) == sorted(columns_of("results/{model}/metrics/induction.parquet"))
    fig = report.induction_figure(induction, tmp_path / "i.png")
    panels = data_axes(fig)
    assert len(panels) == 4  # 2 metrics x (feature sets, direction added)
    feature_rate, addition_rate = panels[0], panels[1]
    assert [c.get_label() for c in feature_rate.containers] == ["ours_global", "cossim"]
    ours = feature_rate.containers[0].lines[0]  # the data line of the error-bar container
    assert list(ours.get_xdata()) == [2.0, 4.0, 8.0]
    assert list(ours.get_ydata()) == pytest.approx([0.2, 0.4, 0.8])
    assert [c.get_label() for c in addition_rate.containers] == ["activation_addition"]


def test_capability_has_a_panel_per_metric_and_base_in_grey(tmp_path):
    rows = [{"method": m, "dataset": "harmless", "metric": metric, "value": v}
            for metric in ("first_token_kl", "ce_on_policy_response")
            for m, v in (("random", 0.2), ("base", 0.1), ("ours_global", 0.3))]
    capability = rates(rows)
    fig = report.capability_figure(capability, tmp_path / "c.png")
    panels = data_axes(fig)
    assert [ax.get_title() for ax in panels] == ["ce on policy response", "first token kl"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "ours_global", "random"]
        assert len(bars(ax)) == 3
        assert bars(ax)[0].get_facecolor() != bars(ax)[1].get_facecolor()  # base stands out
        assert ax.get_lines()[-1].get_ydata()[0] == pytest.approx(0.1)  # dashed line at base


def test_faithfulness_plots_every_row_once_per_panel(tmp_path):
    rows = []
    for path in ("straight_through", "reference"):
        for scope in ("p1", "p2", "p3", "pooled", "top50_candidate_means"):
            rows.append({"scope": scope, "spearman": 0.9, "overlap_at_k": 0.8, "k": 10, "n": 30, "path": path})
    faithfulness = pd.DataFrame(rows)
    assert list(faithfulness.columns) == columns_of("results/{model}/attribution/faithfulness.parquet")
    fig = report.faithfulness_figure(faithfulness, tmp_path / "a.png")
    for ax in data_axes(fig):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["per prompt", "pooled", "top50_candidate_means"]
        points = sum(len(c.get_offsets()) for c in ax.collections)
        assert points == len(faithfulness)


def test_fm_heatmap_is_symmetric_with_one_panel_per_prompt(tmp_path):
    rows = []
    names = ["L1/5", "L1/7", "L2/3"]
    for prompt in ("p2", "p1", "p3"):
        rows.append({"prompt_id": prompt, "model": "fm", "term": "bias", "feature_i": "", "feature_j": None,
                     "weight": 0.1})
        rows += [{"prompt_id": prompt, "model": "fm", "term": "unary", "feature_i": n, "feature_j": None,
                  "weight": -0.1} for n in names]
        rows += [{"prompt_id": prompt, "model": "fm", "term": "pair", "feature_i": a, "feature_j": b,
                  "weight": 0.01 * (i + 1)} for i, (a, b) in enumerate([(names[0], names[1]), (names[0], names[2]),
                                                                         (names[1], names[2])])]
        rows += [{"prompt_id": prompt, "model": "linear", "term": "unary", "feature_i": n, "feature_j": None,
                  "weight": 5.0} for n in names]
    weights = pd.DataFrame(rows)
    fig = report.fm_interactions_figure(weights, tmp_path / "fm.png", max_prompts=2)
    panels = data_axes(fig)
    assert [ax.get_title().split()[0] for ax in panels] == ["p1", "p2"]
    grid = np.ma.filled(panels[0].get_images()[0].get_array().astype(float), np.nan)
    assert grid.shape == (3, 3)
    np.testing.assert_allclose(grid, grid.T)
    assert grid[0, 2] == pytest.approx(0.02) and np.isnan(np.diag(grid)).all()
    assert [t.get_text() for t in panels[0].get_yticklabels()] == names


def hydra_rows() -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": "p1", "layer": [1, 1, 2, 2, 2], "feature": [1, 2, 3, 4, 5],
                         "silent": [True, True, True, False, True], "critical": [True, False, False, True, True],
                         "loo_refusal_logodds": 0.5, "woken_region": ["sink", "user_text", "user_text", "", "silent"],
                         "woken_position": [0, 4, 4, -1, -1], "woken_activation": 1.0, "woken_regions": "",
                         "bos_activation": 0.0, "critical_verified": False})


def test_hydra_counts_silent_latents_by_position_and_region(tmp_path):
    hydra = hydra_rows()
    assert list(hydra.columns) == columns_of("results/{model}/hydra/{dataset}.parquet")
    fig = report.hydra_figure(hydra, tmp_path / "h.png")
    histogram, regions = data_axes(fig)
    assert sum(p.get_height() for p in histogram.patches) == 3  # silent latents that woke
    assert [t.get_text() for t in regions.get_xticklabels()] == ["sink", "user_text", "never woke"]
    assert sum(p.get_height() for p in regions.patches) == 4  # every silent latent


@pytest.mark.parametrize("name", ["hydra", "fm_interactions", "category_overlap", "top_features", "grid"])
def test_an_empty_artifact_gives_a_placeholder(tmp_path, name):
    argument = {"hydra": "hydra", "fm_interactions": "weights", "category_overlap": "category_sets",
                "top_features": "features", "grid": "grid"}[name]
    empty = pd.DataFrame(columns=["prompt_id", "model", "term", "silent", "metric"])
    fig = report.FIGURES[name](**{argument: empty}, path=tmp_path / "e.png", title="x")
    png_size(tmp_path / "e.png")
    texts = [t for ax in fig.axes for t in ax.texts if t.get_gid() == report.PLACEHOLDER_GID]
    assert len(texts) == 1 and texts[0].get_text()


def test_probes_have_a_bar_per_probe_and_split_and_the_chosen_layer(tmp_path):
    rows = [{"probe": p, "split": s, "metric": m, "value": 0.8, "n_features": n}
            for p, n in (("refusal_features", 20), ("random_features", 20), ("dense", 576))
            for s in ("test_ood", "val", "test_id") for m in ("auroc", "accuracy", "accuracy_class1", "accuracy_class0")]
    metrics = rates(rows)
    layers = pd.DataFrame({"layer": range(5), "val_auroc": [0.6, 0.9, 0.8, 0.7, 0.7], "val_accuracy": 0.8,
                           "chosen": [False, True, False, False, False]})
    fig = report.probes_figure(metrics, tmp_path / "p.png", layers=layers)
    panels = data_axes(fig)
    assert len(panels) == len(report.PROBE_METRICS) + 1
    for ax in panels[:-1]:
        assert len(bars(ax)) == 3 * 3
        assert [t.get_text() for t in ax.get_xticklabels()] == ["val", "test_id", "test_ood"]
    star = next(c for c in panels[-1].collections if c.get_gid() == report.CHOSEN_LABEL)
    assert star.get_offsets().tolist() == [[1, 0.9]]
    assert len(data_axes(report.probes_figure(metrics, tmp_path / "p2.png"))) == len(report.PROBE_METRICS)


def test_category_overlap_counts_r_and_h_per_category(tmp_path):
    rows = []
    for category, harm in (("cyber", [10, 11]), ("weapons", [20])):
        for rank, feature in enumerate([1, 2] + harm):
            rows.append({"category": category, "layer": 2, "feature": feature, "rank": rank, "score": 1.0 / (rank + 1),
                         "role": "refusal" if feature < 10 else "harm", "n_categories": 2 if feature < 10 else 1,
                         "n_prompts": 12, "cosine_to_direction": {"cyber": 0.9, "weapons": 0.8}[category]})
    sets = pd.DataFrame(rows)
    fig = report.category_overlap_figure(sets, tmp_path / "c.png")
    counts, membership, cosine = data_axes(fig)
    assert sorted(p.get_width() for p in counts.patches) == [1, 2, 2, 2]  # R: 2 and 2; H_c: 2 (cyber), 1 (weapons)
    matrix = membership.get_images()[0].get_array()
    assert matrix.shape == (2, 5)  # categories x (2 in R + 3 harm latents)
    assert (matrix[:, :2] == 1).all()  # R first, in every category
    assert matrix[0].tolist() == [1, 1, 2, 2, 0] and matrix[1].tolist() == [1, 1, 0, 0, 2]
    (points,) = cosine.collections  # one point per category: its direction's cosine, at the category's row
    assert points.get_offsets().tolist() == [[0.9, 0.0], [0.8, 1.0]]


def test_every_figure_is_registered():
    public = {name for name in dir(report)
              if name.endswith("_figure") and not name.startswith("_") and name != "jailbreak_figure"}
    assert {f.__name__ for f in report.FIGURES.values()} == public


# ---------------------------------------------------------------------------------------------------------------
# The whole report in a browser (pytest -m browser; needs the Debian package chromium).

TINY_MODEL = "tiny-organism"
TINY_FIGURES = {"organism_baseline": "1. Baseline refusal", "sae_quality": "2. SAEs",
                "direction_candidates": "3. Refusal direction", "top_features": "4. Attribution and feature sets",
                "faithfulness": "4. Attribution and feature sets", "jailbreak_rates": "5. Evaluation",
                "induction": "5. Evaluation", "grid": "5. Evaluation", "capability": "5. Evaluation", "fm_interactions_harmful": "6. Study B",
                "hydra_harmful": "6. Study B", "probes": "7. Harm vs refusal, probes",
                "category_overlap": "7. Harm vs refusal, probes"}
"""The figures the tiny workflow's config produces (tests/tiny_workflow.py), with their report categories."""

CHECK_SCRIPT = """<script>
window.addEventListener("load", async () => {
  const wait = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  const out = {categories: {}, figures: {}};
  for (const category of Object.keys(categories)) {
    app.setView({navbarMode: "menu"});  // leave the last category, so its results list is rebuilt
    await wait(100);
    app.showCategory(category);
    await wait(100);
    out.categories[category] = document.body.innerText;
  }
  for (const [path, entry] of Object.entries(results)) {
    app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
    let img = null;
    for (let i = 0; i < 200 && !(img && img.complete); i++) {
      await wait(25);
      img = [...document.querySelectorAll("img")].find(x => x.getAttribute("src") === entry.data_uri);
    }
    out.figures[path] = img ? [img.naturalWidth, img.naturalHeight] : null;
  }
  const pre = document.createElement("pre");
  pre.id = "report-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
"""Injected into a copy of the report: opens every category and every figure the way the menu does, and
writes what the page showed (each category's text, each image's decoded size) into ``#report-check``."""

SHOW_SCRIPT = """<script>
window.addEventListener("load", () => {
  const path = %s;
  app.showCategory(%s);
  // a second view change in the same tick would reset the menu mode (React batches the two updates)
  setTimeout(() => app.setView({content: "img", contentPath: results[path].data_uri, resultPath: path}), 200);
});
</script>"""


def chromium_binary() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)


def report_variables(page: str) -> tuple[dict, dict]:
    """``results`` (path -> entry: data URI, caption, labels, mime type) and ``categories`` (category ->
    subcategory -> paths) as Snakemake's HTML report embeds them."""
    def variable(name: str) -> dict:
        found = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
        assert found, f"no {name} in the report"
        return json.loads(found.group(1))
    return variable("results"), variable("categories")


def _with_script(report_html: Path, script: str, out: Path) -> Path:
    page = report_html.read_text(encoding="utf-8")
    end = page.rindex("</body>")
    out.write_text(page[:end] + script + page[end:], encoding="utf-8")
    return out


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=60000", *args], capture_output=True, text=True, timeout=300)


def render_report(report_html: Path, browser: str, workdir: Path) -> dict:
    """Open every category and figure of the report in headless Chromium (after its JavaScript ran):
    ``{"categories": {category: page text}, "figures": {path: [width, height] or None}}``."""
    page = _with_script(report_html, CHECK_SCRIPT, workdir / "report-check.html")
    result = _chromium(browser, "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="report-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the report did not render: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def screenshot_report(report_html: Path, browser: str, png: Path, result: str, category: str,
                      size: tuple[int, int] = (1600, 1000)) -> Path:
    """A screenshot of the report with ``category`` open and the figure ``result`` (its path) shown."""
    page = _with_script(report_html, SHOW_SCRIPT % (json.dumps(result), json.dumps(category)),
                        png.with_suffix(".html"))
    _chromium(browser, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.as_uri())
    png_size(png)
    return png


@pytest.mark.browser
@pytest.mark.skipif(chromium_binary() is None, reason="needs headless Chromium (Debian package chromium)")
def test_tiny_report_shows_every_figure_in_its_category(finished_run, tmp_path):
    from tiny_workflow import run_workflow

    drawn = run_workflow(finished_run, "figures")
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    report_html = tmp_path / "report.html"
    built = run_workflow(finished_run, "figures", "--report", str(report_html))
    assert built.returncode == 0, built.stderr[-3000:]
    results, categories = report_variables(report_html.read_text(encoding="utf-8"))
    expected = {f"results/{TINY_MODEL}/report/figures/{name}.png": category for name, category in TINY_FIGURES.items()}
    assert set(results) == set(expected)
    assert {path: category for category, subcategories in categories.items()
            for paths in subcategories.values() for path in paths} == expected
    assert all(set(subcategories) == {TINY_MODEL} for subcategories in categories.values())
    for path, entry in results.items():
        assert entry["mime_type"] == "image/png"
        # Snakemake 9.27 writes "data:image/png;charset=utf8;filename=<name>;base64,<payload>"
        header, payload = entry["data_uri"].split(";base64,", 1)
        assert header.split(";")[0] == "data:image/png", header
        assert base64.b64decode(payload) == (finished_run / path).read_bytes()
        assert entry["caption"] and "system-message" not in entry["caption"], path
    shown = render_report(report_html, chromium_binary(), tmp_path)
    assert set(shown["figures"]) == set(expected)
    for path, size in shown["figures"].items():
        assert size and size[0] > 100 and size[1] > 100, (path, size)
        category = expected[path]
        assert results[path]["labels"]["figure"] in shown["categories"][category], (path, category)
    screenshot = screenshot_report(report_html, chromium_binary(), tmp_path / "report.png",
                                   f"results/{TINY_MODEL}/report/figures/direction_candidates.png",
                                   "3. Refusal direction")
    assert png_size(screenshot) == (1600, 1000)


def _studyb_row(method, dataset, metric, value, n, setting, **extra):
    return {"method": method, "dataset": dataset, "metric": metric, "value": value, "n": n, "setting": setting,
            "ci_low": extra.get("ci_low", np.nan), "ci_high": extra.get("ci_high", np.nan),
            "p_value": extra.get("p_value", np.nan), "baseline": extra.get("baseline"),
            "first_only": extra.get("first_only", np.nan), "second_only": extra.get("second_only", np.nan)}


def test_studyb_markdown_puts_each_finding_beside_the_study():
    rows = [
        _studyb_row("greedy_minimal", "harmful", "unique_features", 3, 2, "tau=0.1"),
        _studyb_row("greedy_minimal", "harmful", "mean_set_size", 1.5, 2, "tau=0.1", ci_low=0.5, ci_high=2.5),
        _studyb_row("greedy_minimal", "harmful", "jailbreak_rate", 0.25, 4, "tau=0.1", ci_low=0.05, ci_high=0.7),
        _studyb_row("greedy_minimal", "harmful", "jailbreak_rate", 0.0, 4, "tau=0.5", ci_low=0.0, ci_high=0.5),
        *[_studyb_row(m, "harmful", "jailbreak_rate", v, 4, "n_added=40", ci_low=0.0, ci_high=1.0)
          for m, v in (("fm_added", 0.75), ("linear_added", 0.5), ("random_added", 0.0))],
        _studyb_row("fm_added", "harmful", "jailbreak_rate_diff", 0.25, 4, "paired", p_value=0.5, baseline="linear_added"),
        _studyb_row("hydra", "harmful", "silent", 5, 3, "count"),
        _studyb_row("hydra", "harmful", "silent_but_critical_verified", 2, 3, "count"),
        _studyb_row("hydra", "harmful", "peak_sink", 2, 2, "position"),
        _studyb_row("hydra", "harmful", "jailbreak_rate", 1.0, 2, "bos_none", ci_low=0.3, ci_high=1.0),
        _studyb_row("hydra", "harmful", "jailbreak_rate", 0.5, 2, "bos_clean", ci_low=0.1, ci_high=0.9),
        _studyb_row("hydra", "harmful", "jailbreak_relative_drop", 0.5, 2, "bos_clean", baseline="bos_none"),
        _studyb_row("hydra", "harmful", "switched_off", 0.2, 3, "stage3_only", ci_low=0.1, ci_high=0.3),
        _studyb_row("base", "harmless", "ce_on_policy_response", 2.0, 8, "ce_table", ci_low=1.8, ci_high=2.2),
        _studyb_row("direction_ablation", "harmless", "ce_on_policy_response", 2.2, 8, "ce_table", ci_low=2.0, ci_high=2.4),
        _studyb_row("fm_added_sets", "all", "ce_on_policy_response", 2.1, 3, "ce_table", ci_low=2.0, ci_high=2.2),
        _studyb_row("fm_added_sets", "all", "ce_on_policy_response_sd", 0.05, 3, "ce_table"),
    ]
    text = report.studyb_markdown("m", pd.DataFrame(rows))
    assert "| harmful | 0.1 | 3 | 1.50 [0.50, 2.50] (n=2) | 0.25 [0.05, 0.70] (n=4) |" in text
    assert "| harmful | 0.5 | 0 | - |" in text  # no non-empty set at that tau
    assert "| harmful | 40 | 0.75 [0.00, 1.00] (n=4) | 0.50 [0.00, 1.00] (n=4) | 0.00 [0.00, 1.00] (n=4) | +0.25, p = 0.5 |" in text
    assert "| harmful | 3 | 5 | 2 | sink 2 | none |" in text
    assert "relative drop 0.50. The study: holding them at BOS cuts jailbreak success by about 80%" in text
    assert "| on-policy harmless answers | 2.000 [1.800, 2.200] (n=8) | 2.200 [2.000, 2.400] (n=8) | 2.100 +- 0.050 (n=3) | +10.0% / +5.0% |" in text
    assert "largest mean minimal set holds 1.50 latents" in text and "at most 0.75 of the prompts" in text
    assert "so 3 prompts had a jailbreaking set" in text
    for reference in report.STUDY_B_REFERENCE.values():
        assert reference in text


def test_studyb_markdown_says_when_there_is_no_hydra_to_examine():
    rows = [_studyb_row("greedy_minimal", "harmful", "jailbreak_rate", 0.0, 4, "tau=0.1", ci_low=0.0, ci_high=0.5),
            _studyb_row("hydra", "harmful", "silent", 0, 0, "count")]
    text = report.studyb_markdown("m", pd.DataFrame(rows))
    assert "BOS experiment, harmful: not run (no verified hydra latent)" in text
    assert "| harmful | 0 | 0 | 0 | none | none |" in text


@pytest.mark.parametrize(("n", "restored", "reading"), [
    (8, 7, "bring refusal back on 7 of 8 prompts (and break it on 0; McNemar p = 0.0156): together they matter"),
    (4, 3, "bring refusal back on 3 of 4 prompts (and break it on 0; McNemar p = 0.25): too few prompts to tell"),
    (4, 0, "bring refusal back on 0 of 4 prompts (and break it on 0; McNemar p = 1): the jailbreak needs none of "
           "them, even together; they are passengers of the set, not backups"),
])
def test_studyb_markdown_reports_the_silent_group_when_no_latent_is_critical_alone(n, restored, reading):
    released = 1 - restored / n
    rows = [_studyb_row("greedy_minimal", "harmful", "jailbreak_rate", 0.0, 4, "tau=0.1", ci_low=0.0, ci_high=0.5),
            _studyb_row("hydra", "harmful", "silent", 14, n, "count"),
            _studyb_row("hydra", "harmful", "silent_but_critical_verified", 0, n, "count"),
            _studyb_row("hydra", "harmful", "silent_loo_refusal_logodds_max", -2.2, 14, "count"),
            _studyb_row("hydra", "harmful", "peak_template_suffix", 9, 14, "position_silent"),
            _studyb_row("hydra", "harmful", "peak_silent", 5, 14, "position_silent"),
            _studyb_row("hydra", "harmful", "jailbreak_rate", 1.0, n + 1, "bos_none", ci_low=0.5, ci_high=1.0),
            _studyb_row("hydra", "harmful", "jailbreak_rate", released, n, "bos_silent_clean", ci_low=0.05,
                        ci_high=1.0),
            _studyb_row("hydra", "harmful", "jailbreak_rate_set_alone", 1.0, n, "bos_silent_clean", ci_low=0.6,
                        ci_high=1.0),
            _studyb_row("hydra", "harmful", "jailbreak_rate_diff", released - 1, n, "bos_silent_clean", p_value=0.5,
                        first_only=0, second_only=restored),
            _studyb_row("hydra", "harmful", "jailbreak_relative_drop", 1 - released, n, "bos_silent_clean",
                        baseline="bos_none")]
    text = report.studyb_markdown("m", pd.DataFrame(rows))
    assert "BOS experiment, harmful: not run (no verified hydra latent)" in text  # the study's hydras: none
    assert f"| harmful | {n} | 14 | 0 | none | template_suffix 9, silent 5 |" in text
    # The set alone on the prompts the hold ran on (n), not bos_none over every prompt (n + 1).
    assert ("BOS experiment, harmful, every silent latent of the set held at BOS at zero (free after it): jailbreak "
            f"rate 1.00 [0.60, 1.00] (n={n}) with the set ablated, {released:.2f} [0.05, 1.00] (n={n}) with the "
            f"hold; relative drop {1 - released:.2f}, McNemar p = 0.5.\n") in text  # no study line: not its hydras
    assert "Of the 14 set latents silent on the clean prompt, 0 are critical alone" in text
    assert "at or below -2.20 (a flip needs > 0)" in text
    assert reading in text


def test_studyb_markdown_does_not_call_a_flip_a_non_flip():
    rows = [_studyb_row("greedy_minimal", "harmful", "jailbreak_rate", 0.0, 4, "tau=0.1", ci_low=0.0, ci_high=0.5),
            _studyb_row("hydra", "harmful", "silent", 3, 2, "count"),
            _studyb_row("hydra", "harmful", "silent_but_critical_verified", 0, 2, "count"),
            _studyb_row("hydra", "harmful", "silent_loo_refusal_logodds_max", 0.35, 3, "count")]
    text = report.studyb_markdown("m", pd.DataFrame(rows))
    assert "0 are critical alone" in text and "a flip needs" not in text  # it flipped, generation disagreed
