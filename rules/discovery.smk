# Study A discovery (METHOD.md sections 2-5): direction, candidates, LA-IG, feature sets.
ATTRIBUTION_SETS = ["train"] + list(CFG.evaluation.datasets)
LA_IG_KEYS = ("attribution.n_steps", "attribution.target_token", "attribution.batch_size",
              "attribution.target_excludes_refusal", "attribution.ig_path", "attribution.aggregate_from")


def attribution_inputs(w):
    inputs = {**discovery_inputs(w), "candidates": f"results/{w.model}/attribution/candidates.parquet"}
    if w.attr_set == "train":
        inputs["prompts"] = f"results/{w.model}/direction/prompts.parquet"
    else:
        inputs["dataset"] = f"resources/datasets/{w.attr_set}.parquet"
    return inputs


def attribution_keys(w):
    """The training set is capped by attribution.max_prompts, an evaluation set by its evaluation rows."""
    return ["attribution.max_prompts"] if w.attr_set == "train" else list(EVAL_ROWS_KEYS)


rule direction_prompts:
    input:
        model=lambda w: manifest(w.model),
        datasets=dataset_files(datasets_with("train", "val")),
    output:
        "results/{model}/direction/prompts.parquet",
    params:
        code=code_version("scoring", "pipeline", "interventions", "data"),
        settings=settings(*LOAD_KEYS, "direction.max_train", "direction.max_val", "direction.batch_size", "seed"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/direction/prompts.log",
    benchmark:
        "benchmarks/out/{model}/direction_prompts.tsv"
    script:
        "../workflow_scripts/direction_prompts.py"


rule direction:
    input:
        model=lambda w: manifest(w.model),
        prompts="results/{model}/direction/prompts.parquet",
    output:
        candidates="results/{model}/direction/candidates.parquet",
        direction="results/{model}/direction/direction.parquet",
        means="results/{model}/activations/train_means.parquet",
    params:
        code=code_version("direction", "scoring", "interventions"),
        settings=settings(*LOAD_KEYS, "models.{model}.direction_layer", "models.{model}.direction_position",
                          *(f"direction.{k}" for k in ("positions", "batch_size", "kl_threshold",
                            "exclude_last_fraction", "when_all_filtered", "relax_min_candidates",
                            "refusal_removed_below"))),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/direction/direction.log",
    benchmark:
        "benchmarks/out/{model}/direction.tsv"
    script:
        "../workflow_scripts/direction.py"


rule cosine_candidates:
    input:
        unpack(discovery_inputs),
    output:
        "results/{model}/attribution/candidates.parquet",
    params:
        code=code_version("attribution", "pipeline", "saes"),
        settings=settings("attribution.k0"),
    conda:
        ENV
    log:
        "logs/{model}/attribution/candidates.log",
    benchmark:
        "benchmarks/out/{model}/cosine_candidates.tsv"
    script:
        "../workflow_scripts/cosine_candidates.py"


rule attribution:
    input:
        unpack(attribution_inputs),
    output:
        "results/{model}/attribution/{attr_set}.parquet",
    wildcard_constraints:
        attr_set=_alternatives(ATTRIBUTION_SETS),
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes"),
        settings=settings(*LA_IG_KEYS, attribution_keys),
    priority: lambda w: CRITICAL_PATH if w.attr_set == "train" else 0
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/attribution/{attr_set}.log",
    benchmark:
        "benchmarks/out/{model}/attribution_{attr_set}.tsv"
    script:
        "../workflow_scripts/attribution.py"


rule ap_attribution:
    input:
        unpack(discovery_inputs),
        prompts="results/{model}/direction/prompts.parquet",
    output:
        "results/{model}/attribution/ap_global.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes", "config"),
        settings=settings(*LA_IG_KEYS, "attribution.max_prompts", "selection.k_star", "evaluation.grid.k_stars"),
    priority: CRITICAL_PATH
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/attribution/ap.log",
    benchmark:
        "benchmarks/out/{model}/ap_attribution.tsv"
    script:
        "../workflow_scripts/ap_attribution.py"


rule ap_prompt_attribution:
    input:
        unpack(discovery_inputs),
        dataset="resources/datasets/{dataset}.parquet",
    output:
        per_prompt="results/{model}/attribution/ap/{dataset}.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes", "config"),
        settings=settings(*LA_IG_KEYS, *EVAL_ROWS_KEYS, "selection.k_star", "evaluation.grid.k_stars"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/attribution/ap_{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/ap_prompt_attribution_{dataset}.tsv"
    script:
        "../workflow_scripts/ap_prompt_attribution.py"


rule faithfulness:
    input:
        unpack(discovery_inputs),
        candidates="results/{model}/attribution/candidates.parquet",
        prompts="results/{model}/direction/prompts.parquet",
        attribution="results/{model}/attribution/train.parquet",
    output:
        "results/{model}/attribution/faithfulness.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes"),
        settings=settings("attribution.faithfulness_prompts", *LA_IG_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/attribution/faithfulness.log",
    benchmark:
        "benchmarks/out/{model}/faithfulness.tsv"
    script:
        "../workflow_scripts/faithfulness.py"


rule feature_sets:
    input:
        unpack(discovery_inputs),
        prompts="results/{model}/direction/prompts.parquet",
        train="results/{model}/attribution/train.parquet",
        ap="results/{model}/attribution/ap_global.parquet",
    output:
        sets=[features_file("{model}", method) for method in GLOBAL_SET_METHODS],
        peaks="results/{model}/features/peaks.parquet",
    params:
        code=code_version("selection", "attribution", "pipeline", "saes", "config"),
        settings=settings("selection.k_star", "evaluation.grid.k_stars", "attribution.aggregate_from", "seed"),
    priority: CRITICAL_PATH
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/features/sets.log",
    benchmark:
        "benchmarks/out/{model}/feature_sets.tsv"
    script:
        "../workflow_scripts/feature_sets.py"


def prompt_attribution(w):
    """LA-IG over the cosine candidates (ours_prompt) or AP's per-prompt top latents (ap_prompt)."""
    if w.method == "ap_prompt":
        return f"results/{w.model}/attribution/ap/{w.dataset}.parquet"
    return f"results/{w.model}/attribution/{w.dataset}.parquet"


rule prompt_feature_set:
    input:
        attribution=prompt_attribution,
    output:
        "results/{model}/features/{dataset}/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(PER_PROMPT_METHODS),
    params:
        code=code_version("selection", "config"),
        settings=settings("selection.k_star", "evaluation.grid.k_stars"),
    conda:
        ENV
    log:
        "logs/{model}/features/{dataset}/{method}.log",
    benchmark:
        "benchmarks/out/{model}/prompt_feature_set_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/prompt_feature_set.py"
