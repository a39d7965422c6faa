rule dataset:
    input:
        dataset_inputs,
    output:
        "resources/datasets/{dataset}.parquet",
    params:
        code=code_version("data", "assets"),
        settings=settings("datasets.{dataset}", "seed"),
    conda:
        ENV
    log:
        "logs/datasets/{dataset}.log",
    benchmark:
        "benchmarks/out/datasets/dataset_{dataset}.tsv"
    script:
        "../workflow_scripts/build_dataset.py"


rule dataset_overlap:
    input:
        dataset_files(CFG.datasets),
    output:
        "results/datasets/overlap.parquet",
    params:
        code=code_version("data"),
    conda:
        ENV
    log:
        "logs/datasets/overlap.log",
    benchmark:
        "benchmarks/out/datasets/dataset_overlap.tsv"
    script:
        "../workflow_scripts/dataset_overlap.py"
