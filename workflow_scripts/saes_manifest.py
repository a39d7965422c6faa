"""Entry script: resources/saes/{model}/saes.json, where each layer's SAE comes from."""
import json
from pathlib import Path

from refusal_sae.runtime import start
from refusal_sae.saes import sae_release_ids

smk = snakemake  # noqa: F821
cfg = start(smk.log[0], smk.threads, smk.config)
spec = cfg.models[smk.wildcards.model].saes
out = Path(smk.output[0])
if spec.type == "train":
    layers = [int(Path(p).parent.name.removeprefix("layer_")) for p in smk.input if p.endswith("cfg.json")]
    entry = {"type": "local", "layers": layers, "dir": str(out.parent)}
elif spec.type == "pretrained":
    layers = list(spec.layers)
    entry = {"type": "pretrained", "release": spec.release, "ids": sae_release_ids(spec, layers)}
else:
    entry = {"type": spec.type, "layers": list(spec.layers) if spec.layers != "all" else "all"}
out.write_text(json.dumps(entry, indent=2, sort_keys=True))
