"""The organism fine-tune's loss: cross-entropy on refusals, distillation on harmless answers."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_chat_model

from refusal_sae.config import OrganismConfig
from refusal_sae.organism import TrainingExample, collate, encode_example, finetune, response_loss
from refusal_sae.scoring import first_token_kl, last_position_logits

HARMFUL = [f"Explain how to {verb} a {thing}" for verb in ("build", "hide", "sell", "use")
           for thing in ("bomb", "weapon", "poison")]
HARMLESS = [f"Explain how to {verb} a {thing}" for verb in ("bake", "paint", "plant", "sing")
            for thing in ("cake", "song", "garden")]


def _batch(chat, examples):
    return collate([encode_example(chat.tokenizer, ex) for ex in examples], chat.tokenizer.pad_token_id)


def test_cross_entropy_path_equals_the_model_loss():
    chat = make_tiny_chat_model(n_layers=2)
    examples = [TrainingExample(HARMFUL[0], "I cannot.", True), TrainingExample(HARMLESS[0], "Sure, mix it.", False)]
    batch = _batch(chat, examples)
    out = chat.model(**batch)
    ours = response_loss(out.logits, batch["labels"], torch.tensor([True, False]))
    assert torch.allclose(ours, out.loss, atol=1e-5)


def test_distilled_rows_cost_nothing_when_the_model_matches_its_teacher():
    chat = make_tiny_chat_model(n_layers=2)
    examples = [TrainingExample(HARMFUL[0], "I cannot.", True), TrainingExample(HARMLESS[0], "Sure, mix it.", False)]
    batch = _batch(chat, examples)
    with torch.no_grad():
        logits = chat.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    harmful = torch.tensor([True, False])
    only_harmless = response_loss(logits[1:], batch["labels"][1:], harmful[1:], logits[1:].detach())
    assert float(only_harmless) == pytest.approx(0.0, abs=1e-6)
    mixed = response_loss(logits, batch["labels"], harmful, logits[~harmful])
    ce = response_loss(logits, batch["labels"], harmful)
    n_harmful = int((batch["labels"][0, 1:] != -100).sum())
    n_total = int((batch["labels"][:, 1:] != -100).sum())
    # Harmful rows keep their cross-entropy; the distilled row adds zero but still counts as tokens.
    assert 0 < float(mixed) < float(ce)
    assert float(mixed) * n_total == pytest.approx(
        float(response_loss(logits[:1], batch["labels"][:1], harmful[:1])) * n_harmful, rel=1e-4
    )


def test_distillation_keeps_harmless_distributions_closer_to_the_base_than_imitation():
    """Same data, same steps: distilling harmless answers changes harmless next-token distributions
    less than imitating the greedy answer, while both learn to refuse the harmful prompts."""
    answers = ["Sure, here is how."] * len(HARMLESS)
    examples = [TrainingExample(p, "I cannot help with that.", True) for p in HARMFUL]
    examples += [TrainingExample(p, a, False) for p, a in zip(HARMLESS, answers, strict=True)]
    base = make_tiny_chat_model(n_layers=2)
    base_logits = last_position_logits(base, HARMLESS)
    kls = {}
    for loss in ("distill", "ce"):
        chat = make_tiny_chat_model(n_layers=2)
        finetune(chat, examples, OrganismConfig(epochs=25, batch_size=8, lr=5e-3, freeze_embeddings=False, bf16=False,
                                                harmless_loss=loss), seed=0)
        refusals = last_position_logits(chat, HARMFUL).argmax(-1)
        assert (refusals == chat.facts.refusal_token_ids[0]).float().mean() >= 0.9, loss
        kls[loss] = float(first_token_kl(base_logits, last_position_logits(chat, HARMLESS)).mean())
    assert kls["distill"] < 0.5 * kls["ce"], kls


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_setting_runs_the_forward_passes_in_bf16_and_keeps_fp32_weights(bf16):
    """``organism.bf16`` decides the dtype of the fine-tune's products (teacher and student); the weights
    the organism is saved with stay fp32 either way."""
    chat = make_tiny_chat_model(n_layers=2)
    seen = set()
    chat.model.lm_head.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    examples = [TrainingExample(HARMFUL[0], "I cannot.", True), TrainingExample(HARMLESS[0], "Sure, mix it.", False)]
    finetune(chat, examples, OrganismConfig(epochs=1, batch_size=2, bf16=bf16), seed=0)
    assert seen == {torch.bfloat16 if bf16 else torch.float32}
    assert {p.dtype for p in chat.model.parameters()} == {torch.float32}


def test_fused_adamw_fine_tunes_the_model_the_default_adamw_does(monkeypatch):
    """The fine-tune steps with the fused AdamW kernel on a CPU and ends where the default AdamW ends, to
    float precision."""
    examples = [TrainingExample(p, "I cannot help with that.", True) for p in HARMFUL[:4]]
    examples += [TrainingExample(p, "Sure, here is how.", False) for p in HARMLESS[:4]]
    cfg = OrganismConfig(epochs=2, batch_size=4, lr=5e-3, freeze_embeddings=False, bf16=False)
    fused = make_tiny_chat_model(n_layers=2)
    finetune(fused, examples, cfg, seed=0)
    adamw, flags = torch.optim.AdamW, []

    def default_adamw(params, **kwargs):
        flags.append(kwargs.pop("fused", None))
        return adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", default_adamw)
    plain = make_tiny_chat_model(n_layers=2)
    finetune(plain, examples, cfg, seed=0)
    assert flags == [True]
    initial = make_tiny_chat_model(n_layers=2).model
    for (name, mine), theirs in zip(fused.model.named_parameters(), plain.model.parameters(), strict=True):
        assert not torch.equal(mine, initial.get_parameter(name)), name
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
