# Interventions during generation and the evaluation tables (METHOD.md sections 6-7).
GENERATION_KEYS = (*LOAD_KEYS, "evaluation.max_new_tokens", "evaluation.batch_size", "evaluation.judge_ignore_case",
                   *EVAL_ROWS_KEYS)
# What a grid job reads of evaluation.grid (its method is the wildcard; its datasets are the jobs planned).
GRID_KEYS = ("evaluation.grid.clamp_scales", "evaluation.grid.k_stars", "evaluation.grid.shape")


def clamp_keys(w):
    """Only feature-set methods read the clamp scale and the set size."""
    return ["models.{model}.clamp_scale", "selection.k_star"] if w.method in FEATURE_SET_METHODS else []


rule generate:
    input:
        unpack(method_inputs),
    output:
        "results/{model}/generations/{dataset}/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(ALL_METHODS),
    params:
        code=code_version("generation", "methods", "interventions", "selection", "judges", "pipeline"),
        settings=settings(*GENERATION_KEYS, clamp_keys),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/generations/{dataset}/{method}.log",
    benchmark:
        "benchmarks/out/{model}/generate_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/generate.py"


rule judge:
    input:
        generations="results/{model}/generations/{dataset}/{method}.parquet",
        dataset="resources/datasets/{dataset}.parquet",
    output:
        "results/{model}/judgments/{dataset}/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(ALL_METHODS),
    params:
        code=code_version("judges"),
        settings=settings("evaluation.model_judges"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/judgments/{dataset}/{method}.log",
    benchmark:
        "benchmarks/out/{model}/judge_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/judge.py"


def induction_inputs(w):
    inputs = {"model": manifest(w.model), "dataset": f"resources/datasets/{HARMLESS}.parquet"}
    if w.method == ACTIVATION_ADDITION:
        inputs["direction"] = f"results/{w.model}/direction/direction.parquet"
    else:
        inputs["saes"] = f"resources/saes/{w.model}/saes.json"
        inputs["features"] = features_file(w.model, w.method)
    return inputs


def induction_keys(w):
    """Set values for feature sets, multiples of the direction for activation addition."""
    return [f"models.{{model}}.{'addition_alphas' if w.method == ACTIVATION_ADDITION else 'induction_values'}"]


rule induction:
    input:
        unpack(induction_inputs),
    output:
        f"results/{{model}}/generations/{HARMLESS}/induction_{{method}}.parquet",
    wildcard_constraints:
        method=_alternatives(INDUCTION_METHODS),
    params:
        code=code_version("generation", "methods", "interventions", "selection", "judges", "pipeline"),
        settings=settings(*GENERATION_KEYS, "evaluation.induction_new_tokens", "selection.k_star", induction_keys),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/generations/induction_{method}.log",
    benchmark:
        "benchmarks/out/{model}/induction_{method}.tsv"
    script:
        "../workflow_scripts/induction.py"


def capability_inputs(w):
    inputs = {"model": manifest(w.model), "dataset": f"resources/datasets/{HARMLESS}.parquet",
              "responses": f"results/{w.model}/generations/{HARMLESS}/base.parquet",
              "saes": f"resources/saes/{w.model}/saes.json",
              "direction": f"results/{w.model}/direction/direction.parquet",
              "features": [features_file(w.model, method) for method in GLOBAL_SET_METHODS]}
    if CFG.evaluation.generic_text:
        inputs["generic"] = f"resources/datasets/{CFG.evaluation.generic_text}.parquet"
    return inputs


rule capability:
    input:
        unpack(capability_inputs),
    output:
        "results/{model}/metrics/capability.parquet",
    params:
        code=code_version("metrics", "methods", "interventions", "selection", "scoring", "pipeline"),
        settings=settings(*LOAD_KEYS, "models.{model}.clamp_scale", "selection.k_star", "evaluation.batch_size",
                          "evaluation.generic_documents", "evaluation.generic_max_tokens"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/metrics/capability.log",
    benchmark:
        "benchmarks/out/{model}/capability.tsv"
    script:
        "../workflow_scripts/capability.py"


rule grid:
    input:
        unpack(method_inputs),
    output:
        "results/{model}/grid/{dataset}/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(CFG.evaluation.grid.methods),
    params:
        code=code_version("generation", "methods", "interventions", "selection", "judges", "pipeline", "config"),
        settings=settings(*GENERATION_KEYS, "models.{model}.clamp_scale", "selection.k_star", *GRID_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/grid/{dataset}/{method}.log",
    benchmark:
        "benchmarks/out/{model}/grid_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/grid.py"


def evaluated(w, kind):
    """Generation or judgment artifacts of every variant, dataset and method."""
    paths = [f"results/{w.model}/{kind}/{d}/{m}.parquet" for d in CFG.evaluation.datasets for m in ALL_METHODS]
    if "in_sample" in CFG.evaluation.variants:
        paths += [f"results/{w.model}/in_sample/{d}/{kind}/{m}.parquet"
                  for d in CFG.stage_datasets("in_sample") for m in IN_SAMPLE_METHODS]
    return paths


def evaluated_sets(w):
    paths = [features_file(w.model, m) for m in GLOBAL_SET_METHODS]
    paths += [features_file(w.model, m, d) for m in PER_PROMPT_METHODS for d in CFG.evaluation.datasets]
    if "in_sample" in CFG.evaluation.variants:
        paths += [f"results/{w.model}/in_sample/{d}/features/{m}.parquet"
                  for d in CFG.stage_datasets("in_sample") for m in FEATURE_SET_METHODS]
    return paths


rule evaluation_metrics:
    input:
        generations=lambda w: evaluated(w, "generations"),
        judgments=lambda w: evaluated(w, "judgments"),
        induction=lambda w: [
            f"results/{w.model}/generations/{HARMLESS}/induction_{m}.parquet" for m in CFG.evaluation.induction_methods
        ],
        features=evaluated_sets,
        grid=lambda w: [f"results/{w.model}/grid/{d}/{m}.parquet"
                        for d in CFG.stage_datasets("grid") for m in CFG.evaluation.grid.methods],
    output:
        jailbreak="results/{model}/metrics/jailbreak.parquet",
        grid="results/{model}/metrics/grid.parquet",
        induction="results/{model}/metrics/induction.parquet",
        paired="results/{model}/metrics/paired.parquet",
        grid_paired="results/{model}/metrics/grid_paired.parquet",
    params:
        code=code_version("metrics", "methods"),
        settings=settings("seed", "selection.k_star"),
    conda:
        ENV
    log:
        "logs/{model}/metrics/evaluation.log",
    benchmark:
        "benchmarks/out/{model}/evaluation_metrics.tsv"
    script:
        "../workflow_scripts/evaluation_metrics.py"


rule summary:
    input:
        jailbreak="results/{model}/metrics/jailbreak.parquet",
        induction="results/{model}/metrics/induction.parquet",
        capability="results/{model}/metrics/capability.parquet",
        baseline="results/{model}/metrics/baseline.parquet",
        faithfulness="results/{model}/attribution/faithfulness.parquet",
        direction="results/{model}/direction/direction.parquet",
        paired="results/{model}/metrics/paired.parquet",
    output:
        table="results/{model}/report/summary.parquet",
        markdown="results/{model}/report/summary.md",
        figure="results/{model}/report/jailbreak.png",
    params:
        code=code_version("report"),
    conda:
        ENV
    log:
        "logs/{model}/report/summary.log",
    benchmark:
        "benchmarks/out/{model}/summary.tsv"
    script:
        "../workflow_scripts/summary.py"
