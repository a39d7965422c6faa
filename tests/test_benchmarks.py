"""The benchmark scripts' pure parts, on small hand-made artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, ours: float, cossim: float, diff: float, p: float) -> Path:
    metrics = folder / "results" / "m" / "metrics"
    metrics.mkdir(parents=True)
    pd.DataFrame([
        {"variant": "held_out", "dataset": "d", "method": method, "judge": judge, "value": value}
        for method, value in (("ours_global", ours), ("cossim", cossim)) for judge in ("substring", "llm")
    ]).to_parquet(metrics / "jailbreak.parquet")
    pd.DataFrame([
        {"variant": "held_out", "dataset": "d", "method": "ours_global", "baseline": "cossim", "metric": metric,
         "value": value, "p_value": p}
        for metric, value in (("jailbreak_rate_diff", diff), ("refusal_logodds_diff", -1.0))
    ]).to_parquet(metrics / "paired.parquet")
    return folder


def test_seed_spread_summarises_rates_and_paired_differences_over_runs(tmp_path):
    seed_spread = _script("seed_spread")
    runs = [_run(tmp_path / "s0", 0.9, 0.7, 0.2, 0.01), _run(tmp_path / "s1", 0.8, 0.8, 0.0, 1.0),
            _run(tmp_path / "s2", 1.0, 0.6, 0.4, 0.001)]
    rates = seed_spread.spread(runs, "m").set_index("method")
    assert rates.loc["ours_global", "mean"] == pytest.approx(0.9) and rates.loc["ours_global", "count"] == 3
    assert rates.loc["cossim", "std"] == pytest.approx(0.1)  # the llm judge's rows are not mixed in
    paired = seed_spread.paired_spread(runs, "m").set_index("baseline").loc["cossim"]
    assert paired["mean"] == pytest.approx(0.2) and paired["min"] == 0.0 and paired["max"] == 0.4
    assert paired["runs_ours_better_p05"] == 2 and paired["runs_ours_worse_p05"] == 0


def test_set_ablation_variants_keep_every_latent_they_name_and_no_other():
    set_ablation = _script("set_ablation")
    from refusal_sae.methods import top_of

    top = pd.DataFrame({"scope": "global", "layer": [26, 26, 23, 26, 20], "feature": [5, 9, 1, 7, 3],
                        "rank": range(5), "score": [5.0, 4.0, 3.0, 2.0, 1.0]})
    without = set_ablation.variant_set(top, "26:9,23:1-")
    # The clamp takes the top len(variant) by rank: a gap left by the removal must not let a latent back in.
    kept = top_of(without, len(without))
    assert list(zip(kept.layer, kept.feature, strict=True)) == [(26, 5), (26, 7), (20, 3)]
    added = set_ablation.variant_set(top, "17:4+")
    assert list(zip(added.layer, added.feature, strict=True))[-1] == (17, 4) and len(top_of(added, len(added))) == 6
    alone = set_ablation.variant_set(top, "26:9,17:4")
    assert list(zip(alone.layer, alone.feature, strict=True)) == [(26, 9), (17, 4)] and list(alone["rank"]) == [0, 1]
    assert len(set_ablation.variant_set(top, "-")) == 5
    # Each of these would print a rate under a name it does not measure.
    for spec, message in (("26-9-", "not LAYER:FEATURE"), ("26", "not LAYER:FEATURE"), ("1:2:3", "not LAYER:FEATURE"),
                          ("26:8-", "has no latent"), ("26:9+", "already has"), ("26:5,26:9,23:1,26:7,20:3-", "no latent left")):
        with pytest.raises(SystemExit, match=message):
            set_ablation.variant_set(top, spec)


def test_set_ablation_merges_config_files_in_order(tmp_path):
    set_ablation = _script("set_ablation")
    (tmp_path / "a.yaml").write_text("evaluation: {max_prompts: 64, batch_size: 8}\nseed: 0\n")
    (tmp_path / "b.yaml").write_text("evaluation: {max_prompts: 32}\n")
    merged = set_ablation.merged_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert merged == {"evaluation": {"max_prompts": 32, "batch_size": 8}, "seed": 0}
