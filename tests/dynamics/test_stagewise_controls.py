"""Library pieces of the stagewise controls: curriculum, class loss weights, shift statistics,
intervention agreement, verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.class_weights import ClassLossWeights
from bifrepro.dynamics.repeated_tokens import RandomRepeats
from bifrepro.dynamics.stage_shift import (
    combine_sampler_seeds,
    largest_change,
    level_crossing,
    paired_shift,
    sign_agreement,
)
from bifrepro.dynamics.stagewise_controls import (
    RunData,
    analyse_run,
    intervention_agreement,
    shift_verdict,
    stage_change_summary,
)
from bifrepro.models.lm import CausalLMConfig, LMTrainConfig, build_small_lm, lm_batch_loss
from bifrepro.training.lm import train_causal_lm, weighted_lm_batch_loss
from tests.models._lm import TINY, lm_sequences, one_thread  # noqa: F401 - autouse


def _repeats(start: int) -> RandomRepeats:
    return RandomRepeats(torch.arange(10, 30), 1.0, bos_id=1, pad_id=0, seed=3, start_step=start)


def test_curriculum_withholds_repeats_before_its_start_step() -> None:
    ids = torch.full((6, 20), 5)
    mask = torch.ones_like(ids)
    late = _repeats(start=7)
    for step in (0, 3, 6):  # before the start: the corpus batch untouched
        out, m = late(step, ids, mask)
        assert torch.equal(out, ids) and torch.equal(m, mask)
    out, _ = late(7, ids, mask)  # from the start on: every row replaced (fraction 1)
    assert (out[:, 0] == 1).all() and not (out == 5).any()
    # from the start step the batches are the ones of the arm without a curriculum
    assert torch.equal(out, _repeats(start=0)(7, ids, mask)[0])


def test_curriculum_keeps_old_cache_keys() -> None:
    assert "start_step" not in _repeats(0).settings()
    assert _repeats(1000).settings()["start_step"] == 1000
    with pytest.raises(ValueError, match="start_step"):
        _repeats(-1)


def test_weighted_loss_removing_tokens_equals_masking_them() -> None:
    ids, mask = lm_sequences(n=6, t=8)
    model = build_small_lm(CausalLMConfig(**TINY), vocab_size=20, seed=0)
    ones = torch.ones(ids.shape[0], ids.shape[1] - 1)
    with torch.no_grad():
        assert float(weighted_lm_batch_loss(model, ids, mask, ones)) == pytest.approx(
            float(lm_batch_loss(model, ids, mask)), rel=1e-6
        )
    drop = (ids[:, 1:] % 3) == 0  # a "class": the targets divisible by 3
    w = torch.where(drop, 0.0, 1.0)

    def grad(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g_weighted = grad(weighted_lm_batch_loss(model, ids, mask, w))
    # the same tokens left out of the plain loss (as targets; the context is unchanged)
    target = ids[:, 1:].masked_fill((mask[:, 1:] == 0) | drop, -100)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    without = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    g_without = grad(without)
    assert torch.allclose(g_weighted, g_without, atol=1e-6)
    g_plain = grad(lm_batch_loss(model, ids, mask))
    assert not torch.allclose(g_weighted, g_plain, atol=1e-4)
    # upweighting x3 = the loss with those tokens counted three times
    w3 = torch.where(drop, 3.0, 1.0)
    valid = mask[:, 1:].bool()
    expected = float(weighted_lm_batch_loss(model, ids, mask, ones)) * 0  # placeholder
    del expected
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    per = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
    ).view(ids.shape[0], -1)
    manual = (per * w3 * valid).sum() / (w3 * valid).sum()
    assert float(weighted_lm_batch_loss(model, ids, mask, w3)) == pytest.approx(float(manual))
    with pytest.raises(ValueError, match=">= 0"):
        weighted_lm_batch_loss(model, ids, mask, -ones)


def test_training_with_unit_weights_matches_plain_training_and_removal_differs() -> None:
    ids, mask = lm_sequences()
    cfg = LMTrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=1)

    def trained(weights):
        model = build_small_lm(CausalLMConfig(**TINY), vocab_size=20, seed=1)
        train_causal_lm(model, ids, mask, cfg, token_weights=weights)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = trained(None)
    assert torch.allclose(trained(lambda i, m: torch.ones(i.shape[0], i.shape[1] - 1)), plain, atol=1e-6)  # fmt: skip
    removed = trained(lambda i, m: (i[:, 1:] % 3 != 0).float())
    assert not torch.allclose(removed, plain, atol=1e-4)


class _FixedClasses:
    """A classifier stand-in: class = token id modulo the number of classes (position 0 ignored)."""

    def classify(self, ids, mask=None):
        out = ids % len(TOKEN_CLASSES)
        out[:, 0] = -1
        return out


def test_class_loss_weights_mark_exactly_the_class() -> None:
    ids = torch.tensor([[0, 1, 2, 7, 12, 4]])
    w = ClassLossWeights(_FixedClasses(), "induction", 3.0)(ids, None)  # induction = class 2
    assert w.tolist() == [[1.0, 3.0, 3.0, 3.0, 1.0]]
    with pytest.raises(ValueError):
        ClassLossWeights(_FixedClasses(), "nope", 3.0)


def test_paired_shift_recovers_a_known_shift() -> None:
    rng = np.random.default_rng(0)
    early = np.array([500.0, 620.0, 560.0, 580.0])
    late = early + 800 + rng.normal(0, 20, 4)
    sh = paired_shift(early, late)
    assert sh.t_low < 800 < sh.t_high and sh.boot_low < 800 < sh.boot_high
    assert sh.excludes_zero and sh.n == 4
    none = paired_shift(early, early + rng.normal(0, 20, 4))
    assert not none.excludes_zero and none.t_low < 0 < none.t_high
    assert paired_shift([1.0, np.nan], [2.0, 3.0]).n == 1  # NaN pairs dropped, no interval


def test_largest_change_finds_the_step_and_its_standard_error() -> None:
    steps = [100, 200, 300, 400, 500]
    mean = np.zeros((5, 2, 2))
    mean[3:, 1, 0] = 0.5  # a jump between steps 300 and 400 of pair (1, 0)
    mean[1:, 0, 0] = 0.1
    se = np.full_like(mean, 0.03)
    ch = largest_change(steps, mean, se)
    assert ch.step == 350 and ch.interval == (300, 400) and ch.pair == (1, 0)
    assert ch.change == pytest.approx(0.5) and ch.std_error == pytest.approx(0.03 * np.sqrt(2))
    only = largest_change(steps, mean, se, pairs=[(0, 0)])
    assert only.step == 150
    m, s = combine_sampler_seeds(np.stack([mean, mean + 0.2]), np.stack([se, se]))
    # seeds disagree by 0.2: the spread between them (sd / sqrt(2) = 0.1) exceeds the within-seed
    # standard error (sqrt(2 * 0.03^2) / 2 = 0.021)
    assert np.allclose(m, mean + 0.1) and np.allclose(s, 0.1)
    _, s_same = combine_sampler_seeds(np.stack([mean, mean]), np.stack([se, se]))
    assert np.allclose(s_same, np.sqrt(2 * 0.03**2) / 2)


def test_sign_agreement_counts_and_interval() -> None:
    a = sign_agreement([1, -1, 1, 1, 0], [2, -3, -1, 5, 4])  # zero prediction left out
    assert a["n"] == 4 and a["agreement"] == 0.75 and a["low"] < 0.75 < a["high"]


def _effects(seed: int) -> pd.DataFrame:
    rows = [{"seed": seed, "condition": "control", "delta_induction": 0.0}
            | {f"delta_loss_{c}": 0.0 for c in TOKEN_CLASSES}]  # fmt: skip
    for c in TOKEN_CLASSES:  # upweighting c lowers its own loss, raises the others
        rows.append({"seed": seed, "condition": c, "delta_induction": -0.1}
                    | {f"delta_loss_{q}": (-0.2 if q == c else 0.1) for q in TOKEN_CLASSES})  # fmt: skip
    return pd.DataFrame(rows)


def test_intervention_agreement_known_signs() -> None:
    k = len(TOKEN_CLASSES)
    bif = np.where(np.eye(k, dtype=bool), 0.3, -0.1)  # helpful to itself, harmful to the others
    effects = pd.concat([_effects(0), _effects(1)], ignore_index=True)
    table, s = intervention_agreement(effects, {0: {"correlation": bif}, 1: {"correlation": bif}}, 3.0, 0.95)  # fmt: skip
    assert len(table) == 2 * k * k
    assert s["intervention/correlation/own_class/agreement"] == 1.0
    assert s["intervention/correlation/all_pairs/agreement"] == 1.0
    # induction score: -0.1 everywhere; predicted + only when induction is reweighted
    assert s["intervention/correlation/induction_score/agreement"] == pytest.approx(0.8)
    # removal (factor 0) predicts the opposite signs: every comparison disagrees
    _, s0 = intervention_agreement(effects, {0: {"correlation": bif}, 1: {"correlation": bif}}, 0.0, 0.95)  # fmt: skip
    assert s0["intervention/correlation/all_pairs/agreement"] == 0.0


def test_shift_verdict() -> None:
    def table(c_mean: float, c_low: float, c_high: float) -> pd.DataFrame:
        return pd.DataFrame([
            {"quantity": "transition_step", "mean": 600.0, "t_low": 500.0, "t_high": 700.0, "excludes_zero": True},
            {"quantity": "influence_change_step", "mean": c_mean, "t_low": c_low, "t_high": c_high,
             "excludes_zero": c_low > 0 or c_high < 0},
        ])  # fmt: skip

    assert shift_verdict(table(550, 300, 800))["holds"]
    assert shift_verdict(table(50, -200, 300))["text"] == "does not hold"
    assert not shift_verdict(table(200, 100, 300))["holds"]  # moved, but not with the transition


def test_level_crossing_ignores_an_earlier_dip() -> None:
    steps = [100, 200, 300, 400, 500]
    assert level_crossing(steps, [-0.5, -0.6, 0.05, 0.1, 0.3], 0.15) == pytest.approx(425)
    assert level_crossing(steps, [0.2, 0.3, 0.4, 0.5, 0.6], 0.15) == 100
    assert np.isnan(level_crossing(steps, [0.0, 0.1, 0.1, 0.1, 0.1], 0.15))


def test_stagewise_data_curriculum_option_keys_the_data() -> None:
    """``repeat_start_step`` reaches the batch transform and the data key; 0 is the old data."""
    from types import SimpleNamespace

    from bifrepro.data.text import TextCorpusConfig, build_corpus
    from bifrepro.data.tokenizer import train_bpe_tokenizer
    from bifrepro.dynamics.stagewise_data import build_stagewise_data

    corpus = build_corpus(
        TextCorpusConfig(num_documents=20, num_queries=6, max_natural_sentences=4)
    )
    tok = train_bpe_tokenizer(corpus.all_texts(), 300)
    base = dict(
        seq_len=20, repeat_fraction=0.5, query_repeat_fraction=0.5, num_observed=4,
        num_observed_synthetic=2, num_query=2, induction_sequences=2, induction_half_len=4,
        induction_vocab=20, token_priority=list(TOKEN_CLASSES),
    )  # fmt: skip
    old = build_stagewise_data(corpus, tok, "tok", SimpleNamespace(**base), seed=0)
    zero = build_stagewise_data(corpus, tok, "tok", SimpleNamespace(**base, repeat_start_step=0), 0)
    late = build_stagewise_data(
        corpus, tok, "tok", SimpleNamespace(**base, repeat_start_step=50), 0
    )
    assert zero.data_key == old.data_key and late.data_key != old.data_key
    assert late.augment.start_step == 50 and old.augment.start_step == 0
    batch = old.corpus_ids[:8]
    assert torch.equal(late.augment(49, batch, None)[0], batch)
    assert not torch.equal(late.augment(50, batch, None)[0], batch)


def _run_data(arm: str, seed: int, level_by_step: dict[int, float], cross: float) -> RunData:
    """A run whose class matrices are constant ``level_by_step[step]`` and whose induction score
    crosses 0.15 nats at ``cross``."""
    k = len(TOKEN_CLASSES)
    steps = list(level_by_step)
    scan = list(range(100, 2001, 100))
    scores = [0.3 / (1 + np.exp(-(s - cross) / 50)) for s in scan]

    def result(v: float) -> dict:
        m = torch.full((k, k), v, dtype=torch.float64)
        se = torch.full((k, k), 1e-3, dtype=torch.float64)
        cls = {"mean": m, "std_error": se}
        return {f"class_{e}": cls for e in ("correlation", "covariance", "partial")} | {
            "healthy": True
        }

    results = [[result(level_by_step[s] + 1e-4 * ss) for s in steps] for ss in range(2)]
    return RunData(arm, seed, scan, scores, steps, results)


def test_analyse_run_measures_the_change_across_the_transition_against_the_interval_before() -> (
    None
):
    levels = {300: 0.0, 700: 0.01, 1100: 0.11, 1500: 0.12}
    an = analyse_run(_run_data("early", 0, levels, cross=850.0), "correlation", 0.15, 0.05)
    row = an.row
    assert 800 < row["transition_step"] < 900
    assert row["change_across_transition"] == pytest.approx(0.10, abs=1e-9)  # 700 -> 1100
    assert row["change_before_transition"] == pytest.approx(0.01, abs=1e-9)  # 300 -> 700
    assert row["change_ratio_across_over_before"] == pytest.approx(10.0, rel=1e-6)
    # a transition in the first interval has no interval before it
    early = analyse_run(_run_data("early", 0, levels, cross=500.0), "correlation", 0.15, 0.05)
    assert np.isnan(early.row["change_before_transition"])


def test_stage_change_summary_pairs_seeds_and_tells_larger_from_noise() -> None:
    rows = pd.DataFrame(
        {
            "arm": ["early"] * 3 + ["late"] * 3,
            "change_across_transition": [0.10, 0.12, 0.11, 0.02, 0.05, 0.01],
            "change_before_transition": [0.01, 0.02, 0.015, 0.03, 0.02, 0.03],
        }
    )
    out = stage_change_summary(rows)
    assert (
        out["stage_change/early/seeds"] == 3 and out["stage_change/early/seeds_larger_across"] == 3
    )
    assert out["stage_change/early/ratio_of_means"] == pytest.approx(0.33 / 0.045)
    assert out["stage_change/early/difference_t_low"] > 0  # resolved: larger across
    assert out["stage_change/late/seeds_larger_across"] == 1
    lo, hi = out["stage_change/late/difference_t_low"], out["stage_change/late/difference_t_high"]
    assert lo < 0 < hi  # mixed signs: not resolved
    assert stage_change_summary(rows.drop(columns="change_across_transition")) == {}
