"""Rankings resolve a step only when the paired interval of the difference excludes zero."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bifrepro.evaluation.ranking import ranking_text, resolved_ranking


def _long(values: dict[str, np.ndarray], group: float = 0.1) -> pd.DataFrame:
    rows = [
        {"alpha": group, "method": m, "query": q, "lds": float(v)}
        for m, vals in values.items()
        for q, v in enumerate(vals)
    ]
    return pd.DataFrame(rows)


def test_a_clear_gap_is_resolved_and_a_tie_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, 200)  # a large query-to-query spread shared by every method
    values = {
        "A": base + 0.5 + rng.normal(0, 0.05, 200),
        "B": base + 0.0 + rng.normal(0, 0.05, 200),
        "C": base - 0.002 + rng.normal(0, 0.05, 200),  # a tie with B at this sample size
    }
    r = resolved_ranking(_long(values), method="method", value="lds", unit="query", by=["alpha"])
    assert list(r["method"]) == ["A", "B", "C"] and list(r["rank"]) == [1, 2, 3]
    assert list(r["resolved"]) == [True, False, False]
    assert list(r["tier"]) == [1, 2, 2]
    a = r.iloc[0]
    assert a["ci_low"] < a["difference"] < a["ci_high"] and a["difference"] == pytest.approx(
        0.5, abs=0.02
    )
    assert ranking_text(r) == "A > B ≈ C"


def test_pairing_resolves_what_separate_intervals_cannot() -> None:
    """A small constant gap under a large shared spread: unpaired intervals overlap, the paired
    difference is exact."""
    base = np.random.default_rng(1).normal(0.0, 1.0, 50)
    r = resolved_ranking(
        _long({"X": base + 0.01, "Y": base}), method="method", value="lds", unit="query"
    )
    assert bool(r.iloc[0]["resolved"]) and ranking_text(r) == "X > Y"


def test_lower_is_better_groups_and_missing_columns() -> None:
    df = pd.concat([_long({"p": np.arange(5.0), "q": np.arange(5.0) + 3}, g) for g in (0.1, 0.5)])
    r = resolved_ranking(
        df, method="method", value="lds", unit="query", by=["alpha"], higher_is_better=False
    )
    assert list(r["alpha"]) == [0.1, 0.1, 0.5, 0.5]
    assert list(r["method"]) == ["p", "q", "p", "q"] and bool(r.iloc[0]["resolved"])
    with pytest.raises(KeyError, match="seed"):
        resolved_ranking(df, method="method", value="lds", unit="query", by=["seed"])


def test_language_benchmark_ranking_per_category() -> None:
    """Token-link arms ranked by reciprocal rank per scope, form and category, paired over queries."""
    from bifrepro.evaluation.token_links import benchmark_ranking

    n = 60
    rng = np.random.default_rng(0)
    per_query = pd.DataFrame(
        {
            "concept": ["num:3"] * (n // 2) + ["country:brazil"] * (n // 2),
            "rr_bif_token_all_any": np.clip(0.8 + rng.normal(0, 0.05, n), 0, 1),
            "rr_ekfac_token_all_any": np.clip(0.3 + rng.normal(0, 0.05, n), 0, 1),
        }
    )
    out = benchmark_ranking(per_query, num_bootstrap=500)
    assert set(out["category"]) >= {"all"} and len(set(out["category"])) == 3
    top = out[(out["category"] == "all") & (out["rank"] == 1)].iloc[0]
    assert top["method"] == "bif" and top["level"] == "token" and bool(top["resolved"])
    assert set(out["scope"]) == {"all"} and set(out["form"]) == {"any"}


def test_an_interval_end_at_zero_up_to_rounding_is_not_resolved() -> None:
    """0.1 + 0.2 vs 0.3 per unit: a difference of 5.6e-17 everywhere is rounding, not a gap."""
    values = {"A": np.full(40, 0.1) + 0.2, "B": np.full(40, 0.3)}
    r = resolved_ranking(_long(values), method="method", value="lds", unit="query")
    assert r.iloc[0]["ci_low"] > 0  # what a bare "> 0" would call resolved
    assert not r["resolved"].any() and ranking_text(r).count("≈") == 1
