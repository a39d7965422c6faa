# Dissecting refusal with sparse autoencoders: the workflow.
# Run: snakemake --cores 2 (embedded default)
#      snakemake --configfile config/gemma-2-2b-it.yaml --replace-workflow-config (a complete real-model config)
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# A --configfile replaces the embedded default (give a complete config, e.g. a copy of config/config.yaml):
# cluster jobs re-read this file with --configfiles but without --replace-workflow-config, so loading the
# default under it would merge the two there and not in the main process.
if not workflow.overwrite_configfiles:
    configfile: Path(workflow.basedir) / "config" / "config.yaml"


try:
    validate(config, "config/schema.yaml")
except WorkflowError as exc:
    # Snakemake's message holds the whole schema and the whole config; the jsonschema error it wraps
    # (the exception being handled when it was raised) says where and what, in one line.
    cause = exc.__context__
    where = ".".join(["config", *map(str, getattr(cause, "absolute_path", []))])
    raise WorkflowError(f"config error: {where}: {getattr(cause, 'message', exc)}") from None


include: "rules/common.smk"


wildcard_constraints:
    model=_alternatives(CFG.models),
    dataset=_alternatives(CFG.datasets),
    layer=r"\d+",


include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/baseline.smk"
include: "rules/saes.smk"
include: "rules/discovery.smk"
include: "rules/evaluation.smk"
include: "rules/in_sample.smk"
include: "rules/studyb.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
