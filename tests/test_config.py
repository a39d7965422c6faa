"""The config is checked before any job: typed dataclasses reject wrong keys and types by path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from refusal_sae.config import ConfigError, load_pipeline_config

ROOT = Path(__file__).resolve().parents[1]


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_builds_with_the_documented_defaults():
    cfg = load_pipeline_config(default_config())
    assert cfg.selected_models() == ["smollm2", "smollm2-organism"]
    organism = cfg.models["smollm2-organism"]
    assert organism.source.base == "smollm2" and organism.saes.type == "train"
    assert organism.saes.width_multiplier >= 8
    assert cfg.attribution.k0 == 10 and cfg.attribution.n_steps == 10 and cfg.selection.k_star == 20
    assert cfg.direction.kl_threshold == 0.1 and cfg.direction.exclude_last_fraction == 0.2
    assert cfg.evaluation.variants == ["held_out", "in_sample"]


@pytest.mark.parametrize("overlay", ["gemma-2-2b-it.yaml", "llama-3.1-8b-instruct.yaml"])
def test_real_model_overlays_carry_the_study_settings(overlay):
    cfg = load_pipeline_config(yaml.safe_load((ROOT / "config" / overlay).read_text()))
    (name,) = cfg.selected_models()
    model = cfg.models[name]
    assert model.source.type == "hub" and model.saes.type == "pretrained"
    expected = {"gemma-2-2b-it.yaml": (15, -3.0, 26), "llama-3.1-8b-instruct.yaml": (11, -1.0, 32)}[overlay]
    assert (model.direction_layer, model.clamp_scale, len(model.saes.layers)) == expected
    prompt_sets = set(cfg.datasets) - {cfg.evaluation.generic_text}
    assert all(cfg.datasets[d].source.type == "url" and cfg.datasets[d].source.sha256 for d in prompt_sets)
    pile = cfg.datasets[cfg.evaluation.generic_text].source
    assert (pile.repo_id, pile.hf_streaming) == ("monology/pile-uncopyrighted", True)
    # The studies' fitting splits, with the prompts they share with the evaluation sets held out.
    assert {d for d, spec in cfg.datasets.items() if "train" in spec.splits} == {"harmful_train", "harmless_train"}
    assert set(cfg.datasets["harmful_train"].exclude) == set(cfg.evaluation.datasets)
    # The spec's choices where the embedded default keeps its own (the overlays' comments say which).
    assert cfg.evaluation.selection == "first" and cfg.evaluation.judge_ignore_case
    assert not cfg.attribution.target_excludes_refusal and cfg.attribution.aggregate_from == "after_system"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["models"]["smollm2-organism"]["saes"].update(widht_multiplier=8),
         "config.models.smollm2-organism.saes.widht_multiplier: unknown key"),
        (lambda c: c["attribution"].update(k0="ten"), "config.attribution.k0: expected an integer"),
        (lambda c: c["datasets"]["harmless"].update(label="benign"), "config.datasets.harmless.label"),
        (lambda c: c["datasets"]["strongreject"].update(splits={"train": 0.5, "test": 0.3}),
         "config.datasets.strongreject.splits: fractions sum to 0.8"),
        (lambda c: c["models"]["smollm2-organism"]["source"].update(base="nope"),
         "config.models.smollm2-organism.source.base"),
        (lambda c: c.update(only_models=["gpt"]), "only_models: unknown model"),
        (lambda c: c["evaluation"].update(datasets=["advbench"]), "dataset 'advbench' is not configured"),
    ],
)
def test_bad_config_fails_naming_the_field(edit, message):
    config = copy.deepcopy(default_config())
    edit(config)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_pipeline_config(config)


def test_grid_points_cross_the_main_operating_point_and_sets_are_fitted_large_enough():
    cfg = load_pipeline_config(default_config())
    grid = cfg.evaluation.grid
    points = cfg.grid_points(-3.0)
    assert [(c, cfg.selection.k_star) for c in grid.clamp_scales] == points[: len(grid.clamp_scales)]
    assert {(-3.0, k) for k in grid.k_stars} <= set(points) and len(points) == len(set(points))
    assert len(points) == len(grid.clamp_scales) + len(grid.k_stars) - 1  # the main point once
    assert cfg.fitted_set_size() == max(cfg.selection.k_star, *grid.k_stars)
    full = load_pipeline_config({**default_config(), "evaluation": {"grid": {"shape": "full"}}})
    assert len(full.grid_points(-3.0)) == len(grid.clamp_scales) * len(grid.k_stars)


def _set(config: dict, path: str, value) -> dict:
    node = config
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


@pytest.mark.parametrize(("path", "value", "message"), [
    ("evaluation.max_prompts", 0, r"config.evaluation.max_prompts: 0 must be >= 1"),
    ("attribution.n_steps", -2, r"config.attribution.n_steps: -2 must be >= 1"),
    ("attribution.k0", 0, r"config.attribution.k0: 0 must be >= 1"),
    ("direction.max_train", 0, r"config.direction.max_train"),
    ("direction.kl_threshold", -0.1, r"config.direction.kl_threshold: -0.1 must be > 0"),
    ("device", "gpu0", r"config.device: 'gpu0' is not auto, cpu, cuda or cuda:N"),
    ("datasets.strongreject.splits", {"tran": 0.6, "val": 0.1, "test": 0.3}, r"unknown split 'tran'"),
    ("datasets.strongreject.splits", {"train": 0.6, "val": 0.2, "test": 0.1}, r"fractions sum to 0.9, not 1"),
    ("evaluation.harmless_dataset", "strongreject", r"harmless_dataset: 'strongreject' is labelled 'harmful'"),
    ("evaluation.datasets", ["harmbench_test", "harmless"], r"evaluation.datasets: 'harmless' is labelled 'harmless'"),
    ("analysis.refusal_set", "ours_prompt", r"config.analysis.refusal_set"),
    ("analysis.sources", {"x": {"kind": "suffix", "files": []}}, r"analysis.sources.x.files: give at least one"),
    ("studyb.stage3_tau", 0.3, r"config.studyb.stage3_tau: 0.3 is not one of studyb.taus"),
    ("analysis.category_datasets", ["harmbench_test"], r"category_datasets: \['harmbench_test'\] must hold categorised"),
    ("analysis.category_datasets", ["nope"], r"category_datasets: 'nope' is not a configured dataset"),
    ("analysis.refusal_fraction", 0.0, r"config.analysis.refusal_fraction: 0.0 must be in \(0, 1\]"),
    ("studyb.datasets", ["harmbench_val"], r"config.studyb.datasets: 'harmbench_val' is not one of evaluation.datasets"),
    ("evaluation.grid.datasets", ["strongreject", "strongreject"], r"config.evaluation.grid.datasets: .* names a dataset twice"),
])
def test_counts_names_and_labels_fail_before_any_job(path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(_set(default_config(), path, value))


def test_stages_beyond_the_held_out_table_run_on_their_own_datasets():
    cfg = load_pipeline_config(default_config())
    evaluated = cfg.evaluation.datasets
    assert all(cfg.stage_datasets(stage) == evaluated for stage in ("in_sample", "grid", "studyb", "analysis"))
    config = _set(_set(default_config(), "evaluation.datasets", [*evaluated, "harmbench_val"]),
                  "studyb.datasets", ["strongreject"])
    cfg = load_pipeline_config(config)
    assert cfg.stage_datasets("studyb") == ["strongreject"]
    assert cfg.stage_datasets("grid") == evaluated  # listed explicitly in the default: the new set is not added
    unset = load_pipeline_config(_set(copy.deepcopy(config), "evaluation.grid", {}))
    assert unset.stage_datasets("grid") == [*evaluated, "harmbench_val"]  # unset: every evaluation dataset
