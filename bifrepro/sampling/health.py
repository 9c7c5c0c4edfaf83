"""Chain-health rules: pure functions deciding whether SGLD loss traces can be trusted for BIF.

:class:`~bifrepro.sampling.diagnostics.ChainDiagnostics` records what happened in a run (trend
t-statistics, split R-hat, distances, losses); this module turns those numbers, plus statistics of
the recorded item traces, into named pass/fail checks with the threshold and the reason next to
each. The same rules judge the calibration pilots (:mod:`bifrepro.sampling.calibration`) and every
real BIF run (:func:`assess_chains`).

The rules (defaults in :class:`HealthThresholds`)
--------------------------------------------------
``trend``
    No chain's mean observed loss has a significant linear trend (AR(1)-corrected ``|t| > 4``)
    whose fitted change *over the run being judged* exceeds 0.5 residual standard deviations. For a
    pilot, the slope is extrapolated to the real run's length: a slow drift invisible in a short
    pilot still counts if it would move the loss by that much over the full run.
``rhat``
    Split R-hat of the pooled mean loss across chains ``<= 1.1`` (chains agree).
``ess``
    Effective sample size (multi-chain, Geyer's initial monotone sequence on the autocorrelations,
    :func:`effective_sample_size`) of the recorded per-item traces, median over items, projected to
    the real run's ``chains × draws``, ``>= min(100, 0.25 · chains × draws)`` (a small run needs an
    autocorrelation time of at most 4 draws). Too small a step size fails here: its chains barely
    move between draws.
``distance``
    Mean squared distance ``E||w - w*||²`` over draws ``<= slack · d / (γ·(1 - εγ/4))``. Derivation:
    near a minimum the local posterior is ``N(w*, Σ)`` with ``Σ = (nβH + γI)⁻¹``; with ``H ⪰ 0``
    every eigenvalue of ``Σ`` is ``<= 1/γ``, so ``E||w - w*||² = tr Σ <= d/γ`` (equality for the
    Gaussian prior alone, ``H = 0``). Full-batch SGLD with step ε is an AR(1) process per
    eigendirection with precision ``a``; its stationary variance is ``1/(a·(1 - εa/4))`` (stable
    for ``εa < 4``), which for ``εa <= 2`` is largest at ``a = γ``, giving the bound above. Chains
    beyond it are heated by minibatch gradient noise, run close to the stability edge
    (``ε·λ_max(nβH + γI)`` near 4), or escape along negative curvature (w* not a minimum). Not
    applicable for ``γ = 0``; ``εγ >= 4`` fails outright (the prior step alone is unstable).
``loss``
    The loss rise stays bounded: ``λ̂ = nβ·(E_draws[L] - L(w*)) <= slack · d/2``. ``λ̂`` is the
    local learning coefficient estimator (the quadratic approximation gives
    ``E[nβ ΔL] = ½ Σ_i nβh_i/(nβh_i + γ) <= d/2``; singular models have a smaller λ), measured on
    the observed training items. The SGLD divergence guard (``SamplerDivergedError``) covers blow-ups.
``trend_share``
    Share of the item-trace covariance explained by per-chain linear trends,
    ``||C - C_detrended||_F / ||C||_F <= 0.5`` — directly the damage a drift would do to BIF
    (reported Pythia-70m runs: 88–99%).
``step``
    Discretisation bias: on a Gaussian target SGLD inflates the variance of a direction with
    (preconditioned) precision ``a`` by ``1/(1 - εa/4)`` (``docs/science.md`` §7), so
    ``ε·λ_max(P^½(nβH + γI)P^½) <= 1`` (inflation <= 1.33). With the value measured by the
    calibration (``step_curvature``) that is what is judged; without it only ``ε_eff·γ`` (or
    ``ε_eff·(γ + nβ·λ_max(H))``), a *lower bound* on the stiffest curvature. For RMSProp-SGLD the
    lower bound sees only directions where the preconditioner sits at its ``1/rmsprop_eps`` cap,
    so a step can pass it and still be biased in stiff directions (the detail says so).
``precision`` (:func:`run_health`)
    Monte Carlo noise: the mean share of each query's top-k (``precision_k``) whose scores beat
    rank ``k+1`` by more than 1.96 combined batch-means standard errors is ``>= 0.5``
    (:func:`~bifrepro.sampling.uncertainty.topk_resolved`); the draws per chain that would get
    there (:func:`~bifrepro.sampling.precision_target.draws_for_resolved`) are recorded.
    Per-token traces are judged per token (query tokens × training tokens whose loss varies).
Extra checks
    Checks computed elsewhere (e.g. the calibration's step-halving bias check, ``step_halving``)
    can be handed to :func:`assess_chains`, :func:`assess_traces` and :func:`run_health`
    (``extra_checks``); they are appended and count toward the verdict like any rule.

All rules must pass for a run to be healthy, and NaN never passes: a rule whose statistic is NaN
(non-finite losses or distances, too few draws for R-hat) fails with the reason. Thresholds are fields of :class:`HealthThresholds`
(OmegaConf-compatible, so they sit in Hydra configs). :func:`assess_traces` judges a finished run;
:func:`detrend_traces` / :func:`detrend_effect` remove per-chain linear trends and report what
that changes in the scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bifrepro.chain_diagnostics import (
    RHAT_THRESHOLD,
    TREND_EFFECT_THRESHOLD,
    TREND_T_THRESHOLD,
    ChainDiagnostics,
)
from bifrepro.sampling.precision_target import draws_for_resolved
from bifrepro.sampling.uncertainty import bif_standard_errors, topk_resolved
from bifrepro.stats import detrend_chains, split_rhat, trace_association, trend_tstat
from bifrepro.traces import LossTraces
from bifrepro.validation import bad, finite_numbers

__all__ = [
    "HealthThresholds",
    "HealthCheck",
    "HealthReport",
    "autocorrelation",
    "effective_sample_size",
    "integrated_autocorrelation_time",
    "detrend_traces",
    "trend_share",
    "distance_bound",
    "check_trend",
    "check_rhat",
    "check_ess",
    "check_distance",
    "check_step",
    "check_loss",
    "check_trend_share",
    "check_precision",
    "assess_chains",
    "assess_traces",
    "detrend_effect",
    "item_traces",
    "RunHealth",
    "run_health",
]


@dataclass
class HealthThresholds:
    """Thresholds of the chain-health rules (see the module docstring for each rule)."""

    #: |t| above which a chain's loss trend is significant (AR(1)-corrected).
    max_trend_t: float = TREND_T_THRESHOLD
    #: ...and the fitted change over the judged run, in residual stds, that makes it a drift.
    max_trend_effect: float = TREND_EFFECT_THRESHOLD
    #: Largest acceptable split R-hat of the pooled loss across chains.
    max_rhat: float = RHAT_THRESHOLD
    #: Smallest acceptable effective sample size (median over items) of the real run...
    min_ess: float = 100.0
    #: ...or this fraction of its chains × draws, whichever is smaller (small runs: τ <= 4).
    min_ess_fraction: float = 0.25
    #: E||w-w*||² may exceed the Gaussian bound d/(γ(1-εγ/4)) by at most this factor.
    distance_slack: float = 1.5
    #: λ̂ = nβ·ΔL may exceed d/2 by at most this factor.
    loss_slack: float = 2.0
    #: Largest acceptable share of the item covariance explained by per-chain linear trends.
    max_trend_share: float = 0.5
    #: Largest acceptable ε·λ_max(P^½(nβH + γI)P^½) (variance inflation 1/(1 - x/4) <= 1.33);
    #: judged on the calibration's measured value when given, else on the lower bound ε_eff·γ.
    max_step_curvature: float = 1.0
    #: Length of the top-k lists the precision rule judges (lowered to n_train - 1 if needed).
    precision_k: int = 10
    #: Smallest acceptable mean share of each query's top-k resolved beyond Monte Carlo noise
    #: (0 switches the precision rule off). 0.5: below it most of a top-k list is set by noise,
    #: a rerun would swap most of it out, and rank agreement with the exact influence is capped by
    #: the noise whatever the sampler's law; at 0.5 at least its leading half is signal.
    min_resolved_share: float = 0.5

    def __post_init__(self) -> None:
        finite_numbers(self)
        for name, value in asdict(self).items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                bad(self, name, "must be a number")
            if name == "min_resolved_share":
                if not 0 <= value <= 1:
                    bad(self, name, "must be in [0, 1] (0: precision rule off)")
            elif name == "precision_k":
                if not (isinstance(value, int) and value >= 1):
                    bad(self, name, "must be an integer >= 1")
            elif not value > 0:
                bad(self, name, "must be > 0")


@dataclass
class HealthCheck:
    """One rule's outcome: the statistic, its limit and whether it passed."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'ok' if self.passed else 'FAIL'} ({self.detail})"


