# Study B (METHOD.md sections 11-12): minimal sets by greedy filtering, their extensions by the
# interactions a factorization machine finds, and generation to verify both, on the refused held-out
# evaluation prompts. Paths: results/{model}/greedy, results/{model}/interactions, results/{model}/studyb.
# Each rule's params hold the Study B settings its script reads, no more: a larger `n_added` reruns the
# extensions, not the greedy filter; an FM setting of the masks design leaves the activations design alone.
STUDYB_ROWS_KEYS = ("studyb.max_prompts", *EVAL_ROWS_KEYS)  # pipeline.studyb_prompts
GREEDY_KEYS = (*STUDYB_ROWS_KEYS, "studyb.taus", "studyb.orders", "studyb.block_size")
INTERACTIONS_KEYS = (*STUDYB_ROWS_KEYS, "studyb.stage3_tau", "studyb.wake_pool", "studyb.n_masks",
                     "studyb.mask_density", "studyb.test_fraction", "studyb.fm_rank", "studyb.fm_lr",
                     "studyb.fm_epochs", "studyb.fm_batch_size", "studyb.n_added")
ACTIVATIONS_KEYS = ("studyb.activations_rank", "studyb.activations_lr", "studyb.activations_epochs",
                    "attribution.aggregate_from", "seed")


def studyb_set_keys(w):
    """What labels a verified set: its tau for the minimal sets, the number added for the extensions."""
    return ["studyb.taus"] if w.method == "greedy_minimal" else ["studyb.n_added"]


def studyb_inputs(w):
    return {"model": manifest(w.model), "saes": f"resources/saes/{w.model}/saes.json",
            "candidates": f"results/{w.model}/attribution/candidates.parquet",
            "dataset": f"resources/datasets/{w.dataset}.parquet",
            "baseline": f"results/{w.model}/baseline/{w.dataset}.parquet"}


