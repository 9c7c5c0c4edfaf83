"""Singular-mode strengths of a deep linear network and the influence they predict.

**Mode strengths.** With one-hot inputs the data are summarised by ``Σ_yx = Yᵀ = U S Vᵀ``. The
network's end-to-end map ``W`` is projected onto those modes, ``a_α = u_αᵀ W v_α``; during
training each ``a_α`` follows a sigmoid from ~0 to ``s_α`` (Saxe et al.), the strongest mode first.
A mode's *transition* is the step at which ``a_α`` first reaches half of ``s_α``.

**Analytic influence (what we chose and why).** The BIF of item ``i`` on item ``j`` is
``+Cov(ℓ_i, ℓ_j)`` under the local posterior ``p(w) ∝ exp(-nβ·L(w) - γ/2·‖w - w*‖²)``. We predict it
from the learned mode strengths with the *linearised (Laplace) covariance* in the γ-dominated
regime, ``Cov(ℓ_i, ℓ_j) ≈ σ²·∇ℓ_iᵀ∇ℓ_j`` with ``σ² = 1/γ`` (the prior's per-weight variance; the
data term ``nβ·H`` is dropped because it is small next to γ for the toy's settings and only rescales
modes), evaluated at a *balanced* network whose map is ``W = U diag(a) Vᵀ`` restricted to the
data's modes. For ``L`` layers with balanced factors (each carries ``a^{1/L}`` of every mode) the
layer-``k`` gradient of ``ℓ_i = ½‖r_i‖²`` is ``-(W_{>k})ᵀ r_i (W_{<k} x_i)ᵀ``, and with one-hot
inputs::

    ∇ℓ_iᵀ∇ℓ_j = Σ_{k=1..L} [Σ_α a_α^{2(L-k)/L} (s_α - a_α)² v_iα v_jα] · [Σ_β a_β^{2(k-1)/L} v_iβ v_jβ]

The first bracket is the overlap of the two items' residuals (how much of what is still to be
learned they share), the second the overlap of their hidden representations (how much a weight
change moves both). Before any mode is learned the representation overlap is ~0 (no influence);
while modes shared by ``i`` and ``j`` are learned the residual overlap is positive (helpful); once
they are learned only the separating modes remain in the residual, whose ``v_iα v_jα < 0`` make the
influence harmful; when the separating mode is learned the residual overlap vanishes and the
influence fades. For the default tree: after the uniform mode only, dog/sparrow share
``R = 2 - 15/8 = 1/8 > 0``; after animal/plant too, ``R = 2 - 15/8 - 7/8 = -3/4 < 0``.

Not modelled: the posterior mean shift when ``w*`` is not a minimum, the second-order (even) term
of the covariance, and off-diagonal (misaligned) parts of ``U ᵀ W V``; these are why the analytic
curve is a prediction of shape and sign, not of magnitude.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "output_mode_vectors",
    "mode_strengths",
    "transition_steps",
    "level_transition_steps",
    "analytic_loss_covariance",
    "covariance_to_correlation",
]


def output_mode_vectors(
    targets: torch.Tensor, item_vectors: torch.Tensor, singular_values: torch.Tensor
) -> torch.Tensor:
    """``[F, M]`` output singular vectors ``u_α = Yᵀ v_α / s_α`` matching the item-space ones."""
    y = targets.to(torch.float64)
    v = item_vectors.to(torch.float64)
    s = singular_values.to(torch.float64)
    if (s <= 0).any():
        raise ValueError("singular values must be > 0")
    return (y.T @ v) / s


def mode_strengths(
    maps: torch.Tensor, output_vectors: torch.Tensor, item_vectors: torch.Tensor
) -> torch.Tensor:
    """``a_α = u_αᵀ W v_α`` for every map ``W`` in ``maps`` (``[..., F, P]``) → ``[..., M]``."""
    u = output_vectors.to(torch.float64)
    v = item_vectors.to(torch.float64)
    return torch.einsum("fm,...fp,pm->...m", u, maps.to(torch.float64), v)


def transition_steps(
    strengths: torch.Tensor,
    singular_values: torch.Tensor,
    steps: list[int] | np.ndarray | torch.Tensor,
    fraction: float = 0.5,
) -> np.ndarray:
    """Step at which each mode first reaches ``fraction·s_α`` (``[M]``, NaN if never).

    ``strengths`` is ``[T, M]`` at ``steps``; between two recorded steps the crossing is
    interpolated linearly in ``log(step)`` (step 0 is treated as 0.5 for the logarithm).
    """
    a = strengths.to(torch.float64).numpy()
    s = singular_values.to(torch.float64).numpy()
    t = np.asarray(steps, dtype=np.float64)
    if a.shape[0] != t.shape[0]:
        raise ValueError(f"strengths has {a.shape[0]} rows but {t.shape[0]} steps were given")
    logt = np.log(np.maximum(t, 0.5))
    out = np.full(a.shape[1], np.nan)
    for m in range(a.shape[1]):
        r = a[:, m] / s[m] - fraction
        hit = np.nonzero(r >= 0)[0]
        if hit.size == 0:
            continue
        k = int(hit[0])
        if k == 0:
            out[m] = t[0]
            continue
        r0, r1 = r[k - 1], r[k]
        w = r0 / (r0 - r1) if r1 != r0 else 1.0
        out[m] = float(np.exp(logt[k - 1] + w * (logt[k] - logt[k - 1])))
    return out


def level_transition_steps(
    mode_steps: np.ndarray, mode_levels: list[int] | tuple[int, ...]
) -> np.ndarray:
    """Median transition step of the modes of each level (``[num_levels]``)."""
    levels = np.asarray(mode_levels)
    return np.array(
        [float(np.nanmedian(mode_steps[levels == k])) if np.any(levels == k) else np.nan
         for k in range(int(levels.max()) + 1)]
    )  # fmt: skip


def analytic_loss_covariance(
    strengths: torch.Tensor,
    singular_values: torch.Tensor,
    item_vectors: torch.Tensor,
    num_layers: int = 2,
    scale: float = 1.0,
) -> torch.Tensor:
    """Linearised posterior covariance of per-item losses predicted from mode strengths.

    Args:
        strengths: ``[..., M]`` mode strengths ``a`` (negative values are clipped to 0).
        singular_values: ``[M]`` data singular values ``s``.
        item_vectors: ``[P, M]`` item-space singular vectors ``V`` (one-hot inputs).
        num_layers: depth ``L`` of the (balanced) network.
        scale: posterior variance per weight, ``1/γ`` for the local posterior.

    Returns:
        ``[..., P, P]`` predicted ``Cov(ℓ_i, ℓ_j)`` (= the BIF with positive = helpful). See the
        module docstring for the formula.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be >= 1")
    a = strengths.to(torch.float64).clamp_min(0.0)
    s = singular_values.to(torch.float64)
    v = item_vectors.to(torch.float64)
    resid2 = (s - a) ** 2
    cov = torch.zeros(*a.shape[:-1], v.shape[0], v.shape[0], dtype=torch.float64)
    for k in range(1, num_layers + 1):
        out_part = a ** (2.0 * (num_layers - k) / num_layers) * resid2
        in_part = a ** (2.0 * (k - 1) / num_layers)
        r = torch.einsum("pm,...m,qm->...pq", v, out_part, v)
        g = torch.einsum("pm,...m,qm->...pq", v, in_part, v)
        cov = cov + r * g
    return scale * cov


def covariance_to_correlation(cov: torch.Tensor) -> torch.Tensor:
    """Pearson correlation from a covariance matrix (``[..., P, P]``; zero-variance rows give 0)."""
    d = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    denom = d.unsqueeze(-1) * d.unsqueeze(-2)
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
