# The HTML report (`snakemake --report results/report.html`, `make report`): figures drawn from the Parquet
# artifacts by `refusal_sae.report` (one function per figure, one job per figure and model), one report
# category per stage and one subcategory per model, a caption per figure in report/. `report_figures()` lists
# the figures the config produces, each only where its artifacts are made; `snakemake figures` draws them.
report: "../report/workflow.rst"


REPORT_CATEGORIES = {
    "baseline": "1. Baseline refusal",
    "saes": "2. SAEs",
    "direction": "3. Refusal direction",
    "features": "4. Attribution and feature sets",
    "evaluation": "5. Evaluation",
    "studyb": "6. Study B",
    "analysis": "7. Harm vs refusal, probes",
}
"""Report categories by stage (the report lists categories alphabetically: the numbers keep stage order)."""
FIGURES = "results/{model}/report/figures"


def figure_output(name, stage, label):
    """The figure's PNG, flagged for the report under its stage's category, the model's subcategory and a
    ``figure`` label; the caption is report/{name}.rst (a `{dataset}` in ``name`` is a wildcard)."""
    caption = name.replace("_{dataset}", "")
    return report(f"{FIGURES}/{name}.png", caption=f"../report/{caption}.rst", category=REPORT_CATEGORIES[stage],
                  subcategory="{model}", labels={"figure": label})


def report_figures():
    """Every figure of the report that the config produces: those of a stage only where its artifacts are
    targets of the workflow (the conditions of `all_targets`)."""
    figures = [f"results/{m}/report/figures/organism_baseline.png" for m in SELECTED if m in ORGANISMS]
    for m in ANALYZED:
        names = ["direction_candidates", "top_features", "faithfulness", "jailbreak_rates", "capability"]
        if CFG.models[m].saes.type == "train":
            names.append("sae_quality")
        if CFG.evaluation.induction_methods:
            names.append("induction")
        if CFG.stage_datasets("grid"):
            names.append("grid")
        if CFG.studyb.enabled:
            names += [f"{n}_{d}" for n in ("fm_interactions", "hydra") for d in CFG.stage_datasets("studyb")]
        if CFG.analysis.enabled and CFG.analysis.sources:
            names.append("probes")
        if CFG.analysis.enabled and CFG.analysis.categories:
            names.append("category_overlap")
        figures += [f"results/{m}/report/figures/{n}.png" for n in names]
    return figures


rule figures:
    input:
        report_figures(),


