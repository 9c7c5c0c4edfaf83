"""The three figures of the toy-hierarchy experiment, from one run
(:class:`~bifrepro.dynamics.toy.ToyRun`): stages, the focus item's influence over training, and
item x item influence matrices at the stage transitions.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from bifrepro.data.hierarchy import Hierarchy
from bifrepro.dynamics.modes import covariance_to_correlation
from bifrepro.dynamics.toy import ToyRun
from bifrepro.plots.style import health_note
from bifrepro.plots.toy import plot_influence_curves, plot_influence_matrices, plot_mode_strengths

__all__ = ["key_steps", "toy_figures"]


def key_steps(steps: list[int], level_t: np.ndarray, requested: list[int] | None) -> list[int]:
    """Checkpoints for the matrix figure: requested, else the one nearest each stage transition.

    (Not the last checkpoint: once every mode is learned all three estimators are ~0 and a
    per-panel colour scale would only show noise.)
    """
    if requested:
        return sorted({int(s) for s in requested})
    logs = np.log(np.maximum(np.asarray(steps, dtype=float), 0.5))
    chosen = [
        steps[int(np.argmin(np.abs(logs - math.log(t))))]
        for t in level_t
        if np.isfinite(t) and t > 0
    ]
    return sorted(set(chosen)) or [steps[len(steps) // 2]]


def _focus_titles(h: Hierarchy, src: int, targets: list[int]) -> list[str]:
    titles = []
    for j in targets:
        seps = h.separating_modes(src, j)
        sep = h.mode_names[seps[0]] if seps else "?"
        titles.append(
            f"{h.item_names[src]} → {h.item_names[j]}   (common ancestor: "
            f"{h.common_ancestor_name(src, j)}; separated by '{sep}', "
            f"stage {h.separating_level(src, j)})"
        )
    return titles


def toy_figures(
    h: Hierarchy,
    r: ToyRun,
    *,
    normalize: str,
    src: int,
    targets: list[int],
    model_desc: str,
    lr: float,
    first_checkpoint: int,
    matrix_steps: list[int] | None = None,
) -> dict[str, Figure]:
    """The three figures, keyed by file name (``normalize``: the BIF estimator shown)."""
    steps, level_t, sampler = r.steps, r.level_transitions, r.sampler
    # 1. Stages (mode strengths, every ~log-spaced step to keep the figure light).
    lo = max(1, first_checkpoint // 2)
    idx = sorted({int(round(x)) for x in np.geomspace(lo, len(r.map_steps) - 1, 400)})
    fig1 = plot_mode_strengths(
        [r.map_steps[k] for k in idx],
        r.strengths[idx].numpy(),
        h.singular_values.numpy(),
        h.mode_names,
        h.mode_levels,
        level_t,
        train_loss=r.train_loss[idx],
        title=f"Stages: singular-mode strengths ({h.num_items} items, {model_desc}, lr {lr})",
    )
    # 2. Influence of the focus item on its targets over training.
    bif = r.bif.scores(normalize).numpy()
    if normalize == "covariance":
        analytic = r.analytic_cov.numpy()
        bif_label, left = "BIF (+Cov of losses)", "BIF / analytic (+Cov)"
    else:
        analytic = covariance_to_correlation(r.analytic_cov).numpy()
        bif_label, left = "BIF (Pearson corr.)", "BIF / analytic (corr.)"
    loo = r.loo.numpy()
    curves = {
        "BIF": bif[:, targets, src],
        "analytic": analytic[:, targets, src],
        "leave-one-out": loo[:, targets, src],
    }
    note = health_note(r.bif.num_healthy, len(steps), r.bif.draws, normalize)
    fig2 = plot_influence_curves(
        steps,
        curves,
        _focus_titles(h, src, targets),
        level_t,
        healthy=r.bif.healthy,
        bif_label=bif_label,
        left_ylabel=left,
        title=(
            f"Influence of {h.item_names[src]} on other items over training (+ = helpful)\n"
            f"{note}; SGLD ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, γ={sampler.localization:g}"
        ),
    )
    # 3. Item x item matrices at key steps.
    keys = key_steps(steps, level_t, matrix_steps)
    pos = [steps.index(s) for s in keys]
    fig3 = plot_influence_matrices(
        keys,
        {"BIF": bif[pos], "analytic": analytic[pos], "leave-one-out": loo[pos]},
        h.item_names,
        title=f"Item × item influence at the stage transitions (+ = helpful); {note}",
        row_labels={
            "BIF": f"BIF ({normalize})",
            "analytic": "analytic",
            "leave-one-out": "leave-one-out",
        },
    )
    return {
        "fig1_mode_strengths.png": fig1,
        "fig2_influence_curves.png": fig2,
        "fig3_influence_matrices.png": fig3,
    }
