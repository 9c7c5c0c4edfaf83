"""BIF vs EK-FAC cost across a family of causal LMs: timing per phase, cost models, crossover.

The paper's compute claim is about model size: across the Pythia family BIF's evaluation time
grows more slowly than EK-FAC's. This module measures both methods on the same work at each size
of a family of embedded Llama-style models (:func:`family`) and summarises the measurements:

* **Timing per phase** (wall clock and peak RSS / CUDA increase from
  :func:`bifrepro.attribution.timing.measure_phase`):

  - EK-FAC (kronfluence): ``factors_covariance``, ``factors_eigendecomposition``,
    ``factors_lambda`` (the three steps of ``fit_all_factors``, timed by wrapping the
    ``Analyzer`` methods while they run), then ``scores_token`` (per training token,
    ``[q, n, T]``) and ``scores_sequence`` (``[q, n]``) on the same factors.
  - BIF: ``burn_in``, ``draws``, ``scores_token`` and ``scores_sequence``. A pilot of
    ``pilot_chains × (pilot_burn_in + pilot_draws)`` SGLD steps is timed, and a second run of one
    chain without burn-in gives the cost per draw; the burn-in cost per step is the difference.
    Both are scaled to the full run (``chains × (burn_in + draws)``), where ``draws`` per chain
    is what the pilot's Monte Carlo errors say reaches the precision target
    (:func:`~bifrepro.sampling.precision_target.draws_for_resolved`). Score phases are timed on
    the pilot's traces and scaled by the draw count (their cost is linear in it). Every row says
    ``measured`` or ``scaled``.

* **Cost models**: per method and phase ``t ≈ c + a·P^b`` in the parameter count ``P``
  (:func:`fit_power_laws`; ``c`` is a fixed per-call cost, fitted when there are enough sizes);
  the q sweep gives ``t ≈ c0 + c_q·q`` per size (:func:`fit_q_costs`); a method's total is the sum of its phases' laws, so the fastest-growing
  phase dominates at large ``P``. :func:`crossover_params` finds the size at which BIF's total
  drops below EK-FAC's (or says there is none and which term dominates) and
  :func:`extrapolate` evaluates the laws at Pythia's sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bifrepro.attribution.base import CausalLMTask
from bifrepro.attribution.configs import EKFACConfig
from bifrepro.attribution.ekfac import EKFACAttributor
from bifrepro.attribution.timing import PhaseTiming, measure_phase
from bifrepro.attribution.token_bif import TokenBIF, sample_token_traces
from bifrepro.evaluation.cost import loglog_slope
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.precision_target import draws_for_resolved
from bifrepro.sampling.uncertainty import bif_standard_errors

__all__ = [
    "LMSize",
    "PYTHIA_PARAMS",
    "EKFAC_PHASES",
    "BIF_PHASES",
    "TOTAL_PHASES",
    "family",
    "llama_params",
    "BIFPlan",
    "time_ekfac",
    "time_ekfac_scores",
    "fit_ekfac",
    "time_bif",
    "time_bif_queries",
    "with_totals",
    "fit_power_laws",
    "fit_q_costs",
    "predict",
    "crossover_params",
    "extrapolate",
    "headline",
    "summary_markdown",
]

log = logging.getLogger(__name__)

#: Parameter counts of the Pythia family (deduplicated checkpoints, untied embeddings).
PYTHIA_PARAMS: dict[str, int] = {
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
}

EKFAC_PHASES = (
    "factors_covariance",
    "factors_eigendecomposition",
    "factors_lambda",
    "scores_token",
    "scores_sequence",
)
BIF_PHASES = ("burn_in", "draws", "scores_token", "scores_sequence")
#: Phases that make up a per-token attribution run (the ``total`` row and the crossover).
TOTAL_PHASES: dict[str, tuple[str, ...]] = {
    "ekfac": EKFAC_PHASES[:4],
    "bif": BIF_PHASES[:3],
}


@dataclass(frozen=True)
class LMSize:
    """One member of the family: a Llama-style LM (MLP width ``mlp_ratio × hidden_size``)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_ratio: int = 4

    @property
    def intermediate_size(self) -> int:
        return self.mlp_ratio * self.hidden_size


