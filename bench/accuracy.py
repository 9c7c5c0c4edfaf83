"""Accuracy bench: BIF estimates against exact answers, for every sampler setting worth asking about.

Tasks (each small enough for an exact answer; float64 ground truth from
:mod:`bifrepro.evaluation.ground_truth` and ``method=exact_if``):

* ``linear_gaussian`` — linear regression; truth: the exact covariance of per-item losses under the
  Gaussian local posterior (continuous time), which is what ``+Cov`` estimates.
* ``logistic_loo`` — L2-regularised logistic regression on a binary MNIST digit pair (the embedded
  ``mnist5k`` digits, PCA features); truth: exact leave-one-out retraining (Newton from w*).
* ``mlp_exact_if`` / ``mlp_loo`` — a tanh MLP on the same digits; truths: the exact damped
  influence function at the matching damping (``method=exact_if``, λ = γ/nβ) and, for a seeded
  subset of training items, exact leave-one-out retraining (Newton from w*). One set of runs.
* ``token_exact_if`` — per-token: a tiny neural bigram language model on Markov-chain sequences;
  each predicted query token's loss is a separate measurement; truth: exact damped influence.

Posterior and sign. Models are trained on ``J(θ) = Σ_i ℓ_i(θ) + (λ/2)|θ|²``; BIF samples
``exp(-nβ·L(θ) - γ/2·|θ - θ*|²)`` with ``nβ = n`` and ``γ = λ``, whose Hessian at θ* equals J's,
so ``+Cov(φ_q, ℓ_i)`` estimates, to first order, ``φ_q(θ_{-i}) - φ_q(θ*)``: the *increase* of the
query loss when item ``i`` is left out (= its decrease when ``i`` is added). Every truth is in
that sign: positive = helpful, as ``bif_scores`` reports. The sampled loss is the data loss only
and the localization is centred at θ*, so the posterior's mode sits near θ* + H_J⁻¹λθ*, not at θ*:
that bias is part of BIF as configured here, and the bench measures it with the rest.

Settings (per task): plain SGLD, RMSProp-SGLD and RMSProp-SGLD with the preconditioner frozen
after burn-in (``rmsprop_frozen``) at the step size ``calibrate()`` picks, SGHMC (momentum,
``integrator="sghmc"``, friction 0.1) at the calibrated step of plain SGLD and of frozen
RMSProp-SGLD (same step units; SGHMC is at least as stable at a given step), at
deliberately too large and too small steps, with too few draws, and with fewer, longer chains;
three sampler seeds each. Per run: Spearman and Pearson (mean over query rows) of BIF
(covariance and correlation) against the truth, seed-to-seed agreement, sampling wall time,
ESS and the ``run_health`` verdict with the rules that failed.

"Accurate" = mean Spearman (covariance) within 0.05 of the best reachable at the same budget
(chains × draws): for shorter runs that best is taken over the standard-budget runs of every
step size truncated to the same draws (a chain's first k draws are exactly what a k-draw run
with the same seed records).

Outputs (``--out``, default ``results/accuracy``): ``accuracy.csv`` (task × setting × seed),
``summary.csv`` (task × setting), ``health_vs_accuracy.csv``, ``calibration.csv``,
``config.json`` and ``accuracy_vs_time.png``.

    python bench/accuracy.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter, NullFormatter
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from bifrepro.attribution import CausalLMTask, ClassificationTask, bif_scores, build_attributor
from bifrepro.attribution.base import AttributionTask
from bifrepro.data.images import load_embedded_images
from bifrepro.evaluation import ground_truth as gt
from bifrepro.evaluation.lds import spearman_rows
from bifrepro.io import (
    atomic_save_figure,
    atomic_write_csv,
    atomic_write_json,
    round_significant,
    staged_directory,
)
from bifrepro.models.small import MLPClassifier
from bifrepro.plots.style import house_style, new_figure
from bifrepro.sampling import (
    CalibrationConfig,
    CalibrationReport,
    SamplerDivergedError,
    SGLDConfig,
    calibrate_report,
    run_health,
    sample_loss_traces,
)

LossFn = Callable[[nn.Module, Any], torch.Tensor]

#: Mean Spearman within this of the best reachable counts as accurate.
ACCURACY_MARGIN = 0.05


# -- problems --------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A trained model, its data, the posterior BIF samples and the exact answers."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    train: Dataset
    query: Dataset
    query_loss_fn: LossFn
    nbeta: float
    localization: float
    #: task name → (truth [rows, k], training columns it covers (None: all), what it is).
    truths: dict[str, tuple[torch.Tensor, torch.Tensor | None, str]]
    #: BIF scores [n_query(, T), n_train] → [rows, n_train] in the truths' row order.
    rows: Callable[[torch.Tensor], torch.Tensor] = lambda s: s
    truth_seconds: float = 0.0
    #: Cross-checks of the truths (e.g. Spearman of the influence function vs leave-one-out).
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def num_observed(self) -> int:
        """Items evaluated on every draw (training items and queries)."""
        return len(self.train) + len(self.query)  # type: ignore[arg-type]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _copy_flat(model: nn.Module, theta: torch.Tensor) -> None:
    """Write a flat parameter vector into the model's trainable parameters (in order)."""
    with torch.no_grad():
        start = 0
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(theta[start : start + p.numel()].view_as(p))
                start += p.numel()


