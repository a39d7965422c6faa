SAE_TRAINING_KEYS = ("architecture", "width_multiplier", "k", "training_tokens", "batch_size", "lr",
                     "hook_name_template", "seed")
SAE_SOURCE_KEYS = ("type", "layers", "release", "id_template", "path_template", "hook_name_template", "dtype")


rule sae_corpus:
    input:
        model=lambda w: manifest(w.model),
        datasets=dataset_files(datasets_with("train", "val")),
    output:
        "results/{model}/saes/corpus.parquet",
    params:
        code=code_version("models", "generation", "data"),
        settings=settings(*(f"models.{{model}}.saes.{k}" for k in ("corpus_max_prompts", "corpus_new_tokens",
                            "corpus_batch_size", "corpus_bf16")), "seed"),
    priority: CRITICAL_PATH
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/saes/corpus.log",
    benchmark:
        "benchmarks/out/{model}/sae_corpus.tsv"
    script:
        "../workflow_scripts/sae_corpus.py"


rule sae_activations:
    input:
        model=lambda w: manifest(w.model),
        corpus="results/{model}/saes/corpus.parquet",
    output:
        temp("resources/saes/{model}/cache/activations.pt"),
    params:
        code=code_version("sae_training", "saes", "interventions"),
        settings=settings(*(f"models.{{model}}.saes.{k}" for k in ("layers", "max_length", "forward_batch_size"))),
    priority: CRITICAL_PATH
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/saes/activations.log",
    benchmark:
        "benchmarks/out/{model}/sae_activations.tsv"
    script:
        "../workflow_scripts/sae_activations.py"


rule train_sae:
    input:
        "resources/saes/{model}/cache/activations.pt",
    output:
        "resources/saes/{model}/layer_{layer}/cfg.json",
    params:
        code=code_version("sae_training", "models"),
        settings=settings(*(f"models.{{model}}.saes.{k}" for k in SAE_TRAINING_KEYS), "seed"),
    priority: CRITICAL_PATH
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/saes/train_layer_{layer}.log",
    benchmark:
        "benchmarks/out/{model}/train_sae_layer_{layer}.tsv"
    script:
        "../workflow_scripts/train_sae.py"


rule sae_quality:
    input:
        model=lambda w: manifest(w.model),
        corpus="results/{model}/saes/corpus.parquet",
        activations="resources/saes/{model}/cache/activations.pt",
        saes=lambda w: trained_layer_files(w.model),
    output:
        "results/{model}/saes/quality.parquet",
    params:
        code=code_version("sae_training", "saes", "interventions"),
        settings=settings(*(f"models.{{model}}.saes.{k}" for k in ("max_length", "forward_batch_size", "dtype"))),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/saes/quality.log",
    benchmark:
        "benchmarks/out/{model}/sae_quality.tsv"
    script:
        "../workflow_scripts/sae_quality.py"


rule saes_manifest:
    input:
        # Not the quality table: it is a target of its own, so attribution starts while it is measured.
        lambda w: trained_layer_files(w.model) if CFG.models[w.model].saes.type == "train" else [],
    output:
        "resources/saes/{model}/saes.json",
    params:
        code=code_version("saes"),
        settings=settings(*(f"models.{{model}}.saes.{k}" for k in SAE_SOURCE_KEYS)),
    conda:
        ENV
    log:
        "logs/{model}/saes/manifest.log",
    benchmark:
        "benchmarks/out/{model}/saes_manifest.tsv"
    script:
        "../workflow_scripts/saes_manifest.py"
