# The in-sample variant (the studies' setting, METHOD.md section 14): per evaluation dataset, a direction
# fitted on its own refused prompts at the held-out direction's layer and position, every feature set
# fitted on its prompts, and generations under them. Paths: results/{model}/in_sample/{dataset}/...
def in_sample(w, path):
    return f"results/{w.model}/in_sample/{w.dataset}/{path}"


def in_sample_stage_inputs(w):
    return {"model": manifest(w.model), "saes": f"resources/saes/{w.model}/saes.json",
            "direction": in_sample(w, "direction.parquet"), "dataset": f"resources/datasets/{w.dataset}.parquet"}


def in_sample_pool_inputs(w):
    return {"prompts": f"results/{w.model}/direction/prompts.parquet",
            "baseline": f"results/{w.model}/baseline/{w.dataset}.parquet"}


rule in_sample_direction:
    input:
        unpack(in_sample_pool_inputs),
        model=lambda w: manifest(w.model),
        direction="results/{model}/direction/direction.parquet",
        dataset="resources/datasets/{dataset}.parquet",
    output:
        "results/{model}/in_sample/{dataset}/direction.parquet",
    params:
        code=code_version("direction", "scoring", "interventions", "pipeline"),
        settings=settings(*LOAD_KEYS, "direction.batch_size", *EVAL_ROWS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/direction.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_direction_{dataset}.tsv"
    script:
        "../workflow_scripts/in_sample_direction.py"


rule in_sample_candidates:
    input:
        model=lambda w: manifest(w.model),
        saes="resources/saes/{model}/saes.json",
        direction="results/{model}/in_sample/{dataset}/direction.parquet",
    output:
        "results/{model}/in_sample/{dataset}/attribution/candidates.parquet",
    params:
        code=code_version("attribution", "pipeline", "saes"),
        settings=settings("attribution.k0"),
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/candidates.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_candidates_{dataset}.tsv"
    script:
        "../workflow_scripts/cosine_candidates.py"


rule in_sample_attribution:
    input:
        unpack(in_sample_stage_inputs),
        candidates="results/{model}/in_sample/{dataset}/attribution/candidates.parquet",
    output:
        "results/{model}/in_sample/{dataset}/attribution/la_ig.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes"),
        settings=settings(*LA_IG_KEYS, *EVAL_ROWS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/attribution.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_attribution_{dataset}.tsv"
    script:
        "../workflow_scripts/attribution.py"


rule in_sample_ap:
    input:
        unpack(in_sample_stage_inputs),
    output:
        per_prompt="results/{model}/in_sample/{dataset}/attribution/ap.parquet",
        global_="results/{model}/in_sample/{dataset}/attribution/ap_global.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes", "config"),
        settings=settings(*LA_IG_KEYS, *EVAL_ROWS_KEYS, "selection.k_star", "evaluation.grid.k_stars"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/ap.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_ap_{dataset}.tsv"
    script:
        "../workflow_scripts/ap_prompt_attribution.py"


rule in_sample_feature_sets:
    input:
        unpack(in_sample_stage_inputs),
        unpack(in_sample_pool_inputs),
        la_ig="results/{model}/in_sample/{dataset}/attribution/la_ig.parquet",
        ap_prompt="results/{model}/in_sample/{dataset}/attribution/ap.parquet",
        ap_global="results/{model}/in_sample/{dataset}/attribution/ap_global.parquet",
    output:
        [f"results/{{model}}/in_sample/{{dataset}}/features/{m}.parquet" for m in FEATURE_SET_METHODS],
    params:
        code=code_version("selection", "attribution", "pipeline", "saes", "config"),
        settings=settings("selection.k_star", "evaluation.grid.k_stars", "attribution.aggregate_from", *EVAL_ROWS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/features.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_feature_sets_{dataset}.tsv"
    script:
        "../workflow_scripts/in_sample_feature_sets.py"


def in_sample_method_inputs(w):
    inputs = {"model": manifest(w.model), "dataset": f"resources/datasets/{w.dataset}.parquet",
              "direction": in_sample(w, "direction.parquet")}
    if w.method in FEATURE_SET_METHODS:
        inputs["saes"] = f"resources/saes/{w.model}/saes.json"
        inputs["features"] = in_sample(w, f"features/{w.method}.parquet")
    return inputs


rule in_sample_generate:
    input:
        unpack(in_sample_method_inputs),
    output:
        "results/{model}/in_sample/{dataset}/generations/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(IN_SAMPLE_METHODS),
    params:
        code=code_version("generation", "methods", "interventions", "selection", "judges", "pipeline"),
        settings=settings(*GENERATION_KEYS, clamp_keys),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/generations/{method}.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_generate_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/generate.py"


rule in_sample_judge:
    input:
        generations="results/{model}/in_sample/{dataset}/generations/{method}.parquet",
        dataset="resources/datasets/{dataset}.parquet",
    output:
        "results/{model}/in_sample/{dataset}/judgments/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(IN_SAMPLE_METHODS),
    params:
        code=code_version("judges"),
        settings=settings("evaluation.model_judges"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/in_sample/{dataset}/judgments/{method}.log",
    benchmark:
        "benchmarks/out/{model}/in_sample_judge_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/judge.py"
