"""Load the SAEs a model uses (METHOD.md notation: ``f = enc(h_l)``, ``ĥ = dec(f)`` on ``resid_post``).

Three sources, chosen by :class:`~refusal_sae.config.SAESpec.type`:

- ``pretrained``: a sae-lens release plus an id template, e.g. Gemma Scope
  (``gemma-scope-2b-pt-res-canonical``, ``layer_{layer}/width_65k/canonical``) or Llama Scope
  (``llama_scope_lxr_8x``, ``l{layer}r_8x``), downloaded through sae-lens;
- ``local``: sae-lens on-disk directories named by ``path_template``;
- ``train``: directories written by :mod:`refusal_sae.sae_training` (``local_dir/layer_{l}``).

Every loaded SAE is checked against the model width, cast to the requested dtype, put in eval mode
and frozen: downstream stages only ever differentiate through SAEs, never train them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import SAESpec

if TYPE_CHECKING:  # importing sae-lens costs ~5 s of CPU: only the jobs that load SAEs pay it
    from sae_lens import SAE


def resolve_layers(spec: SAESpec, n_layers: int) -> list[int]:
    """The layers ``spec`` asks for, sorted: ``"all"`` means every block ``0..n_layers-1``.

    A layer outside ``[0, n_layers)`` is an error naming it (negative indices are not wrapped, so a
    typo never silently selects a late layer).
    """
    if spec.layers == "all":
        return list(range(n_layers))
    bad = [layer for layer in spec.layers if not 0 <= int(layer) < n_layers]
    if bad:
        raise ValueError(f"saes.layers: layer(s) {bad} out of range for a model with {n_layers} layers")
    return sorted({int(layer) for layer in spec.layers})


def sae_release_ids(spec: SAESpec, layers: Sequence[int]) -> dict[int, str]:
    """The sae-lens SAE id of each layer for a ``pretrained`` spec (``id_template.format(layer=l)``)."""
    if spec.type != "pretrained":
        raise ValueError(f"saes.type is {spec.type!r}; release ids exist only for type 'pretrained'")
    if not spec.release or not spec.id_template:
        raise ValueError("saes: type 'pretrained' needs both 'release' and 'id_template'")
    return {int(layer): spec.id_template.format(layer=int(layer)) for layer in layers}


@functools.cache
def _registry() -> dict:
    """sae-lens's parsed ``pretrained_saes.yaml`` (a large file: parse it once per process)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def missing_release_ids(release: str, ids: Sequence[str]) -> list[str]:
    """Ids absent from sae-lens's bundled registry (``pretrained_saes.yaml``) for ``release``.

    Returns ``[]`` when the release itself is not in the registry (sae-lens also accepts raw hub
    repositories as releases, which the registry cannot check). No network access.
    """
    directory = _registry()
    if release not in directory:
        return []
    known = directory[release].saes_map
    return [sae_id for sae_id in ids if sae_id not in known]


def sae_paths(spec: SAESpec, layers: Sequence[int], local_dir: Path | None = None) -> dict[int, Path]:
    """On-disk SAE directory per layer: ``path_template`` if set, else ``local_dir/layer_{l}``."""
    if spec.path_template:
        return {int(layer): Path(spec.path_template.format(layer=int(layer))) for layer in layers}
    if local_dir is None:
        raise ValueError(f"saes.type {spec.type!r} needs 'path_template' or a local SAE directory")
    return {int(layer): Path(local_dir) / f"layer_{int(layer)}" for layer in layers}


def _finalise(sae: SAE, layer: int, d_model: int, dtype: str, device: str, spec: SAESpec, where: str) -> SAE:
    """Check width, cast, freeze; warn if the SAE was trained on a different hook. ``where`` names the
    SAE (directory or release/id) in the error, so a mismatch says which file to fix."""
    if int(sae.cfg.d_in) != int(d_model):
        raise ValueError(
            f"SAE for layer {layer} has d_in={sae.cfg.d_in} but the model has d_model={d_model} ({where})"
        )
    expected_hook = spec.hook_name_template.format(layer=layer)
    hook = sae.cfg.metadata.hook_name
    if hook is not None and hook != expected_hook:
        # A different hook (e.g. resid_pre of the next block) is often the same tensor, so warn only.
        warnings.warn(f"SAE for layer {layer} was trained on {hook!r}, expected {expected_hook!r}", stacklevel=3)
    from .models import resolve_dtype

    sae = sae.to(device=device, dtype=resolve_dtype(dtype))
    sae.eval()
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    return sae


def load_saes(
    spec: SAESpec,
    layers: Sequence[int],
    d_model: int,
    device: str = "cpu",
    local_dir: Path | None = None,
) -> dict[int, SAE]:
    """Load one sae-lens SAE per layer, frozen, in eval mode, in ``spec.dtype`` on ``device``.

    ``pretrained`` downloads through ``SAE.from_pretrained`` (ids checked against sae-lens's registry
    first, so a wrong template fails before any download); ``local``/``train`` use
    ``SAE.load_from_disk``. A width mismatch is an error naming the layer and both sizes.
    """
    from .models import resolve_dtype

    resolve_dtype(spec.dtype)  # fail on a bad dtype name before any download
    layers = [int(layer) for layer in layers]
    from sae_lens import SAE

    saes: dict[int, SAE] = {}
    if spec.type == "pretrained":
        ids = sae_release_ids(spec, layers)
        assert spec.release is not None  # checked by sae_release_ids
        missing = missing_release_ids(spec.release, list(ids.values()))
        if missing:
            raise ValueError(f"saes: release {spec.release!r} has no SAE id(s) {missing}")
        for layer, sae_id in ids.items():
            sae = SAE.from_pretrained(spec.release, sae_id, device=device, dtype=spec.dtype)
            saes[layer] = _finalise(sae, layer, d_model, spec.dtype, device, spec, f"{spec.release}/{sae_id}")
    elif spec.type in ("local", "train"):
        for layer, path in sae_paths(spec, layers, local_dir).items():
            if not (path / "cfg.json").exists():
                raise FileNotFoundError(f"SAE for layer {layer}: no sae-lens directory at {path}")
            sae = SAE.load_from_disk(path, device=device, dtype=spec.dtype)
            saes[layer] = _finalise(sae, layer, d_model, spec.dtype, device, spec, str(path))
    else:
        raise ValueError(f"saes.type is {spec.type!r}: this model has no SAEs to load")
    return saes
