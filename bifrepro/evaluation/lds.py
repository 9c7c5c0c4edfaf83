"""Linear datamodeling score (LDS; Park et al. 2023, TRAK): does an attribution predict retraining?

Protocol
--------
1. Draw ``m`` random subsets ``S_j`` of the ``n`` training items, each of size ``⌊α·n⌋``
   (:func:`subset_masks`; seeded, and subset ``j`` depends only on ``(seed, n, size, j)``, so a
   larger ``m`` extends a smaller one and every subset can be rebuilt alone, e.g. by a sweep job).
2. Retrain a model on each subset (``k`` seeds each; :mod:`bifrepro.evaluation.retrain`) and
   record each query's output ``f(z; θ(S_j))``, averaged over the seeds.
3. Predict the same output from the attribution scores ``τ(z)`` (``[n_query, n_train]``) as the
   additive datamodel ``g(z, S_j) = Σ_{i∈S_j} τ(z)_i`` (:func:`predicted_outputs`).
4. ``LDS(z) = Spearman_j(f(z; θ(S_j)), g(z, S_j))``; the score is the mean over queries, with a
   percentile bootstrap confidence interval over queries (:func:`lds`).

Sign convention (the one place it matters)
------------------------------------------
bifrepro scores are **positive = helpful**: upweighting item ``i`` lowers the query's loss-like
*measurement* ``φ``. For classification the measurement is ``φ = -margin``, with
``margin = logit_y - logsumexp_{k≠y} logit_k``, and the LDS output is ``f = margin = -φ``
(higher = better; for language models ``f = -loss``). A helpful item therefore *raises* ``f``
when it is in the training subset, so ``g = Σ τ_i`` is compared with ``f`` by Spearman directly,
with no sign flip: a method that gets the sign right has a positive LDS, one that gets it exactly
backwards has ``LDS = -1`` on an additive ground truth.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "LDSResult",
    "subset_size",
    "subset_masks",
    "mask_hash",
    "save_masks",
    "load_masks",
    "predicted_outputs",
    "spearman_rows",
    "bootstrap_mean_ci",
    "lds",
]


def subset_size(n_train: int, alpha: float) -> int:
    """``⌊α·n⌋``, checked to leave a proper, non-empty subset (``1 <= size < n``)."""
    if not isinstance(n_train, int) or n_train < 2:
        raise ValueError(f"n_train={n_train!r} must be an integer >= 2")
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    size = math.floor(alpha * n_train + 1e-9)  # 1e-9: 0.1 * 1000 must be 100, not 99
    if not 1 <= size < n_train:
        raise ValueError(f"alpha={alpha} gives a subset of {size} of {n_train} items (need 1..n-1)")
    return size


def _subset_seed(seed: int, n_train: int, size: int, index: int) -> int:
    """A 63-bit seed for subset ``index`` that depends on nothing else (stable across runs)."""
    text = f"bifrepro-lds-mask:{seed}:{n_train}:{size}:{index}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def subset_masks(
    n_train: int,
    alpha: float,
    num_subsets: int,
    seed: int = 0,
    indices: list[int] | None = None,
) -> torch.Tensor:
    """Boolean masks ``[num_subsets, n_train]`` of random subsets of size ``⌊α·n⌋``.

    Deterministic: mask ``j`` depends only on ``(seed, n_train, ⌊α·n⌋, j)``. ``indices`` returns
    only those rows (a sweep job building the one subset it retrains).
    """
    if not isinstance(num_subsets, int) or num_subsets < 1:
        raise ValueError(f"num_subsets={num_subsets!r} must be an integer >= 1")
    size = subset_size(n_train, alpha)
    rows = list(range(num_subsets)) if indices is None else list(indices)
    bad = [j for j in rows if not 0 <= j < num_subsets]
    if bad:
        raise ValueError(f"subset indices {bad} out of range [0, {num_subsets})")
    masks = torch.zeros(len(rows), n_train, dtype=torch.bool)
    for r, j in enumerate(rows):
        gen = torch.Generator().manual_seed(_subset_seed(seed, n_train, size, j))
        masks[r, torch.randperm(n_train, generator=gen)[:size]] = True
    return masks


def mask_hash(mask: torch.Tensor) -> str:
    """Short content hash of one boolean mask ``[n_train]`` (its length is part of the hash)."""
    m = torch.as_tensor(mask).to(torch.bool).flatten().cpu().numpy()
    h = hashlib.sha256(f"n={m.size};".encode())
    h.update(np.packbits(m).tobytes())
    return h.hexdigest()[:20]


def save_masks(masks: dict[float, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Save ``{alpha: masks [m, n]}`` as a compressed ``.npz`` (bit-packed), atomically."""
    from bifrepro.io import atomic_path

    arrays: dict[str, np.ndarray] = {}
    for k, (alpha, m) in enumerate(sorted(masks.items())):
        mm = torch.as_tensor(m).to(torch.bool).cpu().numpy()
        arrays[f"bits_{k}"] = np.packbits(mm, axis=1)
        arrays[f"shape_{k}"] = np.asarray(mm.shape, dtype=np.int64)
        arrays[f"alpha_{k}"] = np.asarray(float(alpha))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: numpy adds no suffix
        np.savez_compressed(fh, **arrays)
    return Path(path)


