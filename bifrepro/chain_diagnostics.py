"""What happened in one sampling run's chains: :class:`ChainDiagnostics` and its drift warning.

A chain whose loss rises (or falls) steadily through its draws inflates every covariance with a
shared trend; chains that disagree with each other were not run long enough. The statistics
here are computed on the per-draw mean observed loss of each chain. The container sits at the
lowest layer because a trace store rebuilds it when traces are loaded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from bifrepro.stats import split_rhat, trend_tstat

__all__ = [
    "ChainDiagnostics",
    "ChainDriftWarning",
    "TREND_T_THRESHOLD",
    "TREND_EFFECT_THRESHOLD",
    "RHAT_THRESHOLD",
]

#: |t| above this (autocorrelation-corrected) counts as a significant linear trend.
TREND_T_THRESHOLD = 4.0
#: ...but only if the fitted trend moves the loss by more than this many within-chain stds.
TREND_EFFECT_THRESHOLD = 0.5
#: Split R-hat above this counts as chains that disagree.
RHAT_THRESHOLD = 1.1


class ChainDriftWarning(UserWarning):
    """A chain's loss trends through its draws: covariances would carry that trend."""


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
    def problems(self) -> list[str]:
        """Why the chains cannot be trusted, one reason each (empty when healthy).

        NaN never passes: a NaN trend statistic means non-finite losses, a NaN R-hat non-finite
        losses or fewer than 4 draws per chain (too few to compare the chains' halves).
        """
        out = []
        pooled = self.pooled_loss()
        if not bool(torch.isfinite(pooled).all()):
            out.append("the mean observed loss is NaN or Inf on some draws")
        elif torch.isnan(self.trend_tstat).any():
            out.append("the trend statistic is NaN")
        if self.drifting_chains:
            out.append(f"chains {self.drifting_chains} drift")
        if math.isnan(self.rhat):
            if pooled.shape[1] < 4:
                out.append(f"R-hat needs >= 4 draws per chain, got {pooled.shape[1]}")
            else:
                out.append("R-hat is NaN")
        elif self.rhat > RHAT_THRESHOLD:
            out.append(f"R-hat {self.rhat:.3f} > {RHAT_THRESHOLD:g} (chains disagree)")
        return out

    @property
    def is_healthy(self) -> bool:
        """No drifting chain, chains that agree (split R-hat <= threshold) and nothing NaN."""
        return not self.problems

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
            + ("" if self.is_healthy else f" ({'; '.join(self.problems)})")
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
