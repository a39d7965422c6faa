"""Entry script: adversarial pairs (explicit request, variant) from every configured variant source, on
the first analysis.max_prompts evaluation prompts of one evaluation dataset (METHOD.md §9)."""
from pathlib import Path

from refusal_sae.adversarial import build_pairs, read_variants
from refusal_sae.data import source_file
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.pipeline import evaluation_rows
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
name = smk.wildcards.dataset
explicit = evaluation_rows(read_parquet(smk.input.dataset), cfg).head(cfg.analysis.max_prompts).assign(dataset=name)
variants = []
for source_name, source in cfg.analysis.sources.items():
    found = []
    for spec in source.files:
        found += read_variants(source_file(spec, Path("resources/cache")), source.format, source.kind, source_name)
    variants += found[:source.limit]
pairs = build_pairs(explicit, variants)
write_parquet(pairs, smk.output[0], {"analysis": smk.config.get("analysis", {})})
