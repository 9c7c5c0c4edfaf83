"""Statistics of MCMC chains and of the loss traces they record (pure tensor functions).

Everything here works on ``[chains, draws, ...]`` tensors and knows nothing of models or
samplers: chain diagnostics (trend, R-hat), per-chain detrending and the covariance or Pearson
correlation between two sets of traces. It sits at the lowest layer so that the trace store,
the health rules (:mod:`bifrepro.sampling.health`) and the BIF scores
(:mod:`bifrepro.attribution.bif`) share one implementation.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "lag1_autocorrelation",
    "trend_tstat",
    "split_rhat",
    "detrend_chains",
    "trace_association",
    "NORMALIZATIONS",
]

#: How :func:`trace_association` normalises: Pearson correlation or sample covariance.
NORMALIZATIONS = ("correlation", "covariance")
_BLOCK_BYTES = 256 * 2**20


def lag1_autocorrelation(x: torch.Tensor) -> torch.Tensor:
    """Lag-1 autocorrelation along the last dimension (0 for constant series)."""
    x = x.double()
    xc = x - x.mean(-1, keepdim=True)
    denom = (xc * xc).sum(-1)
    num = (xc[..., 1:] * xc[..., :-1]).sum(-1)
    return torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.zeros_like(num))


def trend_tstat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLS trend of each series along the last dim: (slope per draw, t-statistic, effect size).

    The slope's standard error is inflated for AR(1) autocorrelation of the residuals
    (effective n = n·(1-ρ)/(1+ρ)), so a slowly mixing but stationary chain is not called drifting.
    The effect size is the total fitted change over the series divided by the residual std.
    Non-finite input gives NaN statistics.
    """
    x = x.double()
    n = x.shape[-1]
    if n < 3:
        z = torch.zeros(x.shape[:-1], dtype=torch.float64)
        return z, z.clone(), z.clone()
    t = torch.arange(n, dtype=torch.float64)
    tc = t - t.mean()
    sxx = (tc * tc).sum()
    xc = x - x.mean(-1, keepdim=True)
    slope = (xc * tc).sum(-1) / sxx
    resid = xc - slope.unsqueeze(-1) * tc
    rho = lag1_autocorrelation(resid).clamp(-0.99, 0.99)
    var_factor = (1 + rho) / (1 - rho)
    sigma2 = (resid * resid).sum(-1) / (n - 2)
    se = torch.sqrt(sigma2 * var_factor / sxx)
    tstat = torch.where(se > 0, slope / se.clamp_min(1e-300), torch.zeros_like(slope))
    # A perfectly linear series has zero residual: call it maximally trending.
    tstat = torch.where((se == 0) & (slope != 0), torch.sign(slope) * math.inf, tstat)
    resid_sd = torch.sqrt(sigma2)
    effect = torch.where(
        resid_sd > 0,
        (slope * (n - 1)).abs() / resid_sd.clamp_min(1e-300),
        (slope != 0).double() * math.inf,
    )
    finite = torch.isfinite(x).all(-1)
    nan = torch.full_like(slope, math.nan)
    return (
        torch.where(finite, slope, nan),
        torch.where(finite, tstat, nan),
        torch.where(finite, effect, nan),
    )


def split_rhat(x: torch.Tensor) -> float:
    """Split R-hat (Gelman et al.) of ``x`` shaped ``[chains, draws]``; 1.0 means chains agree.

    NaN when a chain has fewer than 4 draws or the input is not finite.
    """
    x = x.double()
    c, n = x.shape
    half = n // 2
    if half < 2 or not bool(torch.isfinite(x).all()):
        return float("nan")
    splits = torch.cat([x[:, :half], x[:, n - half :]], dim=0)  # [2c, half]
    m = splits.shape[0]
    means = splits.mean(1)
    within = splits.var(1, unbiased=True).mean()
    between = half * means.var(unbiased=True) if m > 1 else torch.tensor(0.0, dtype=torch.float64)
    if within <= 0:
        return 1.0 if between <= 0 else float("inf")
    var_plus = (half - 1) / half * within + between / half
    return float(torch.sqrt(var_plus / within))


