"""Refusal organism: a short supervised fine-tune that makes a rarely-refusing chat model refuse.

Harmful training prompts are paired with short refusals (several phrasings) and learned by
cross-entropy. Harmless prompts are paired with the base model's own greedy answers; by default the
loss on them is the forward KL to the frozen base model's next-token distributions along those answers
(``harmless_loss: distill``), so harmless behaviour stays the base model's rather than being sharpened
onto one answer. Losses cover response tokens only. Sequences are right-padded for training so
position ids stay those of unpadded text.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import OrganismConfig
from .models import ChatModel, bf16_enabled, fused_adam, render_chat


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
    """Right-pad a batch of (ids, labels) into ``input_ids``, ``labels`` and ``attention_mask``."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def response_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    harmful: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-token loss over response tokens (``labels != -100``) of a right-padded batch.

    Rows with ``harmful`` True are scored by cross-entropy on their labels. Other rows use the same
    cross-entropy when ``teacher_logits`` is None, else the forward ``KL(teacher || model)`` of the
    next-token distributions; ``teacher_logits`` then holds only those rows, in batch order.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    scored = targets != -100
    per_token = F.nll_loss(logp.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    if teacher_logits is not None:
        teacher_logp = torch.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
        kl = F.kl_div(logp[~harmful], teacher_logp, log_target=True, reduction="none").sum(-1)
        per_token = per_token.clone()
        per_token[~harmful] = kl
    return (per_token * scored).sum() / scored.sum().clamp(min=1)


def finetune(
    chat: ChatModel, examples: Sequence[TrainingExample], cfg: OrganismConfig, seed: int
) -> tuple[PreTrainedModel, list[float]]:
    """Fine-tune ``chat.model`` in place on ``examples``; returns the model and per-step losses.

    With ``cfg.harmless_loss == "distill"`` a frozen copy of the model taken before training is the
    teacher for harmless rows (see :func:`response_loss`). Forward passes run under bf16 autocast when
    ``cfg.bf16`` resolves to True (:func:`refusal_sae.models.bf16_enabled`), the teacher's included; weights
    and optimizer state stay fp32 and the losses are computed in fp32 from the bf16 logits.
    """
    torch.manual_seed(seed)
    model, tokenizer = chat.model, chat.tokenizer
    teacher = None
    if cfg.harmless_loss == "distill" and not all(ex.harmful for ex in examples):
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=fused_adam(chat.device))
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    order = list(range(len(encoded)))
    rng = random.Random(seed)
    losses: list[float] = []
    steps = cfg.epochs * ((len(order) + cfg.batch_size - 1) // cfg.batch_size)
    autocast = torch.autocast(chat.device.type, dtype=torch.bfloat16, enabled=bf16_enabled(cfg.bf16, chat.device))
    progress = tqdm(total=steps, desc="organism fine-tune")
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id)
            batch = {k: v.to(chat.device) for k, v in batch.items()}
            harmful = torch.tensor([examples[i].harmful for i in rows], device=chat.device)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            teacher_logits = None
            with autocast:
                if teacher is not None and not bool(harmful.all()):
                    with torch.no_grad():  # harmful rows are learned by cross-entropy: no teacher needed
                        teacher_logits = teacher(**{k: v[~harmful] for k, v in inputs.items()}).logits
                logits = model(**inputs).logits
            loss = response_loss(logits, batch["labels"], harmful, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    progress.close()
    del teacher
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, losses
