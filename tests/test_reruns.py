"""A change reruns only the jobs that read it: dry runs of the finished tiny workflow after one change
each (docs/reruns.md tabulates these cases)."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from tiny_workflow import HARMFUL_WORDS, ROLE_VERBS, _prompts, run_workflow

from refusal_sae.config import EvaluationConfig
from refusal_sae.methods import (
    ACTIVATION_ADDITION,
    ALL_METHODS,
    FEATURE_SET_METHODS,
    PER_PROMPT_METHODS,
    STUDYB_METHODS,
)

ORGANISM = "tiny-organism"
UPSTREAM = {"dataset", "prepare_model", "organism", "sae_corpus", "sae_activations", "train_sae", "sae_quality",
            "saes_manifest", "direction_prompts", "direction", "cosine_candidates"}


def planned_jobs(workdir: Path, config: dict) -> list[tuple[str, dict[str, str]]]:
    """``(rule, wildcards)`` of every job a dry run with ``config`` would run."""
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config))
    result = run_workflow(workdir, "-n", config="changed.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head is None:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        pairs = [item.split("=", 1) for item in wildcards.group(1).split(", ")] if wildcards else []
        jobs.append((head.group(1), dict(pairs)))
    return jobs


def by_rule(jobs: list[tuple[str, dict[str, str]]]) -> Counter:
    return Counter(rule for rule, _ in jobs)


@pytest.fixture()
def config(finished_run: Path) -> dict:
    """The finished run's config, to change one thing in."""
    return copy.deepcopy(yaml.safe_load((finished_run / "config.yaml").read_text()))


def add_test_only_dataset(finished_run: Path, config: dict) -> None:
    """A new harmful dataset ``extra`` (a local file, test split only) listed in ``evaluation.datasets``."""
    (finished_run / "extra.txt").write_text(_prompts(HARMFUL_WORDS, ROLE_VERBS["test"]))
    config["datasets"]["extra"] = {"source": {"type": "local", "path": str(finished_run / "extra.txt")},
                                   "format": "txt", "label": "harmful", "splits": {"test": 1.0}}
    config["evaluation"]["datasets"].append("extra")


def test_unchanged_config_plans_nothing(finished_run, config):
    assert planned_jobs(finished_run, config) == []


def test_adding_a_test_only_dataset_plans_exactly_its_jobs(finished_run, config):
    add_test_only_dataset(finished_run, config)
    jobs = planned_jobs(finished_run, config)
    n_methods = len(ALL_METHODS)
    in_sample = {"in_sample_direction": 1, "in_sample_candidates": 1, "in_sample_attribution": 1, "in_sample_ap": 1,
                 "in_sample_feature_sets": 1, "in_sample_generate": n_methods - 1, "in_sample_judge": n_methods - 1}
    study_b = {"greedy": 1, "interactions": 1, "studyb_generate": len(STUDYB_METHODS), "hydra": 1,
               "studyb_capability": 1, "studyb_metrics": 1}
    analyses = {"adversarial_pairs": 1, "adversarial_generate": 1, "suppression": 1, "probes": 1}
    assert by_rule(jobs) == Counter({
        "dataset": 1, "dataset_overlap": 1, "baseline": 2, "baseline_metrics": 2, "baseline_report": 1,
        "attribution": 1, "ap_prompt_attribution": 1, "prompt_feature_set": len(PER_PROMPT_METHODS),
        "generate": n_methods, "judge": n_methods, "grid": 1, "evaluation_metrics": 1, "summary": 1, "all": 1,
        **in_sample, **study_b, **analyses,
    })
    # Nothing fitted on the training datasets reruns: not the direction, the global sets, the activations FM.
    assert not {"direction", "feature_sets", "interactions_activations"} & set(by_rule(jobs))
    per_dataset = {"dataset", "baseline", "attribution", "ap_prompt_attribution", "prompt_feature_set", "generate",
                   "judge", "grid", "adversarial_pairs", "adversarial_generate", *in_sample,
                   *(set(study_b) - {"studyb_capability", "studyb_metrics"})}
    assert all(w.get("dataset", w.get("attr_set")) == "extra" for rule, w in jobs if rule in per_dataset)


