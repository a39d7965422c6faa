"""The real-model overlays run, not just plan: each overlay's own config, with the hub model and SAEs
swapped for local stand-ins (the finished tiny organism and its sae-lens SAE directories, through the
``local`` counterparts of the ``hub`` and ``pretrained`` sources) and every dataset file for a local
fixture of the same format and columns, runs through the same rules to the jailbreak metrics of both
variants. Slow (minutes per overlay: about a hundred jobs); run with ``pytest -m slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_workflow import HARMFUL_WORDS, HARMLESS_WORDS, ROLE_VERBS, _prompts, run_workflow

from refusal_sae.artifacts import check_artifacts
from refusal_sae.methods import ALL_METHODS

ROOT = Path(__file__).resolve().parents[1]
WORDS = {"harmful": HARMFUL_WORDS, "harmless": HARMLESS_WORDS}


def stand_in_config(overlay: str, run: Path, tmp: Path) -> tuple[str, dict]:
    """The overlay's config with its model, SAEs and data files swapped for local stand-ins, and its sizes
    shrunk to the tiny model's (same keys, same datasets, same methods and variants)."""
    config = yaml.safe_load((ROOT / "config" / overlay).read_text())
    for name, spec in config["datasets"].items():
        role = next(iter(spec["splits"]))
        lines = _prompts(WORDS[spec["label"]], ROLE_VERBS[role]).splitlines()
        column = spec.get("prompt_column", "instruction")
        rows = [{column: line, "category": "tiny"} for line in lines]
        path = tmp / f"{name}.json"
        path.write_text(json.dumps(rows))
        spec.update(source={"type": "local", "path": str(path)}, format="json", prompt_column=column)
    (name, model), = config["models"].items()
    model.update(source={"type": "local", "path": str(run / "resources/models/tiny-organism/hf")}, dtype="float32",
                 gpu=False, refusal_tokens=["I"], direction_layer=2, induction_values=[4.0])
    model["saes"] = {"type": "local", "path_template": str(run / "resources/saes/tiny-organism/layer_{layer}"),
                     "layers": [1, 2], "dtype": "float32"}
    config["device"] = "cpu"
    config["baseline"] = {"max_new_tokens": 6, "batch_size": 8}
    config["direction"] = {"max_train": 16, "max_val": 8, "positions": 2, "batch_size": 8}
    config["attribution"].update(k0=3, n_steps=2, max_prompts=8, batch_size=4, faithfulness_prompts=2)
    config["selection"]["k_star"] = 3
    config["evaluation"].update(max_prompts=8, max_new_tokens=6, induction_new_tokens=6, batch_size=8,
                                generic_documents=4, generic_max_tokens=32,
                                model_judges={"harmbench_cls": str(tmp / "no_such_judge")})
    return name, config


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["gemma-2-2b-it.yaml", "llama-3.1-8b-instruct.yaml"])
def test_overlay_runs_to_the_jailbreak_metrics_on_stand_ins(overlay, finished_run, tmp_path):
    name, config = stand_in_config(overlay, finished_run, tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_workflow(tmp_path, f"results/{name}/metrics/jailbreak.parquet")
    assert result.returncode == 0, result.stderr[-6000:]
    jailbreak = pd.read_parquet(tmp_path / f"results/{name}/metrics/jailbreak.parquet")
    rates = jailbreak.loc[jailbreak["metric"] == "jailbreak_rate"]
    assert set(rates["dataset"]) == set(config["evaluation"]["datasets"])
    assert set(rates["variant"]) == {"held_out", "in_sample"}
    assert set(ALL_METHODS) <= set(rates["method"]) and "ap_prompt" in set(rates["method"])
    assert check_artifacts(tmp_path) == []
