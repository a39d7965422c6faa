"""Write a tiny Llama chat model (``tests/tiny.make_tiny_chat_model``) as a float32 GGUF file.

The file follows llama.cpp's ``convert_hf_to_gguf.py`` conventions so that transformers' GGUF loader
reads it back: ``general.architecture = "llama"``, ``llama.*`` hyperparameters, a byte-level BPE
tokenizer (``tokenizer.ggml.model = "gpt2"``) with merges, token types and special ids, the chat
template, and tensors under llama.cpp names with the rotary permutation of ``q``/``k`` applied
(transformers undoes it on load).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerFast

_TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: HF's half-split rotary layout to GGML's interleaved one."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tokenizer_fields(tokenizer: PreTrainedTokenizerFast) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their GGUF token types (1 normal, 3 control) and the BPE merges."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["content"] for t in state.get("added_tokens", []) if t.get("special")}
    types = [3 if token in special else 1 for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return tokens, types, merges


def write_llama_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save a Llama ``model`` and its byte-level BPE ``tokenizer`` as a float32 GGUF file at ``path``."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    rope_theta = float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"])

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, types, merges = _tokenizer_fields(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(int(tokenizer.bos_token_id))
    writer.add_eos_token_id(int(tokenizer.eos_token_id))
    writer.add_pad_token_id(int(tokenizer.pad_token_id))
    writer.add_add_bos_token(False)
    writer.add_chat_template(str(tokenizer.chat_template))

    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for layer in range(int(config.num_hidden_layers)):
        for hf_name, gguf_name in _TENSOR_NAMES.items():
            weights = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weights = permute_rotary(weights, n_head)
            elif gguf_name == "attn_k":
                weights = permute_rotary(weights, n_kv)
            tensors[f"blk.{layer}.{gguf_name}.weight"] = weights
    for name, weights in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(weights, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