def _pretrain(model: nn.Module, loss_fn: LossFn, batch: Any, l2: float, steps: int) -> None:
    """Full-batch Adam on ``Σ ℓ_i + (λ/2)|θ|²`` (a start for Newton's method)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    n = len(batch[0])
    for _ in range(steps):
        opt.zero_grad()
        reg = sum((p * p).sum() for p in model.parameters())
        loss = loss_fn(model, batch).mean() + 0.5 * l2 / n * reg
        loss.backward()
        opt.step()


def _check_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-3) -> None:
    a, b = a.detach().double(), b.detach().double()
    err = float(torch.linalg.norm(a - b) / torch.linalg.norm(b))
    if not err < tol:
        raise RuntimeError(f"ground truth self-check failed: {what} (relative error {err:.2g})")


def _require_minimum(exact: Any, what: str) -> None:
    """The exact influence needs a positive definite damped Hessian (w* a strict minimum)."""
    if not exact.positive_definite:
        raise RuntimeError(f"{what}: H + λI is not positive definite at w*; no exact answer")


def linear_problem(n: int = 200, n_query: int = 20, d: int = 8, seed: int = 0) -> Problem:
    """Linear regression, w* the least-squares fit; truth: exact Gaussian Cov of the losses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_query, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64)
    y = y + 0.7 * torch.randn(n + n_query, generator=g, dtype=torch.float64)
    xt, yt, xq, yq = x[:n], y[:n], x[n:], y[n:]
    w_star = torch.linalg.lstsq(xt, yt[:, None]).solution.squeeze(1)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star[None].float())

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return 0.5 * (yb - model(xb).squeeze(-1)) ** 2

    nbeta, gamma = float(n), 1.0
    start = time.perf_counter()
    # The sampler runs in float32: the truth is taken at the float32 weights it starts from.
    w32 = model.weight.detach().double().squeeze(0)
    sigma = gt.gaussian_posterior_covariance(xt, nbeta, gamma)
    truth = gt.linear_loss_covariance(xq, yq - xq @ w32, xt, yt - xt @ w32, sigma)
    return Problem(
        name="linear",
        model=model,
        loss_fn=loss_fn,
        train=TensorDataset(xt.float(), yt.float()),
        query=TensorDataset(xq.float(), yq.float()),
        query_loss_fn=loss_fn,
        nbeta=nbeta,
        localization=gamma,
        truths={
            "linear_gaussian": (truth, None, "exact Gaussian Cov(query loss, train loss)"),
        },
        truth_seconds=time.perf_counter() - start,
    )


