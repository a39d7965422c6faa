rule dataset:
    input:
        dataset_source_file,
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
