rule baseline:
    input:
        model=lambda w: manifest(w.model),
        dataset="resources/datasets/{dataset}.parquet",
    output:
        "results/{model}/baseline/{dataset}.parquet",
    params:
        code=code_version("models", "generation", "scoring", "judges", "interventions", "pipeline"),
        settings=settings(*LOAD_KEYS, "baseline", "evaluation.judge_ignore_case", *EVAL_ROWS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/baseline/{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/baseline_{dataset}.tsv"
    script:
        "../workflow_scripts/baseline.py"


rule baseline_metrics:
    input:
        lambda w: [f"results/{w.model}/baseline/{d}.parquet" for d in EVAL_DATASETS],
    output:
        "results/{model}/metrics/baseline.parquet",
    params:
        code=code_version("metrics"),
    conda:
        ENV
    log:
        "logs/{model}/metrics/baseline.log",
    benchmark:
        "benchmarks/out/{model}/baseline_metrics.tsv"
    script:
        "../workflow_scripts/baseline_metrics.py"


rule baseline_report:
    input:
        [f"results/{m}/metrics/baseline.parquet" for m in SELECTED],
    output:
        "results/report/baseline.md",
    params:
        code=code_version("report"),
    conda:
        ENV
    log:
        "logs/report/baseline.log",
    benchmark:
        "benchmarks/out/report/baseline_report.tsv"
    script:
        "../workflow_scripts/baseline_report.py"
