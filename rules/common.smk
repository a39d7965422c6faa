# Shared helpers: the typed config view, model/dataset selections, per-model settings for params.
import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# Jobs import the library from this checkout (the code that `code_version` hashes), whether or not it
# is installed in the job's environment (a venv, or a conda env built from environment.yaml).
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SRC]
os.environ["PYTHONPATH"] = os.pathsep.join([SRC, *_paths])
ENV = str(Path(workflow.basedir) / "environment.yaml")

from refusal_sae.config import ConfigError, load_pipeline_config  # noqa: E402
from refusal_sae.methods import ALL_METHODS, FEATURE_SET_METHODS  # noqa: E402
from refusal_sae.runtime import source_fingerprint  # noqa: E402

try:
    CFG = load_pipeline_config(config)
except ConfigError as exc:
    raise WorkflowError(f"config error: {exc}") from None

SELECTED = CFG.selected_models()
ORGANISMS = [m for m, c in CFG.models.items() if c.source.type == "organism"]
PLAIN_MODELS = [m for m in CFG.models if m not in ORGANISMS]
ANALYZED = [m for m in SELECTED if CFG.models[m].analyze]
EVAL_DATASETS = list(CFG.evaluation.datasets) + [CFG.evaluation.harmless_dataset]
LIBDIR = Path(workflow.basedir) / "src" / "refusal_sae"


def code_version(*modules):
    """Hash of the code of the library modules a job imports; editing one reruns exactly the jobs that use it."""
    digest = hashlib.sha256()
    for module in sorted(set(modules) | {"config", "io", "runtime"}):
        digest.update(source_fingerprint(LIBDIR / f"{module}.py").encode())
    return digest.hexdigest()[:16]


def _alternatives(names):
    return "|".join(sorted(names)) if names else "(?!x)x"


def model_settings(*keys):
    """Params holding only the named keys of the model's block: a change reruns just the jobs that use them."""

    def settings(wildcards):
        block = config["models"][wildcards.model]
        return json.dumps({k: block.get(k) for k in keys}, sort_keys=True, default=str)

    return settings


MODEL_KEYS = ("source", "dtype", "refusal_tokens")
SAE_KEYS = ("saes",)
DISCOVERY_KEYS = MODEL_KEYS + ("saes", "direction_layer", "direction_position")


def corpus_settings(wildcards):
    """The SAE corpus depends on the model and the corpus fields of ``saes``, not on how SAEs are trained."""
    block = config["models"][wildcards.model]
    saes = block.get("saes", {})
    corpus = {k: saes.get(k) for k in ("corpus_max_prompts", "corpus_new_tokens")}
    return json.dumps({**{k: block.get(k) for k in MODEL_KEYS}, "corpus": corpus}, sort_keys=True, default=str)


def stage_settings(stage):
    return lambda wildcards: json.dumps(config.get(stage, {}), sort_keys=True, default=str)


def manifest(model):
    return f"resources/models/{model}/manifest.json"


def all_dataset_files():
    return [f"resources/datasets/{d}.parquet" for d in CFG.datasets]


def sae_layers(model):
    layers = CFG.models[model].saes.layers
    if layers == "all":
        raise WorkflowError(f"models.{model}.saes.layers: list the layers explicitly for the workflow")
    return list(layers)


def all_targets():
    targets = [f"results/{m}/baseline/{d}.parquet" for m in SELECTED for d in EVAL_DATASETS]
    targets += [f"results/{m}/metrics/baseline.parquet" for m in SELECTED]
    targets += ["results/report/baseline.md"]
    for m in ANALYZED:
        if CFG.models[m].saes.type == "train":
            targets.append(f"results/{m}/saes/quality.parquet")
        targets.append(f"resources/saes/{m}/saes.json")
        targets.append(f"results/{m}/attribution/faithfulness.parquet")
        targets += [f"results/{m}/features/{method}.parquet" for method in FEATURE_SET_METHODS]
        targets.append(f"results/{m}/report/summary.md")
    return targets


def trained_layer_files(model):
    return [f"resources/saes/{model}/layer_{layer}/cfg.json" for layer in sae_layers(model)]


def discovery_inputs(w):
    return {
        "model": manifest(w.model),
        "saes": f"resources/saes/{w.model}/saes.json",
        "direction": f"results/{w.model}/direction/direction.parquet",
    }


def method_inputs(w):
    inputs = {"model": manifest(w.model), "dataset": f"resources/datasets/{w.dataset}.parquet"}
    if w.method != "base":
        inputs["direction"] = f"results/{w.model}/direction/direction.parquet"
    if w.method in FEATURE_SET_METHODS:
        inputs["saes"] = f"resources/saes/{w.model}/saes.json"
        inputs["features"] = f"results/{w.model}/features/{w.method}.parquet"
    return inputs