def load_masks(path: str | os.PathLike[str]) -> dict[float, torch.Tensor]:
    """Inverse of :func:`save_masks`."""
    out: dict[float, torch.Tensor] = {}
    with np.load(path) as z:
        k = 0
        while f"bits_{k}" in z:
            shape = tuple(int(s) for s in z[f"shape_{k}"])
            bits = np.unpackbits(z[f"bits_{k}"], axis=1, count=shape[1]).astype(bool)
            out[float(z[f"alpha_{k}"])] = torch.from_numpy(bits.reshape(shape))
            k += 1
    return out


def predicted_outputs(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Additive datamodel ``g[q, j] = Σ_{i∈S_j} scores[q, i]``: ``[n_query, num_subsets]`` (float64)."""
    if scores.dim() != 2:
        raise ValueError(
            f"scores must be [n_query, n_train], got shape {tuple(scores.shape)} "
            "(sum per-token scores over their token axes first)"
        )
    if masks.dim() != 2 or masks.shape[1] != scores.shape[1]:
        raise ValueError(
            f"masks {tuple(masks.shape)} do not match scores {tuple(scores.shape)}: "
            "expected [num_subsets, n_train]"
        )
    return scores.detach().cpu().double() @ masks.cpu().double().T


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (as in Spearman's rho)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def spearman_rows(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (``[rows, cols]``).

    A row that is constant in either input has no rank correlation: NaN.
    """
    a = np.asarray(torch.as_tensor(a).double().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(b).double().cpu(), dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [rows, cols] arrays of one shape, got {a.shape} and {b.shape}")
    if a.shape[1] < 2:
        raise ValueError("Spearman needs at least 2 columns (subsets)")
    ra = _ranks(a)
    rb = _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    num = (ra * rb).sum(axis=1)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return rho


def bootstrap_mean_ci(
    values: np.ndarray | torch.Tensor,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped first).

    Returns ``(nan, nan)`` when fewer than two finite values remain.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    v = np.asarray(torch.as_tensor(values).double().cpu(), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2 or num_resamples < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(num_resamples, v.size))
    means = v[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclass
class LDSResult:
    """LDS of one attribution at one subset fraction: per query, mean and bootstrap interval."""

    #: Spearman correlation per query ``[n_query]`` (NaN where undefined).
    per_query: np.ndarray
    #: Mean over the queries with a defined LDS.
    mean: float
    #: Percentile bootstrap interval (over queries) of the mean.
    ci_low: float
    ci_high: float
    #: Subsets ``m`` and retraining seeds ``k`` behind the actual outputs.
    num_subsets: int
    num_seeds: int
    #: Confidence level of the interval.
    confidence: float = 0.95
    #: Extra labels (method, alpha, ...), for tables.
    labels: dict[str, object] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        """Queries with a defined LDS."""
        return int(np.isfinite(self.per_query).sum())

    def to_row(self) -> dict[str, object]:
        """Flat dict for a results table."""
        return {
            **self.labels,
            "lds": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "lds_std_over_queries": float(np.nanstd(self.per_query))
            if self.num_queries
            else math.nan,
            "num_queries": self.num_queries,
            "num_subsets": self.num_subsets,
            "num_seeds": self.num_seeds,
        }


def lds(
    scores: torch.Tensor,
    masks: torch.Tensor,
    actual: torch.Tensor,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    labels: dict[str, object] | None = None,
) -> LDSResult:
    """Linear datamodeling score of ``scores`` against retrained outputs.

    Args:
        scores: ``[n_query, n_train]``, positive = helpful (see the module docstring).
        masks: ``[m, n_train]`` boolean subset masks.
        actual: the retrained models' query outputs ``f`` (higher = better, e.g. the margin):
            ``[m, n_query]``, or ``[m, k, n_query]`` for ``k`` seeds per subset (averaged,
            ignoring NaNs).
        num_bootstrap: bootstrap resamples of the queries for the interval (0: no interval).
        confidence: level of the interval.
        seed: seed of the bootstrap.
        labels: extra columns for :meth:`LDSResult.to_row`.
    """
    actual = torch.as_tensor(actual).double().cpu()
    if actual.dim() == 2:
        actual = actual[:, None, :]
    if actual.dim() != 3:
        raise ValueError(
            f"actual must be [m, n_query] or [m, k, n_query], got {tuple(actual.shape)}"
        )
    m, k, n_query = actual.shape
    if masks.shape[0] != m:
        raise ValueError(f"{masks.shape[0]} masks but actual outputs for {m} subsets")
    if scores.shape[0] != n_query:
        raise ValueError(f"scores have {scores.shape[0]} queries, actual outputs {n_query}")
    f = actual.nanmean(dim=1).T  # [n_query, m]
    g = predicted_outputs(scores, masks)  # [n_query, m]
    per_query = spearman_rows(g, f)
    finite = per_query[np.isfinite(per_query)]
    mean = float(finite.mean()) if finite.size else math.nan
    lo, hi = bootstrap_mean_ci(per_query, num_bootstrap, confidence, seed)
    return LDSResult(
        per_query=per_query,
        mean=mean,
        ci_low=lo,
        ci_high=hi,
        num_subsets=m,
        num_seeds=k,
        confidence=confidence,
        labels=dict(labels or {}),
    )
