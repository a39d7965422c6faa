# Shared helpers: the typed config view, model/dataset selections, and the inputs and params of each
# job: what it reads and nothing else, so a change reruns exactly the jobs that read it.
import dataclasses
import hashlib
import json
import os
import re
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

from refusal_sae.config import ConfigError, load_pipeline_config, missing_local_files  # noqa: E402
from refusal_sae.methods import (  # noqa: E402
    ACTIVATION_ADDITION,
    ALL_METHODS,
    FEATURE_SET_METHODS,
    GLOBAL_SET_METHODS,
    INDUCTION_METHODS,
    PER_PROMPT_METHODS,
    STUDYB_METHODS,
)
from refusal_sae.runtime import source_fingerprint  # noqa: E402

try:
    CFG = load_pipeline_config(config)
except ConfigError as exc:
    raise WorkflowError(f"config error: {exc}") from None
# Bad input is reported before any job, one line each: a missing local file would otherwise surface only
# in the job that reads it (a local SAE directory after the organism and the direction), and a results/,
# resources/ or logs/ that cannot be written to only when the first job that writes there ends.
_missing = missing_local_files(CFG)
if _missing:
    raise WorkflowError("config error: " + "; ".join(_missing))
for _folder in ("results", "resources", "logs"):
    if os.path.lexists(_folder) and not (os.path.isdir(_folder) and os.access(_folder, os.W_OK | os.X_OK)):
        raise WorkflowError(f"working directory: {os.path.abspath(_folder)} is not a writable directory")

SELECTED = CFG.selected_models()
ORGANISMS = [m for m, c in CFG.models.items() if c.source.type == "organism"]
PLAIN_MODELS = [m for m in CFG.models if m not in ORGANISMS]
ANALYZED = [m for m in SELECTED if CFG.models[m].analyze]
HARMLESS = CFG.evaluation.harmless_dataset
IN_SAMPLE_METHODS = [m for m in ALL_METHODS if m != "base"]  # in sample, base generations are the held-out ones
EVAL_DATASETS = list(CFG.evaluation.datasets) + [HARMLESS]
LIBDIR = Path(workflow.basedir) / "src" / "refusal_sae"
# Threads per job. After the organism the DAG always has at least two independent jobs ready, and two
# one-thread jobs keep two cores busier than one two-thread job (whose second thread idles in the
# Python, tokenizer and generation-loop parts), so jobs get half the cores. The organism fine-tune
# is the one long job with nothing beside it: it gets them all.
JOB_THREADS = max(1, workflow.cores // 2)
SERIAL_THREADS = workflow.cores
# Among ready jobs a higher priority goes first (results never depend on the order). The SAE chain
# (corpus, activations, one-thread trainings of every layer) is the longest path after the organism: run
# first, it leaves the short jobs that need no SAE to fill the core beside the last odd layer, where the
# core would otherwise idle. The LA-IG train set, AP and the feature sets gate the global sets'
# generations, most of the jobs after the SAEs.
CRITICAL_PATH = 1


def code_version(*modules):
    """Hash of the code of the library modules a job imports; editing one reruns exactly the jobs that use it.

    ``config`` is not implied: a job's settings param already holds every value it reads, defaults
    included, so adding a stage's settings reruns nothing else. Jobs that call config methods
    (``fitted_set_size``, ``grid_points``) list ``config`` themselves.
    """
    digest = hashlib.sha256()
    for module in sorted(set(modules) | {"io", "runtime"}):
        digest.update(source_fingerprint(LIBDIR / f"{module}.py").encode())
    return digest.hexdigest()[:16]


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names)) if names else "(?!x)x"


def _config_value(path, wildcards):
    """The typed config value at a dotted ``path``; ``{model}`` / ``{dataset}`` name the job's wildcards."""
    node = CFG
    for part in path.split("."):
        part = part.format(**dict(wildcards.items()))
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