def digit_pair(
    pair: tuple[int, int], n_train: int, n_query: int, components: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A balanced binary MNIST digit pair (embedded ``mnist5k``) as standardised PCA features.

    Returns ``(x_train, y_train, x_query, y_query)``; float64, labels 1 for ``pair[1]``.
    """
    data = load_embedded_images("mnist5k", test_per_class=50, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def take(ds: TensorDataset, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = ds.tensors
        idx = []
        for c in pair:
            members = torch.nonzero(y == c).flatten()
            idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
        order = torch.cat(idx)
        return x[order].flatten(1).double(), (y[order] == pair[1]).double()

    xt, yt = take(data.train, n_train // 2)
    xq, yq = take(data.test, n_query // 2)
    mean = xt.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(xt - mean, full_matrices=False)
    basis = v[:components].T
    zt, zq = (xt - mean) @ basis, (xq - mean) @ basis
    scale = zt.std(0, keepdim=True)
    return zt / scale, yt, zq / scale, yq


def logistic_problem(
    n: int = 300, n_query: int = 20, components: int = 20, l2: float = 1.0, seed: int = 0
) -> Problem:
    """L2-regularised logistic regression on digits 4 vs 9; truth: exact LOO by Newton."""
    xt, yt, xq, yq = digit_pair((4, 9), n, n_query, components, seed)
    start = time.perf_counter()
    theta = gt.fit_logistic(xt, yt, l2)
    model = nn.Linear(components, 1)
    _copy_flat(model, theta.float())  # the sampler's w*: θ* rounded to float32
    query_losses = gt.logistic_losses(xq, yq)
    loo = gt.loo_effects(query_losses, theta, gt.logistic_loo_parameters(xt, yt, l2, theta))
    influence = gt.influence_scores(gt.logistic_losses(xt, yt), query_losses, theta, l2)
    notes = {"spearman_influence_vs_loo": _mean_rows(spearman_rows, influence, loo)}

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return F.binary_cross_entropy_with_logits(model(xb).squeeze(-1), yb, reduction="none")

    return Problem(
        name="logistic",
        model=model,
        loss_fn=loss_fn,
        train=TensorDataset(xt.float(), yt.float()),
        query=TensorDataset(xq.float(), yq.float()),
        query_loss_fn=loss_fn,
        nbeta=float(n),
        localization=l2,
        truths={"logistic_loo": (loo, None, "exact leave-one-out retraining (Newton)")},
        truth_seconds=time.perf_counter() - start,
        notes=notes,
    )


def mlp_problem(
    n: int = 200,
    n_query: int = 10,
    components: int = 10,
    hidden: int = 8,
    l2: float = 1.0,
    loo_items: int = 40,
    seed: int = 0,
) -> Problem:
    """A tanh MLP on digits 4 vs 9; truths: exact damped IF (all items) and exact LOO (subset)."""
    xt, yt, xq, yq = digit_pair((4, 9), n, n_query, components, seed)
    train = TensorDataset(xt.float(), yt.long())
    query = TensorDataset(xq.float(), yq.long())
    task = ClassificationTask()
    torch.manual_seed(seed)
    model = MLPClassifier(components, 2, (hidden,))
    _pretrain(model, task.train_loss, train.tensors, l2, steps=1500)
    start = time.perf_counter()
    theta, train_losses = gt.flat_model_losses(model, task.train_loss, train.tensors)
    theta = gt.fit_l2(train_losses, theta, l2)
    _copy_flat(model, theta.float())  # the sampler's w*: θ* rounded to float32
    _, query_losses = gt.flat_model_losses(model, task.train_loss, query.tensors)
    items = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:loo_items].sort()[0]
    loo = gt.loo_effects(query_losses, theta, gt.loo_parameters(train_losses, theta, l2, items))
    exact = build_attributor({"name": "exact_if", "damping": l2 / n, "batch_size": 256})
    exact_if = exact.fit(model, task, train).score(query).double()
    _require_minimum(exact, "mlp")
    # exact_if uses the Hessian of the *mean* loss: n × the sum-objective influence function.
    influence = gt.influence_scores(train_losses, query_losses, theta, l2)
    _check_close(exact_if, n * influence, "method=exact_if vs the sum-objective influence")
    return Problem(
        name="mlp",
        model=model,
        loss_fn=task.train_loss,
        train=train,
        query=query,
        query_loss_fn=task.train_loss,
        nbeta=float(n),
        localization=l2,
        truths={
            "mlp_exact_if": (exact_if, None, "exact damped IF (method=exact_if, λ = γ/nβ)"),
            "mlp_loo": (loo, items, f"exact leave-one-out retraining (Newton), {loo_items} items"),
        },
        truth_seconds=time.perf_counter() - start,
        notes={"spearman_exact_if_vs_loo": _mean_rows(spearman_rows, exact_if[:, items], loo)},
    )


class NeuralBigramLM(nn.Module):
    """``logits(x_{s+1}) = W·tanh(E[x_s]) + b``: a tiny next-token model (Hugging Face call style).

    The tanh removes the continuous rotation symmetry of a plain bilinear ``W·E`` (along which the
    regularised objective is exactly flat, so its Hessian would be singular).
    """

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


class TokenQueryTask(AttributionTask):
    """Causal-LM losses in :class:`CausalLMTask`'s convention (per-token ``[B, T]``, position 0
    scores 0, mean over predicted tokens), in the model's dtype so Newton can reach float64
    precision. Query items are ``(input_ids, position)``: the measurement is that token's loss."""

    supports_per_token = True

    def train_loss_per_token(self, model: nn.Module, batch: Any) -> torch.Tensor:
        ids = batch[0] if isinstance(batch, list | tuple) else batch
        logits = model(input_ids=ids)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        return F.pad(nll / (ids.shape[1] - 1), (1, 0))

    def train_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.train_loss_per_token(model, batch).sum(dim=1)

    def measurement(self, model: nn.Module, batch: Any) -> torch.Tensor:
        ids, pos = batch
        return self.train_loss_per_token(model, ids).gather(1, pos[:, None]).squeeze(1)


