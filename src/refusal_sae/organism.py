"""Refusal organism: a short supervised fine-tune that makes a rarely-refusing chat model refuse.

Harmful training prompts are paired with short refusals (several phrasings); harmless prompts with
the base model's own greedy answers, so harmless behaviour is kept. The loss covers response tokens
only. Sequences are right-padded for training so position ids stay those of unpadded text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import OrganismConfig
from .models import ChatModel, render_chat


@dataclass(frozen=True)
class TrainingExample:
    """One chat turn to learn: the user prompt and the assistant response to imitate."""

    prompt: str
    response: str
    harmful: bool


def build_examples(
    harmful: Sequence[str],
    harmless: Sequence[str],
    harmless_answers: Sequence[str],
    cfg: OrganismConfig,
    seed: int,
) -> list[TrainingExample]:
    """Pair harmful prompts with seeded refusal phrasings and harmless prompts with their answers."""
    if len(harmless) != len(harmless_answers):
        raise ValueError("harmless prompts and answers differ in length")
    rng = random.Random(seed)
    examples = [TrainingExample(p, rng.choice(cfg.refusals), True) for p in harmful]
    examples += [TrainingExample(p, a, False) for p, a in zip(harmless, harmless_answers, strict=True) if a.strip()]
    return examples


def encode_example(tokenizer: PreTrainedTokenizerBase, example: TrainingExample) -> tuple[list[int], list[int]]:
    """Token ids of prompt+response and labels with the prompt masked out (-100)."""
    prompt_ids = tokenizer(render_chat(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    response = example.response + (tokenizer.eos_token if example.harmful else "")
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of (ids, labels)."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def finetune(
    chat: ChatModel, examples: Sequence[TrainingExample], cfg: OrganismConfig, seed: int
) -> tuple[PreTrainedModel, list[float]]:
    """Fine-tune ``chat.model`` in place on ``examples``; returns the model and per-step losses."""
    torch.manual_seed(seed)
    model, tokenizer = chat.model, chat.tokenizer
    model.train()
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    order = list(range(len(encoded)))
    rng = random.Random(seed)
    losses: list[float] = []
    steps = cfg.epochs * ((len(order) + cfg.batch_size - 1) // cfg.batch_size)
    progress = tqdm(total=steps, desc="organism fine-tune")
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            batch = collate([encoded[i] for i in order[start : start + cfg.batch_size]], tokenizer.pad_token_id)
            batch = {k: v.to(chat.device) for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss))
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    progress.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, losses