def settings(*keys):
    """A param holding exactly the config values a job reads (dotted paths into the typed config,
    defaults included), so that changing any other value reruns nothing.

    A key may be a callable of the wildcards returning more keys (settings that only some jobs of a
    rule read, e.g. the clamp scale of feature-set methods).
    """

    def params(wildcards):
        paths = []
        for key in keys:
            paths += key(wildcards) if callable(key) else [key]
        return json.dumps({k: _config_value(k, wildcards) for k in paths}, sort_keys=True, default=str)

    return params


def datasets_with(*splits):
    """Configured datasets with a non-zero fraction in any of ``splits`` (what fitting stages read)."""
    return [name for name, d in CFG.datasets.items() if any(d.splits.get(s, 0) > 0 for s in splits)]


def dataset_files(names):
    return [f"resources/datasets/{d}.parquet" for d in names]


def manifest(model):
    return f"resources/models/{model}/manifest.json"


def sae_layers(model):
    layers = CFG.models[model].saes.layers
    if layers == "all":
        raise WorkflowError(f"models.{model}.saes.layers: list the layers explicitly for the workflow")
    return list(layers)


def features_file(model, method, dataset=None):
    """A feature set: one file per global method, one per evaluation dataset for per-prompt methods."""
    if method in PER_PROMPT_METHODS:
        return f"results/{model}/features/{dataset}/{method}.parquet"
    return f"results/{model}/features/{method}.parquet"


def all_targets():
    targets = [f"results/{m}/baseline/{d}.parquet" for m in SELECTED for d in EVAL_DATASETS]
    targets += [f"results/{m}/metrics/baseline.parquet" for m in SELECTED]
    targets += ["results/report/baseline.md", "results/datasets/overlap.parquet"]
    for m in ANALYZED:
        if CFG.models[m].saes.type == "train":
            targets.append(f"results/{m}/saes/quality.parquet")
        targets.append(f"resources/saes/{m}/saes.json")
        targets.append(f"results/{m}/attribution/faithfulness.parquet")
        targets += [features_file(m, method) for method in GLOBAL_SET_METHODS]
        targets += [features_file(m, method, d) for method in PER_PROMPT_METHODS for d in CFG.evaluation.datasets]
        targets.append(f"results/{m}/report/summary.md")
        if CFG.studyb.enabled:
            targets.append(f"results/{m}/metrics/studyb.parquet")
        if CFG.analysis.enabled and CFG.analysis.sources:
            targets += [f"results/{m}/metrics/suppression.parquet", f"results/{m}/probes/metrics.parquet"]
        if CFG.analysis.enabled and CFG.analysis.categories:
            targets.append(f"results/{m}/metrics/categories.parquet")
    return targets


def package_file(member):
    """A file shipped in ``refusal_sae/resources`` as a job input: relative to the working directory when
    inside it, so a moved or copied clone does not see a changed input set and rerun everything."""
    path = LIBDIR / "resources" / member
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def trained_layer_files(model):
    return [f"resources/saes/{model}/layer_{layer}/cfg.json" for layer in sae_layers(model)]


def dataset_inputs(w):
    """The file a local or packaged dataset is read from (so that editing it rebuilds the dataset) and the
    built datasets it excludes prompts of."""
    source = CFG.datasets[w.dataset].source
    files = dataset_files(CFG.datasets[w.dataset].exclude)
    if source.type == "local":
        files.append(source.path)
    if source.type == "package":
        files.append(package_file(source.member))
    return files


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
        inputs["features"] = features_file(w.model, w.method, w.dataset)
    return inputs


# Config values per consumer. Model keys are read from the job's own model block only.
LOAD_KEYS = ("models.{model}.source", "models.{model}.dtype", "models.{model}.refusal_tokens")
EVAL_ROWS_KEYS = ("evaluation.max_prompts", "evaluation.selection", "seed")  # pipeline.evaluation_rows
