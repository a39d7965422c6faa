"""Dissecting refusal in chat language models with sparse autoencoders.

The library behind the Snakemake workflow: each module owns one concern (data, models, SAEs,
interventions, direction, attribution, selection, generation, judges, metrics) and knows nothing
about Snakemake.
"""

__version__ = "0.1.0"
