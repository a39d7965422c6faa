rule prepare_model:
    output:
        "resources/models/{model}/manifest.json",
    params:
        code=code_version("models", "assets"),
        settings=settings("models.{model}.source", "models.{model}.dtype"),
    wildcard_constraints:
        model=_alternatives(PLAIN_MODELS),
    conda:
        ENV
    log:
        "logs/models/{model}.log",
    benchmark:
        "benchmarks/out/{model}/prepare_model.tsv"
    script:
        "../workflow_scripts/prepare_model.py"


rule organism:
    input:
        base=lambda w: manifest(CFG.models[w.model].source.base),
        datasets=dataset_files(datasets_with("train")),
    output:
        manifest="resources/models/{model}/manifest.json",
        training="results/{model}/organism/training.parquet",
    params:
        code=code_version("organism", "models", "generation", "data"),
        settings=settings("models.{model}.source", "models.{model}.dtype", "models.{model}.organism", "seed"),
    wildcard_constraints:
        model=_alternatives(ORGANISMS),
    resources:
        gpu=lambda w: 1 if CFG.models[w.model].gpu else 0,
    threads: SERIAL_THREADS
    conda:
        ENV
    log:
        "logs/models/{model}.organism.log",
    benchmark:
        "benchmarks/out/{model}/organism.tsv"
    script:
        "../workflow_scripts/train_organism.py"
