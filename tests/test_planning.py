"""Snakemake plans the whole DAG (dry run, nothing downloaded) for the default config and both
real-model overlays, and a bad config fails before any job with a message naming the field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from refusal_sae.methods import ALL_METHODS

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"dataset", "baseline", "direction_prompts", "direction", "cosine_candidates", "attribution",
          "ap_attribution", "faithfulness", "feature_sets", "generate", "judge", "induction", "capability",
          "evaluation_metrics", "summary", "adversarial_pairs", "adversarial_generate", "suppression", "probes",
          "categories"}


def dry_run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def planned_rules(output: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.M)}


def test_default_config_plans_every_stage(tmp_path):
    result = dry_run("--directory", str(tmp_path))  # an empty working directory: nothing done yet
    assert result.returncode == 0, result.stderr[-3000:]
    rules = planned_rules(result.stdout + result.stderr)
    assert STAGES | {"prepare_model", "organism", "sae_corpus", "train_sae", "sae_quality"} <= set(rules)
    assert rules["train_sae"] == 9 and rules["baseline"] == 2 * 3


@pytest.mark.parametrize("overlay", ["gemma-2-2b-it.yaml", "llama-3.1-8b-instruct.yaml"])
def test_real_model_overlay_plans_the_whole_dag(overlay, tmp_path):
    result = dry_run("--configfile", str(ROOT / "config" / overlay), "--replace-workflow-config",
                     "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rules = planned_rules(result.stdout + result.stderr)
    # The studies' splits carry no harm category, so the overlays turn METHOD.md section 8 off.
    assert STAGES - {"categories"} <= set(rules), set(rules)
    assert "categories" not in rules
    assert rules["generate"] == 3 * len(ALL_METHODS) + 1  # 3 harmful datasets x every method + base on harmless
    assert rules["in_sample_generate"] == 3 * (len(ALL_METHODS) - 1)  # in sample: the same but base
    assert rules["dataset"] == 9 and rules["in_sample_direction"] == 3  # 8 prompt sets + generic text
    assert "organism" not in rules and "train_sae" not in rules  # pretrained SAEs, hub model


def test_bad_config_fails_before_any_job(tmp_path):
    result = dry_run("--config", "attribution={'k0': 'ten'}", "--directory", str(tmp_path))
    assert result.returncode != 0
    assert "config.attribution.k0: expected an integer" in result.stdout + result.stderr


def test_the_sae_chain_and_the_sets_gating_generation_go_first(tmp_path):
    # Scheduling only (no result depends on it): among ready jobs, the SAE chain and the jobs the global
    # feature sets wait for run before the short jobs that can fill a core later.
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--directory", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    prioritised = set()
    for block in re.split(r"\n(?=rule \w+:)", result.stdout + result.stderr):
        head = re.match(r"rule (\w+):", block)
        if head and re.search(r"^\s+priority: 1$", block, re.M):
            wildcards = re.search(r"attr_set=(\w+)", block)
            prioritised.add(head.group(1) + (f"[{wildcards.group(1)}]" if wildcards else ""))
    assert prioritised == {"sae_corpus", "sae_activations", "train_sae", "attribution[train]", "ap_attribution",
                           "feature_sets"}
