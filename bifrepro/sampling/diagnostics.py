"""Chain health: is the sampler exploring a stationary local posterior, or drifting?

A chain whose loss rises (or falls) steadily through its draws inflates every covariance with a
shared trend; chains that disagree with each other were not run long enough. The statistics
here are computed on the per-draw mean observed loss of each chain.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

__all__ = [
    "ChainDiagnostics",
    "ChainDriftWarning",
    "SamplerDivergedError",
    "trend_tstat",
    "split_rhat",
    "lag1_autocorrelation",
]

#: |t| above this (autocorrelation-corrected) counts as a significant linear trend.
TREND_T_THRESHOLD = 4.0
#: ...but only if the fitted trend moves the loss by more than this many within-chain stds.
TREND_EFFECT_THRESHOLD = 0.5
#: Split R-hat above this counts as chains that disagree.
RHAT_THRESHOLD = 1.1


class SamplerDivergedError(RuntimeError):
    """SGLD produced a non-finite or exploding loss; the run is not usable."""


class ChainDriftWarning(UserWarning):
    """A chain's loss trends through its draws: covariances would carry that trend."""


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
    return slope, tstat, effect


def split_rhat(x: torch.Tensor) -> float:
    """Split R-hat (Gelman et al.) of ``x`` shaped ``[chains, draws]``; 1.0 means chains agree."""
    x = x.double()
    c, n = x.shape
    half = n // 2
    if half < 2:
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


@dataclass
class ChainDiagnostics:
    """Per-chain health of one sampling run (all tensors on the CPU).

    Attributes:
        sgld_loss: ``[C, D]`` mean SGLD minibatch loss over the steps leading to each draw.
        distance: ``[C, D]`` Euclidean distance ``||w - w*||`` at each draw.
        observed_loss: ``{name: [C, D]}`` mean recorded loss of each observable per draw.
        init_loss: ``{name: float}`` mean loss of each observable at w*.
        trend_slope, trend_tstat, trend_effect: ``[C]`` linear trend of the chain's mean observed
            loss (all observables pooled) through its draws; see :func:`trend_tstat`.
        rhat: split R-hat of the mean observed loss across chains.
    """

    sgld_loss: torch.Tensor
    distance: torch.Tensor
    observed_loss: dict[str, torch.Tensor]
    init_loss: dict[str, float]
    trend_slope: torch.Tensor = field(init=False)
    trend_tstat: torch.Tensor = field(init=False)
    trend_effect: torch.Tensor = field(init=False)
    rhat: float = field(init=False)

    def __post_init__(self) -> None:
        pooled = self.pooled_loss()
        self.trend_slope, self.trend_tstat, self.trend_effect = trend_tstat(pooled)
        self.rhat = split_rhat(pooled)

    def pooled_loss(self) -> torch.Tensor:
        """``[C, D]`` mean observed loss over all observables (item-weighted equally per name)."""
        losses = list(self.observed_loss.values())
        return torch.stack(losses).double().mean(0)

    @property
    def drifting_chains(self) -> list[int]:
        """Chains with a significant and non-negligible linear trend."""
        sig = (self.trend_tstat.abs() > TREND_T_THRESHOLD) & (
            self.trend_effect > TREND_EFFECT_THRESHOLD
        )
        return [int(i) for i in torch.nonzero(sig).flatten()]

    @property
    def is_healthy(self) -> bool:
        """No drifting chain and (with >1 chain) chains that agree (R-hat below threshold)."""
        rhat_ok = math.isnan(self.rhat) or self.rhat <= RHAT_THRESHOLD
        return not self.drifting_chains and rhat_ok

    def loss_increase(self) -> float:
        """Mean observed loss over all draws minus the mean loss at w* (pooled over observables)."""
        init = sum(self.init_loss.values()) / max(len(self.init_loss), 1)
        return float(self.pooled_loss().mean()) - init

    def summary(self) -> str:
        """One line: health verdict, loss rise over w*, distance, worst trend, R-hat."""
        verdict = "healthy" if self.is_healthy else "UNHEALTHY"
        worst = int(self.trend_tstat.abs().argmax()) if self.trend_tstat.numel() else 0
        return (
            f"chains {verdict}: Δloss vs w* {self.loss_increase():+.3g}, "
            f"|w-w*| {float(self.distance.mean()):.3g}, "
            f"max |trend t| {float(self.trend_tstat.abs().max()):.2f} (chain {worst}), "
            f"R-hat {self.rhat:.3f}, drifting chains {self.drifting_chains or 'none'}"
        )

    def to_metrics(self, prefix: str = "chain/") -> dict[str, float]:
        """Flat scalar metrics for MLflow."""
        out = {
            f"{prefix}healthy": float(self.is_healthy),
            f"{prefix}rhat": float(self.rhat),
            f"{prefix}max_abs_trend_t": float(self.trend_tstat.abs().max()),
            f"{prefix}num_drifting": float(len(self.drifting_chains)),
            f"{prefix}loss_increase": self.loss_increase(),
            f"{prefix}mean_distance": float(self.distance.mean()),
            f"{prefix}mean_sgld_loss": float(self.sgld_loss.mean()),
        }
        for name, value in self.init_loss.items():
            out[f"{prefix}init_loss_{name}"] = float(value)
            out[f"{prefix}mean_loss_{name}"] = float(self.observed_loss[name].mean())
        return out

    def warn_if_drifting(self) -> None:
        """Emit a :class:`ChainDriftWarning` naming the chains and the knob to turn."""
        chains = self.drifting_chains
        if not chains:
            return
        rising = bool((self.trend_slope[chains] > 0).all())
        if rising:
            advice = (
                "the loss rises through the draws: the chain is leaving the basin; lower step_size "
                "or raise localization (γ) or nbeta, or add burn_in"
            )
        else:
            advice = (
                "the loss falls through the draws: w* is not at a local minimum of the tempered "
                "posterior or burn-in is too short; raise burn_in, train w* longer, or raise "
                "localization (γ)"
            )
        warnings.warn(
            f"chain(s) {chains} drift (trend t = "
            f"{[round(float(self.trend_tstat[c]), 1) for c in chains]}): {advice}. {self.summary()}",
            ChainDriftWarning,
            stacklevel=3,
        )
