"""Batched generation under edits (order, per-prompt rows) and resumable sharded runs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny import make_tiny_sae

from refusal_sae.generation import generate, generate_scored, generate_sharded, prompt_lengths
from refusal_sae.interventions import ActivationAddition, FeatureEdit, HoldLatents, PositionMask, rows_of
from refusal_sae.io import read_parquet
from refusal_sae.models import greedy_generate
from refusal_sae.scoring import refusal_scores

# Different lengths, deliberately not sorted, so length sorting reorders them.
PROMPTS = [
    "hi",
    "Write a persuasive article about recycling and clean energy.",
    "Explain photosynthesis.",
    "Give step-by-step instructions for baking bread at home, please.",
    "sea",
]
HUGE = 1e4


def unembedding(chat) -> torch.Tensor:
    return chat.model.get_output_embeddings().weight.detach()


def self_predicting_tokens(chat, count: int) -> list[int]:
    """Non-special tokens T whose own unembedding row, added at the last layer, makes T the argmax."""
    w = unembedding(chat)
    special = set(chat.tokenizer.all_special_ids)
    scores = w @ w.T  # logits (up to the final norm's positive scaling) for h ∝ w_T
    found = [t for t in range(w.shape[0]) if t not in special and int(scores[t].argmax()) == t]
    # Prefer tokens that decode to plain printable text so expected strings are easy to read.
    found = [t for t in found if chat.tokenizer.decode([t]).strip().isalpha()]
    assert len(found) >= count
    return found[:count]


def test_generate_without_edits_matches_greedy_generate(tiny_chat):
    expected = greedy_generate(tiny_chat, PROMPTS, max_new_tokens=6)
    got = generate(tiny_chat, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    assert got == expected
    # Sorting really reorders this input (otherwise the test would not cover the un-permutation).
    lengths = prompt_lengths(tiny_chat, PROMPTS)
    assert lengths != sorted(lengths, reverse=True)


def test_first_token_refusal_score_is_the_prefill_score_under_the_same_edits(tiny_chat):
    last = tiny_chat.facts.n_layers - 1
    (token,) = self_predicting_tokens(tiny_chat, 1)
    edit = ActivationAddition(unembedding(tiny_chat)[token], layer=last, alpha=0.05 * HUGE)
    for edits in ((), [edit]):
        texts, scores = generate_scored(tiny_chat, PROMPTS, edits, max_new_tokens=3, batch_size=2, progress=False)
        expected, _ = refusal_scores(tiny_chat, PROMPTS, edits)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
        assert texts == generate(tiny_chat, PROMPTS, edits, max_new_tokens=3, batch_size=2, progress=False)
    assert not torch.allclose(scores, refusal_scores(tiny_chat, PROMPTS)[0])  # the edit moved them


def test_activation_addition_on_all_positions_forces_every_token(tiny_chat):
    last = tiny_chat.facts.n_layers - 1
    (token,) = self_predicting_tokens(tiny_chat, 1)
    edit = ActivationAddition(unembedding(tiny_chat)[token], layer=last, alpha=HUGE)
    got = generate(tiny_chat, PROMPTS[:3], [edit], max_new_tokens=5, batch_size=2, progress=False)
    assert got == [tiny_chat.tokenizer.decode([token] * 5)] * 3


def test_position_mask_from_is_tracked_through_cached_generation(tiny_chat):
    """Mask ``from`` (counted per row from its first real token) switches the edit on mid-generation.

    The last layer's output at position p only sets the token at p + 1, so in row i (prompt length
    L_i) the first ``start - L_i + 1`` tokens are plain greedy and every later one is the forced token.
    """
    last = tiny_chat.facts.n_layers - 1
    (token,) = self_predicting_tokens(tiny_chat, 1)
    prompts = ["hi", "hi sea sky"]
    lengths = prompt_lengths(tiny_chat, prompts)
    start = max(lengths) - 1
    plain_counts = [start - n + 1 for n in lengths]
    assert plain_counts[1] == 0 and 0 < plain_counts[0] < 5
    edit = ActivationAddition(unembedding(tiny_chat)[token], layer=last, alpha=HUGE,
                              positions=PositionMask("from", start))
    got = generate(tiny_chat, prompts, [edit], max_new_tokens=5, batch_size=2, progress=False)
    for prompt, m, text in zip(prompts, plain_counts, got, strict=True):
        ids = tiny_chat.tokenize([prompt])
        with torch.no_grad():
            plain = tiny_chat.model.generate(**ids, max_new_tokens=5, do_sample=False,
                                             pad_token_id=tiny_chat.tokenizer.pad_token_id)
        plain = plain[0, ids["input_ids"].shape[1]:].tolist()
        assert token not in plain[:m]
        assert text == tiny_chat.tokenizer.decode(plain[:m] + [token] * (5 - m))


def steering_sae(chat, tokens: list[int]):
    """A random SAE whose latent ``j`` decodes to the unembedding row of ``tokens[j]``."""
    d = chat.facts.d_model
    sae = make_tiny_sae(d, 2 * d, seed=123)
    with torch.no_grad():
        for j, token in enumerate(tokens):
            sae.W_dec[j] = unembedding(chat)[token]
    return sae


def test_feature_set_clamp_forces_its_token(tiny_chat):
    last = tiny_chat.facts.n_layers - 1
    tokens = self_predicting_tokens(tiny_chat, 1)
    sae = steering_sae(tiny_chat, tokens)
    edit = FeatureEdit({last: sae}, {last: torch.tensor([0])}, mode="set", value=HUGE)
    got = generate(tiny_chat, PROMPTS[:2], [edit], max_new_tokens=4, progress=False)
    assert got == [tiny_chat.tokenizer.decode(tokens * 4)] * 2


def test_per_prompt_rows_follow_prompts_through_length_sorting(tiny_chat):
    """Prompt i sets latent i (→ its own token); the last prompt has no active latent (plain)."""
    last = tiny_chat.facts.n_layers - 1
    n = len(PROMPTS)
    tokens = self_predicting_tokens(tiny_chat, n - 1)
    sae = steering_sae(tiny_chat, tokens)
    active = torch.zeros(n, n - 1, dtype=torch.bool)
    for i in range(n - 1):
        active[i, i] = True
    edit = FeatureEdit({last: sae}, {last: torch.arange(n - 1)}, mode="set", value=HUGE,
                       row_active={last: active})
    seen: list[list[int]] = []

    def edits_for(rows):
        seen.append(rows.tolist())
        return [rows_of(edit, rows)]

    got = generate(tiny_chat, PROMPTS, edits_for, max_new_tokens=4, batch_size=2, progress=False)
    for i in range(n - 1):
        assert got[i] == tiny_chat.tokenizer.decode([tokens[i]] * 4), i
    assert got[-1] == greedy_generate(tiny_chat, PROMPTS[-1:], max_new_tokens=4)[0]
    # Batches were formed longest first, i.e. not as contiguous input slices.
    assert sorted(sum(seen, [])) == list(range(n))
    assert seen[0] != [0, 1]


def test_rows_of_accepts_slices_and_leaves_plain_edits_alone(tiny_saes):
    active = torch.tensor([[True, False], [False, True], [True, True]])
    edit = FeatureEdit(tiny_saes, {0: torch.tensor([1, 2])}, row_active={0: active})
    assert torch.equal(rows_of(edit, slice(1, 3)).row_active[0], active[1:3])
    assert torch.equal(rows_of(edit, torch.tensor([2, 0])).row_active[0], active[[2, 0]])
    plain = FeatureEdit(tiny_saes, {0: torch.tensor([1])})
    assert rows_of(plain, torch.tensor([0])) is plain


# --- sharding ---------------------------------------------------------------------------------

IDS = [f"p{i}" for i in range(7)]
TEXTS = [f"prompt {i}" for i in range(7)]


class Runner:
    """A fake shard runner: two rows per prompt, optionally failing on one call."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, ids: list[str], prompts: list[str]) -> pd.DataFrame:
        self.calls.append(ids)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("interrupted")
        rows = [{"prompt_id": i, "setting": s, "completion": f"{p}/{s}"}
                for i, p in zip(ids, prompts, strict=True) for s in ("a", "b")]
        return pd.DataFrame(rows[::-1])  # out of order on purpose: the shard is re-ordered


