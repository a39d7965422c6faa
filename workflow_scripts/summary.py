"""Entry script: the summary table (methods x datasets, METHOD.md section 7 shape) as Parquet,
Markdown and a bar chart with intervals."""
from refusal_sae.io import read_parquet, write_parquet
from refusal_sae.report import jailbreak_figure, summary_markdown
from refusal_sae.runtime import start

smk = snakemake  # noqa: F821
start(smk.log[0], smk.threads, smk.config)
tables = {name: read_parquet(getattr(smk.input, name)) for name in
          ("jailbreak", "induction", "capability", "baseline", "faithfulness", "direction", "paired")}
summary = tables["jailbreak"].loc[tables["jailbreak"]["judge"] == "substring"]
write_parquet(summary, smk.output.table, {"model": smk.wildcards.model})
with open(smk.output.markdown, "w") as handle:
    handle.write(summary_markdown(smk.wildcards.model, tables))
jailbreak_figure(summary.loc[summary["variant"] == "held_out"], smk.output.figure,
                 title=f"{smk.wildcards.model}: jailbreak rate, held out (substring judge)")