def markov_sequences(vocab: int, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``[count, length]`` token ids from a random, fairly peaked Markov chain."""
    transition = torch.softmax(2.0 * torch.randn(vocab, vocab, generator=gen), dim=1)
    ids = torch.empty(count, length, dtype=torch.long)
    ids[:, 0] = torch.randint(vocab, (count,), generator=gen)
    for s in range(1, length):
        ids[:, s] = torch.multinomial(transition[ids[:, s - 1]], 1, generator=gen).squeeze(1)
    return ids


def token_problem(
    n: int = 120,
    n_query: int = 6,
    vocab: int = 8,
    hidden: int = 4,
    length: int = 12,
    l2: float = 1.0,
    seed: int = 0,
) -> Problem:
    """Per-token BIF on a neural bigram LM; truth: exact damped IF of every predicted query token."""
    gen = torch.Generator().manual_seed(seed)
    ids = markov_sequences(vocab, n + n_query, length, gen)
    train_ids, query_ids = ids[:n], ids[n:]
    task = TokenQueryTask()
    torch.manual_seed(seed)
    model = NeuralBigramLM(vocab, hidden)
    reference = CausalLMTask("mean").train_loss_per_token(model, [train_ids])
    _check_close(task.train_loss_per_token(model, [train_ids]), reference, "CausalLMTask losses")
    _pretrain(model, task.train_loss, [train_ids], l2, steps=1500)
    start = time.perf_counter()
    theta, train_losses = gt.flat_model_losses(model, task.train_loss, [train_ids])
    theta = gt.fit_l2(train_losses, theta, l2)
    _copy_flat(model, theta.float())  # the sampler's w*: θ* rounded to float32
    positions = torch.arange(1, length)
    q_ids = query_ids.repeat_interleave(length - 1, dim=0)
    q_pos = positions.repeat(n_query)
    exact = build_attributor({"name": "exact_if", "damping": l2 / n, "batch_size": 256})
    exact_if = exact.fit(model, task, TensorDataset(train_ids)).score(TensorDataset(q_ids, q_pos))
    exact_if = exact_if.double()
    _require_minimum(exact, "token")
    _, query_losses = gt.flat_model_losses(
        model, lambda m, b: task.train_loss_per_token(m, b)[:, 1:].reshape(-1), [query_ids]
    )
    influence = gt.influence_scores(train_losses, query_losses, theta, l2)
    _check_close(exact_if, n * influence, "method=exact_if vs the sum-objective influence")

    def query_rows(scores: torch.Tensor) -> torch.Tensor:  # [n_query, T, n] → [n_query·(T-1), n]
        return scores[:, 1:, :].reshape(-1, scores.shape[-1])

    return Problem(
        name="token",
        model=model,
        loss_fn=task.train_loss,
        train=TensorDataset(train_ids),
        query=TensorDataset(query_ids),
        query_loss_fn=task.train_loss_per_token,
        nbeta=float(n),
        localization=l2,
        truths={
            "token_exact_if": (
                exact_if,
                None,
                "exact damped IF per query token (method=exact_if, λ = γ/nβ)",
            )
        },
        rows=query_rows,
        truth_seconds=time.perf_counter() - start,
    )


# -- sampler settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A sampler setting relative to the calibrated step size of its preconditioner."""

    name: str
    description: str
    preconditioner: str
    step_factor: float = 1.0
    draws_factor: float = 1.0
    chains: int | None = None
    #: "sgld" or "sghmc" (momentum; at the step its preconditioner's SGLD calibration picks).
    integrator: str = "sgld"
    friction: float = 0.1
    #: Thinning from the calibration (``choose_thinning``: about once per autocorrelation time),
    #: with as many draws as the bench's run costs (the run-cost model: a step 3 x batch item
    #: evaluations, a draw every observed item): more accuracy for the same compute, or not.
    thin: bool = False
    #: What ``sampler=auto`` does: calibrated ε and the draws of its precision target
    #: (``target_resolved`` 0.5, ``max_draws`` 4000, conf/sampler/auto.yaml).
    auto: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("sgld_cal", "SGLD, calibrated ε", "none"),
    Setting("sgld_x4", "SGLD, 4× calibrated ε (too large)", "none", 4.0),
    Setting("sgld_div3", "SGLD, calibrated ε / 3", "none", 1 / 3),
    Setting("sgld_div30", "SGLD, calibrated ε / 30 (too small)", "none", 1 / 30),
    Setting("sgld_cal_few", "SGLD, calibrated ε, 1/8 of the draws (too few)", "none", 1, 1 / 8),
    Setting("sgld_cal_2ch", "SGLD, calibrated ε, 2 chains × 2× draws", "none", 1, 2.0, 2),
    Setting("rms_cal", "RMSProp-SGLD, calibrated ε", "rmsprop"),
    Setting("rms_x4", "RMSProp-SGLD, 4× calibrated ε (too large)", "rmsprop", 4.0),
    Setting("rms_div4.6", "RMSProp-SGLD, calibrated ε / 4.6", "rmsprop", 1 / 4.6),
    Setting("rms_div30", "RMSProp-SGLD, calibrated ε / 30 (too small)", "rmsprop", 1 / 30),
    # RMSProp's preconditioner estimated during burn-in, then fixed (exact as ε → 0)
    Setting("frz_cal", "frozen RMSProp-SGLD, calibrated ε", "rmsprop_frozen"),
    Setting("frz_x4", "frozen RMSProp-SGLD, 4× calibrated ε (too large)", "rmsprop_frozen", 4.0),
    Setting("frz_div30", "frozen RMSProp-SGLD, calibrated ε / 30", "rmsprop_frozen", 1 / 30),
    # SGHMC (momentum, friction 0.1) at the SGLD-calibrated step of its preconditioner
    Setting(
        "hmc_cal",
        "frozen RMSProp-SGHMC, calibrated ε",
        "rmsprop_frozen",
        integrator="sghmc",
    ),
    Setting("hmc_sgld_cal", "SGHMC, calibrated ε (plain SGLD's)", "none", integrator="sghmc"),
    # sampler=auto: frozen RMSProp, calibrated ε, thinning from the pilot's autocorrelation time
    Setting(
        "frz_thin",
        "frozen RMSProp-SGLD, calibrated ε and thinning (same cost)",
        "rmsprop_frozen",
        thin=True,
    ),
    Setting(
        "auto",
        "sampler=auto: frozen RMSProp-SGLD, calibrated ε and draws (precision target)",
        "rmsprop_frozen",
        auto=True,
    ),
)
QUICK_SETTINGS = (
    "sgld_cal",
    "sgld_x4",
    "sgld_cal_few",
    "rms_cal",
    "frz_cal",
    "hmc_cal",
    "hmc_sgld_cal",
    "frz_thin",
    "auto",
)