rule greedy:
    input:
        unpack(studyb_inputs),
        attribution="results/{model}/attribution/{dataset}.parquet",
    output:
        "results/{model}/greedy/{dataset}.parquet",
    params:
        code=code_version("greedy", "interventions", "pipeline", "saes"),
        settings=settings(*GREEDY_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/greedy/{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/greedy_{dataset}.tsv"
    script:
        "../workflow_scripts/greedy.py"


rule interactions:
    input:
        unpack(studyb_inputs),
        greedy="results/{model}/greedy/{dataset}.parquet",
    output:
        selected="results/{model}/interactions/{dataset}/selected.parquet",
        weights="results/{model}/interactions/{dataset}/weights.parquet",
        samples="results/{model}/interactions/{dataset}/samples.parquet",
        fit="results/{model}/interactions/{dataset}/fit.parquet",
    params:
        code=code_version("studyb", "greedy", "interactions", "interventions", "pipeline", "saes"),
        settings=settings(*INTERACTIONS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/interactions/{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/interactions_{dataset}.tsv"
    script:
        "../workflow_scripts/interactions.py"


rule interactions_activations:
    input:
        model=lambda w: manifest(w.model),
        saes="resources/saes/{model}/saes.json",
        candidates="results/{model}/attribution/candidates.parquet",
        prompts="results/{model}/direction/prompts.parquet",
    output:
        fit="results/{model}/interactions/activations/fit.parquet",
        weights="results/{model}/interactions/activations/weights.parquet",
    params:
        code=code_version("studyb", "interactions", "attribution", "pipeline", "saes"),
        settings=settings(*ACTIVATIONS_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/interactions/activations.log",
    benchmark:
        "benchmarks/out/{model}/interactions_activations.tsv"
    script:
        "../workflow_scripts/interactions_activations.py"


def studyb_generate_inputs(w):
    sets = (f"results/{w.model}/greedy/{w.dataset}.parquet" if w.method == "greedy_minimal"
            else f"results/{w.model}/interactions/{w.dataset}/selected.parquet")
    return {**studyb_inputs(w), "sets": sets}


rule studyb_generate:
    input:
        unpack(studyb_generate_inputs),
    output:
        "results/{model}/studyb/{dataset}/generations/{method}.parquet",
    wildcard_constraints:
        method=_alternatives(STUDYB_METHODS),
    params:
        code=code_version("generation", "greedy", "methods", "interventions", "judges", "pipeline"),
        settings=settings(*STUDYB_ROWS_KEYS, studyb_set_keys, *GENERATION_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/studyb/{dataset}/{method}.log",
    benchmark:
        "benchmarks/out/{model}/studyb_generate_{dataset}_{method}.tsv"
    script:
        "../workflow_scripts/studyb_generate.py"


rule hydra:
    input:
        unpack(studyb_inputs),
        greedy="results/{model}/greedy/{dataset}.parquet",
        selected="results/{model}/interactions/{dataset}/selected.parquet",
        generations="results/{model}/studyb/{dataset}/generations/fm_added.parquet",
    output:
        hydra="results/{model}/hydra/{dataset}.parquet",
        experiments="results/{model}/hydra/{dataset}_experiments.parquet",
    params:
        code=code_version("hydra", "greedy", "selection", "generation", "methods", "interventions", "judges",
                          "pipeline"),
        settings=settings(*STUDYB_ROWS_KEYS, "studyb.stage3_tau", *GENERATION_KEYS),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/hydra/{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/hydra_{dataset}.tsv"
    script:
        "../workflow_scripts/hydra.py"


def studyb_capability_inputs(w):
    inputs = {"model": manifest(w.model), "saes": f"resources/saes/{w.model}/saes.json",
              "dataset": f"resources/datasets/{HARMLESS}.parquet",
              "responses": f"results/{w.model}/generations/{HARMLESS}/base.parquet",
              "selected": [f"results/{w.model}/interactions/{d}/selected.parquet" for d in CFG.stage_datasets("studyb")]}
    if CFG.evaluation.generic_text:
        inputs["generic"] = f"resources/datasets/{CFG.evaluation.generic_text}.parquet"
    return inputs


rule studyb_capability:
    input:
        unpack(studyb_capability_inputs),
    output:
        "results/{model}/studyb/capability.parquet",
    params:
        code=code_version("metrics", "methods", "interventions", "selection", "pipeline"),
        settings=settings(*LOAD_KEYS, "evaluation.batch_size", "evaluation.generic_documents",
                          "evaluation.generic_max_tokens"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/{model}/studyb/capability.log",
    benchmark:
        "benchmarks/out/{model}/studyb_capability.tsv"
    script:
        "../workflow_scripts/studyb_capability.py"


rule studyb_metrics:
    input:
        greedy=lambda w: [f"results/{w.model}/greedy/{d}.parquet" for d in CFG.stage_datasets("studyb")],
        generations=lambda w: [f"results/{w.model}/studyb/{d}/generations/{m}.parquet"
                               for d in CFG.stage_datasets("studyb") for m in STUDYB_METHODS],
        fits=lambda w: [f"results/{w.model}/interactions/{d}/fit.parquet" for d in CFG.stage_datasets("studyb")],
        activations="results/{model}/interactions/activations/fit.parquet",
        hydra=lambda w: [f"results/{w.model}/hydra/{d}.parquet" for d in CFG.stage_datasets("studyb")],
        experiments=lambda w: [f"results/{w.model}/hydra/{d}_experiments.parquet"
                               for d in CFG.stage_datasets("studyb")],
        set_capability="results/{model}/studyb/capability.parquet",
        capability="results/{model}/metrics/capability.parquet",
    output:
        table="results/{model}/metrics/studyb.parquet",
        markdown="results/{model}/report/studyb.md",
    params:
        code=code_version("metrics", "greedy", "selection", "report"),
        settings=settings("seed"),
    conda:
        ENV
    log:
        "logs/{model}/metrics/studyb.log",
    benchmark:
        "benchmarks/out/{model}/studyb_metrics.tsv"
    script:
        "../workflow_scripts/studyb_metrics.py"