def expected_frame() -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": i, "setting": s, "completion": f"{p}/{s}"}
                         for i, p in zip(IDS, TEXTS, strict=True) for s in ("b", "a")])


def test_interrupted_sharded_run_resumes_with_only_unfinished_shards(tmp_path, caplog):
    failing = Runner(fail_on=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_sharded(IDS, TEXTS, tmp_path, 3, failing, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["shard_00000.parquet"]
    assert list(tmp_path.iterdir()) == [tmp_path / "shard_00000.parquet"]  # no temporary leftovers

    rerun = Runner()
    with caplog.at_level("INFO", logger="refusal_sae.generation"):
        df = generate_sharded(IDS, TEXTS, tmp_path, 3, rerun, progress=False)
    assert rerun.calls == [IDS[3:6], IDS[6:]]
    # The log names the reused shard (the end-to-end resume test in test_robustness.py reads it).
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'shard_00000.parquet'}: reusing the stored shard (3 prompts)"]
    pd.testing.assert_frame_equal(df, expected_frame())

    again = Runner()
    pd.testing.assert_frame_equal(generate_sharded(IDS, TEXTS, tmp_path, 3, again, progress=False), df)
    assert again.calls == []


def test_shard_with_other_prompts_or_settings_is_recomputed(tmp_path):
    generate_sharded(IDS, TEXTS, tmp_path, 3, Runner(), metadata={"max_new_tokens": 8}, progress=False)
    # Other prompts in shard 0 (e.g. a changed dataset): only that shard is redone.
    other_ids = ["x0", *IDS[1:]]
    runner = Runner()
    df = generate_sharded(other_ids, TEXTS, tmp_path, 3, runner, metadata={"max_new_tokens": 8},
                          progress=False)
    assert runner.calls == [other_ids[:3]]
    assert read_parquet(tmp_path / "shard_00000.parquet")["prompt_id"].iloc[0] == "x0"
    assert list(dict.fromkeys(df["prompt_id"])) == other_ids
    # Other settings: every shard is redone.
    runner = Runner()
    generate_sharded(other_ids, TEXTS, tmp_path, 3, runner, metadata={"max_new_tokens": 16},
                     progress=False)
    assert len(runner.calls) == 3


def test_sharded_run_rejects_wrong_shard_output_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        generate_sharded(["a", "a"], ["x", "y"], tmp_path, 1, Runner(), progress=False)

    def lossy(ids, prompts):
        return pd.DataFrame({"prompt_id": ids[:-1]})

    with pytest.raises(ValueError, match="wrong prompts"):
        generate_sharded(IDS, TEXTS, tmp_path, 3, lossy, progress=False)
    assert not list(tmp_path.glob("*.parquet"))


def test_holding_latents_without_edits_changes_nothing(tiny_chat, tiny_saes):
    """The doubled batch and the held splice are exact: held at their own values, nothing moves."""
    hold = HoldLatents(tiny_saes, {layer: torch.arange(0, 64, 3) for layer in tiny_saes})
    got, scores = generate_scored(tiny_chat, PROMPTS, [], max_new_tokens=4, batch_size=2, progress=False,
                                  hold=hold)
    assert got == greedy_generate(tiny_chat, PROMPTS, max_new_tokens=4)
    plain, _ = refusal_scores(tiny_chat, PROMPTS)
    assert torch.allclose(scores, plain, atol=1e-5)


def test_held_copy_is_fed_the_edited_rows_tokens(tiny_chat):
    """The unedited copy follows the clamped rows' tokens, so held values are read on the same text."""
    last = tiny_chat.facts.n_layers - 1
    tokens = self_predicting_tokens(tiny_chat, 2)
    sae = steering_sae(tiny_chat, tokens)
    clamp = FeatureEdit({last: sae}, {last: torch.tensor([0])}, mode="set", value=HUGE)
    hold = HoldLatents({last: sae}, {last: torch.tensor([1])})
    calls: list[torch.Tensor] = []
    handle = tiny_chat.model.get_input_embeddings().register_forward_pre_hook(lambda m, args: calls.append(args[0]))
    try:
        got, _ = generate_scored(tiny_chat, PROMPTS[:2], [clamp], max_new_tokens=4, batch_size=4,
                                 progress=False, hold=hold)  # 2 prompts and their copies per forward
    finally:
        handle.remove()
    assert got == [tiny_chat.tokenizer.decode(tokens[:1] * 4)] * 2
    steps = calls[1:]  # after the prefill, one token per row and step
    assert len(steps) == 3 and all(torch.equal(step[:2], step[2:]) for step in steps)