@dataclass
class BenchConfig:
    """Sizes of the bench (``--quick`` shrinks them)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    chains: int = 4
    draws: int = 1000
    burn_in: int = 200
    thinning: int = 2
    batch_size: int = 32
    settings: tuple[str, ...] = tuple(s.name for s in SETTINGS)
    problem_sizes: dict[str, dict[str, int]] = field(default_factory=dict)


def quick_config() -> BenchConfig:
    return BenchConfig(
        seeds=(0, 1),
        draws=200,
        burn_in=100,
        settings=QUICK_SETTINGS,
        problem_sizes={
            "linear": {"n": 80},
            "logistic": {"n": 80},
            "mlp": {"n": 60, "loo_items": 10},
            "token": {"n": 40},
        },
    )


def base_sampler(problem: Problem, bench: BenchConfig) -> SGLDConfig:
    return SGLDConfig(
        step_size=1e-4,
        nbeta=problem.nbeta,
        localization=problem.localization,
        num_chains=bench.chains,
        num_draws=bench.draws,
        burn_in=bench.burn_in,
        thinning=bench.thinning,
        batch_size=bench.batch_size,
        eval_batch_size=1024,
        seed=0,
    )


def calibrated(
    problem: Problem, base: SGLDConfig, thin: bool = False, auto: bool = False
) -> tuple[SGLDConfig, dict[str, Any], CalibrationReport]:
    """``calibrate()`` with default settings for this preconditioner (``thin``: also choosing the
    thinning); the report's essentials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = calibrate_report(
            problem.model,
            problem.loss_fn,
            problem.train,
            base,
            calibration=CalibrationConfig(
                choose_thinning=thin,
                target_resolved=0.5 if auto else None,
                max_draws=4000 if auto else None,
            ),
            query_data=problem.query,
            query_loss_fn=problem.query_loss_fn,
            progress=False,
        )
    info = {
        "problem": problem.name,
        "preconditioner": base.preconditioner,
        "choose_thinning": thin,
        "precision_target": auto,
        "step_size": report.config.step_size,
        "thinning": report.config.thinning,
        "num_draws": report.config.num_draws,
        "tau_steps": report.tau_steps,
        "calibration_healthy": report.healthy,
        "candidates": len(report.candidates),
        "calibration_seconds": report.seconds,
        "top_eigenvalue": report.top_eigenvalue,
        "step_curvature": report.curvature,
        "bias_check": None if report.bias_check is None else report.bias_check.passed,
        "bias_detail": None if report.bias_check is None else report.bias_check.detail,
        "summary": report.summary(),
    }
    return report.config, info, report


# -- one run ---------------------------------------------------------------------------------------


def _mean_rows(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], a: Any, b: Any) -> float:
    values = fn(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN: constant row)."""
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ac * bc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _scores(
    problem: Problem, traces: Any, normalize: str, draws: int | None = None
) -> torch.Tensor:
    query, train = traces["query"], traces["train"]
    if draws is not None:
        query, train = query[:, :draws], train[:, :draws]
    scores = bif_scores(query, train, normalize=normalize, dtype=torch.float64)
    return problem.rows(scores)


def _restrict(scores: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    return scores if items is None else scores[:, items]


def sample_problem(problem: Problem, config: SGLDConfig) -> Any:
    """The loss traces of the problem's training items and queries under ``config`` (the
    sampler's warnings silenced: the bench judges every run's health itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sample_loss_traces(
            problem.model,
            problem.loss_fn,
            problem.train,
            {"train": problem.train, "query": (problem.query, problem.query_loss_fn)},
            config,
            progress=False,
        )


@dataclass
class RunResult:
    """One sampling run: its row (status, time, health) and, per truth, scores and accuracy."""

    row: dict[str, Any]
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def run_setting(
    problem: Problem,
    config: SGLDConfig,
    truncate_to: int | None,
    evidence: dict[str, Any] | None = None,
) -> RunResult:
    """Sample, score, judge health and compare with every truth of the problem.

    ``truncate_to``: also score the first that many draws of each chain (a shorter run's result).
    ``evidence``: what the calibration measured (``CalibrationReport.health_evidence``: the
    step's measured curvature, the step-halving check), judged with the traces' own rules.
    """
    result = RunResult({"status": "ok"})
    start = time.perf_counter()
    try:
        traces = sample_problem(problem, config)
        scores = {n: _scores(problem, traces, n) for n in ("covariance", "correlation")}
    except SamplerDivergedError:
        elapsed = time.perf_counter() - start
        result.row.update(status="diverged", seconds=elapsed, healthy=False)
        result.row["failed_rules"] = "diverged"
        return result
    result.row["seconds"] = time.perf_counter() - start
    health = run_health(traces, problem.num_params, **(evidence or {}))
    failed = [c.name for c in health.report.failed]
    if not traces.diagnostics.is_healthy:
        failed.append("core_diagnostics")
    result.row.update(
        healthy=health.healthy,
        failed_rules=";".join(failed),
        ess=health.report.stats.get("ess_median", math.nan),
        resolved_share=health.metrics.get("health/resolved_share", math.nan),
        rhat=health.report.stats.get("rhat", math.nan),
    )
    for task, (truth, items, _) in problem.truths.items():
        out = {n: _restrict(s, items) for n, s in scores.items()}
        result.scores[task] = out["covariance"]
        metrics = {}
        for short, norm in (("cov", "covariance"), ("corr", "correlation")):
            metrics[f"spearman_{short}"] = _mean_rows(spearman_rows, out[norm], truth)
            metrics[f"pearson_{short}"] = _mean_rows(pearson_rows, out[norm], truth)
        if truncate_to is not None:
            shorter = _restrict(_scores(problem, traces, "covariance", truncate_to), items)
            metrics["spearman_cov_truncated"] = _mean_rows(spearman_rows, shorter, truth)
        result.metrics[task] = metrics
    return result


