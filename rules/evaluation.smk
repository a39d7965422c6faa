# Interventions during generation and the evaluation tables (METHOD.md sections 6-7).
GENERATION_KEYS = (*LOAD_KEYS, "evaluation.max_new_tokens", "evaluation.batch_size", *EVAL_ROWS_KEYS)


def clamp_keys(w):
    """Only feature-set methods read the clamp scale."""
    return ["models.{model}.clamp_scale"] if w.method in FEATURE_SET_METHODS else []


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


rule induction:
    input:
        model=lambda w: manifest(w.model),
        dataset=f"resources/datasets/{HARMLESS}.parquet",
        saes="resources/saes/{model}/saes.json",
        features="results/{model}/features/{method}.parquet",
    output:
        f"results/{{model}}/generations/{HARMLESS}/induction_{{method}}.parquet",
    wildcard_constraints:
        method=_alternatives(GLOBAL_SET_METHODS),
    params:
        code=code_version("generation", "methods", "interventions", "selection", "judges", "pipeline"),
        settings=settings(*GENERATION_KEYS, "models.{model}.induction_values"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/generations/induction_{method}.log",
    benchmark:
        "benchmarks/out/{model}/induction_{method}.tsv"
    script:
        "../workflow_scripts/induction.py"


rule capability:
    input:
        model=lambda w: manifest(w.model),
        dataset=f"resources/datasets/{HARMLESS}.parquet",
        responses=f"results/{{model}}/generations/{HARMLESS}/base.parquet",
        saes="resources/saes/{model}/saes.json",
        direction="results/{model}/direction/direction.parquet",
        features=[features_file("{model}", method) for method in GLOBAL_SET_METHODS],
    output:
        "results/{model}/metrics/capability.parquet",
    params:
        code=code_version("metrics", "methods", "interventions", "selection", "scoring", "pipeline"),
        settings=settings(*LOAD_KEYS, "models.{model}.clamp_scale", "evaluation.batch_size"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/metrics/capability.log",
    benchmark:
        "benchmarks/out/{model}/capability.tsv"
    script:
        "../workflow_scripts/capability.py"


rule evaluation_metrics:
    input:
        generations=lambda w: [
            f"results/{w.model}/generations/{d}/{m}.parquet" for d in CFG.evaluation.datasets for m in ALL_METHODS
        ],
        judgments=lambda w: [
            f"results/{w.model}/judgments/{d}/{m}.parquet" for d in CFG.evaluation.datasets for m in ALL_METHODS
        ],
        induction=lambda w: [
            f"results/{w.model}/generations/{HARMLESS}/induction_{m}.parquet" for m in CFG.evaluation.induction_methods
        ],
        features=lambda w: [features_file(w.model, m) for m in GLOBAL_SET_METHODS]
        + [features_file(w.model, m, d) for m in PER_PROMPT_METHODS for d in CFG.evaluation.datasets],
    output:
        jailbreak="results/{model}/metrics/jailbreak.parquet",
        induction="results/{model}/metrics/induction.parquet",
    params:
        code=code_version("metrics", "methods"),
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
