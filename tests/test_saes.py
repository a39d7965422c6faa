"""SAE loading: layer resolution, hub ids (checked against sae-lens's registry), local round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from tiny import make_tiny_sae

from refusal_sae.config import ModelConfig, SAESpec, SourceConfig
from refusal_sae.pipeline import load_model_saes
from refusal_sae.sae_training import save_sae
from refusal_sae.saes import load_saes, missing_release_ids, resolve_layers, sae_release_ids

GEMMA = SAESpec(type="pretrained", layers="all", release="gemma-scope-2b-pt-res-canonical",
                id_template="layer_{layer}/width_65k/canonical")
GEMMA_16K = SAESpec(type="pretrained", layers="all", release="gemma-scope-2b-pt-res-canonical",
                    id_template="layer_{layer}/width_16k/canonical")
LLAMA = SAESpec(type="pretrained", layers="all", release="llama_scope_lxr_8x", id_template="l{layer}r_8x")


def test_jobs_that_load_no_sae_do_not_import_sae_lens():
    # sae-lens's import costs ~5 s of CPU per job; only SAE training (and its activation cache) needs it
    # at import time, every other module imports it where it loads an SAE.
    code = ("import importlib, pkgutil, sys, refusal_sae\n"
            "for module in pkgutil.iter_modules(refusal_sae.__path__):\n"
            "    if module.name != 'sae_training': importlib.import_module('refusal_sae.' + module.name)\n"
            "print('sae_lens' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_resolve_layers():
    assert resolve_layers(SAESpec(layers="all"), 4) == [0, 1, 2, 3]
    assert resolve_layers(SAESpec(layers=[3, 1, 3]), 4) == [1, 3]
    with pytest.raises(ValueError, match=r"\[4\]"):
        resolve_layers(SAESpec(layers=[1, 4]), 4)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        resolve_layers(SAESpec(layers=[-1]), 4)


def test_release_ids_format_the_template():
    assert sae_release_ids(GEMMA, [0, 15]) == {0: "layer_0/width_65k/canonical", 15: "layer_15/width_65k/canonical"}
    assert sae_release_ids(LLAMA, [11]) == {11: "l11r_8x"}
    with pytest.raises(ValueError, match="pretrained"):
        sae_release_ids(SAESpec(type="local"), [0])


@pytest.mark.parametrize("spec, n_layers", [(GEMMA, 26), (GEMMA_16K, 26), (LLAMA, 32)])
def test_study_sae_ids_exist_in_sae_lens_registry(spec, n_layers):
    """Every layer of Gemma-2-2B (26) / Llama-3.1-8B (32) has an SAE under our id template."""
    directory = get_pretrained_saes_directory()
    assert spec.release in directory
    ids = sae_release_ids(spec, resolve_layers(spec, n_layers))
    assert set(ids.values()) <= set(directory[spec.release].saes_map)
    assert missing_release_ids(spec.release, list(ids.values())) == []
    assert missing_release_ids(spec.release, ["layer_99/width_65k/canonical"]) == ["layer_99/width_65k/canonical"]


def test_pretrained_loading_passes_release_ids_and_dtype(monkeypatch):
    calls = []

    def fake_from_pretrained(release, sae_id, device="cpu", dtype="float32", **kwargs):
        calls.append((release, sae_id, device, dtype))
        sae = make_tiny_sae(8, 16)
        sae.cfg.metadata.hook_name = f"blocks.{sae_id.split('/')[0].split('_')[1]}.hook_resid_post"
        return sae

    monkeypatch.setattr(SAE, "from_pretrained", fake_from_pretrained)
    spec = SAESpec(type="pretrained", release=GEMMA.release, id_template=GEMMA.id_template, dtype="bfloat16")
    saes = load_saes(spec, [5, 15], d_model=8)
    assert calls == [
        ("gemma-scope-2b-pt-res-canonical", "layer_5/width_65k/canonical", "cpu", "bfloat16"),
        ("gemma-scope-2b-pt-res-canonical", "layer_15/width_65k/canonical", "cpu", "bfloat16"),
    ]
    assert sorted(saes) == [5, 15]
    for sae in saes.values():
        assert sae.W_enc.dtype == torch.bfloat16  # cast even if the loader ignored dtype
        assert not sae.training
        assert not any(p.requires_grad for p in sae.parameters())

    with pytest.raises(ValueError, match=r"layer 5 has d_in=8 .* d_model=2304"):
        load_saes(spec, [5], d_model=2304)

    calls.clear()
    bad = SAESpec(type="pretrained", release=GEMMA.release, id_template="layer_{layer}/width_3k/canonical")
    with pytest.raises(ValueError, match="width_3k"):
        load_saes(bad, [5], d_model=8)
    assert calls == []  # a wrong template fails before any download


@pytest.mark.parametrize("architecture_k", [None, 4])
def test_save_then_load_local_round_trip(tmp_path, architecture_k):
    saes = {layer: make_tiny_sae(16, 48, seed=layer, k=architecture_k) for layer in (0, 2)}
    for layer, sae in saes.items():
        out = save_sae(sae, tmp_path / "saes" / f"layer_{layer}", {"hook_name": f"blocks.{layer}.hook_resid_post"})
        assert (out / "cfg.json").exists() and (out / "sae_weights.safetensors").exists()
    assert not [p for p in (tmp_path / "saes").iterdir() if p.name.startswith(".")]  # no temp dirs left

    x = torch.randn(5, 7, 16)
    by_dir = load_saes(SAESpec(type="train"), [0, 2], d_model=16, local_dir=tmp_path / "saes")
    by_template = load_saes(SAESpec(type="local", path_template=str(tmp_path / "saes" / "layer_{layer}")),
                            [0, 2], d_model=16)
    for loaded in (by_dir, by_template):
        for layer in (0, 2):
            f = saes[layer].encode(x)
            assert torch.equal(loaded[layer].encode(x), f)
            assert torch.equal(loaded[layer].decode(f), saes[layer].decode(f))
            assert loaded[layer].cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"

    # Overwriting is atomic too, and the new weights win.
    save_sae(make_tiny_sae(16, 48, seed=9, k=architecture_k), tmp_path / "saes" / "layer_0")
    reloaded = load_saes(SAESpec(type="train"), [0], d_model=16, local_dir=tmp_path / "saes")[0]
    assert not torch.equal(reloaded.W_enc, saes[0].W_enc)

    with pytest.raises(ValueError, match=r"layer 2 has d_in=16 but the model has d_model=32"):
        load_saes(SAESpec(type="train"), [2], d_model=32, local_dir=tmp_path / "saes")
    with pytest.raises(FileNotFoundError, match="layer 3"):
        load_saes(SAESpec(type="train"), [3], d_model=16, local_dir=tmp_path / "saes")


def test_none_type_has_no_saes():
    with pytest.raises(ValueError, match="none"):
        load_saes(SAESpec(type="none"), [0], d_model=8)


def test_a_local_spec_loads_through_its_manifest(tmp_path):
    """``saes.type: local`` (path_template, no directory of the workflow's own): the manifest the
    saes_manifest rule writes for it has no ``dir``, and the stages load the SAEs from the template."""
    sae = make_tiny_sae(16, 48, seed=1)
    save_sae(sae, tmp_path / "given" / "layer_1", {"hook_name": "blocks.1.hook_resid_post"})
    manifest = tmp_path / "saes.json"
    manifest.write_text(json.dumps({"type": "local", "layers": [1]}))
    spec = ModelConfig(source=SourceConfig(type="local", path=str(tmp_path)),
                       saes=SAESpec(type="local", path_template=str(tmp_path / "given" / "layer_{layer}"), layers=[1]))
    loaded = load_model_saes(manifest, spec, d_model=16, device="cpu")
    x = torch.randn(3, 16)
    assert torch.equal(loaded[1].encode(x), sae.encode(x))
