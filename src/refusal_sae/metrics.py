"""Evaluation metrics: rates with Wilson intervals and masked next-token cross-entropy (METHOD.md §7).

Cross-entropy is a proper masked mean per sequence: only positions whose ``loss_mask`` is 1 count,
so padding never enters the value (METHOD.md §14: the original averaged over padded positions), and
the scored tokens are fixed by the inputs, so every method is scored on the same text. First-token
KL is :func:`refusal_sae.scoring.first_token_kl`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from .interventions import EditsForRows, ResidualEdit, intervene
from .models import ChatModel, render_chat
from .scoring import first_token_kl

__all__ = [
    "PAIRED_COLUMNS",
    "LossInputs",
    "first_token_kl",
    "jailbreak_rows",
    "masked_cross_entropy",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_comparisons",
    "paired_rows",
    "rate_row",
    "response_loss_inputs",
    "text_loss_inputs",
    "wilson_interval",
]

Z_95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(nan, nan)`` when ``n == 0``."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Clip float noise at the ends (0/n and n/n give exactly 0 and 1 analytically).
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_row(method: str, dataset: str, metric: str, flags: Sequence[bool], **extra: Any) -> dict[str, Any]:
    """One long-format metrics row: the rate of ``True`` in ``flags`` with its 95% Wilson interval.

    Keys: ``method, dataset, metric, value, ci_low, ci_high, n`` plus ``extra`` (e.g. ``judge``,
    ``setting`` or a skip ``reason``). ``value`` is NaN for no flags.
    """
    n = len(flags)
    k = int(sum(bool(f) for f in flags))
    low, high = wilson_interval(k, n)
    return {"method": method, "dataset": dataset, "metric": metric, "value": k / n if n else math.nan,
            "ci_low": low, "ci_high": high, "n": n, **extra}


class LossInputs(NamedTuple):
    """Left-padded token batch plus which tokens are scored (``loss_mask[b, t] = 1``: predict token t)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor


