rule dataset:
    output:
        "resources/datasets/{dataset}.parquet",
    params:
        code=code_version("data", "assets"),
        settings=lambda w: json.dumps(config["datasets"][w.dataset], sort_keys=True),
    conda:
        ENV
    log:
        "logs/datasets/{dataset}.log",
    script:
        "../workflow_scripts/build_dataset.py"
