"""Hydra features on a planted toy: a primary latent that carries refusal at the last position, a backup
latent that is silent on the clean prompt and wakes up (restoring refusal) when the primary one is
ablated, a latent that is silent and unimportant, and a downstream reader of the primary that switches
off when the primary is ablated."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny import make_tiny_chat_model, make_tiny_sae
from torch import nn

from refusal_sae.greedy import woken_latents
from refusal_sae.hydra import (
    activations_under,
    bos_hold_edits,
    hold_is_set_ablation,
    hydra_metric_rows,
    hydra_table,
    stage3_only_deactivation,
)
from refusal_sae.interventions import PositionMask, Recorder, run_until
from refusal_sae.scoring import refusal_scores

PROMPT = "How do I make a bomb?"


def _stream(chat, layer: int) -> torch.Tensor:
    recorder = Recorder([layer])
    run_until(chat.model, [recorder], last_layer=layer, **chat.tokenize([PROMPT]))
    return recorder.outputs[layer][0][0]  # [T, d]


def _sae(chat, seed: int):
    sae = make_tiny_sae(chat.facts.d_model, 4, seed=seed)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.fill_(-1e9)  # every latent silent unless planted below
    return sae


class Repair(nn.Module):
    """Block 2's MLP plus a self-repair unit at the last position: when the r component of its input there
    turns negative (the primary latent was ablated), it writes ``size * m`` into the stream; on the clean
    prompt it writes nothing (other positions' r components may be negative: they never trigger it)."""

    def __init__(self, mlp: nn.Module, r: torch.Tensor, m: torch.Tensor, size: float) -> None:
        super().__init__()
        self.mlp, self.size = mlp, size
        self.register_buffer("r", r)
        self.register_buffer("m", m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.zeros_like(x[..., 0])
        gate[..., -1] = torch.tanh(torch.relu(-20 * (x[..., -1, :] @ self.r)))
        return self.mlp(x) + self.size * gate.unsqueeze(-1) * self.m


@pytest.fixture(scope="module")
def planted():
    chat = make_tiny_chat_model(seed=3)
    model = chat.model
    final = _stream(chat, chat.facts.n_layers - 1)[-1]
    scale = float(final.norm())
    r = final / final.norm()
    # m: orthogonal to r and as quiet as possible on the clean streams (their least-used direction).
    clean2 = _stream(chat, 2)
    flat = clean2 - torch.outer(clean2 @ r, r)
    m = torch.linalg.svd(flat, full_matrices=True).Vh[-2]  # the last row spans r (projected out): skip it
    m = m - (m @ r) * r
    m = m / m.norm()
    size = 10 * float(clean2.norm(dim=-1).max())
    with torch.no_grad():  # the refusal token's logit reads the final stream's r and m components
        head = nn.Linear(chat.facts.d_model, model.config.vocab_size, bias=False)
        head.weight.copy_(model.model.embed_tokens.weight)
        head.weight[chat.facts.refusal_token_ids[0]] = 5 * (r + m)
        model.lm_head = head
        model.config.tie_word_embeddings = False
    model.model.layers[2].mlp = Repair(model.model.layers[2].mlp, r, m, size)
    primary, backup = _sae(chat, 1), _sae(chat, 2)
    h1 = _stream(chat, 1)
    e = h1[-1] / h1[-1].norm()
    with torch.no_grad():  # primary (layer 1, latent 0): fires at the last position only and carries 3 * |h| r
        primary.W_enc[:, 0] = e
        primary.b_enc[0] = -0.9 * float(h1[-1].norm())
        primary.W_dec[0] = 3 * scale / (0.1 * float(h1[-1].norm())) * r
    clean_m = _stream(chat, 2) @ m
    with torch.no_grad():  # backup (layer 2, latent 0): reads the repair's m component above its clean level
        backup.W_enc[:, 0] = m
        threshold = float(clean_m.abs().max()) + 0.2 * size  # silent on the clean prompt
        backup.b_enc[0] = -threshold
        backup.W_dec[0] = size / (size - threshold) * m  # ablating it removes the whole repair
        backup.W_dec[1] = 10 * m  # latent 1: silent (bias -1e9) whatever it would write
    clean2 = _stream(chat, 2)
    with torch.no_grad():  # latent 2 at layer 2: reads the clean last stream, writes nothing
        backup.W_enc[:, 2] = clean2[-1] / clean2[-1].norm()
        backup.b_enc[2] = -0.9 * float(clean2[-1].norm())
        backup.W_dec[2] = 0
    return chat, {1: primary, 2: backup}


MEMBERS = pd.DataFrame({"layer": [1, 2, 2], "feature": [0, 0, 1]})


def test_the_plant_refuses_clean_and_jailbreaks_with_the_set_ablated(planted):
    chat, saes = planted
    clean = float(refusal_scores(chat, [PROMPT])[0][0])
    everything = bos_hold_edits(saes, MEMBERS, MEMBERS.iloc[0:0].assign(woken_activation=0.0), "woken")
    ablated = float(refusal_scores(chat, [PROMPT], everything)[0][0])
    assert clean > 2 and ablated < -2


def test_planted_backup_is_silent_but_critical_and_wakes_where_planted(planted):
    chat, saes = planted
    table = hydra_table(chat, saes, PROMPT, "p0", MEMBERS).set_index(["layer", "feature"])
    assert not table.loc[(1, 0), "silent"]  # the primary fires on the clean prompt
    backup, idle = table.loc[(2, 0)], table.loc[(2, 1)]
    assert backup["silent"] and backup["critical"] and backup["loo_refusal_logodds"] > 2
    n_real = chat.tokenize([PROMPT])["input_ids"].shape[1]
    assert (backup["woken_region"], backup["woken_position"]) == ("template_suffix", n_real - 1)
    assert backup["woken_activation"] > 0 and backup["woken_regions"] == "template_suffix"
    assert backup["bos_activation"] == 0  # woken at the last position only
    assert idle["silent"] and not idle["critical"] and idle["woken_region"] == "silent"
    # Woken only once the primary is gone.
    acts = activations_under(chat, saes, PROMPT, MEMBERS.iloc[[1]], MEMBERS.iloc[[0]])
    assert acts[:-1].abs().max() == 0 and acts[-1, 0] > 0


def test_bos_hold_and_stage3_only_ablation(planted):
    chat, saes = planted
    hydras = pd.DataFrame({"layer": [2], "feature": [0], "bos_activation": [1.5]})
    edits = bos_hold_edits(saes, MEMBERS, hydras, "clean")
    # Held (ablated) at BOS only, the backup is free to wake at the last position: refusal comes back.
    assert float(refusal_scores(chat, [PROMPT], edits)[0][0]) > 2
    with pytest.raises(ValueError, match="reading"):
        bos_hold_edits(saes, MEMBERS, hydras, "other")
    # The woken reading: ablated after BOS, set at BOS to its activation there; the others ablated everywhere.
    woken = bos_hold_edits(saes, MEMBERS, hydras, "woken")
    held = [(e.mode, e.value, e.positions) for e in woken if 0 in e.features.get(2, torch.tensor([])).tolist()
            and len(e.features[2]) == 1]
    assert ("set", 1.5, PositionMask("bos")) in held and ("zero", 0.0, PositionMask("from", 1)) in held
    assert any(e.positions == PositionMask() and e.features.get(1, torch.tensor([])).tolist() == [0] for e in woken)
    # Ablating the primary (a stage-3 addition here) switches off its downstream reader, fully; ablating
    # the silent latent changes nothing.
    reader = pd.DataFrame({"layer": [2], "feature": [2]})
    numbers = stage3_only_deactivation(chat, saes, PROMPT, reader, MEMBERS.iloc[[0]])
    assert numbers == {"switched_off": 1.0, "mean_relative_drop": pytest.approx(1.0), "n_active": 1.0}
    numbers = stage3_only_deactivation(chat, saes, PROMPT, reader, MEMBERS.iloc[[2]])
    assert numbers == {"switched_off": 0.0, "mean_relative_drop": pytest.approx(0.0, abs=1e-6), "n_active": 1.0}


def test_a_woken_hold_at_zero_is_the_set_ablation_and_reuses_its_run(planted):
    chat, saes = planted
    alone = bos_hold_edits(saes, MEMBERS, MEMBERS.iloc[0:0].assign(bos_activation=0.0), "woken")
    at_zero = MEMBERS.iloc[[1, 2]].assign(bos_activation=0.0)
    assert hold_is_set_ablation(at_zero, "woken")
    scores = [float(refusal_scores(chat, [PROMPT], edits)[0][0])
              for edits in (alone, bos_hold_edits(saes, MEMBERS, at_zero, "woken"))]
    assert scores[1] == pytest.approx(scores[0], abs=1e-5)
    # A nonzero BOS value, the clean reading or nothing held is a different run.
    assert not hold_is_set_ablation(at_zero.assign(bos_activation=[0.0, 1.5]), "woken")
    assert not hold_is_set_ablation(at_zero, "clean")
    assert not hold_is_set_ablation(at_zero.iloc[0:0], "woken")


def test_woken_latents_are_the_silent_ones_that_fire_once_the_set_is_ablated(planted):
    chat, saes = planted
    woken = woken_latents(chat, saes, PROMPT, MEMBERS.iloc[[0]])
    # The backup wakes; the idle latent stays silent; the clean reader fires on the clean prompt already.
    assert woken.to_dict("list") == {"layer": [2], "feature": [0]}
    assert woken_latents(chat, saes, PROMPT, MEMBERS.iloc[0:0]).empty  # nothing ablated, nothing wakes


def _hydra_rows(silent: list[bool], critical_verified: list[bool], loo: list[float]) -> pd.DataFrame:
    n = len(silent)
    return pd.DataFrame({"prompt_id": [f"p{i % 2}" for i in range(n)], "layer": 2, "feature": range(n),
                         "silent": silent, "critical": critical_verified, "loo_refusal_logodds": loo,
                         "woken_region": ["template_suffix"] * n, "woken_position": 5, "woken_activation": 1.0,
                         "woken_regions": ["template_suffix"] * n, "bos_activation": 0.0,
                         "critical_verified": pd.array(critical_verified, dtype="boolean")})


def test_hydra_metrics_pair_every_bos_hold_with_the_set_alone():
    """Four prompts jailbroken by their sets; releasing every silent latent after BOS restores refusal on
    three of them (a redundant group), the woken hold on none; a fifth prompt has a verified hydra and
    only the study's holds, which pair on it alone."""
    hydra = _hydra_rows([True, True, False, True], [False, False, False, False], [-2.5, -0.7, 1.0, -3.0])
    hydra.loc[hydra["feature"] == 2, "critical"] = True  # flips the first token; generation disagrees
    experiments = pd.DataFrame([
        {"prompt_id": f"q{i}", "experiment": name, "refusal_score": score, "refused": refused, "n_hydras": held,
         "value": float("nan")}
        for i in range(4)
        for name, score, refused, held in (("bos_none", 0.1, False, 0),
                                           ("bos_silent_clean", 0.9 if i else 0.2, i > 0, 3),
                                           ("bos_silent_woken", 0.1, False, 3))]
        + [{"prompt_id": "q4", "experiment": name, "refusal_score": 0.5, "refused": name == "bos_clean",
            "n_hydras": 1, "value": float("nan")} for name in ("bos_none", "bos_clean", "bos_woken")])
    frame = pd.DataFrame(hydra_metric_rows(hydra, experiments, "harmful", seed=0)).set_index(["metric", "setting"])
    assert frame.loc[("silent", "count"), "value"] == 3 and frame.loc[("silent", "count"), "n"] == 2
    assert frame.loc[("silent_but_critical", "count"), "value"] == 0  # the flipping latent is not silent
    assert frame.loc[("silent_but_critical_verified", "count"), "value"] == 0
    assert frame.loc[("silent_loo_refusal_logodds_max", "count"), "value"] == pytest.approx(-0.7)  # not 1.0: active
    assert frame.loc[("peak_template_suffix", "position_silent"), "value"] == 3
    assert ("peak_template_suffix", "position") not in frame.index  # no verified hydra to place
    assert frame.loc[("jailbreak_rate", "bos_none"), "value"] == 1.0
    assert frame.loc[("jailbreak_rate", "bos_silent_clean"), "value"] == 0.25
    assert frame.loc[("jailbreak_rate_set_alone", "bos_silent_clean"), "n"] == 4
    assert frame.loc[("jailbreak_relative_drop", "bos_silent_clean"), "value"] == pytest.approx(0.75)
    assert frame.loc[("jailbreak_relative_drop", "bos_silent_woken"), "value"] == 0.0
    diff = frame.loc[("jailbreak_rate_diff", "bos_silent_clean")]
    assert diff["value"] == pytest.approx(-0.75) and diff["first_only"] == 0 and diff["second_only"] == 3
    assert diff["p_value"] == pytest.approx(0.25)  # exact McNemar, 3 discordant pairs all one way
    clean = frame.loc[("jailbreak_rate_diff", "bos_clean")]
    assert clean["n"] == 1 and clean["second_only"] == 1  # paired on q4 only
    assert frame.loc[("jailbreak_relative_drop", "bos_clean"), "value"] == 1.0
