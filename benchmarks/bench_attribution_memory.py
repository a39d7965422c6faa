"""Peak GPU memory of a LA-IG batch over every layer's SAE, against the model's own forward+backward.

Random weights in the real shapes, so no hub access is needed. The Gemma shape is Gemma-2-2B with a
Gemma Scope-width JumpReLU SAE (65,536 latents) at all 26 layers: about 5 GiB of model weights (bf16)
and 31 GiB of SAE weights (float32), so it needs one GPU with 48 GiB or more.

  python benchmarks/bench_attribution_memory.py --shape gemma-2-2b --batch 4 --widths 16384 65536
  python benchmarks/bench_attribution_memory.py --shape tiny --widths 128 8192   # CPU: timings only

Prints, per SAE width, the peak memory above the resident weights of one LA-IG batch (N steps) and of
one plain forward+backward of the model on the same batch. LA-IG keeps gradients only at the residual
stream and encodes one layer at a time, so its peak should sit near the plain pass's and barely move
with the width; a dense splice would add ``layers x batch x tokens x width`` floats.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

from refusal_sae.attribution import cosine_candidates, la_ig
from refusal_sae.models import ChatModel, derive_facts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import forward_backward  # noqa: E402
from tiny import make_tokenizer  # noqa: E402

SHAPES = {
    # Gemma-2-2B (google/gemma-2-2b-it config.json).
    "gemma-2-2b": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256),
    "tiny": dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}


def random_chat_model(shape: str, device: torch.device, dtype: torch.dtype) -> ChatModel:
    """A randomly initialised Gemma-2 causal LM of the named shape, with the tests' chat tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = make_tokenizer()
    config = Gemma2Config(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):
        model = Gemma2ForCausalLM._from_config(config, dtype=dtype).eval()
    model.requires_grad_(False)
    return ChatModel(model, tokenizer, derive_facts(model, tokenizer, ["I"]))


def random_jumprelu_saes(d_model: int, width: int, layers: range, device: torch.device) -> dict:
    """Random float32 JumpReLU SAEs (Gemma Scope's architecture) at ``layers``."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    saes = {}
    for layer in layers:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_model, d_sae=width, device=str(device)))
        with torch.no_grad():
            sae.W_enc.normal_(0, d_model ** -0.5)
            sae.W_dec.normal_(0, width ** -0.5)
            sae.threshold.fill_(0.5)
        saes[layer] = sae.eval().requires_grad_(False)
    return saes


def _peak_above(baseline: int, device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"+{(torch.cuda.max_memory_allocated(device) - baseline) / 2**30:.2f} GiB"


def _reset(device: torch.device) -> int:
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-2-2b")
    parser.add_argument("--widths", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--k0", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    chat = random_chat_model(args.shape, device, dtype)
    d_model, n_layers = chat.facts.d_model, chat.facts.n_layers
    prompts = [f"Give detailed step-by-step instructions for case {i} of making a bomb at home." for i in range(args.batch)]
    batch = chat.tokenize(prompts)
    n_tokens = batch["input_ids"].shape[1]
    direction = torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    baseline = _reset(device)
    forward_backward(chat, batch)
    plain_peak = _peak_above(baseline, device)
    print(f"{args.shape} on {device}: {n_layers} layers, d_model {d_model}, batch {args.batch} x {n_tokens} tokens, "
          f"N={args.steps}; model weights {baseline / 2**30:.2f} GiB; plain forward+backward peak {plain_peak}")
    for width in args.widths:
        saes = random_jumprelu_saes(d_model, width, range(n_layers), device)
        candidates = cosine_candidates(saes, direction, args.k0)
        baseline = _reset(device)
        start = time.perf_counter()
        la_ig(chat, saes, prompts, list(range(args.batch)), direction, candidates, args.steps, batch_size=args.batch)
        seconds = time.perf_counter() - start
        dense = n_layers * args.batch * n_tokens * width * 4 / 2**30
        print(f"width {width}: model + SAE weights {baseline / 2**30:.2f} GiB; LA-IG batch peak "
              f"{_peak_above(baseline, device)} above them, {seconds:.1f} s "
              f"(dense latents of every layer would be {dense:.2f} GiB)")
        del saes, candidates
        _reset(device)


if __name__ == "__main__":
    main()