def run_problem(
    problem: Problem, bench: BenchConfig, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every setting × seed on one problem: accuracy rows (one per truth) and calibration rows."""
    settings = [s for s in SETTINGS if s.name in bench.settings]
    base = base_sampler(problem, bench)
    chosen, reports, calibration_rows = {}, {}, []
    for key in sorted({(s.preconditioner, s.thin, s.auto) for s in settings}):
        pre, thin, auto = key
        chosen[key], info, reports[key] = calibrated(
            problem, base.replace(preconditioner=pre), thin, auto
        )
        calibration_rows.append(info)
        log(f"  {problem.name}: {info['summary']}")
    few_draws = {max(1, round(bench.draws * s.draws_factor)) for s in settings}
    few_draws = {d for d in few_draws if d < bench.draws}
    truncate_to = min(few_draws) if few_draws else None
    rows: list[dict[str, Any]] = []
    for setting in settings:
        chains = setting.chains or bench.chains
        draws = max(1, round(bench.draws * setting.draws_factor))
        key = (setting.preconditioner, setting.thin, setting.auto)
        cal = chosen[key]
        thinning = cal.thinning
        if setting.thin:  # the draws the bench's run affords at the chosen thinning
            step, obs = 3 * min(bench.batch_size, len(problem.train)), problem.num_observed
            per_draw = (bench.thinning * step + obs) / (thinning * step + obs)
            draws = max(20, round(bench.draws * per_draw))
        if setting.auto:
            draws = cal.num_draws
        standard = draws == bench.draws and chains == bench.chains
        seed_scores: dict[str, list[torch.Tensor | None]] = {t: [] for t in problem.truths}
        setting_rows = []
        for seed in bench.seeds:
            config = base.replace(
                preconditioner=setting.preconditioner,
                integrator=setting.integrator,
                friction=setting.friction,
                step_size=cal.step_size * setting.step_factor,
                num_chains=chains,
                num_draws=draws,
                thinning=thinning,
                seed=seed,
            )
            evidence = reports[key].health_evidence(config)
            result = run_setting(problem, config, truncate_to if standard else None, evidence)
            for task, (_, _, truth_label) in problem.truths.items():
                seed_scores[task].append(result.scores.get(task))
                setting_rows.append(
                    {
                        "task": task,
                        "truth": truth_label,
                        "setting": setting.name,
                        "description": setting.description,
                        "preconditioner": setting.preconditioner,
                        "integrator": setting.integrator,
                        "step_size": config.step_size,
                        "chains": chains,
                        "draws": draws,
                        "thinning": thinning,
                        # a thinned setting costs what the bench's run costs
                        "budget": chains * (bench.draws if setting.thin else draws),
                        "seed": seed,
                        **result.row,
                        **result.metrics.get(task, {}),
                    }
                )
        for task, scores in seed_scores.items():
            task_rows = [r for r in setting_rows if r["task"] == task]
            for i, r in enumerate(task_rows):
                others = [
                    _mean_rows(spearman_rows, scores[i], scores[j])
                    for j in range(len(scores))
                    if j != i and scores[i] is not None and scores[j] is not None
                ]
                r["seed_agreement"] = float(np.mean(others)) if others else math.nan
        rows += setting_rows
        first = setting_rows[0]
        log(
            f"  {problem.name} {setting.name:13s} ε={first['step_size']:.3g}: "
            f"Spearman(cov) {np.nanmean([r.get('spearman_cov', np.nan) for r in setting_rows]):.3f}"
            f", healthy {sum(bool(r['healthy']) for r in setting_rows)}/{len(setting_rows)}, "
            f"{np.mean([r['seconds'] for r in setting_rows]):.1f} s/run"
        )
    return rows, calibration_rows


# -- tables and figure -----------------------------------------------------------------------------


def summarise(runs: pd.DataFrame, bench: BenchConfig) -> pd.DataFrame:
    """Per task × setting: mean ± s.d. over seeds, the verdict and "accurate"."""
    out = []
    for (task, setting), g in runs.groupby(["task", "setting"], sort=False):
        healthy = int(g["healthy"].astype(bool).sum())
        rules: dict[str, int] = {}
        for text in g["failed_rules"].fillna(""):
            for rule in filter(None, str(text).split(";")):
                rules[rule] = rules.get(rule, 0) + 1
        row = {
            "task": task,
            "truth": g["truth"].iloc[0],
            "setting": setting,
            "description": g["description"].iloc[0],
            "preconditioner": g["preconditioner"].iloc[0],
            "integrator": g["integrator"].iloc[0],
            "step_size": g["step_size"].iloc[0],
            "chains": g["chains"].iloc[0],
            "draws": g["draws"].iloc[0],
            "thinning": g["thinning"].iloc[0],
            "budget": g["budget"].iloc[0],
            "seeds": len(g),
            "diverged": int((g["status"] == "diverged").sum()),
        }
        for col in ("spearman_cov", "spearman_corr", "seed_agreement", "seconds"):
            row[f"{col}_mean"] = g[col].mean()
            row[f"{col}_sd"] = g[col].std(ddof=1) if len(g) > 1 else math.nan
        for col in ("pearson_cov", "pearson_corr", "ess"):
            row[f"{col}_mean"] = g[col].mean()
        row["healthy_runs"] = healthy
        row["verdict"] = (
            "healthy" if healthy == len(g) else "unhealthy" if healthy == 0 else "mixed"
        )
        row["failed_rules"] = ";".join(f"{k}×{v}" for k, v in sorted(rules.items()))
        out.append(row)
    summary = pd.DataFrame(out)
    best = []
    for _, row in summary.iterrows():
        peers = summary[(summary["task"] == row["task"]) & (summary["budget"] == row["budget"])]
        reachable = peers["spearman_cov_mean"].max()
        fewer = row["draws"] < bench.draws and row["thinning"] == bench.thinning
        if fewer and "spearman_cov_truncated" in runs:
            same = runs[(runs["task"] == row["task"]) & (runs["chains"] == row["chains"])]
            truncated = same.groupby("setting")["spearman_cov_truncated"].mean().max()
            reachable = np.nanmax([reachable, truncated])
        best.append(reachable)
    summary["best_reachable"] = best
    summary["accurate"] = (
        summary["spearman_cov_mean"] >= summary["best_reachable"] - ACCURACY_MARGIN
    )
    return summary


def attach_accuracy(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per run: ``accurate`` = its Spearman (cov) within the margin of its setting's best."""
    best = summary.set_index(["task", "setting"])["best_reachable"]
    keys = list(zip(runs["task"], runs["setting"], strict=True))
    runs = runs.copy()
    runs["best_reachable"] = [best[k] for k in keys]
    runs["accurate"] = runs["spearman_cov"] >= runs["best_reachable"] - ACCURACY_MARGIN
    return runs


def health_table(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """2 × 2 counts: health verdict × accurate, over runs and over (all-seeds) settings."""
    rows = []
    for healthy in (True, False):
        for accurate in (True, False):
            r = runs[(runs["healthy"].astype(bool) == healthy) & (runs["accurate"] == accurate)]
            s = summary[
                ((summary["verdict"] == "healthy") == healthy) & (summary["accurate"] == accurate)
            ]
            rows.append(
                {
                    "healthy": healthy,
                    "accurate": accurate,
                    "runs": len(r),
                    "settings": len(s),
                    "settings_list": ";".join(
                        f"{t}/{n}" for t, n in zip(s["task"], s["setting"], strict=True)
                    ),
                }
            )
    return pd.DataFrame(rows)


def _setting_colors() -> dict[str, Any]:
    import matplotlib

    blues = matplotlib.colormaps["winter"](np.linspace(0.0, 0.9, 6))
    reds = matplotlib.colormaps["autumn"](np.linspace(0.0, 0.75, 4))
    greens = matplotlib.colormaps["summer"](np.linspace(0.0, 0.6, 3))
    purples = matplotlib.colormaps["Purples"](np.linspace(0.6, 0.9, 2))
    black = [(0.0, 0.0, 0.0, 1.0), (0.85, 0.0, 0.0, 1.0)]  # frz_thin, auto
    palette = [*blues, *reds, *greens, *purples, *black]
    return {s.name: palette[i] for i, s in enumerate(SETTINGS)}


def plot_accuracy_vs_time(summary: pd.DataFrame, bench: BenchConfig) -> Any:
    """Mean Spearman (cov) vs mean sampling time per setting, one panel per task."""
    tasks = list(dict.fromkeys(summary["task"]))
    colors = _setting_colors()
    markers = dict(zip([s.name for s in SETTINGS], "osD^vPosD^osDXX*H", strict=True))
    ncols = 3
    nrows = math.ceil((len(tasks) + 1) / ncols)
    with house_style():
        fig, axes = new_figure(nrows, ncols, width=12.0, height=3.6 * nrows)
        flat = axes.flatten()
        for ax, task in zip(flat, tasks, strict=False):
            g = summary[summary["task"] == task]
            for _, row in g.iterrows():
                if not np.isfinite(row["spearman_cov_mean"]):
                    continue
                healthy = row["verdict"] == "healthy"
                color = colors[row["setting"]]
                ax.errorbar(
                    row["seconds_mean"],
                    row["spearman_cov_mean"],
                    yerr=0 if math.isnan(row["spearman_cov_sd"]) else row["spearman_cov_sd"],
                    fmt=markers[row["setting"]],
                    color=color,
                    mfc=color if healthy else "white",
                    mec=color,
                    ms=7,
                    capsize=2,
                    lw=1.0,
                )
            diverged = g[g["diverged"] > 0]["setting"].tolist()
            standard = g[g["budget"] == bench.chains * bench.draws]
            line = standard["spearman_cov_mean"].max() - ACCURACY_MARGIN
            ax.axhline(line, color="grey", ls=":", lw=1.0)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sampling wall time per run (s)")
            ax.set_ylabel("Spearman(BIF +Cov, truth)")
            ax.set_title(f"{task}\ntruth: {g['truth'].iloc[0]}", fontsize=8)
            if diverged:
                ax.text(
                    0.02,
                    0.03,
                    "diverged: " + ", ".join(diverged),
                    transform=ax.transAxes,
                    fontsize=7,
                    color="firebrick",
                )
        legend_ax = flat[len(tasks)]
        legend_ax.axis("off")
        for s in SETTINGS:
            if s.name in set(summary["setting"]):
                legend_ax.plot([], [], markers[s.name], color=colors[s.name], label=s.description)
        legend_ax.plot([], [], "o", color="k", label="filled: every seed healthy (run_health)")
        legend_ax.plot(
            [], [], "o", mfc="white", mec="k", color="k", label="hollow: not every seed healthy"
        )
        legend_ax.plot(
            [], [], ":", color="grey", label=f"best at standard budget − {ACCURACY_MARGIN}"
        )
        legend_ax.legend(loc="center", frameon=False, fontsize=7)
        for ax in flat[len(tasks) + 1 :]:
            ax.axis("off")
        fig.suptitle(
            "BIF accuracy against exact answers (leave-one-out / exact influence / exact Gaussian "
            f"covariance): per-query Spearman, mean ± s.d. over {len(bench.seeds)} sampler seeds, "
            f"{bench.chains} chains × {bench.draws} draws unless stated",
            fontsize=9,
        )
    return fig


# -- main ------------------------------------------------------------------------------------------


def build_problems(bench: BenchConfig, log: Callable[[str], None]) -> list[Problem]:
    sizes = bench.problem_sizes
    problems = []
    for build in (linear_problem, logistic_problem, mlp_problem, token_problem):
        start = time.perf_counter()
        problem = build(**sizes.get(build.__name__.removesuffix("_problem"), {}))
        log(
            f"{problem.name}: {problem.num_params} parameters, {len(problem.train)} training "  # type: ignore[arg-type]
            f"items; truth in {problem.truth_seconds:.1f} s (set-up {time.perf_counter() - start:.1f} s)"
        )
        problems.append(problem)
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1-minute smoke version")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench = quick_config() if args.quick else BenchConfig()
    out = args.out or Path("results/accuracy") / ("quick" if args.quick else "")
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    problems = build_problems(bench, log)
    rows, calibration_rows = [], []
    for problem in problems:
        r, c = run_problem(problem, bench, log)
        rows += r
        calibration_rows += c
    runs = pd.DataFrame(rows)
    summary = summarise(runs, bench)
    calibration = pd.DataFrame(calibration_rows)
    healthy_calibration = {
        (f"{p}", pre): ok
        for p, pre, ok in zip(
            calibration["problem"],
            calibration["preconditioner"],
            calibration["calibration_healthy"],
            strict=True,
        )
    }
    problem_of = {t: p.name for p in problems for t in p.truths}
    summary.insert(
        summary.columns.get_loc("step_size") + 1,
        "calibration_healthy",
        [
            healthy_calibration[(problem_of[t], pre)]
            for t, pre in zip(summary["task"], summary["preconditioner"], strict=True)
        ],
    )
    runs = attach_accuracy(runs, summary)
    table = health_table(runs, summary)
    with staged_directory(out) as stage:
        atomic_write_csv(round_significant(runs, 4), stage / "accuracy.csv")
        atomic_write_csv(round_significant(summary, 4), stage / "summary.csv")
        atomic_write_csv(table, stage / "health_vs_accuracy.csv")
        atomic_write_csv(round_significant(calibration, 4), stage / "calibration.csv")
        atomic_save_figure(plot_accuracy_vs_time(summary, bench), stage / "accuracy_vs_time.png")
        atomic_write_json(
            {
                "bench": asdict(bench),
                "problems": {
                    p.name: {
                        "num_params": p.num_params,
                        "n_train": len(p.train),  # type: ignore[arg-type]
                        "n_query": len(p.query),  # type: ignore[arg-type]
                        "nbeta": p.nbeta,
                        "localization": p.localization,
                        "truths": {k: v[2] for k, v in p.truths.items()},
                        "truth_seconds": p.truth_seconds,
                        **p.notes,
                    }
                    for p in problems
                },
                "accuracy_margin": ACCURACY_MARGIN,
                "total_seconds": time.perf_counter() - start,
            },
            stage / "config.json",
        )
    log(f"wrote {out}")
    print(table.drop(columns="settings_list").to_string(index=False))


if __name__ == "__main__":
    main()
