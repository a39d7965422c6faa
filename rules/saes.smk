rule sae_corpus:
    input:
        model=lambda w: manifest(w.model),
        datasets=all_dataset_files(),
    output:
        "results/{model}/saes/corpus.parquet",
    params:
        code=code_version("models", "generation", "data"),
        settings=corpus_settings,
    threads: workflow.cores
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
        settings=model_settings(*SAE_KEYS),
    threads: workflow.cores
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
        code=code_version("sae_training"),
        settings=model_settings(*SAE_KEYS),
    threads: 1
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
        settings=model_settings(*SAE_KEYS),
    threads: workflow.cores
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
        lambda w: (
            trained_layer_files(w.model) + [f"results/{w.model}/saes/quality.parquet"]
            if CFG.models[w.model].saes.type == "train"
            else []
        ),
    output:
        "resources/saes/{model}/saes.json",
    params:
        code=code_version("saes"),
        settings=model_settings(*SAE_KEYS),
    conda:
        ENV
    log:
        "logs/{model}/saes/manifest.log",
    script:
        "../workflow_scripts/saes_manifest.py"
