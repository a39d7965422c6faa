# Study A analyses (METHOD.md sections 8-10): harm vs refusal features by category, adversarial pairs,
# jailbreak suppression of the refusal features, and OOD probes. Paths: results/analysis
# (model-independent pairs), results/{model}/analysis, results/{model}/probes.
ANALYSIS_KEYS = ("analysis.refusal_set", "analysis.batch_size", "analysis.n_bootstrap", "selection.k_star")
"""What both suppression and probes read of the config (not the dataset lists: those are their inputs)."""


def variant_files(_wildcards=None):
    """The local or packaged variant files (editing one rebuilds the pairs); pinned members are fetched."""
    files = []
    for source in CFG.analysis.sources.values():
        for f in source.files:
            if f.type == "local":
                files.append(f.path)
            elif f.type == "package":
                files.append(package_file(f.member))
    return files


def adversarial_files(model):
    return [f"results/{model}/analysis/adversarial/{d}.parquet" for d in CFG.stage_datasets("analysis")]


rule adversarial_pairs:
    input:
        dataset="resources/datasets/{dataset}.parquet",
        variants=variant_files,
    output:
        "results/analysis/pairs/{dataset}.parquet",
    params:
        code=code_version("adversarial", "data", "pipeline"),
        settings=settings("analysis.sources", "analysis.max_prompts", *EVAL_ROWS_KEYS),
    conda:
        ENV
    log:
        "logs/analysis/pairs_{dataset}.log",
    benchmark:
        "benchmarks/out/analysis/adversarial_pairs_{dataset}.tsv"
    script:
        "../workflow_scripts/adversarial_pairs.py"


rule adversarial_generate:
    input:
        model=lambda w: manifest(w.model),
        pairs="results/analysis/pairs/{dataset}.parquet",
        explicit="results/{model}/generations/{dataset}/base.parquet",
    output:
        "results/{model}/analysis/adversarial/{dataset}.parquet",
    params:
        code=code_version("adversarial", "generation", "judges", "pipeline"),
        settings=settings(*LOAD_KEYS, "evaluation.max_new_tokens", "evaluation.batch_size",
                          "evaluation.judge_ignore_case"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/analysis/adversarial_{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/adversarial_generate_{dataset}.tsv"
    script:
        "../workflow_scripts/adversarial_generate.py"


def refusal_set_file(w):
    return features_file(w.model, CFG.analysis.refusal_set)


def category_sets_input(w):
    """The categories' harm features, when that analysis runs (the suppression table reads them)."""
    return {"category_sets": f"results/{w.model}/analysis/category_sets.parquet"} if CFG.analysis.categories else {}


rule suppression:
    input:
        unpack(category_sets_input),
        model=lambda w: manifest(w.model),
        saes="resources/saes/{model}/saes.json",
        adversarial=lambda w: adversarial_files(w.model),
        refusal_set=refusal_set_file,
    output:
        pairs="results/{model}/analysis/suppression.parquet",
        words="results/{model}/analysis/suffix_words.parquet",
        metrics="results/{model}/metrics/suppression.parquet",
    params:
        code=code_version("adversarial", "metrics", "methods", "interventions", "pipeline", "saes"),
        settings=settings(*LOAD_KEYS, *ANALYSIS_KEYS, "analysis.last_tokens", "analysis.max_prompts", "seed"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/analysis/suppression.log",
    benchmark:
        "benchmarks/out/{model}/suppression.tsv"
    script:
        "../workflow_scripts/suppression.py"


rule probes:
    input:
        model=lambda w: manifest(w.model),
        saes="resources/saes/{model}/saes.json",
        adversarial=lambda w: adversarial_files(w.model),
        refusal_set=refusal_set_file,
        datasets=dataset_files(datasets_with("train", "val")),
        harmless=dataset_files([CFG.evaluation.harmless_dataset]),
    output:
        metrics="results/{model}/probes/metrics.parquet",
        layers="results/{model}/probes/layers.parquet",
    params:
        code=code_version("adversarial", "probes", "methods", "interventions", "pipeline", "saes"),
        settings=settings(*LOAD_KEYS, *ANALYSIS_KEYS, "analysis.probe_max_per_class", "analysis.probe_C", "seed"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/probes/probes.log",
    benchmark:
        "benchmarks/out/{model}/probes.tsv"
    script:
        "../workflow_scripts/probes.py"


rule categories:
    input:
        model=lambda w: manifest(w.model),
        saes="resources/saes/{model}/saes.json",
        direction="results/{model}/direction/direction.parquet",
        prompts="results/{model}/direction/prompts.parquet",
        datasets=dataset_files(CFG.category_datasets()),
    output:
        sets="results/{model}/analysis/category_sets.parquet",
        generations="results/{model}/analysis/categories.parquet",
        metrics="results/{model}/metrics/categories.parquet",
    params:
        code=code_version("categories", "adversarial", "attribution", "direction", "generation", "judges", "metrics",
                          "methods", "interventions", "selection", "pipeline", "saes", "config"),
        settings=settings(*LOAD_KEYS, "models.{model}.clamp_scale", "analysis.category_min_prompts",
                          "analysis.category_max_prompts", "analysis.category_eval_prompts",
                          "analysis.refusal_fraction", "analysis.last_tokens", "analysis.batch_size",
                          "analysis.n_bootstrap", "attribution.k0", *LA_IG_KEYS, "selection.k_star",
                          "direction.batch_size", "analysis.category_datasets", "evaluation.max_new_tokens",
                          "evaluation.batch_size", "evaluation.judge_ignore_case", "seed"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/analysis/categories.log",
    benchmark:
        "benchmarks/out/{model}/categories.tsv"
    script:
        "../workflow_scripts/categories.py"