def detrend_chains(traces: torch.Tensor) -> torch.Tensor:
    """Remove each chain's least-squares linear trend through its draws, item by item.

    ``traces`` is ``[chains, draws, ...]``; the result is ``x - slope·(t - t̄)`` per chain and
    item, so each chain's mean is kept (differences between chains stay visible).
    """
    if not isinstance(traces, torch.Tensor) or traces.dim() < 2:
        raise ValueError("detrending needs a [chains, draws, ...] tensor")
    n = traces.shape[1]
    if n < 2:
        return traces.clone()
    x = traces.double()
    t = torch.arange(n, dtype=torch.float64)
    tc = (t - t.mean()).reshape(1, n, *([1] * (x.dim() - 2)))
    slope = (x * tc).sum(1, keepdim=True) / (tc * tc).sum()
    out = x - slope * tc
    return out.to(traces.dtype) if traces.dtype.is_floating_point else out


def _flatten(traces: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if traces.dim() < 3:
        raise ValueError(
            f"{what} traces must be [num_chains, num_draws, n(, T)], got shape {tuple(traces.shape)}"
        )
    item_shape = tuple(traces.shape[2:])
    return traces.reshape(traces.shape[0] * traces.shape[1], -1), item_shape


def _require_finite(x: torch.Tensor, what: str, offset: int, item_shape: tuple[int, ...]) -> None:
    """Raise naming the items (first index of each flattened column) whose traces are not finite."""
    bad = ~torch.isfinite(x).all(0)
    if not bool(bad.any()):
        return
    columns = (torch.nonzero(bad).flatten() + offset).tolist()
    per_item = math.prod(item_shape[1:]) if len(item_shape) > 1 else 1
    items = sorted({c // per_item for c in columns})
    shown = ", ".join(str(i) for i in items[:10]) + (" ..." if len(items) > 10 else "")
    raise ValueError(
        f"{what} traces hold NaN or Inf losses for {len(items)} item(s) (index {shown}); "
        "covariances of non-finite losses are meaningless: fix or drop those items"
    )


def _centre(x: torch.Tensor, normalize: str, compute_dtype: torch.dtype) -> torch.Tensor:
    """Centre columns (mean in float64); for correlation also scale them to unit norm."""
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(0, keepdim=True)
    if normalize == "correlation":
        norm = torch.linalg.vector_norm(xc, dim=0, keepdim=True)
        # Constant traces (e.g. padding tokens) have no correlation with anything: score 0.
        xc = torch.where(norm > 0, xc / norm.clamp_min(1e-300), torch.zeros_like(xc))
    return xc.to(compute_dtype)


def trace_association(
    a: torch.Tensor,
    b: torch.Tensor,
    normalize: str = "correlation",
    block_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    names: tuple[str, str] = ("first", "second"),
) -> torch.Tensor:
    """Sample covariance (ddof 1) or Pearson correlation of every column of ``a`` with ``b``.

    Args:
        a: ``[C, D, n_a(, T_a)]`` traces; all chains and draws are stacked as one sample.
        b: ``[C, D, n_b(, T_b)]`` traces on the same draws.
        normalize: ``"correlation"`` (a constant trace correlates 0 with everything) or
            ``"covariance"``.
        block_size: columns of ``b`` centred at once (default: ~256 MB); only one block of
            centred ``b`` exists at a time.
        dtype: dtype of the matrix product (centring is done in float64 first).
        names: what ``a`` and ``b`` are, for error messages.

    Returns:
        ``[n_a(, T_a), n_b(, T_b)]``.

    Raises:
        ValueError: shapes disagree, fewer than 2 draws in total, or a trace holds NaN/Inf
            (the message names the items).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"{names[0]} and {names[1]} traces must come from the same draws: got "
            f"[chains, draws] {tuple(a.shape[:2])} vs {tuple(b.shape[:2])}"
        )
    x, x_shape = _flatten(a, names[0])
    y, y_shape = _flatten(b, names[1])
    n_samples = x.shape[0]
    if n_samples < 2:
        raise ValueError("need at least 2 draws in total to estimate a covariance")
    _require_finite(x, names[0], 0, x_shape)
    xc = _centre(x, normalize, dtype)
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // (8 * n_samples))
    out = torch.empty((xc.shape[1], y.shape[1]), dtype=dtype)
    for start in range(0, y.shape[1], block_size):
        raw = y[:, start : start + block_size]
        _require_finite(raw, names[1], start, y_shape)
        block = _centre(raw, normalize, dtype)
        torch.matmul(xc.T, block, out=out[:, start : start + block.shape[1]])
    if normalize == "covariance":
        out.mul_(1.0 / (n_samples - 1))
    return out.reshape(*x_shape, *y_shape)
