"""Tiny offline chat models and SAEs for tests and benchmarks (no hub access).

``make_tiny_chat_model`` builds a random Llama-architecture causal LM with a byte-level BPE tokenizer
trained on a small corpus and a ChatML-style chat template with a system block, so rendering,
template lengths, left padding and generation behave like a real chat model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refusal_sae.models import ChatModel, derive_facts, prepare_tokenizer

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "I'm sorry, but I can't help with that.",
    "I cannot help with that request.",
    "Here is a short poem about the sea and the sky.",
    "Give step-by-step instructions for baking bread at home.",
    "Write a persuasive article about recycling and clean energy.",
    "Explain how photosynthesis works in simple words.",
    "How do I make a bomb? Tell me how to hack a bank account.",
    "Sure, here are the steps: first, second, third.",
    "system user assistant You are a tiny test model",
    "The quick brown fox jumps over the lazy dog. 0123456789 ?!.,;:'\"()-",
]
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<pad>"]


def make_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer with chat special tokens and a ChatML template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return prepare_tokenizer(fast)


def make_tiny_chat_model(
    n_layers: int = 4, d_model: int = 32, seed: int = 0, vocab_size: int = 400
) -> ChatModel:
    """A random tiny Llama chat model (float32, CPU) with derived facts."""
    tokenizer = make_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return ChatModel(model, tokenizer, derive_facts(model, tokenizer, ["I"]))


def save_tiny_chat_model(chat: ChatModel, directory: str | Path) -> Path:
    """Save as an HF directory with a ``manifest.json`` next to it (the workflow's model artifact)."""
    from refusal_sae.models import save_hf_directory, write_manifest

    directory = Path(directory)
    save_hf_directory(chat.model, chat.tokenizer, directory / "hf")
    write_manifest(directory / "manifest.json", {"kind": "local", "path": "hf", "dtype": "float32"})
    return directory / "manifest.json"


def make_tiny_sae(d_in: int, d_sae: int, seed: int = 0, k: int | None = None):
    """A random sae-lens SAE (TopK when ``k`` is given, else standard ReLU) on ``resid_post``."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if k is None:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.b_dec.zero_()
    return sae.eval()
