# Study A discovery (METHOD.md sections 2-5): direction, candidates, LA-IG, feature sets.
ATTRIBUTION_SETS = ["train"] + list(CFG.evaluation.datasets)


rule direction_prompts:
    input:
        model=lambda w: manifest(w.model),
        datasets=all_dataset_files(),
    output:
        "results/{model}/direction/prompts.parquet",
    params:
        code=code_version("scoring", "pipeline", "interventions"),
        settings=model_settings(*DISCOVERY_KEYS),
        stage=stage_settings("direction"),
        evaluation=stage_settings("evaluation"),
    threads: workflow.cores
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
        settings=model_settings(*DISCOVERY_KEYS),
        stage=stage_settings("direction"),
    threads: workflow.cores
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
        stage=stage_settings("attribution"),
    conda:
        ENV
    log:
        "logs/{model}/attribution/candidates.log",
    script:
        "../workflow_scripts/cosine_candidates.py"


rule attribution:
    input:
        unpack(discovery_inputs),
        candidates="results/{model}/attribution/candidates.parquet",
        prompts="results/{model}/direction/prompts.parquet",
        datasets=all_dataset_files(),
    output:
        "results/{model}/attribution/{attr_set}.parquet",
    wildcard_constraints:
        attr_set=_alternatives(ATTRIBUTION_SETS),
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes"),
        stage=stage_settings("attribution"),
        evaluation=stage_settings("evaluation"),
    threads: workflow.cores
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
        per_prompt="results/{model}/attribution/ap_per_prompt.parquet",
        global_="results/{model}/attribution/ap_global.parquet",
    params:
        code=code_version("attribution", "interventions", "pipeline", "saes"),
        stage=stage_settings("attribution"),
        selection=stage_settings("selection"),
    threads: workflow.cores
    conda:
        ENV
    log:
        "logs/{model}/attribution/ap.log",
    benchmark:
        "benchmarks/out/{model}/ap_attribution.tsv"
    script:
        "../workflow_scripts/ap_attribution.py"


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
        stage=stage_settings("attribution"),
    threads: workflow.cores
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
        evaluation=lambda w: [f"results/{w.model}/attribution/{d}.parquet" for d in CFG.evaluation.datasets],
        ap="results/{model}/attribution/ap_global.parquet",
    output:
        expand("results/{{model}}/features/{method}.parquet", method=FEATURE_SET_METHODS),
    params:
        code=code_version("selection", "attribution", "pipeline", "saes"),
        selection=stage_settings("selection"),
    threads: workflow.cores
    conda:
        ENV
    log:
        "logs/{model}/features/sets.log",
    benchmark:
        "benchmarks/out/{model}/feature_sets.tsv"
    script:
        "../workflow_scripts/feature_sets.py"
