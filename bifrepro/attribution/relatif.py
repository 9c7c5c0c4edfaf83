"""EK-FAC normalised by self-influence (RelatIF, Barshan et al. 2020), from a fitted EK-FAC.

Raw influence ``g_qᵀ H⁻¹ g_i`` favours training items with large gradients (outliers, mislabelled
or atypical images): they top many queries' lists whatever the query. RelatIF divides each
training item's score by the square root of its self-influence ``g_iᵀ H⁻¹ g_i``::

    relatif[q, i] = score[q, i] / sqrt(self_influence[i])

which is ``‖g_q‖_{H⁻¹} · cos_{H⁻¹}(g_q, g_i)``: per query, the ranking is that of the cosine of
the preconditioned gradients. The self-influence is positive (``H`` plus damping is positive
definite), so the sign is the raw score's: positive = helpful. A query identical to training item
``i`` ranks ``i`` first (Cauchy–Schwarz in the ``H⁻¹`` inner product) with the score
``sqrt(self_influence[i])``.

The self-influence comes from kronfluence's ``compute_self_scores`` on the same factors and
damping as the pairwise scores (:class:`~bifrepro.attribution.ekfac.EKFACAttributor`).
"""

from __future__ import annotations

import torch

from bifrepro.attribution.ekfac import EKFACAttributor, _quiet_kronfluence

__all__ = ["ekfac_self_influence", "relatif_scores"]

#: Self-influences at or below this are treated as zero (the item's gradient vanishes).
_TINY = 1e-30


def ekfac_self_influence(attributor: EKFACAttributor) -> torch.Tensor:
    """``[n_train]`` self-influence ``g_iᵀ (G + λI)⁻¹ g_i`` of a fitted EK-FAC attributor's
    training items (same factors and damping as its pairwise scores)."""
    from kronfluence.arguments import ScoreArguments

    if getattr(attributor, "analyzer", None) is None or attributor.train_data is None:
        raise ValueError("ekfac_self_influence: fit the EK-FAC attributor first")
    cfg = attributor.config
    if cfg.per_token != "none":
        raise ValueError("ekfac_self_influence: per_token must be 'none'")
    name = f"self{attributor._calls}"
    attributor._calls += 1
    with _quiet_kronfluence():
        attributor.analyzer.compute_self_scores(
            scores_name=name,
            factors_name=cfg.strategy,
            train_dataset=attributor.train_data,
            per_device_train_batch_size=cfg.train_batch_size,
            score_args=ScoreArguments(damping_factor=cfg.damping),
            overwrite_output_dir=True,
        )
    scores = attributor.analyzer.load_self_scores(scores_name=name)["all_modules"]
    return scores.to(torch.float32).cpu()


def relatif_scores(scores: torch.Tensor, self_influence: torch.Tensor) -> torch.Tensor:
    """``scores / sqrt(self_influence)`` per training item (column); positive = helpful.

    Items with no self-influence (zero gradient) get NaN, which every ranking puts last.

    Raises:
        ValueError: shapes disagree, or a self-influence is negative beyond rounding.
    """
    self_influence = torch.as_tensor(self_influence).to(scores.dtype).flatten()
    if scores.dim() != 2 or self_influence.shape[0] != scores.shape[1]:
        raise ValueError(
            f"relatif_scores: scores {tuple(scores.shape)} need one self-influence per column, "
            f"got {tuple(self_influence.shape)}"
        )
    scale = self_influence.abs().max().clamp_min(_TINY)
    if bool((self_influence < -1e-6 * scale).any()):
        raise ValueError("relatif_scores: negative self-influence (is the curvature damped?)")
    norm = self_influence.clamp_min(0).sqrt()
    norm = torch.where(norm > _TINY, norm, torch.full_like(norm, float("nan")))
    return scores / norm[None, :]