rule report_organism_baseline:
    input:
        base=lambda w: f"results/{CFG.models[w.model].source.base}/metrics/baseline.parquet",
        organism="results/{model}/metrics/baseline.parquet",
    output:
        figure_output("organism_baseline", "baseline", "refusal before and after the fine-tune"),
    wildcard_constraints:
        model=_alternatives(ORGANISMS),
    params:
        code=code_version("report"),
        figure="organism_baseline",
        title=lambda w: f"{w.model}: refusal of {CFG.models[w.model].source.base} (before) and of the organism (after)",
    conda:
        ENV
    log:
        "logs/{model}/report/organism_baseline.log",
    benchmark:
        "benchmarks/out/{model}/report_organism_baseline.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_sae_quality:
    input:
        quality="results/{model}/saes/quality.parquet",
    output:
        figure_output("sae_quality", "saes", "SAE quality per layer"),
    params:
        code=code_version("report"),
        figure="sae_quality",
        title=lambda w: f"{w.model}: trained SAEs on held-out transcripts",
    conda:
        ENV
    log:
        "logs/{model}/report/sae_quality.log",
    benchmark:
        "benchmarks/out/{model}/report_sae_quality.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_direction_candidates:
    input:
        candidates="results/{model}/direction/candidates.parquet",
        direction="results/{model}/direction/direction.parquet",
    output:
        figure_output("direction_candidates", "direction", "direction candidates (layer x position)"),
    params:
        code=code_version("report"),
        figure="direction_candidates",
        title=lambda w: f"{w.model}: refusal direction candidates",
    conda:
        ENV
    log:
        "logs/{model}/report/direction_candidates.log",
    benchmark:
        "benchmarks/out/{model}/report_direction_candidates.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_top_features:
    input:
        features="results/{model}/features/ours_global.parquet",
    output:
        figure_output("top_features", "features", "top attributed features (ours, global)"),
    params:
        code=code_version("report"),
        figure="top_features",
        title=lambda w: f"{w.model}: global refusal feature set (ours_global), by rank",
    conda:
        ENV
    log:
        "logs/{model}/report/top_features.log",
    benchmark:
        "benchmarks/out/{model}/report_top_features.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_faithfulness:
    input:
        faithfulness="results/{model}/attribution/faithfulness.parquet",
    output:
        figure_output("faithfulness", "features", "LA-IG vs exact patching"),
    params:
        code=code_version("report"),
        figure="faithfulness",
        title=lambda w: f"{w.model}: LA-IG vs exact activation patching (rank agreement)",
    conda:
        ENV
    log:
        "logs/{model}/report/faithfulness.log",
    benchmark:
        "benchmarks/out/{model}/report_faithfulness.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_jailbreak_rates:
    input:
        jailbreak="results/{model}/metrics/jailbreak.parquet",
    output:
        figure_output("jailbreak_rates", "evaluation", "jailbreak rate per method and dataset"),
    params:
        code=code_version("report"),
        figure="jailbreak_rates",
        title=lambda w: f"{w.model}: jailbreak rate (95% Wilson intervals)",
    conda:
        ENV
    log:
        "logs/{model}/report/jailbreak_rates.log",
    benchmark:
        "benchmarks/out/{model}/report_jailbreak_rates.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_induction:
    input:
        induction="results/{model}/metrics/induction.parquet",
    output:
        figure_output("induction", "evaluation", "refusal induction on harmless prompts"),
    params:
        code=code_version("report"),
        figure="induction",
        title=lambda w: f"{w.model}: refusal induced on harmless prompts",
    conda:
        ENV
    log:
        "logs/{model}/report/induction.log",
    benchmark:
        "benchmarks/out/{model}/report_induction.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_grid:
    input:
        grid="results/{model}/metrics/grid.parquet",
    output:
        figure_output("grid", "evaluation", "jailbreak rate over the clamp x K* grid"),
    params:
        code=code_version("report"),
        figure="grid",
        title=lambda w: f"{w.model}: jailbreak rate over the operating points",
    conda:
        ENV
    log:
        "logs/{model}/report/grid.log",
    benchmark:
        "benchmarks/out/{model}/report_grid.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_capability:
    input:
        capability="results/{model}/metrics/capability.parquet",
    output:
        figure_output("capability", "evaluation", "capability cost on harmless prompts"),
    params:
        code=code_version("report"),
        figure="capability",
        title=lambda w: f"{w.model}: capability cost (mean, 95% interval)",
    conda:
        ENV
    log:
        "logs/{model}/report/capability.log",
    benchmark:
        "benchmarks/out/{model}/report_capability.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_fm_interactions:
    input:
        weights="results/{model}/interactions/{dataset}/weights.parquet",
    output:
        figure_output("fm_interactions_{dataset}", "studyb", "FM pair weights, {dataset}"),
    params:
        code=code_version("report"),
        figure="fm_interactions",
        title=lambda w: f"{w.model}, {w.dataset}: factorization-machine pair weights per prompt",
    conda:
        ENV
    log:
        "logs/{model}/report/fm_interactions_{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/report_fm_interactions_{dataset}.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_hydra:
    input:
        hydra="results/{model}/hydra/{dataset}.parquet",
    output:
        figure_output("hydra_{dataset}", "studyb", "hydra latents, {dataset}"),
    params:
        code=code_version("report"),
        figure="hydra",
        title=lambda w: f"{w.model}, {w.dataset}: where silent latents of a jailbreaking set wake",
    conda:
        ENV
    log:
        "logs/{model}/report/hydra_{dataset}.log",
    benchmark:
        "benchmarks/out/{model}/report_hydra_{dataset}.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_probes:
    input:
        metrics="results/{model}/probes/metrics.parquet",
        layers="results/{model}/probes/layers.parquet",
    output:
        figure_output("probes", "analysis", "OOD probes"),
    params:
        code=code_version("report"),
        figure="probes",
        title=lambda w: f"{w.model}: probes, in and out of distribution",
    conda:
        ENV
    log:
        "logs/{model}/report/probes.log",
    benchmark:
        "benchmarks/out/{model}/report_probes.tsv"
    script:
        "../workflow_scripts/report_figure.py"


rule report_category_overlap:
    input:
        category_sets="results/{model}/analysis/category_sets.parquet",
    output:
        figure_output("category_overlap", "analysis", "refusal (R) vs harm (H_c) features by category"),
    params:
        code=code_version("report"),
        figure="category_overlap",
        title=lambda w: f"{w.model}: shared refusal features R vs harm features H_c per category",
    conda:
        ENV
    log:
        "logs/{model}/report/category_overlap.log",
    benchmark:
        "benchmarks/out/{model}/report_category_overlap.tsv"
    script:
        "../workflow_scripts/report_figure.py"