def family(
    hidden_sizes: Sequence[int],
    num_layers: Sequence[int],
    num_heads: Sequence[int],
    mlp_ratio: int = 4,
) -> list[LMSize]:
    """The family from parallel lists (layers and width grow together, as in Pythia's family)."""
    if not len(hidden_sizes) == len(num_layers) == len(num_heads):
        raise ValueError("hidden_sizes, num_layers and num_heads must have the same length")
    return [
        LMSize(f"L{layers}-d{d}", int(d), int(layers), int(h), mlp_ratio)
        for d, layers, h in zip(hidden_sizes, num_layers, num_heads, strict=True)
    ]


def llama_params(size: LMSize, vocab_size: int) -> int:
    """Parameter count of :class:`LMSize` as built by ``tiny_causal_lm`` (untied head, RMSNorms):
    attention ``4d²``, gated MLP ``3·d·m``, two norms per block, embeddings, final norm, head."""
    d, m = size.hidden_size, size.intermediate_size
    block = 4 * d * d + 3 * d * m + 2 * d
    return size.num_layers * block + 2 * vocab_size * d + d


def _row(method: str, phase: str, t: PhaseTiming, status: str, **extra: Any) -> dict[str, Any]:
    mem = t.peak_rss_mb if math.isnan(t.peak_cuda_mb) else t.peak_cuda_mb
    return {
        "method": method,
        "phase": phase,
        "seconds": float(t.seconds),
        "peak_memory_mb": float(mem),
        "status": status,
        **extra,
    }