@dataclass
class HealthReport:
    """All rule outcomes of one run (or pilot) plus the statistics behind them."""

    checks: list[HealthCheck]
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def is_healthy(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[HealthCheck]:
        return [c for c in self.checks if not c.passed]

    @property
    def reasons(self) -> list[str]:
        """One human-readable reason per failed rule (empty when healthy)."""
        return [f"{c.name}: {c.detail}" for c in self.failed]

    def summary(self) -> str:
        """One line: verdict, then every rule with its value and limit."""
        verdict = "healthy" if self.is_healthy else "UNHEALTHY"
        parts = [f"{c.name} {'ok' if c.passed else 'FAIL'} {c.detail}" for c in self.checks]
        return f"chains {verdict}: " + "; ".join(parts)

    def to_metrics(self, prefix: str = "health/") -> dict[str, float]:
        """Flat float metrics for MLflow: verdict, each rule's pass flag and every statistic."""
        out = {f"{prefix}healthy": float(self.is_healthy)}
        for c in self.checks:
            out[f"{prefix}{c.name}_ok"] = float(c.passed)
        for k, v in self.stats.items():
            out[f"{prefix}{k}"] = float(v)
        return out

    def to_row(self) -> dict[str, Any]:
        """One table row: statistics, per-rule pass flags, verdict and reasons."""
        row: dict[str, Any] = dict(self.stats)
        for c in self.checks:
            row[f"{c.name}_ok"] = c.passed
        row["healthy"] = self.is_healthy
        row["reasons"] = "; ".join(self.reasons)
        return row


# -- statistics ---------------------------------------------------------------------------------


def autocorrelation(x: torch.Tensor) -> torch.Tensor:
    """Autocorrelation of each series along the last dimension (biased, FFT; lag 0 = 1).

    Constant series get 1 at lag 0 and 0 elsewhere.
    """
    acov = _autocovariance(x.double())
    var = acov[..., :1]
    out = torch.where(var > 0, acov / var.clamp_min(1e-300), torch.zeros_like(acov))
    out[..., 0] = 1.0
    return out


def _autocovariance(x: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance (divide by n) along the last dim, via zero-padded FFT."""
    n = x.shape[-1]
    xc = x - x.mean(-1, keepdim=True)
    nfft = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(xc, n=nfft)
    return torch.fft.irfft(f * f.conj(), n=nfft)[..., :n] / n


def integrated_autocorrelation_time(x: torch.Tensor) -> torch.Tensor:
    """Integrated autocorrelation time τ of ``[chains, draws(, ...)]`` traces (one per item).

    Multi-chain estimator of Vehtari et al. (2021, the one Stan uses): autocorrelations are
    combined across chains through the within- and between-chain variances (so chains that
    disagree lower the ESS), then summed with Geyer's initial monotone sequence rule: pairs
    ``P_k = ρ_2k + ρ_2k+1`` are summed until the first non-positive pair, each capped by the
    previous one; ``τ = -1 + 2·Σ P_k``. Returns ``[...]`` (a 0-dim tensor for ``[C, D]`` input);
    NaN for a constant item.
    """
    if x.dim() < 2:
        raise ValueError(f"traces must be [chains, draws(, ...)], got shape {tuple(x.shape)}")
    c, n = x.shape[0], x.shape[1]
    if n < 4:
        raise ValueError(f"need at least 4 draws per chain to estimate τ, got {n}")
    item_shape = x.shape[2:]
    y = x.double().reshape(c, n, -1).permute(2, 0, 1)  # [m, C, D]
    acov = _autocovariance(y)  # [m, C, D]
    chain_var = acov[..., 0] * n / (n - 1)
    within = chain_var.mean(-1)  # W, [m]
    var_plus = within * (n - 1) / n
    if c > 1:
        var_plus = var_plus + y.mean(-1).var(-1, unbiased=True)
    rho = 1.0 - (within.unsqueeze(-1) - acov.mean(1)) / var_plus.clamp_min(1e-300).unsqueeze(-1)
    rho[..., 0] = 1.0
    k = (n - 4) // 2 + 1 if n >= 6 else n // 2
    pairs = rho[..., 0 : 2 * k : 2] + rho[..., 1 : 2 * k : 2]  # [m, K]
    positive = torch.cumprod((pairs > 0).double(), dim=-1)
    monotone = torch.cummin(pairs, dim=-1).values
    tau = -1.0 + 2.0 * (monotone * positive).sum(-1)
    # Antithetic chains can give τ < 1; cap the ESS at C·n·log10(C·n) as Stan does.
    tau = tau.clamp_min(1.0 / math.log10(max(c * n, 10)))
    tau = torch.where(var_plus > 0, tau, torch.full_like(tau, math.nan))
    return tau.reshape(item_shape)


def effective_sample_size(x: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``C·D/τ`` of ``[chains, draws(, ...)]`` traces, per item.

    See :func:`integrated_autocorrelation_time`. For a stationary AR(1) chain with coefficient ρ
    the ESS is ``n·(1-ρ)/(1+ρ)``.
    """
    c, n = x.shape[0], x.shape[1]
    return c * n / integrated_autocorrelation_time(x)


def detrend_traces(traces: Any) -> Any:
    """Remove each chain's least-squares linear trend through its draws, item by item.

    Args:
        traces: a ``[chains, draws, ...]`` tensor, or a :class:`~bifrepro.traces.LossTraces`
            (every observable is detrended; its diagnostics are kept, since they describe the
            raw run).

    Returns:
        The same kind of object with ``x - slope·(t - t̄)`` per chain and item: each chain's mean
        is kept (differences between chains stay visible), only its linear drift is removed.
    """
    if isinstance(traces, LossTraces):
        data = {name: detrend_chains(traces[name]) for name in traces.names}
        return LossTraces(
            data,
            traces.diagnostics,
            traces.config,
            traces.init_losses,
            num_params=traces.num_params,
        )
    if not isinstance(traces, torch.Tensor) or traces.dim() < 2:
        raise ValueError("detrend_traces needs a [chains, draws, ...] tensor or LossTraces")
    return detrend_chains(traces)


def trend_share(traces: torch.Tensor, other: torch.Tensor | None = None) -> float:
    """``||C - C_detrended||_F / ||C||_F`` for the item covariance ``C`` of ``[C, D, m]`` traces.

    With ``other`` the cross-covariance between the two sets of traces is used (e.g. queries
    against training items). 0: trends play no part; near 1: the covariance is mostly shared trend.
    """
    a, da = _items(traces), _items(detrend_traces(traces))
    if other is None:
        b, db = a, da
    else:
        b, db = _items(other), _items(detrend_traces(other))
    raw = _cov(a, b)
    det = _cov(da, db)
    norm = torch.linalg.matrix_norm(raw)
    if norm <= 0:
        return 0.0
    return float(torch.linalg.matrix_norm(raw - det) / norm)


def _items(x: torch.Tensor) -> torch.Tensor:
    """``[C, D, ...]`` → ``[C·D, m]`` float64 samples × items."""
    return x.double().reshape(x.shape[0] * x.shape[1], -1)


def _cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ac = a - a.mean(0, keepdim=True)
    bc = b - b.mean(0, keepdim=True)
    return ac.T @ bc / max(a.shape[0] - 1, 1)


def item_traces(x: torch.Tensor) -> torch.Tensor:
    """``[C, D, n(, T)]`` → ``[C, D, n]``: per-token traces averaged over their token axis."""
    if x.dim() <= 3:
        return x
    return x.double().reshape(x.shape[0], x.shape[1], x.shape[2], -1).mean(-1)


def distance_bound(num_params: int, localization: float, step_size: float) -> float:
    """``d / (γ·(1 - εγ/4))``: bound on ``E||w - w*||²`` (see the module docstring).

    ``inf`` when γ = 0 (no bound) or εγ >= 4 (the prior step alone is unstable).
    """
    if localization <= 0:
        return math.inf
    inflation = 1.0 - step_size * localization / 4.0
    if inflation <= 0:
        return math.inf
    return num_params / (localization * inflation)


# -- rules --------------------------------------------------------------------------------------


def check_trend(
    pooled_loss: torch.Tensor,
    thresholds: HealthThresholds | None = None,
    target_draws: int | None = None,
) -> tuple[HealthCheck, dict[str, float]]:
    """Drift rule on ``[C, D]`` mean losses; the trend's effect is projected to ``target_draws``."""
    th = thresholds or HealthThresholds()
    n = pooled_loss.shape[1]
    slope, tstat, effect = trend_tstat(pooled_loss)
    if torch.isnan(tstat).any() or torch.isnan(effect).any():
        bad = [int(i) for i in torch.nonzero(torch.isnan(tstat) | torch.isnan(effect)).flatten()]
        stats = {
            "trend_max_abs_t": math.nan,
            "trend_max_effect": math.nan,
            "num_drifting": math.nan,
        }
        detail = f"trend of chains {bad} is NaN (non-finite losses)"
        return HealthCheck("trend", math.nan, th.max_trend_t, False, detail), stats
    scale = 1.0 if target_draws is None or n < 2 else (target_draws - 1) / (n - 1)
    projected = effect * scale
    drifting = (tstat.abs() > th.max_trend_t) & (projected > th.max_trend_effect)
    worst = int(tstat.abs().argmax()) if tstat.numel() else 0
    max_t = float(tstat.abs().max()) if tstat.numel() else 0.0
    chains = [int(i) for i in torch.nonzero(drifting).flatten()]
    if chains:
        direction = "rising" if bool((slope[chains] > 0).all()) else "falling/mixed"
        detail = (
            f"chains {chains} drift ({direction}; |t| up to {max_t:.1f} > {th.max_trend_t:g}, "
            f"change {float(projected[chains].max()):.2f} sd over {target_draws or n} draws)"
        )
    else:
        detail = f"max |t| {max_t:.1f} (chain {worst})"
    stats = {
        "trend_max_abs_t": max_t,
        "trend_max_effect": float(projected.max()) if projected.numel() else 0.0,
        "num_drifting": float(len(chains)),
    }
    return HealthCheck("trend", max_t, th.max_trend_t, not chains, detail), stats


def check_rhat(
    pooled_loss: torch.Tensor,
    thresholds: HealthThresholds | None = None,
    target_draws: int | None = None,
) -> HealthCheck:
    """Split R-hat of the pooled loss; NaN (too few draws, non-finite losses) fails with the reason.

    With ``target_draws`` larger than the chains' length (a pilot vouching for a longer run),
    the excess is projected to that length: for stationary chains that agree in distribution,
    ``R̂² − 1`` is the Monte Carlo spread of the chain means, which shrinks as ``1/draws``, so
    ``R̂_target = sqrt(1 + (R̂² − 1)·draws/target_draws)``. Chains that sit in different places
    do not shrink like that; they are what the trend and distance rules (and the real run's own
    R-hat) catch.
    """
    th = thresholds or HealthThresholds()
    rhat = split_rhat(pooled_loss)
    n = pooled_loss.shape[1]
    if math.isnan(rhat):
        why = (
            f"n/a: R-hat needs >= 4 draws per chain, got {n}: the chains cannot be compared"
            if n < 4
            else "R-hat is NaN (non-finite losses)"
        )
        return HealthCheck("rhat", rhat, th.max_rhat, False, why)
    if target_draws is not None and target_draws > n:
        projected = math.sqrt(1.0 + max(rhat**2 - 1.0, 0.0) * n / target_draws)
        ok = projected <= th.max_rhat
        detail = (
            f"{projected:.3f} projected to {target_draws} draws ({rhat:.3f} over {n}) "
            f"vs <= {th.max_rhat:g}"
        )
        return HealthCheck("rhat", projected, th.max_rhat, ok, detail)
    ok = rhat <= th.max_rhat
    return HealthCheck("rhat", rhat, th.max_rhat, ok, f"{rhat:.3f} vs <= {th.max_rhat:g}")


def check_ess(
    items: torch.Tensor,
    thresholds: HealthThresholds | None = None,
    target_samples: int | None = None,
) -> tuple[HealthCheck, dict[str, float]]:
    """ESS rule on ``[C, D, m]`` item traces, projected to ``target_samples`` = chains × draws."""
    th = thresholds or HealthThresholds()
    c, n = items.shape[0], items.shape[1]
    items = item_traces(items)
    nonfinite = ~torch.isfinite(items.reshape(c * n, -1)).all(0)
    if bool(nonfinite.any()):
        detail = f"{int(nonfinite.sum())} item trace(s) hold NaN or Inf losses"
        check = HealthCheck("ess", math.nan, th.min_ess, False, detail)
        return check, {"tau_median": math.nan, "ess_median": math.nan, "ess_projected": math.nan}
    tau = integrated_autocorrelation_time(items)
    tau = tau[torch.isfinite(tau)]
    if tau.numel() == 0:
        check = HealthCheck("ess", math.nan, th.min_ess, False, "every item trace is constant")
        return check, {"tau_median": math.nan, "ess_median": math.nan, "ess_projected": math.nan}
    tau_med = float(tau.median())
    samples = target_samples if target_samples is not None else c * n
    projected = samples / tau_med
    stats = {
        "tau_median": tau_med,
        "tau_max": float(tau.max()),
        "ess_median": c * n / tau_med,
        "ess_projected": projected,
        "ess_per_draw": 1.0 / tau_med,
    }
    note = " (τ ≥ draws/5: estimate is a lower bound on τ)" if tau_med * 5 >= n else ""
    required = min(th.min_ess, th.min_ess_fraction * samples)
    ok = projected >= required
    detail = f"ESS {projected:.0f} of {samples} samples (τ {tau_med:.1f}) vs >= {required:g}{note}"
    return HealthCheck("ess", projected, required, ok, detail), stats


def check_step(
    step_size: float,
    localization: float,
    thresholds: HealthThresholds | None = None,
    hessian_top_eigenvalue: float | None = None,
    nbeta: float = 0.0,
    *,
    step_curvature: float | None = None,
    preconditioned: bool = False,
) -> HealthCheck:
    """Step rule: ``ε·λ_max(P^½(nβH + γI)P^½) <= max_step_curvature``.

    ``step_curvature`` is that product as measured by the calibration; when given it is judged
    (NaN fails: pass ``None`` when nothing was measured). Otherwise the rule falls back to
    ``ε_eff·(γ + nβ·λ_max(H))`` (``λ_max(H)`` when known, else ``ε_eff·γ``), a lower bound on the
    stiffest curvature; ``step_size`` is then the effective step (``ε / rmsprop_eps`` for
    RMSProp-SGLD, ``preconditioned=True``, where the bound only covers directions at the
    preconditioner's cap). A step far beyond the stiffest direction's scale need not diverge, and
    its chains can look stationary and well mixed, yet the samples are biased: this rule names it.
    """
    th = thresholds or HealthThresholds()
    limit = th.max_step_curvature
    if step_curvature is not None:
        value = float(step_curvature)
        ok = value <= limit * (1 + 1e-6)  # False for NaN
        detail = f"measured ε·λ_max(P^½(nβH + γI)P^½) = {value:.3g} vs <= {limit:g}"
        if math.isnan(value):
            detail = "measured step curvature is NaN (pass None when it was not measured)"
        return HealthCheck("step", value, limit, ok, detail)
    lam = abs(hessian_top_eigenvalue) if hessian_top_eigenvalue is not None else math.nan
    curvature = localization + (nbeta * lam if math.isfinite(lam) else 0.0)
    value = step_size * curvature
    what = "ε_eff·λ_max(nβH + γI)" if math.isfinite(lam) else "ε_eff·γ"
    ok = value <= limit * (1 + 1e-6)  # False for NaN
    detail = f"{what} = {value:.3g} vs <= {limit:g}"
    if preconditioned:
        detail += (
            " (RMSProp: only a lower bound on ε·λ_max(P^½(nβH + γI)P^½); stiff directions "
            "unchecked without a measured step_curvature)"
        )
    elif not math.isfinite(lam):
        detail += " (a lower bound on ε·λ_max(nβH + γI))"
    return HealthCheck("step", value, limit, ok, detail)


def check_distance(
    distance: torch.Tensor,
    num_params: int,
    localization: float,
    step_size: float,
    thresholds: HealthThresholds | None = None,
) -> tuple[HealthCheck, dict[str, float]]:
    """Localisation rule: ``mean ||w-w*||² <= slack · d/(γ(1-εγ/4))`` over ``[C, D]`` distances."""
    th = thresholds or HealthThresholds()
    msd = float((distance.double() ** 2).mean())
    stats = {"mean_sq_distance": msd, "rms_distance": math.sqrt(msd)}
    if not math.isfinite(msd):
        stats["distance_ratio"] = math.nan
        detail = "distances |w-w*| hold NaN or Inf"
        return HealthCheck("distance", math.nan, th.distance_slack, False, detail), stats
    if localization <= 0:
        stats["distance_ratio"] = math.nan
        return HealthCheck("distance", math.nan, math.nan, True, "n/a (γ = 0)"), stats
    if step_size * localization >= 4:
        stats["distance_ratio"] = math.inf
        detail = f"εγ = {step_size * localization:.3g} >= 4: the prior step alone is unstable"
        return HealthCheck("distance", math.inf, th.distance_slack, False, detail), stats
    ratio = msd / distance_bound(num_params, localization, step_size)
    stats["distance_ratio"] = ratio
    ok = ratio <= th.distance_slack
    detail = f"E|w-w*|² = {ratio:.3g}× the Gaussian bound d/(γ(1-εγ/4)) vs <= {th.distance_slack:g}"
    return HealthCheck("distance", ratio, th.distance_slack, ok, detail), stats


def check_loss(
    mean_loss: float,
    init_loss: float,
    nbeta: float,
    num_params: int,
    thresholds: HealthThresholds | None = None,
) -> tuple[HealthCheck, dict[str, float]]:
    """Bounded-loss rule: ``λ̂ = nβ·(mean loss over draws - loss at w*) <= slack · d/2``."""
    th = thresholds or HealthThresholds()
    llc = nbeta * (mean_loss - init_loss)
    ratio = llc / (num_params / 2.0)
    stats = {"llc": llc, "llc_ratio": ratio, "loss_increase": mean_loss - init_loss}
    finite = math.isfinite(llc)
    ok = finite and ratio <= th.loss_slack
    detail = f"λ̂ = nβ·ΔL = {llc:.3g} = {ratio:.3g}·d/2 vs <= {th.loss_slack:g}·d/2"
    if not finite:
        detail += " (non-finite losses)"
    return HealthCheck("loss", ratio, th.loss_slack, ok, detail), stats


def check_trend_share(
    items: torch.Tensor, thresholds: HealthThresholds | None = None
) -> tuple[HealthCheck, dict[str, float]]:
    """Share of the ``[C, D, m]`` item covariance that per-chain linear trends explain."""
    th = thresholds or HealthThresholds()
    share = trend_share(item_traces(items))
    ok = share <= th.max_trend_share
    detail = f"{share:.0%} of the item covariance is per-chain trend vs <= {th.max_trend_share:.0%}"
    if math.isnan(share):
        detail = "trend share is NaN (non-finite losses)"
    return HealthCheck("trend_share", share, th.max_trend_share, ok, detail), {"trend_share": share}


def check_precision(
    query: torch.Tensor,
    train: torch.Tensor,
    thresholds: HealthThresholds | None = None,
    normalize: str = "correlation",
    max_queries: int | None = 32,
    max_train: int | None = 4096,
) -> tuple[HealthCheck, dict[str, float]]:
    """Precision rule: mean share of each query's top-k resolved beyond Monte Carlo noise.

    Scores and their batch-means standard errors come from
    :func:`~bifrepro.sampling.uncertainty.bif_standard_errors`; ``k = precision_k`` (lowered to
    ``n_train - 1``). Statistics: ``resolved_share``, ``score_se_median`` and
    ``draws_for_target`` (draws per chain at which the share would reach the threshold, scores
    held as measured and standard errors shrinking as ``1/√draws``).

    ``query`` and ``train`` are ``[C, D, n]`` traces; the first ``max_queries`` queries and
    ``max_train`` training items are used (the top-k among a subset is easier to resolve than
    among all items, so a capped run is judged leniently; the detail says so). Per-token traces
    (``[C, D, n, T]``) are judged per token: every (sequence, position) whose loss varies over the
    draws is one item, so the rule asks whether each query token's top-k training tokens are
    resolved. Fewer than 2 training items and ``min_resolved_share = 0`` make the rule not apply
    (passed, value NaN, the reason in the detail, no statistics); non-finite traces fail.
    """
    th = thresholds or HealthThresholds()
    limit = th.min_resolved_share
    stats = dict.fromkeys(("resolved_share", "score_se_median", "draws_for_target"), math.nan)

    def skip(why: str) -> tuple[HealthCheck, dict[str, float]]:
        return HealthCheck("precision", math.nan, limit, True, why), {}

    if limit <= 0:
        return skip("off (min_resolved_share = 0)")
    per_token = query.dim() > 3 or train.dim() > 3
    if per_token:  # every (sequence, position) is one item; constant ones carry no score
        query, train = _token_items(query), _token_items(train)
    n_query, n_train = query.shape[2], train.shape[2]
    if n_query < 1:
        return skip("n/a: no query item varies over the draws")
    if n_train < 2:
        return skip(f"n/a: {n_train} training item(s), no ranking to resolve")
    q = query[:, :, :max_queries] if max_queries else query
    t = train[:, :, :max_train] if max_train else train
    if not (_finite(q) and _finite(t)):
        detail = "traces hold NaN or Inf: the scores' precision is unknown"
        return HealthCheck("precision", math.nan, limit, False, detail), stats
    k = min(th.precision_k, t.shape[2] - 1)
    try:
        u = bif_standard_errors(q, t, normalize=normalize)
    except ValueError as err:  # e.g. too few draws for two batches
        return HealthCheck("precision", math.nan, limit, False, f"n/a: {err}"), stats
    share = float(topk_resolved(u, k=k).mean())
    se = u.se.double().flatten()
    se = se[torch.isfinite(se)]
    stats = {
        "resolved_share": share,
        "score_se_median": float(se.median()) if se.numel() else math.nan,
        "draws_for_target": draws_for_resolved(u, limit, k=k),
    }
    ok = share >= limit  # False for NaN
    detail = (
        f"{share:.0%} of the top-{k} resolved beyond noise (SE median "
        f"{stats['score_se_median']:.3g}) vs >= {limit:.0%}"
    )
    if per_token:
        detail += "; per token (query tokens x training tokens)"
    if q.shape[2] < n_query or t.shape[2] < n_train:
        what = "tokens" if per_token else "items"
        detail += f"; {q.shape[2]}/{n_query} query {what}, {t.shape[2]}/{n_train} training {what}"
    if not ok:
        detail += f"; ~{stats['draws_for_target']:.0f} draws per chain would reach it"
    return HealthCheck("precision", share, limit, ok, detail), stats


def _token_items(x: torch.Tensor) -> torch.Tensor:
    """``[C, D, n, T...]`` -> ``[C, D, items]``: token axes flattened into items, keeping only the
    items whose loss varies over the draws (position 0 and padding are constant; non-finite items
    are kept so that the finiteness check sees them)."""
    flat = x.reshape(*x.shape[:2], -1)
    spread = flat.amax(dim=(0, 1)) - flat.amin(dim=(0, 1))
    keep = (spread > 0) | ~torch.isfinite(spread)
    return flat[:, :, keep]


def _append_extra(report: HealthReport, extra_checks: Sequence[HealthCheck | None]) -> None:
    """Append checks computed elsewhere (``None`` ignored); their value goes to the statistics."""
    names = {c.name for c in report.checks}
    for check in extra_checks:
        if check is None:
            continue
        if not isinstance(check, HealthCheck):
            raise TypeError(f"extra_checks holds {type(check).__name__}, not a HealthCheck")
        if check.name in names:
            raise ValueError(f"extra check {check.name!r} duplicates a rule of this report")
        names.add(check.name)
        report.checks.append(check)
        report.stats[f"{check.name}_value"] = float(check.value)


def assess_chains(
    diagnostics: ChainDiagnostics,
    traces: Mapping[str, torch.Tensor] | torch.Tensor | None,
    *,
    num_params: int,
    step_size: float,
    nbeta: float,
    localization: float,
    loss_observable: str | None = "train",
    thresholds: HealthThresholds | None = None,
    target_draws: int | None = None,
    target_chains: int | None = None,
    step_curvature: float | None = None,
    preconditioned: bool = False,
    extra_checks: Sequence[HealthCheck | None] = (),
) -> HealthReport:
    """Apply every health rule to one run (or pilot) and return the verdict with the evidence.

    Args:
        diagnostics: the run's :class:`ChainDiagnostics` (trend and R-hat on the pooled loss,
            distances, losses at w*).
        traces: the recorded item traces — a ``{name: [C, D, n(, T)]}`` mapping (e.g.
            :class:`~bifrepro.traces.LossTraces`; every observable's items are used) or one tensor.
            ``None`` skips the ESS and trend-share rules.
        num_params: number of sampled parameters ``d``.
        step_size, nbeta, localization: the sampler's ε, nβ and γ.
        loss_observable: observable whose loss rise gives ``λ̂`` (the training items); if absent,
            all observables pooled.
        thresholds: rule thresholds.
        target_draws, target_chains: size of the run being vouched for (default: this one). A pilot
            passes the real run's size so trend, R-hat and ESS are projected to it.
        step_curvature: measured ``ε·λ_max(P^½(nβH + γI)P^½)`` for the step rule (``None``:
            judge the lower bound ``ε_eff·γ``); ``preconditioned``: RMSProp-SGLD (the detail
            then says the lower bound misses stiff directions).
        extra_checks: checks computed elsewhere (e.g. the calibration's ``step_halving``),
            appended and counted toward the verdict; ``None`` entries are ignored.
    """
    th = thresholds or HealthThresholds()
    pooled = diagnostics.pooled_loss()
    c, d = pooled.shape
    checks: list[HealthCheck] = []
    stats: dict[str, float] = {}

    checks.append(
        check_step(
            step_size,
            localization,
            th,
            step_curvature=step_curvature,
            preconditioned=preconditioned,
        )
    )
    stats["step_times_gamma"] = step_size * localization
    if step_curvature is not None:
        stats["step_curvature"] = float(step_curvature)
    trend, s = check_trend(pooled, th, target_draws)
    checks.append(trend)
    stats.update(s)
    rhat = check_rhat(pooled, th, target_draws)
    checks.append(rhat)
    stats["rhat"] = rhat.value
    stats["rhat_observed"] = split_rhat(pooled)
    if traces is not None:
        if isinstance(traces, torch.Tensor):
            items = item_traces(traces)
        else:
            items = torch.cat([item_traces(traces[k]).double() for k in traces], dim=2)
        if items.shape[1] >= 4:
            samples = (target_chains or c) * (target_draws or d)
            ess, s = check_ess(items, th, samples)
            checks.append(ess)
            stats.update(s)
        share, s = check_trend_share(items, th)
        checks.append(share)
        stats.update(s)
    dist, s = check_distance(diagnostics.distance, num_params, localization, step_size, th)
    checks.append(dist)
    stats.update(s)
    if loss_observable is not None and loss_observable in diagnostics.observed_loss:
        mean_loss = float(diagnostics.observed_loss[loss_observable].mean())
        init = diagnostics.init_loss[loss_observable]
    else:
        mean_loss = float(pooled.mean())
        init = sum(diagnostics.init_loss.values()) / max(len(diagnostics.init_loss), 1)
    loss, s = check_loss(mean_loss, init, nbeta, num_params, th)
    checks.append(loss)
    stats.update(s)
    report = HealthReport(checks, stats)
    _append_extra(report, extra_checks)
    return report


def _num_params(traces: Any, num_params: int | None) -> int:
    """``num_params`` if given, else the one the traces recorded; a clear error if neither."""
    if num_params is not None:
        return int(num_params)
    recorded = getattr(traces, "num_params", None)
    if recorded is None:
        raise ValueError(
            "the number of sampled parameters is unknown: these traces do not record num_params "
            "(sampled before it was stored); pass num_params="
            "bifrepro.sampling.count_sampled_parameters(model)"
        )
    return int(recorded)


def assess_traces(
    traces: Any,
    num_params: int | None = None,
    thresholds: HealthThresholds | None = None,
    observables: list[str] | None = None,
    max_items: int | None = 256,
    *,
    step_curvature: float | None = None,
    extra_checks: Sequence[HealthCheck | None] = (),
) -> HealthReport:
    """Health verdict of a finished BIF run (:class:`~bifrepro.traces.LossTraces`).

    The sampler settings come from ``traces.config``; ``num_params`` is the number of sampled
    parameters (default: ``traces.num_params``, recorded by the sampler; see
    :func:`~bifrepro.sampling.count_sampled_parameters`). The ESS and
    trend-share rules use the first ``max_items`` items of each observable in ``observables``
    (default: all), which keeps the check cheap for large runs. ``step_curvature`` and
    ``extra_checks`` as in :func:`assess_chains`. Log ``report.to_metrics()`` and
    ``report.summary()`` next to the scores, and flag the results when ``not report.is_healthy``.
    """
    num_params = _num_params(traces, num_params)
    cfg = traces.config
    names = observables if observables is not None else traces.names
    items = {n: traces[n][:, :, :max_items] if max_items else traces[n] for n in names}
    eff = cfg.step_size / cfg.rmsprop_eps if cfg.preconditioned else cfg.step_size
    return assess_chains(
        traces.diagnostics,
        items,
        num_params=num_params,
        step_size=eff,
        nbeta=cfg.nbeta,
        localization=cfg.localization,
        thresholds=thresholds,
        step_curvature=step_curvature,
        preconditioned=cfg.preconditioned,
        extra_checks=extra_checks,
    )


def detrend_effect(
    query_traces: torch.Tensor,
    train_traces: torch.Tensor,
    normalize: str = "correlation",
    k: int = 10,
) -> dict[str, float]:
    """What removing per-chain linear trends does to BIF scores (for reporting next to them).

    Returns ``trend_share`` (``||C - C_detrended||_F/||C||_F`` of the query × train
    cross-covariance), ``mean_abs_change`` (mean |score change|), ``topk_overlap`` (mean share of
    each query's top-``k`` training items that stay in the top-``k``) and ``score_correlation``
    (mean per-query Pearson correlation between the raw and detrended score rows). Scores are the
    covariance or correlation of the traces, the orientation of
    :func:`~bifrepro.attribution.bif_scores` (positive = helpful).
    """
    names = ("query", "train")
    raw = trace_association(
        query_traces, train_traces, normalize=normalize, dtype=torch.float64, names=names
    )
    det = trace_association(
        detrend_chains(query_traces),
        detrend_chains(train_traces),
        normalize=normalize,
        dtype=torch.float64,
        names=names,
    )
    raw2 = raw.reshape(-1, raw.shape[-1]) if raw.dim() != 2 else raw
    det2 = det.reshape(-1, det.shape[-1]) if det.dim() != 2 else det
    kk = min(k, raw2.shape[1])
    top_raw = raw2.topk(kk, dim=1).indices
    top_det = det2.topk(kk, dim=1).indices
    overlap = torch.tensor(
        [len(set(a.tolist()) & set(b.tolist())) / kk for a, b in zip(top_raw, top_det, strict=True)]
    )
    rc = raw2 - raw2.mean(1, keepdim=True)
    dc = det2 - det2.mean(1, keepdim=True)
    denom = torch.linalg.vector_norm(rc, dim=1) * torch.linalg.vector_norm(dc, dim=1)
    corr = torch.where(
        denom > 0, (rc * dc).sum(1) / denom.clamp_min(1e-300), torch.ones_like(denom)
    )
    return {
        "trend_share": trend_share(query_traces, train_traces),
        "mean_abs_change": float((raw - det).abs().mean()),
        "topk_overlap": float(overlap.mean()),
        "score_correlation": float(corr.mean()),
    }


@dataclass
class RunHealth:
    """What an experiment reports about the chains behind its BIF scores.

    Attributes:
        healthy: the core diagnostics (no drift, R-hat), every health rule (``precision``
            included) and every extra check pass.
        summary: one line: verdict and every rule with its value and limit.
        metrics: flat floats for MLflow: ``chain/*`` (core diagnostics), ``health/*`` (rules and
            statistics) and, for per-item traces, ``detrend/*`` (:func:`detrend_effect`: what
            removing per-chain linear trends would change in the scores).
        report: the rule outcomes.
    """

    healthy: bool
    summary: str
    metrics: dict[str, float]
    report: HealthReport

    @property
    def verdict(self) -> str:
        """Short verdict for figure titles: ``chains healthy`` or ``chains UNHEALTHY (rules)``."""
        if self.healthy:
            return "chains healthy"
        failed = [c.name for c in self.report.failed] or ["core diagnostics"]
        return f"chains UNHEALTHY ({', '.join(failed)})"


def run_health(
    traces: Any,
    num_params: int | None = None,
    *,
    query: str = "query",
    train: str = "train",
    normalize: str = "correlation",
    thresholds: HealthThresholds | None = None,
    step_curvature: float | None = None,
    extra_checks: Sequence[HealthCheck | None] = (),
    precision_queries: int | None = 32,
    precision_items: int | None = 4096,
) -> RunHealth:
    """Chain health of a finished BIF run, as every experiment reports it.

    ``num_params``: sampled parameters (``requires_grad``); default ``traces.num_params`` (a
    ``ValueError`` if the traces do not record it either). The ``precision`` rule
    (:func:`check_precision`, on the first ``precision_queries`` queries and ``precision_items``
    training items; tokens for per-token traces) judges observables ``query`` and ``train``; the
    detrending effect is computed for per-item traces (``[chains, draws, items]``) only.
    ``step_curvature``: the calibration's measured ``ε·λ_max(P^½(nβH + γI)P^½)`` for the step rule;
    ``extra_checks``: checks computed elsewhere (e.g. ``step_halving``), counted in the verdict.
    """
    diag = traces.diagnostics
    report = assess_traces(
        traces, _num_params(traces, num_params), thresholds, step_curvature=step_curvature
    )
    names = set(traces.names)
    effect: dict[str, float] | None = None
    if {query, train} <= names:
        q, t = traces[query], traces[train]
        precision, s = check_precision(
            q, t, thresholds, normalize, precision_queries, precision_items
        )
        report.checks.append(precision)
        report.stats.update(s)
        if q.dim() == 3 and t.dim() == 3:
            if _finite(q) and _finite(t):
                effect = detrend_effect(q, t, normalize=normalize)
            else:  # the ess rule has already failed, naming the non-finite items
                effect = dict.fromkeys(_DETREND_KEYS, math.nan)
    _append_extra(report, extra_checks)
    metrics = {**diag.to_metrics("chain/"), **report.to_metrics("health/")}
    if effect is not None:
        metrics.update({f"detrend/{k}": float(v) for k, v in effect.items()})
    healthy = bool(diag.is_healthy and report.is_healthy)
    summary = report.summary()
    if not diag.is_healthy and report.is_healthy:
        summary = "chains UNHEALTHY: " + "; ".join(diag.problems) + f" ({summary})"
    return RunHealth(healthy, summary, metrics, report)


_DETREND_KEYS = ("trend_share", "mean_abs_change", "topk_overlap", "score_correlation")


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())
