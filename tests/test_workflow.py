"""End-to-end: the whole Snakemake workflow on a tiny offline config (tiny Llama chat model, tiny
prompt sets, a tiny refusal organism, SAEs trained by the workflow), then assertions on the numbers
the artifacts hold, and a rerun that must do no work."""

from __future__ import annotations

import pandas as pd
from tiny_workflow import run_workflow

from refusal_sae.artifacts import check_artifacts
from refusal_sae.methods import ALL_METHODS


def test_organism_refuses_harmful_and_not_harmless(finished_run):
    base = pd.read_parquet(finished_run / "results/tiny-organism/metrics/baseline.parquet")
    rate = base.set_index(["dataset", "metric"])["value"]
    assert rate[("harmful", "refusal_rate_first_token")] >= 0.8
    assert rate[("harmless", "refusal_rate_first_token")] <= 0.2
    raw = pd.read_parquet(finished_run / "results/tiny/metrics/baseline.parquet").set_index(["dataset", "metric"])
    assert raw.loc[("harmful", "refusal_rate_first_token"), "value"] < 0.5, "the random base model should not refuse"


def test_artifacts_follow_their_schemas(finished_run):
    assert check_artifacts(finished_run) == []
    results = finished_run / "results/tiny-organism"
    for path in ["baseline/harmful.parquet", "direction/candidates.parquet", "attribution/harmful.parquet",
                 "features/harmful/ours_prompt.parquet", "generations/harmful/ours_global.parquet",
                 "metrics/jailbreak.parquet", "saes/quality.parquet"]:
        assert len(pd.read_parquet(results / path)) > 0, path


def test_direction_ablation_jailbreaks_the_organism(finished_run):
    table = pd.read_parquet(finished_run / "results/tiny-organism/metrics/jailbreak.parquet")
    substring = table.loc[table["judge"] == "substring"]
    assert ((substring["ci_low"] <= substring["value"]) & (substring["value"] <= substring["ci_high"])).all()
    for variant in ("held_out", "in_sample"):  # both variants, every method (in sample shares base)
        rates = substring.loc[substring["variant"] == variant].set_index("method")["value"]
        assert set(ALL_METHODS) == set(rates.index), variant
        assert rates["direction_ablation"] > rates["base"], variant
    # A judge whose weights are absent is reported as skipped, never silently replaced.
    skipped = table.loc[table["judge"] == "harmbench_cls"]
    assert (skipped["n"] == 0).all() and skipped["note"].str.contains("harmbench_cls").all()


def test_induction_rates_are_rates(finished_run):
    induction = pd.read_parquet(finished_run / "results/tiny-organism/metrics/induction.parquet")
    rates = induction.loc[induction["metric"] == "refusal_induction"].set_index("method")["set_value"]
    assert rates.to_dict() == {"ours_global": 4.0, "activation_addition": 1.0}
    rates = induction.loc[induction["metric"] == "refusal_induction"]
    assert rates["value"].between(0, 1).all() and (induction["n"] == 12).all()
    assert set(induction["metric"]) == {"refusal_induction", "first_token_refusal_logodds"}


def test_paired_grid_and_study_b_tables(finished_run):
    metrics = finished_run / "results/tiny-organism/metrics"
    paired = pd.read_parquet(metrics / "paired.parquet")
    assert {"harmful", "pooled"} <= set(paired["dataset"]) and paired["p_value"].between(0, 1).all()
    grid = pd.read_parquet(metrics / "grid.parquet")
    assert set(zip(grid["clamp_scale"], grid["k_star"], strict=True)) == {(0.0, 3), (-3.0, 3), (-3.0, 2)}
    grid_paired = pd.read_parquet(metrics / "grid_paired.parquet")  # one grid method here: nothing to pair
    assert grid_paired.empty and {"clamp_scale", "k_star", "p_value"} <= set(grid_paired.columns)
    studyb = pd.read_parquet(metrics / "studyb.parquet")
    assert {"greedy_minimal", "fm_added", "linear_added", "random_added"} <= set(studyb["method"])
    assert {"activations_fm", "activations_linear"} <= set(studyb["method"])
    overlap = pd.read_parquet(finished_run / "results/datasets/overlap.parquet")
    assert not overlap["leak"].any()


def test_per_prompt_sets_cover_every_evaluation_prompt(finished_run):
    results = finished_run / "results/tiny-organism"
    sets = pd.read_parquet(results / "features/harmful/ours_prompt.parquet")
    generations = pd.read_parquet(results / "generations/harmful/ours_prompt.parquet")
    assert set(generations["prompt_id"]) == set(sets["scope"])
    assert sets.groupby("scope").size().eq(3).all()


def test_rerun_does_no_work(finished_run):
    result = run_workflow(finished_run, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
