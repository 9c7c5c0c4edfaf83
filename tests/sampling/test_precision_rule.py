"""The precision rule on traces built from latent factors, whose true scores are known.

Query ``i`` is a latent factor ``z_i`` (iid over draws); training item ``j`` of group ``i`` is
``a·z_i + e_j``, so its correlation with query ``i`` is ``a/√(a² + 1)`` and 0 with every other
query. With enough draws each query's top-k is resolved beyond Monte Carlo noise; with few it is
not, and the standard errors say how many draws would be enough.
"""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.chain_diagnostics import ChainDiagnostics
from bifrepro.sampling.health import (
    HealthThresholds,
    check_precision,
    distance_bound,
    run_health,
)
from bifrepro.sgld_config import SGLDConfig
from bifrepro.traces import LossTraces

Z = 1.96


def _loading(r: float) -> float:
    """Loading ``a`` that gives correlation ``r`` between ``a·z + e`` and ``z``."""
    return r / math.sqrt(1 - r**2)


def _factor_traces(
    chains: int, draws: int, groups: list[list[float]], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``query [C, D, Q]`` and ``train [C, D, Σ|group|]``; group ``i`` lists the true correlations
    of its training items with query ``i`` (0 with all other queries)."""
    g = torch.Generator().manual_seed(seed)
    q = len(groups)
    z = torch.randn(chains, draws, q, generator=g, dtype=torch.float64)
    columns = []
    for i, corrs in enumerate(groups):
        for r in corrs:
            e = torch.randn(chains, draws, generator=g, dtype=torch.float64)
            columns.append(_loading(r) * z[..., i] + e)
    return z + 1.0, torch.stack(columns, dim=-1) + 1.0


#: Five queries, each with 10 training items at correlation 0.3 (and 40 at 0 from other groups).
STRONG = [[0.3] * 10 for _ in range(5)]
#: Ten items at 0.5 and one at 0.2 per query: rank k+1 = 11 is the 0.2 item once noise is small.
LADDER = [[0.5] * 10 + [0.2] for _ in range(5)]


def test_top_k_is_resolved_with_many_draws_and_not_with_few():
    ok, stats = check_precision(*_factor_traces(4, 2000, STRONG, seed=0))
    assert ok.passed and ok.name == "precision" and ok.value >= 0.9
    assert stats["resolved_share"] == ok.value
    # iid draws: the median score is a null correlation, SE 1/√N.
    assert stats["score_se_median"] == pytest.approx(1 / math.sqrt(4 * 2000), rel=0.1)
    assert stats["draws_for_target"] <= 2000  # already enough
    bad, stats = check_precision(*_factor_traces(4, 25, STRONG, seed=1))
    assert not bad.passed and bad.value < 0.5
    assert "draws per chain would reach it" in bad.detail
    assert stats["draws_for_target"] > 25  # more draws would be needed


def test_draws_for_target_matches_the_analytic_requirement():
    """Every top-10 item (r = 0.5, SE 0.75/√N) must beat rank 11 (r = 0.2, SE 0.96/√N) by
    z·√(se_i² + se_11²), N = C·D: D* = z²(0.75² + 0.96²)/(C·0.3²) ≈ 15.8 draws per chain."""
    chains = 4
    expected = Z**2 * (0.75**2 + 0.96**2) / (chains * 0.3**2)
    check, stats = check_precision(*_factor_traces(chains, 2000, LADDER, seed=2))
    assert check.value == 1.0  # 2000 draws are far more than enough
    assert stats["draws_for_target"] == pytest.approx(expected, rel=0.15)
    # ... and it predicts: 4x those draws resolve the lists, a third of them does not.
    assert check_precision(*_factor_traces(chains, 64, LADDER, seed=3))[0].value >= 0.75
    short, stats = check_precision(*_factor_traces(chains, 5, LADDER, seed=4))
    assert not short.passed and stats["draws_for_target"] > 5


def _run(query: torch.Tensor, train: torch.Tensor) -> LossTraces:
    """A run whose chains pass every other rule (stationary, near w*, small step)."""
    c, n = train.shape[:2]
    d, gamma, eps = 50, 100.0, 1e-3
    config = SGLDConfig(step_size=eps, nbeta=10.0, localization=gamma, num_chains=c, num_draws=n)
    dist = torch.full((c, n), math.sqrt(0.9 * distance_bound(d, gamma, eps)), dtype=torch.float64)
    small_t, small_q = 0.01 * train, 0.01 * query  # loss fluctuations well inside d/2
    diag = ChainDiagnostics(
        sgld_loss=small_t.mean(-1),
        distance=dist,
        observed_loss={"train": small_t.mean(-1), "query": small_q.mean(-1)},
        init_loss={"train": 0.0099, "query": 0.0099},
    )
    init = {"train": torch.zeros(train.shape[2]), "query": torch.zeros(query.shape[2])}
    return LossTraces({"train": small_t, "query": small_q}, diag, config, init, num_params=d)


def test_run_health_fails_on_unresolved_scores_and_only_because_of_precision():
    good = run_health(_run(*_factor_traces(4, 400, STRONG, seed=6)))
    assert good.healthy, good.summary
    assert "precision ok" in good.summary
    for key in ("resolved_share", "score_se_median", "draws_for_target"):
        assert math.isfinite(good.metrics[f"health/{key}"])
    assert good.metrics["health/precision_ok"] == 1.0

    noisy = run_health(_run(*_factor_traces(4, 25, STRONG, seed=7)))
    assert not noisy.healthy  # would be healthy without the precision rule
    assert [c.name for c in noisy.report.failed] == ["precision"]
    assert "precision FAIL" in noisy.summary and "UNHEALTHY" in noisy.summary
    assert noisy.metrics["health/precision_ok"] == 0.0
    assert noisy.metrics["health/draws_for_target"] > 25

    off = run_health(
        _run(*_factor_traces(4, 25, STRONG, seed=7)),
        thresholds=HealthThresholds(min_resolved_share=0.0),
    )
    assert off.healthy and "precision ok off" in off.summary
    assert "health/resolved_share" not in off.metrics


def test_precision_caps_queries_and_items():
    query, train = _factor_traces(4, 400, STRONG, seed=8)
    check, _ = check_precision(query, train, max_queries=2, max_train=20)
    assert "2/5 query items, 20/50 training items" in check.detail
    nan_train = train.clone()
    nan_train[0, 3, 2] = math.nan
    broken, stats = check_precision(query, nan_train)
    assert not broken.passed and "NaN" in broken.detail and math.isnan(stats["resolved_share"])
    # k is lowered for a small training set; one training item has nothing to rank
    assert "top-5" in check_precision(query, train[..., :6])[0].detail
    assert check_precision(query, train[..., :1])[0].passed


def _as_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """``[C, D, n]`` -> ``[C, D, n/(length-1), length]``: position 0 of every sequence scores a
    constant 0 (as a causal LM's first token), the items fill positions 1.. in order."""
    c, d, n = x.shape
    per_seq = length - 1
    assert n % per_seq == 0
    tokens = torch.zeros(c, d, n // per_seq, length, dtype=x.dtype)
    tokens[..., 1:] = x.reshape(c, d, n // per_seq, per_seq)
    return tokens


def test_per_token_traces_are_judged_per_token():
    """The same latent-factor problem laid out as sequences of tokens: the rule flattens the
    token axes, drops the constant position-0 tokens, and reaches the per-item verdict."""
    for draws, seed, resolved in ((2000, 9, True), (25, 10, False)):
        query, train = _factor_traces(4, draws, STRONG, seed=seed)
        per_item, item_stats = check_precision(query, train)
        per_token, token_stats = check_precision(_as_tokens(query, 6), _as_tokens(train, 11))
        assert per_token.passed is resolved and per_item.passed is resolved
        assert "per token" in per_token.detail
        assert per_token.value == pytest.approx(per_item.value)
        assert token_stats["draws_for_target"] == pytest.approx(item_stats["draws_for_target"])
    # caps count tokens; a train-only token axis (query items are single tokens) works too
    query, train = _factor_traces(4, 400, STRONG, seed=11)
    capped = check_precision(query, _as_tokens(train, 11), max_train=20)[0]
    assert "20/50 training tokens" in capped.detail
    # nothing varies: nothing to judge
    flat = torch.zeros(4, 400, 2, 3, dtype=torch.float64)
    assert "no query item varies" in check_precision(flat, _as_tokens(train, 11))[0].detail


def test_precision_thresholds_are_validated():
    assert HealthThresholds(min_resolved_share=0.0).min_resolved_share == 0.0
    for bad in (
        dict(min_resolved_share=-0.1),
        dict(min_resolved_share=1.5),
        dict(min_resolved_share=math.nan),
        dict(precision_k=0),
        dict(precision_k=2.5),
    ):
        with pytest.raises(ValueError, match="HealthThresholds"):
            HealthThresholds(**bad)