def test_a_dataset_outside_the_stage_lists_plans_only_its_held_out_evaluation(finished_run, config):
    # The embedded default lists the datasets of the stages beyond the held-out table; naming the finished
    # run's own dataset there reruns nothing (those lists plan jobs, no job reads them) ...
    config["evaluation"]["in_sample_datasets"] = ["harmful"]
    config["evaluation"]["grid"]["datasets"] = ["harmful"]
    config["studyb"]["datasets"] = ["harmful"]
    config["analysis"]["datasets"] = ["harmful"]
    assert planned_jobs(finished_run, config) == []
    # ... and a dataset added to evaluation.datasets only gets its held-out table.
    add_test_only_dataset(finished_run, config)
    jobs = planned_jobs(finished_run, config)
    n_methods = len(ALL_METHODS)
    assert by_rule(jobs) == Counter({
        "dataset": 1, "dataset_overlap": 1, "baseline": 2, "baseline_metrics": 2, "baseline_report": 1,
        "attribution": 1, "ap_prompt_attribution": 1, "prompt_feature_set": len(PER_PROMPT_METHODS),
        "generate": n_methods, "judge": n_methods, "evaluation_metrics": 1, "summary": 1, "all": 1,
    })


def test_generation_length_plans_only_generation_and_what_reads_it(finished_run, config):
    config["evaluation"]["max_new_tokens"] += 1
    rules = by_rule(planned_jobs(finished_run, config))
    generating = {"generate", "induction", "capability", "grid", "in_sample_generate", "studyb_generate", "hydra",
                  "adversarial_generate", "categories"}
    reading = {"judge", "in_sample_judge", "studyb_capability", "evaluation_metrics", "studyb_metrics", "suppression",
               "probes", "summary", "all"}
    assert set(rules) == generating | reading
    assert rules["generate"] == len(ALL_METHODS) + 1  # every method on `harmful`, base on `harmless`
    assert rules["in_sample_generate"] == len(ALL_METHODS) - 1 and rules["studyb_generate"] == len(STUDYB_METHODS)


def test_one_models_block_plans_no_job_of_another_model(finished_run, config):
    config["models"][ORGANISM]["clamp_scale"] = -2.0
    jobs = planned_jobs(finished_run, config)
    assert all(w.get("model", ORGANISM) == ORGANISM for _, w in jobs)
    assert {w["method"] for rule, w in jobs if rule == "generate"} == set(FEATURE_SET_METHODS)
    config = copy.deepcopy(yaml.safe_load((finished_run / "config.yaml").read_text()))
    config["models"]["tiny"]["refusal_tokens"] = ["I", "Sure"]  # the base model's block: not the organism's
    jobs = planned_jobs(finished_run, config)
    assert by_rule(jobs) == Counter({"baseline": 2, "baseline_metrics": 1, "baseline_report": 1, "all": 1})
    assert all(w.get("model", "tiny") == "tiny" for _, w in jobs)


def test_an_attribution_setting_plans_no_upstream_job(finished_run, config):
    config["attribution"]["n_steps"] += 1
    rules = by_rule(planned_jobs(finished_run, config))
    assert not UPSTREAM & set(rules), UPSTREAM & set(rules)
    assert rules["attribution"] == 2 and rules["feature_sets"] == 1 and rules["ap_prompt_attribution"] == 1
    assert rules["generate"] == len(FEATURE_SET_METHODS)
    induction_methods = config["evaluation"].get("induction_methods", EvaluationConfig().induction_methods)
    assert rules["induction"] == len(set(induction_methods) - {ACTIVATION_ADDITION})  # addition reads no set
    # Study B starts from the per-prompt LA-IG candidates; its activations-design fit does not read them.
    assert rules["greedy"] == 1 and "interactions_activations" not in rules
    assert rules["categories"] == 1  # it runs LA-IG per harm category


def test_a_stage3_setting_plans_the_extensions_not_the_greedy_filter(finished_run, config):
    config["studyb"]["n_added"] += 1
    jobs = planned_jobs(finished_run, config)
    assert by_rule(jobs) == Counter({"interactions": 1, "studyb_generate": len(STUDYB_METHODS) - 1, "hydra": 1,
                                     "studyb_capability": 1, "studyb_metrics": 1, "all": 1})
    assert "greedy_minimal" not in {w["method"] for rule, w in jobs if rule == "studyb_generate"}