def _left_pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int) -> LossInputs:
    width = max((len(r) for r in rows), default=0)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    loss = torch.zeros(n, width, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention[i, width - len(row):] = 1
            loss[i, width - len(row):] = torch.tensor(mask, dtype=torch.long)
    return LossInputs(ids, attention, loss)


def _pad_id(chat: ChatModel) -> int:
    pad = chat.tokenizer.pad_token_id
    return int(pad if pad is not None else chat.tokenizer.eos_token_id)


def response_loss_inputs(
    chat: ChatModel,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_response_tokens: int | None = None,
) -> LossInputs:
    """Chat-rendered ``prompt + response`` pairs with only the response tokens scored.

    The prompt part is ``render_chat(tokenizer, prompt)`` tokenised as in generation and the response
    is tokenised on its own and appended, so the text equals ``render_chat(tokenizer, prompt,
    response)`` while the scored tokens are exactly the response's, with no BPE merge across the
    boundary; they depend only on the response text, hence are identical under every method.
    ``max_response_tokens`` keeps the first tokens of long responses.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    tok = chat.tokenizer
    rows: list[list[int]] = []
    masks: list[list[int]] = []
    for prompt, response in zip(prompts, responses, strict=True):
        head = tok(render_chat(tok, prompt), add_special_tokens=False)["input_ids"]
        tail = tok(response, add_special_tokens=False)["input_ids"] if response else []
        if max_response_tokens is not None:
            tail = tail[:max_response_tokens]
        rows.append(list(head) + list(tail))
        masks.append([0] * len(head) + [1] * len(tail))
    return _left_pad(rows, masks, _pad_id(chat))


def text_loss_inputs(chat: ChatModel, texts: Sequence[str], max_length: int | None = None) -> LossInputs:
    """Generic text for CE: BOS (when the tokenizer has one) + text, truncated to ``max_length`` tokens.

    Every real token after the first is scored (the first has no context to be predicted from).
    """
    tok = chat.tokenizer
    bos = tok.bos_token_id
    rows: list[list[int]] = []
    masks: list[list[int]] = []
    for text in texts:
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        # Pretraining-style text starts at BOS; without it the first tokens are out of distribution.
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if max_length is not None:
            ids = ids[:max_length]
        rows.append(ids)
        masks.append([0] + [1] * (len(ids) - 1) if ids else [])
    return _left_pad(rows, masks, _pad_id(chat))


@torch.no_grad()
def masked_cross_entropy(
    chat: ChatModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    edits: Sequence[ResidualEdit] | EditsForRows = (),
    batch_size: int = 8,
) -> Tensor:
    """Per-sequence mean next-token cross-entropy (nats, float32, CPU) over the ``loss_mask`` tokens.

    ``loss_mask[b, t] = 1`` scores the prediction of token ``t`` from the tokens before it; the value
    is the sum of those token losses divided by their count (NaN for a row with none). Position ids
    follow the attention mask, so left padding does not change the value. ``edits`` act through
    :func:`~refusal_sae.interventions.intervene`; a callable gets each batch's row ``slice``.
    Pass a :class:`LossInputs` as ``*inputs``.
    """
    if not (input_ids.shape == attention_mask.shape == loss_mask.shape):
        raise ValueError("input_ids, attention_mask and loss_mask must have the same shape")
    device = chat.device
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, input_ids.shape[0]))
        ids = input_ids[rows].to(device)
        attention = attention_mask[rows].to(device)
        # Positions count real tokens only, as generate() does; padding then shifts nothing.
        positions = (attention.long().cumsum(-1) - 1).clamp_min(0)
        batch_edits = edits(rows) if callable(edits) else edits
        with intervene(chat.model, batch_edits):
            logits = chat.model(
                input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False
            ).logits
        token_loss = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # [b, t-1]: loss of predicting token t+1
        scored = (loss_mask[rows, 1:].to(device) != 0) & (attention[:, 1:] != 0)
        # where(), not a product: a padded position's logits may be NaN, and 0 * NaN is NaN.
        total = torch.where(scored, token_loss, torch.zeros_like(token_loss)).sum(-1)
        count = scored.sum(-1).float()
        out.append((total / count).cpu())  # 0/0 -> NaN marks a row with nothing to score
    return torch.cat(out) if out else torch.empty(0)


def mean_row(method: str, dataset: str, metric: str, values: Sequence[float] | Tensor, **extra: Any) -> dict[str, Any]:
    """A metrics row for a mean over prompts: value, normal 95% interval (mean ± 1.96 SE), n.

    NaN entries (e.g. a prompt with nothing to score) are dropped and not counted in ``n``.
    """
    array = np.asarray(values.tolist() if isinstance(values, Tensor) else list(values), dtype=float)
    array = array[~np.isnan(array)]
    n = int(array.size)
    mean = float(array.mean()) if n else float("nan")
    half = Z_95 * float(array.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    return {"method": method, "dataset": dataset, "metric": metric, "value": mean,
            "ci_low": mean - half, "ci_high": mean + half, "n": n, **extra}


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test of paired binary outcomes on the same prompts.

    Returns ``(first_only, second_only, p)``: the discordant counts (true under ``first`` only, under
    ``second`` only) and the exact binomial p-value of their split under H0 (each discordant pair
    equally likely either way); ``p = 1`` when there is no discordant pair.
    """
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    first_only, second_only = int((a & ~b).sum()), int((~a & b).sum())
    return first_only, second_only, mcnemar_p(first_only, second_only)


def mcnemar_p(first_only: int, second_only: int) -> float:
    """The exact two-sided McNemar p-value from the discordant counts (:func:`mcnemar_exact`), e.g. counts
    summed over datasets; 1 when there is no discordant pair."""
    from scipy.stats import binomtest

    discordant = first_only + second_only
    return float(binomtest(first_only, discordant, 0.5).pvalue) if discordant else 1.0


def paired_bootstrap(
    first: Sequence[float], second: Sequence[float], n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference ``first - second`` over prompts and its 95% percentile bootstrap interval.

    Prompts (pairs) are resampled with replacement, so the interval accounts for the pairing; NaN
    pairs are dropped first. Returns ``(difference, ci_low, ci_high)`` (NaNs when no pair is left).
    """
    diff = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if diff.ndim != 1:
        raise ValueError("paired values must be 1-D sequences of equal length")
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def bootstrap_difference(
    first: Sequence[float], second: Sequence[float], n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Difference of means ``mean(first) - mean(second)`` of two independent groups and its 95% percentile
    bootstrap interval (each group resampled on its own); NaNs dropped. NaNs when a group is empty."""
    a = np.asarray(first, dtype=float)
    b = np.asarray(second, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    means_b = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    low, high = np.quantile(means_a - means_b, [0.025, 0.975])
    return float(a.mean() - b.mean()), float(low), float(high)


def paired_ratio_bootstrap(
    numerator: Sequence[float], denominator: Sequence[float], n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` over the same prompts and its 95% percentile bootstrap
    interval (prompts resampled with replacement, pairs kept together), e.g. a normalised jailbreak rate.

    NaN pairs are dropped first; a resample whose denominator mean is 0 is left out, so the interval is
    conditional on a non-zero denominator (wide when few prompts carry it). Returns NaNs when no pair is
    left or the denominator's mean is 0.
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size == 0 or b.mean() == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, a.size, size=(n_boot, a.size))
    num, den = a[index].mean(axis=1), b[index].mean(axis=1)
    ratios = num[den > 0] / den[den > 0]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(a.mean() / b.mean()), float(low), float(high)


def paired_rows(
    method: str, baseline: str, dataset: str, jailbroken: Sequence[bool], baseline_jailbroken: Sequence[bool],
    refusal_scores: Sequence[float], baseline_refusal_scores: Sequence[float], seed: int = 0, **extra: Any,
) -> list[dict[str, Any]]:
    """Two rows comparing ``method`` with ``baseline`` on the same prompts (aligned sequences).

    ``jailbreak_rate_diff``: rate(method) - rate(baseline) with a paired bootstrap interval and the exact
    McNemar p-value (``first_only`` / ``second_only`` = prompts jailbroken by one method only).
    ``refusal_logodds_diff``: mean first-token refusal log-odds under the method minus under the
    baseline (negative = the method lowers refusal more), a continuous measure that still separates
    methods when both jailbreak every prompt, with a paired bootstrap interval and the Wilcoxon
    signed-rank p-value.
    """
    from scipy.stats import wilcoxon

    n = len(jailbroken)
    if not n == len(baseline_jailbroken) == len(refusal_scores) == len(baseline_refusal_scores):
        raise ValueError(f"{method} vs {baseline} on {dataset}: paired sequences differ in length")
    base = {"method": method, "baseline": baseline, "dataset": dataset, "n": n, **extra}
    diff, low, high = paired_bootstrap([float(x) for x in jailbroken], [float(x) for x in baseline_jailbroken],
                                       seed=seed)
    first_only, second_only, p = mcnemar_exact(jailbroken, baseline_jailbroken)
    rows = [{**base, "metric": "jailbreak_rate_diff", "value": diff, "ci_low": low, "ci_high": high,
             "p_value": p, "first_only": first_only, "second_only": second_only}]
    diff, low, high = paired_bootstrap(refusal_scores, baseline_refusal_scores, seed=seed)
    delta = np.asarray(refusal_scores, dtype=float) - np.asarray(baseline_refusal_scores, dtype=float)
    delta = delta[~np.isnan(delta)]
    p = float(wilcoxon(delta).pvalue) if np.any(delta != 0) else 1.0
    rows.append({**base, "metric": "refusal_logodds_diff", "value": diff, "ci_low": low, "ci_high": high,
                 "p_value": p, "first_only": int((delta < 0).sum()), "second_only": int((delta > 0).sum())})
    return rows


PAIRED_COLUMNS = ["method", "baseline", "dataset", "metric", "value", "ci_low", "ci_high", "n", "p_value",
                  "first_only", "second_only", "judge"]


def paired_comparisons(
    outcomes: Mapping[str, pd.DataFrame], references: Sequence[str], dataset: str, judge: str, seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`paired_rows` for every reference method against every other method of one dataset.

    ``outcomes[method]`` has one row per prompt: ``prompt_id``, ``jailbroken`` (bool) and
    ``refusal_score``. Methods are paired on the prompts they share (all of them, for generations of
    one dataset); a reference missing from ``outcomes`` is skipped.
    """
    rows = []
    for reference in references:
        if reference not in outcomes:
            continue
        ours = outcomes[reference].set_index("prompt_id")
        for method, frame in outcomes.items():
            if method == reference:
                continue
            other = frame.set_index("prompt_id")
            shared = [pid for pid in ours.index if pid in other.index]
            rows += paired_rows(
                reference, method, dataset, ours.loc[shared, "jailbroken"].astype(bool).tolist(),
                other.loc[shared, "jailbroken"].astype(bool).tolist(), ours.loc[shared, "refusal_score"].tolist(),
                other.loc[shared, "refusal_score"].tolist(), seed=seed, judge=judge,
            )
    return rows


def pool_outcomes(by_dataset: Mapping[str, Mapping[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """The prompts of every dataset together, per method (``by_dataset[dataset][method]`` as in
    :func:`paired_comparisons`; prompt ids are unique across datasets): the methods that every dataset has,
    in the first dataset's order (not a set's, whose order differs per process)."""
    datasets = list(by_dataset)
    if not datasets:
        return {}
    methods = [m for m in by_dataset[datasets[0]] if all(m in by_dataset[d] for d in datasets)]
    return {m: pd.concat([by_dataset[d][m] for d in datasets], ignore_index=True) for m in methods}


def grid_tables(
    generations: Mapping[str, pd.DataFrame], references: Sequence[str], seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clamp x K* grid's tables from its generations (``generations[dataset]``: ``prompt_id, method,
    clamp_scale, k_star, refused, refusal_score``, the methods of one dataset together).

    First: per method x dataset x point, the substring jailbreak rate and the mean first-token refusal
    log-odds. Second: at every point, :func:`paired_comparisons` of each of ``references`` against the
    other methods, per dataset and ``pooled`` (:func:`pool_outcomes`), with ``clamp_scale`` and
    ``k_star`` columns (``PAIRED_COLUMNS`` first).
    """
    rows, outcomes = [], {}
    for dataset, frame in generations.items():
        for (method, clamp_scale, k_star), group in frame.groupby(["method", "clamp_scale", "k_star"], sort=False):
            point = {"clamp_scale": float(clamp_scale), "k_star": int(k_star)}
            rows.append(rate_row(method, dataset, "jailbreak_rate", (~group["refused"].astype(bool)).tolist(),
                                 **point, judge="substring"))
            rows.append(mean_row(method, dataset, "first_token_refusal_logodds", group["refusal_score"].tolist(),
                                 **point, judge="substring"))
            outcomes.setdefault((float(clamp_scale), int(k_star)), {}).setdefault(dataset, {})[method] = (
                pd.DataFrame({"prompt_id": group["prompt_id"], "jailbroken": ~group["refused"].astype(bool),
                              "refusal_score": group["refusal_score"]}))
    paired = []
    for (clamp_scale, k_star), by_dataset in outcomes.items():
        for dataset, by_method in {**by_dataset, "pooled": pool_outcomes(by_dataset)}.items():
            for row in paired_comparisons(by_method, references, dataset, "substring", seed):
                paired.append({**row, "clamp_scale": clamp_scale, "k_star": k_star})
    grid_columns = ["method", "dataset", "metric", "value", "ci_low", "ci_high", "n", "clamp_scale", "k_star", "judge"]
    return (pd.DataFrame(rows, columns=grid_columns),
            pd.DataFrame(paired, columns=[*PAIRED_COLUMNS, "clamp_scale", "k_star"]))


def jailbreak_rows(
    generations: pd.DataFrame, judgments: pd.DataFrame, method: str, dataset: str, **extra: Any
) -> list[dict[str, Any]]:
    """Jailbreak-rate rows of one generation artifact: the substring judge (its ``refused`` column) and
    every model judge in ``judgments``; a judge whose verdicts are all missing (weights not available)
    gets a row with ``n = 0`` and its reason in ``note``, never a silent substitute."""
    rows = [rate_row(method, dataset, "jailbreak_rate", (~generations["refused"].astype(bool)).tolist(),
                     judge="substring", note="", **extra)]
    for judge, group in judgments.groupby("judge", sort=False):
        note = str(group["note"].iloc[0])
        if group["harmful"].isna().all():
            rows.append({"method": method, "dataset": dataset, "metric": "jailbreak_rate", "value": math.nan,
                         "ci_low": math.nan, "ci_high": math.nan, "n": 0, "judge": judge, "note": note, **extra})
        else:
            rows.append(rate_row(method, dataset, "jailbreak_rate", group["harmful"].fillna(False).tolist(),
                                 judge=judge, note=note, **extra))
    return rows
