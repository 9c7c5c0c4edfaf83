"""Step-halving check: do the pilot scores at ε and at ε/2 agree within Monte Carlo error?

SGLD with step ε samples a Gaussian target of precision ``A`` with covariance
``(A(I - εA/4))⁻¹``: every direction is inflated by ``1/(1 - εa/4)`` (docs/science.md §7). The
bias is ``O(ε)`` and invisible to trend, R-hat and ESS rules: a biased chain can mix perfectly.
Halving ε halves the bias, so scores at ε and ε/2 that differ by more than their Monte Carlo
error reveal a step that is too large. Two statistics, each against ``z`` standard errors:

``variance``
    The total variance of the observed item losses, ``V = mean_i Var(l_i)`` (the trace of the
    items' covariance, where a variance inflation shows first), as ``z = log(V_ε/V_ε/2)`` over its
    standard error; the standard error of each ``V`` is the batch-means error of the per-draw
    series ``mean_i (l_it - l̄_i)²`` (batches never cross chains). Only for ``normalize=
    "covariance"``: a uniform inflation leaves correlations unchanged.
``scores``
    Per score (query × train, or train × train on the first ``max_items`` training items when
    there are no queries) ``z = (s_ε - s_ε/2)/√(se_ε² + se_ε/2²)`` with the batch-means standard
    errors of :func:`~bifrepro.sampling.uncertainty.bif_standard_errors`; the share of
    ``|z| > z`` must stay below ``max_share`` (chance alone gives well under 1%; scores share
    the same few posterior directions, so a common fluctuation can lift several at once).

The two pilots must be independent (different seeds) for the standard errors to add.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from bifrepro.sampling.health import HealthCheck, item_traces
from bifrepro.sampling.uncertainty import bif_standard_errors

__all__ = ["step_halving_check", "step_halving_stats", "total_variance"]


def total_variance(items: torch.Tensor) -> tuple[float, float]:
    """``mean_i Var(l_i)`` of ``[C, D, m]`` traces and its batch-means standard error."""
    c, d, _ = items.shape
    x = items.double().reshape(c * d, -1)
    series = ((x - x.mean(0, keepdim=True)) ** 2).mean(1).reshape(c, d)
    value = float(series.mean())
    length = max(1, min(int(math.sqrt(c * d)), d // 2))
    per_chain = d // length
    if c * per_chain < 2:
        return value, math.nan
    means = series[:, d - per_chain * length :].reshape(c * per_chain, length).mean(1)
    return value, float(means.std(unbiased=True) / math.sqrt(means.numel()))


def _observed(traces: Mapping[str, torch.Tensor], name: str, max_items: int) -> torch.Tensor:
    return item_traces(traces[name])[:, :, :max_items].double()


def step_halving_stats(
    traces_eps: Mapping[str, torch.Tensor],
    traces_half: Mapping[str, torch.Tensor],
    *,
    query: str = "query",
    train: str = "train",
    normalize: str = "covariance",
    z: float = 3.0,
    max_items: int = 64,
) -> dict[str, float]:
    """The numbers behind :func:`step_halving_check` (see the module docstring).

    Returns ``variance_ratio`` (``V_ε/V_ε/2``), ``variance_z``, ``share_beyond`` (share of scores
    with ``|z| >`` the given ``z``), ``mean_z`` (signed mean score z, > 0: scores larger at ε),
    ``rms_z``, ``num_scores`` and ``non_finite`` (1: some loss is NaN/Inf, the rest are NaN).
    """
    x1, x2 = _observed(traces_eps, train, max_items), _observed(traces_half, train, max_items)
    with_query = query in traces_eps and query in traces_half
    if with_query:
        q1, q2 = _observed(traces_eps, query, max_items), _observed(traces_half, query, max_items)
    else:
        q1, q2 = x1, x2
    nan = math.nan
    if not all(bool(torch.isfinite(t).all()) for t in (q1, q2, x1, x2)):
        keys = ("share_beyond", "mean_z", "rms_z", "variance_ratio", "variance_z")
        return {**dict.fromkeys(keys, nan), "num_scores": 0.0, "non_finite": 1.0}
    u1 = bif_standard_errors(q1, x1, normalize=normalize)
    u2 = bif_standard_errors(q2, x2, normalize=normalize)
    diff = (u1.scores - u2.scores).double()
    se = torch.sqrt(u1.se.double() ** 2 + u2.se.double() ** 2)
    zz = diff / se
    zz = torch.where((se == 0) & (diff == 0), torch.zeros_like(zz), zz)
    if not with_query:  # symmetric train × train: count each pair once
        keep = torch.triu(torch.ones_like(zz, dtype=torch.bool))
        zz = zz[keep]
    zz = zz.flatten()
    stats = {
        "share_beyond": float((zz.abs() > z).double().mean()) if zz.numel() else math.nan,
        "mean_z": float(zz.mean()),
        "rms_z": float(zz.pow(2).mean().sqrt()),
        "num_scores": float(zz.numel()),
        "variance_ratio": nan,
        "variance_z": nan,
        "non_finite": 0.0,
    }
    if torch.isnan(zz).any():
        stats["share_beyond"] = math.nan
    if normalize == "covariance":
        all1 = torch.cat([q1, x1], 2) if with_query else x1
        all2 = torch.cat([q2, x2], 2) if with_query else x2
        (v1, e1), (v2, e2) = total_variance(all1), total_variance(all2)
        if v1 > 0 and v2 > 0:
            stats["variance_ratio"] = v1 / v2
            stats["variance_z"] = math.log(v1 / v2) / math.sqrt((e1 / v1) ** 2 + (e2 / v2) ** 2)
        elif v1 == v2 == 0:
            stats["variance_ratio"], stats["variance_z"] = 1.0, 0.0
    return stats


def step_halving_check(
    traces_eps: Mapping[str, torch.Tensor],
    traces_half: Mapping[str, torch.Tensor],
    *,
    query: str = "query",
    train: str = "train",
    normalize: str = "covariance",
    z: float = 3.0,
    max_share: float = 0.1,
    max_items: int = 64,
) -> HealthCheck:
    """Health check ``"step_halving"``: pilot traces at ε and at ε/2 give the same scores.

    ``traces_eps`` / ``traces_half``: ``{name: [C, D, n(, T)]}`` traces (e.g.
    :class:`~bifrepro.traces.LossTraces`) of two independent runs at ε and ε/2 observing the same
    items. Fails when ``|variance_z| > z`` (covariance only) or more than ``max_share`` of the
    scores differ by more than ``z`` standard errors (see :func:`step_halving_stats`); NaN fails.
    ``value`` is the worse of ``|variance_z|/z`` and ``share/max_share`` (limit 1).
    """
    s = step_halving_stats(
        traces_eps, traces_half, query=query, train=train, normalize=normalize, z=z,
        max_items=max_items,
    )  # fmt: skip
    share_part = s["share_beyond"] / max_share
    parts = [share_part]
    detail = ""
    if normalize == "covariance":
        parts.append(abs(s["variance_z"]) / z)
        detail = (
            f"item-loss variance at ε is {s['variance_ratio']:.3g}× that at ε/2 "
            f"(z = {s['variance_z']:+.2f} vs |z| <= {z:g}); "
        )
    value = math.nan if any(math.isnan(p) for p in parts) else max(parts)
    passed = value <= 1.0  # False for NaN
    detail += (
        f"{s['share_beyond']:.0%} of {int(s['num_scores'])} {normalize} scores differ by > "
        f"{z:g} s.e. vs <= {max_share:.0%} (mean z {s['mean_z']:+.2f}, rms z {s['rms_z']:.2f})"
    )
    if s["non_finite"]:
        detail = "the pilot traces hold NaN or Inf losses: cannot compare ε with ε/2"
    elif not passed:
        detail += ": discretisation bias, lower ε"
    return HealthCheck("step_halving", value, 1.0, passed, detail)