@contextlib.contextmanager
def _timed_analyzer_steps(records: dict[str, PhaseTiming]) -> Iterator[None]:
    """Time kronfluence's three factor steps while ``fit_all_factors`` calls them."""
    from kronfluence.analyzer import Analyzer

    steps = {
        "fit_covariance_matrices": "factors_covariance",
        "perform_eigendecomposition": "factors_eigendecomposition",
        "fit_lambda_matrices": "factors_lambda",
    }
    originals = {name: getattr(Analyzer, name) for name in steps}

    def wrap(name: str) -> Any:
        original = originals[name]

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            with measure_phase() as rec:
                out = original(self, *args, **kwargs)
            records[steps[name]] = rec
            return out

        return timed

    try:
        for name in steps:
            setattr(Analyzer, name, wrap(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(Analyzer, name, original)


def time_ekfac(
    model: torch.nn.Module, train: Dataset, query: Dataset, settings: EKFACConfig
) -> tuple[list[dict[str, Any]], EKFACAttributor]:
    """EK-FAC factors (three steps) and per-token and sequence scores, each timed.

    Returns the rows (every one ``measured``) and the fitted attributor, whose factors
    :func:`time_ekfac_scores` reuses for other query sets.
    """
    records: dict[str, PhaseTiming] = {}
    att = EKFACAttributor(dataclasses.replace(settings, per_token="train"))
    with _timed_analyzer_steps(records):
        att.fit(model, CausalLMTask(reduction="sum"), train)
    missing = [p for p in EKFAC_PHASES[:3] if p not in records]
    if missing:
        raise RuntimeError(f"ekfac: kronfluence did not run the factor steps {missing}")
    rows = [_row("ekfac", p, records[p], "measured") for p in EKFAC_PHASES[:3]]
    rows += time_ekfac_scores(att, query)
    return rows, att


def fit_ekfac(model: torch.nn.Module, train: Dataset, settings: EKFACConfig) -> EKFACAttributor:
    """EK-FAC factors on ``train`` (untimed; the q sweep's factors)."""
    att = EKFACAttributor(dataclasses.replace(settings, per_token="train"))
    return att.fit(model, CausalLMTask(reduction="sum"), train)  # type: ignore[return-value]


def time_ekfac_scores(
    att: EKFACAttributor, query: Dataset, sequence: bool = True
) -> list[dict[str, Any]]:
    """Per-token (``[q, n, T]``) and, with ``sequence``, sequence (``[q, n]``) scores on the
    fitted factors."""
    rows = []
    base = att.config
    levels = [("scores_token", "train")] + ([("scores_sequence", "none")] if sequence else [])
    for phase, per_token in levels:
        att.config = dataclasses.replace(base, per_token=per_token)
        with measure_phase() as rec:
            scores = att._score(query)
        expected = 3 if per_token == "train" else 2
        if scores.dim() != expected:
            raise RuntimeError(f"ekfac {phase}: unexpected score shape {tuple(scores.shape)}")
        rows.append(_row("ekfac", phase, rec, "measured"))
    att.config = base
    return rows


@dataclass(frozen=True)
class BIFPlan:
    """How BIF is timed at one size (see the module docstring)."""

    #: Chains and burn-in of the full run (the sampler's).
    chains: int
    burn_in: int
    #: The pilot that is actually run.
    pilot_chains: int = 2
    pilot_burn_in: int = 10
    pilot_draws: int = 8
    #: Draws per chain of the full run; None: from the pilot and the precision target.
    draws: int | None = None
    #: Share of each query's top-k resolved beyond Monte Carlo noise.
    target_resolved: float = 0.5
    k: int = 10
    #: Bounds of the draws the precision rule may choose.
    min_draws: int = 50
    max_draws: int = 2000


def _pilot_draws_needed(traces: Any, plan: BIFPlan) -> float:
    """Draws per chain for the precision target, from the pilot's sequence-level errors."""
    q_seq = traces["query"].sum(-1)
    t_seq = traces["train"].sum(-1)
    unc = bif_standard_errors(q_seq, t_seq, normalize="correlation", method="batch_means")
    k = min(plan.k, int(t_seq.shape[-1]) - 1)
    return draws_for_resolved(unc, plan.target_resolved, k=k, num_chains=plan.chains)


def _time_bif_scores(traces: Any) -> dict[str, PhaseTiming]:
    """Per-token ``[q, n, T]`` (query sequence vs training tokens) and sequence ``[q, n]``."""
    q_seq = traces["query"].sum(-1, keepdim=True)
    tb = TokenBIF(q_seq, traces["train"])
    tokens = [(i, 0) for i in range(q_seq.shape[2])]
    out = {}
    with measure_phase() as out["scores_token"]:
        tb.scores(tokens)
    with measure_phase() as out["scores_sequence"]:
        tb.sequence_scores(tokens)
    return out


def time_bif(
    model: torch.nn.Module,
    sgld_data: Dataset,
    train: Dataset,
    query: Dataset,
    sampler: SGLDConfig,
    plan: BIFPlan,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """BIF's phases at one size: measured on a pilot, scaled to the full run.

    Returns the rows and a summary (``draws`` chosen, ``draws_rule``, ``healthy``, per-step and
    per-draw seconds).
    """
    pilot_cfg = dataclasses.replace(
        sampler,
        num_chains=plan.pilot_chains,
        burn_in=plan.pilot_burn_in,
        num_draws=plan.pilot_draws,
        first_chain=0,
    )
    with measure_phase() as pilot_rec:
        traces = sample_token_traces(model, train, query, pilot_cfg, sgld_data=sgld_data)
    healthy = bool(traces.diagnostics.is_healthy)
    per_draw_rec, per_draw, _ = _per_draw(model, sgld_data, train, query, sampler, plan.pilot_draws)
    burn_rec, burn_step = _burn_in_step(model, sgld_data, train, sampler, plan.pilot_burn_in)
    if plan.draws is not None:
        draws, rule = plan.draws, "fixed"
    else:
        needed = _pilot_draws_needed(traces, plan)
        draws = int(min(max(needed if math.isfinite(needed) else plan.max_draws, plan.min_draws),
                        plan.max_draws))  # fmt: skip
        rule = f"pilot: {needed:g} needed for {plan.target_resolved:.0%} of top-{plan.k} resolved"
    total_draws = plan.chains * draws
    pilot_draws = plan.pilot_chains * plan.pilot_draws
    score_recs = _time_bif_scores(traces)
    rows = []
    burn = dataclasses.replace(burn_rec, seconds=burn_step * plan.burn_in * plan.chains)
    rows.append(_row("bif", "burn_in", burn, "scaled", healthy=healthy))
    draw_rec = dataclasses.replace(pilot_rec, seconds=per_draw * total_draws)
    draw_status = "measured" if total_draws <= pilot_draws else "scaled"
    rows.append(_row("bif", "draws", draw_rec, draw_status, healthy=healthy))
    for phase, rec in score_recs.items():
        scaled = dataclasses.replace(rec, seconds=rec.seconds * total_draws / pilot_draws)
        rows.append(_row("bif", phase, scaled, draw_status, healthy=healthy))
    info = {
        "draws": draws,
        "draws_rule": rule,
        "healthy": healthy,
        "burn_in_step_seconds": burn_step,
        "draw_seconds": per_draw,
        "pilot_seconds": pilot_rec.seconds,
        "per_draw_run_seconds": per_draw_rec.seconds,
        "burn_in_run_seconds": burn_rec.seconds,
    }
    return rows, info


def _burn_in_step(
    model: torch.nn.Module, sgld_data: Dataset, train: Dataset, sampler: SGLDConfig, steps: int
) -> tuple[PhaseTiming, float]:
    """Seconds per SGLD step: one chain of ``steps`` burn-in steps and a single draw observing
    one training sequence (so nearly all of the time is SGLD steps; the run's fixed overhead is
    included, which errs on the expensive side for BIF)."""
    cfg = dataclasses.replace(sampler, num_chains=1, burn_in=steps, num_draws=1, first_chain=0)
    one = torch.utils.data.Subset(train, [0])
    with measure_phase() as rec:
        sample_token_traces(model, one, one, cfg, sgld_data=sgld_data)
    return rec, rec.seconds / (steps + 1)


def _per_draw(
    model: torch.nn.Module,
    sgld_data: Dataset,
    train: Dataset,
    query: Dataset,
    sampler: SGLDConfig,
    draws: int,
) -> tuple[PhaseTiming, float, Any]:
    """One chain without burn-in: its timing, seconds per draw (SGLD steps plus the observation
    passes) and its traces."""
    cfg = dataclasses.replace(sampler, num_chains=1, burn_in=0, num_draws=draws, first_chain=0)
    with measure_phase() as rec:
        traces = sample_token_traces(model, train, query, cfg, sgld_data=sgld_data)
    return rec, rec.seconds / draws, traces


def time_bif_queries(
    model: torch.nn.Module,
    sgld_data: Dataset,
    train: Dataset,
    query: Dataset,
    sampler: SGLDConfig,
    probe_draws: int,
    chains: int,
    draws: int,
) -> list[dict[str, Any]]:
    """BIF's query-dependent phases for one query set (the q sweep): a chain of ``probe_draws``
    draws is timed and its per-draw and score costs scaled to ``chains × draws`` (burn-in does
    not depend on q). Rows ``draws``, ``scores_token``, ``scores_sequence``, all ``scaled``."""
    rec, per_draw, traces = _per_draw(model, sgld_data, train, query, sampler, probe_draws)
    factor = chains * draws / probe_draws
    rows = [_row("bif", "draws", dataclasses.replace(rec, seconds=per_draw * chains * draws),
                 "scaled")]  # fmt: skip
    for phase, srec in _time_bif_scores(traces).items():
        rows.append(_row("bif", phase, dataclasses.replace(srec, seconds=srec.seconds * factor),
                         "scaled"))  # fmt: skip
    return rows


def with_totals(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus a ``total`` row per method and size: the sum of :data:`TOTAL_PHASES`
    (``scaled`` if any part is), peak memory the largest of the parts."""
    keys = [c for c in rows.columns if c not in ("phase", "seconds", "peak_memory_mb", "status")]
    extra = []
    for method, phases in TOTAL_PHASES.items():
        part = rows[(rows["method"] == method) & rows["phase"].isin(phases)]
        for _, g in part.groupby("num_params", sort=True):
            first = g.iloc[0]
            row = {k: first[k] for k in keys}
            row.update(
                phase="total",
                seconds=float(g["seconds"].sum()),
                peak_memory_mb=float(g["peak_memory_mb"].max()),
                status="scaled" if (g["status"] == "scaled").any() else "measured",
            )
            extra.append(row)
    return pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)


def _fit_offset_power_law(p: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, c)`` of ``t ≈ c + a·P^b`` (``a, c >= 0``), least squares in relative error:
    for each exponent ``b`` the linear part is a non-negative least squares problem; ``b`` is
    scanned on a grid, then refined."""
    from scipy.optimize import minimize_scalar, nnls

    w = 1.0 / t
    scale = p.max()

    def solve(b: float) -> tuple[float, np.ndarray]:
        design = np.stack([np.ones_like(p), (p / scale) ** b], axis=1) * w[:, None]
        coef, resid = nnls(design, t * w)
        return resid, coef

    grid = np.linspace(0.0, 3.0, 301)
    best = grid[int(np.argmin([solve(b)[0] for b in grid]))]
    res = minimize_scalar(lambda b: solve(b)[0], bounds=(max(0.0, best - 0.01), best + 0.01),
                          method="bounded", options={"xatol": 1e-7})  # fmt: skip
    b = float(res.x)
    c, a_scaled = solve(b)[1]
    return float(a_scaled / scale**b), b, float(c)


def fit_power_laws(rows: pd.DataFrame, offset_min_points: int = 4) -> pd.DataFrame:
    """``seconds ≈ c + a·P^b`` per (method, phase) over sizes.

    With at least ``offset_min_points`` sizes the fixed cost ``c >= 0`` (per-call overhead, e.g.
    kronfluence's set-up) is fitted too, so that ``b`` describes how the cost grows; with fewer,
    ``c = 0`` and ``a, b`` come from least squares in log-log. Columns: method, phase, a, b, c,
    points, p_min, p_max.
    """
    out = []
    for (method, phase), g in rows.groupby(["method", "phase"], sort=True):
        # a phase too fast to time (0 s) would drop out of the log-log fit: floor at 1 µs
        p = g["num_params"].to_numpy(dtype=float)
        t = g["seconds"].clip(lower=1e-6).to_numpy(dtype=float)
        if np.unique(p).size >= offset_min_points:
            a, b, c = _fit_offset_power_law(p, t)
        else:
            b, intercept = loglog_slope(p, t)
            a, c = (10.0**intercept if math.isfinite(intercept) else math.nan), 0.0
        out.append(
            {
                "method": method,
                "phase": phase,
                "a": a,
                "b": b,
                "c": c,
                "points": int(len(g)),
                "p_min": float(p.min()),
                "p_max": float(p.max()),
            }
        )
    return pd.DataFrame(out)


def fit_q_costs(q_rows: pd.DataFrame) -> pd.DataFrame:
    """``seconds ≈ c0 + c_q·q`` of each method's query-dependent per-token phases (EK-FAC's
    scores; BIF's draws and scores) at each size of the q sweep."""
    out = []
    part = q_rows[q_rows["phase"] != "scores_sequence"]
    summed = part.groupby(["method", "num_params", "q"], as_index=False)["seconds"].sum()
    for (method, p), g in summed.groupby(["method", "num_params"], sort=True):
        if g["q"].nunique() < 2:
            continue
        c_q, c0 = np.polyfit(g["q"].to_numpy(float), g["seconds"].to_numpy(float), 1)
        out.append({"method": method, "num_params": p, "c0": float(c0), "c_q": float(c_q)})
    return pd.DataFrame(out)


def predict(fits: pd.DataFrame, method: str, params: float | np.ndarray) -> np.ndarray:
    """A method's modelled total: the sum over its :data:`TOTAL_PHASES` of ``a·P^b``."""
    p = np.asarray(params, dtype=float)
    f = fits[(fits["method"] == method) & fits["phase"].isin(TOTAL_PHASES[method])]
    if len(f) != len(TOTAL_PHASES[method]) or f[["a", "b", "c"]].isna().any().any():
        return np.full(p.shape, math.nan)
    return sum(r.c + r.a * p**r.b for r in f.itertuples())  # type: ignore[return-value]


def _dominant(fits: pd.DataFrame, method: str, p: float) -> str:
    f = fits[(fits["method"] == method) & fits["phase"].isin(TOTAL_PHASES[method])]
    terms = {r.phase: r.c + r.a * p**r.b for r in f.itertuples()}
    return max(terms, key=terms.get) if terms else ""  # type: ignore[arg-type]


def crossover_params(
    fits: pd.DataFrame, p_lo: float, p_hi: float = 1e13, points: int = 2000
) -> dict[str, Any]:
    """Where the cheaper of the two modelled totals changes, searching ``[p_lo, p_hi]``.

    Returns ``cheaper_at_smallest`` (``"bif"`` or ``"ekfac"`` at ``p_lo``), ``crossover_params``
    (the first size at which the other method becomes the cheaper one; ``inf`` if none up to
    ``p_hi``), ``crossover_direction`` (``"bif_becomes_cheaper"``, ``"ekfac_becomes_cheaper"``
    or ``""``), the local log-log slope of each total and each method's dominant phase at the
    crossover (at ``p_hi`` when there is none).
    """
    grid = np.logspace(math.log10(p_lo), math.log10(p_hi), points)
    bif, ek = predict(fits, "bif", grid), predict(fits, "ekfac", grid)
    if np.isnan(bif).any() or np.isnan(ek).any():
        return {"crossover_params": math.nan, "cheaper_at_smallest": "", "crossover_direction": ""}
    bif_cheaper = bif <= ek
    first = "bif" if bif_cheaper[0] else "ekfac"
    change = np.flatnonzero(bif_cheaper != bif_cheaper[0])
    p_star = float(grid[change[0]]) if change.size else math.inf
    direction = "" if not change.size else f"{'ekfac' if first == 'bif' else 'bif'}_becomes_cheaper"
    at = p_star if math.isfinite(p_star) else p_hi

    def local_slope(m: str) -> float:
        y = predict(fits, m, np.array([at / 2, at]))
        return float(np.log2(y[1] / y[0]))

    return {
        "cheaper_at_smallest": first,
        "crossover_params": p_star,
        "crossover_direction": direction,
        "slope_bif": local_slope("bif"),
        "slope_ekfac": local_slope("ekfac"),
        "dominant_bif": _dominant(fits, "bif", at),
        "dominant_ekfac": _dominant(fits, "ekfac", at),
    }


def extrapolate(
    fits: pd.DataFrame, targets: dict[str, int] | None = None, rows: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Modelled totals of both methods at ``targets`` (default: :data:`PYTHIA_PARAMS`).

    Columns: model, num_params, bif_seconds, ekfac_seconds, ratio_ekfac_over_bif; with the
    timing ``rows`` the fits came from, also ``ratio_loo_low/high``: the smallest and largest
    ratio when the laws are refitted without one measured size at a time (how much a single size
    moves an extrapolation far beyond the measured range).
    """
    targets = PYTHIA_PARAMS if targets is None else targets
    p = np.array(list(targets.values()), dtype=float)
    bif, ek = predict(fits, "bif", p), predict(fits, "ekfac", p)
    out = pd.DataFrame(
        {
            "model": list(targets),
            "num_params": p.astype(np.int64),
            "bif_seconds": bif,
            "ekfac_seconds": ek,
            "ratio_ekfac_over_bif": ek / bif,
        }
    )
    sizes = np.unique(rows["num_params"]) if rows is not None else np.array([])
    if sizes.size >= 3:
        refits = [fit_power_laws(rows[rows["num_params"] != s]) for s in sizes]  # type: ignore[index]
        ratios = np.array([predict(f, "ekfac", p) / predict(f, "bif", p) for f in refits])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            out["ratio_loo_low"] = np.nanmin(ratios, axis=0)
            out["ratio_loo_high"] = np.nanmax(ratios, axis=0)
    return out


def headline(
    table: pd.DataFrame,
    fits: pd.DataFrame,
    cross: dict[str, Any],
    extra: pd.DataFrame,
    infos: Sequence[dict[str, Any]],
    num_query: int,
    q_costs: pd.DataFrame | None = None,
) -> tuple[dict[str, float], str]:
    """Summary metrics (ratio at the largest size, fitted exponents, crossover, the ratio
    extrapolated to each Pythia size) and the extrapolation's assumptions as text."""
    totals = table[table["phase"] == "total"].pivot_table(
        index="num_params", columns="method", values="seconds"
    )
    metrics: dict[str, float] = {}
    if {"bif", "ekfac"} <= set(totals.columns):
        largest = totals.iloc[-1]
        metrics["ratio/largest_ekfac_over_bif"] = float(largest["ekfac"] / largest["bif"])
        metrics["ratio/smallest_ekfac_over_bif"] = float(
            totals.iloc[0]["ekfac"] / totals.iloc[0]["bif"]
        )
        metrics["largest_num_params"] = float(totals.index[-1])
    for r in fits.itertuples():
        metrics[f"exponent/{r.method}/{r.phase}"] = float(r.b)
    metrics["crossover_params"] = float(cross.get("crossover_params", math.nan))
    for r in extra.itertuples():
        metrics[f"extrapolated/{r.model}/ratio_ekfac_over_bif"] = float(r.ratio_ekfac_over_bif)
        for end in ("low", "high"):
            if hasattr(r, f"ratio_loo_{end}"):
                value = float(getattr(r, f"ratio_loo_{end}"))
                metrics[f"extrapolated/{r.model}/ratio_loo_{end}"] = value
    for r in (q_costs if q_costs is not None else pd.DataFrame()).itertuples():
        metrics[f"q_cost/{r.method}/{int(r.num_params)}/seconds_per_query"] = float(r.c_q)
    draws = [int(i["draws"]) for i in infos if "draws" in i]
    healthy = [bool(i["healthy"]) for i in infos if "healthy" in i]
    metrics["bif/healthy_sizes"] = float(sum(healthy))
    chains = table.loc[table["method"] == "bif", "chains"].dropna()
    c = int(chains.iloc[0]) if len(chains) else 0
    d = int(np.median(draws)) if draws else 0
    p = table["num_params"]
    sizes = f"{p.nunique()} sizes, {p.min() / 1e6:.2g}M–{p.max() / 1e6:.2g}M parameters"
    assumptions = "\n".join(
        [
            "Extrapolation assumes:",
            f"• t = Σ_phase (c + a·P^b), fitted on {sizes}",
            f"• same work: n={int(table['n'].iloc[0])}, q={num_query}, "
            f"T={int(table['T'].iloc[0])} at every size",
            f"• BIF {c} chains × {d} draws (median of the pilot rule) at every size",
            "• same device and thread count; no memory limit",
            "• Pythia's wider vocabulary and context ignored",
        ]
    )
    return metrics, assumptions


def summary_markdown(
    metrics: dict[str, float],
    cross: dict[str, Any],
    extra: pd.DataFrame,
    assumptions: str,
    device: str,
) -> str:
    """The measured ratio, the exponents, the crossover and the extrapolation, as Markdown
    (for the README / the docs), generated from the results."""

    def g(key: str) -> str:
        v = metrics.get(key, math.nan)
        return "n/a" if not math.isfinite(v) else f"{v:.3g}"

    p_star = cross.get("crossover_params", math.nan)
    first = {"bif": "BIF", "ekfac": "EK-FAC"}.get(cross.get("cheaper_at_smallest", ""), "")
    terms = (
        f"dominant terms: BIF {cross.get('dominant_bif')} (total slope "
        f"{cross.get('slope_bif', math.nan):.2f}), EK-FAC {cross.get('dominant_ekfac')} "
        f"(slope {cross.get('slope_ekfac', math.nan):.2f})"
    )
    if p_star == math.inf:
        cross_text = f"none up to 1e13 parameters: {first} stays the cheaper method; {terms}"
    elif isinstance(p_star, float) and math.isfinite(p_star):
        other = "EK-FAC" if first == "BIF" else "BIF"
        cross_text = (
            f"{first} is cheaper at the smallest size and {other} becomes the cheaper method at "
            f"about {p_star:.3g} parameters; there, {terms}"
        )
    else:
        cross_text = "not determined (too few sizes fitted)"
    lines = [
        f"**LM family, {device}.** Measured EK-FAC / BIF time ratio (per-token attribution, "
        f"totals): {g('ratio/smallest_ekfac_over_bif')} at the smallest size, "
        f"{g('ratio/largest_ekfac_over_bif')} at the largest "
        f"({g('largest_num_params')} parameters). Fitted exponents of the totals (t ∝ P^b): "
        f"BIF {g('exponent/bif/total')}, EK-FAC {g('exponent/ekfac/total')}. "
        f"Crossover: {cross_text}.",
        "",
        "| model | parameters | BIF s | EK-FAC s | EK-FAC / BIF |",
        "|---|---|---|---|---|",
    ]
    for r in extra.itertuples():
        lines.append(
            f"| {r.model} | {r.num_params:.3g} | {r.bif_seconds:.3g} | {r.ekfac_seconds:.3g} | "
            f"{r.ratio_ekfac_over_bif:.3g} |"
        )
    lines += ["", "Paper: EK-FAC about 100× slower than BIF at Pythia-2.8B (4×A100).", ""]
    lines += [assumptions.replace("\n•", "\n-"), ""]
    return "\n".join(lines)
