"""Figures of the toy semantic-hierarchy experiment (stages, influence over training, matrices).

Each function takes plain arrays and returns a ``Figure``; nothing here knows about configs.
Influence arrays are laid out ``[T, n_query, n_train]``: ``x[t, j, i]`` is the influence of
training item ``i`` on item ``j`` at checkpoint ``t`` (positive = helpful).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bifrepro.plots.style import (
    DIVERGING_CMAP,
    ESTIMATOR_COLORS,
    LEVEL_COLORS,
    house_style,
    legend_beside,
    mark_transitions,
    new_figure,
)

__all__ = ["plot_mode_strengths", "plot_influence_curves", "plot_influence_matrices"]


def _level_labels(n: int) -> list[str]:
    return [f"stage {k}" for k in range(n)]


def plot_mode_strengths(
    steps: Sequence[int],
    strengths: np.ndarray,
    singular_values: np.ndarray,
    mode_names: Sequence[str],
    mode_levels: Sequence[int],
    level_transitions: Sequence[float],
    train_loss: np.ndarray | None = None,
    title: str = "Stages: singular-mode strengths during training",
) -> Figure:
    """Figure 1: ``a_α(t) / s_α`` per mode over training (log time), transitions marked.

    Args:
        steps: ``[T]`` steps of ``strengths`` (and ``train_loss``).
        strengths: ``[T, M]`` mode strengths; singular_values: ``[M]``.
        mode_names, mode_levels: ``M`` labels and levels (colour = level).
        level_transitions: step at which each level reaches half strength.
        train_loss: optional ``[T]`` mean training loss, drawn in a second panel.
    """
    t = np.maximum(np.asarray(steps, dtype=float), 0.5)
    a = np.asarray(strengths, dtype=float) / np.asarray(singular_values, dtype=float)
    with house_style():
        rows = 2 if train_loss is not None else 1
        fig, axes = new_figure(
            rows,
            1,
            width=6.4,
            height=4.8 if rows == 2 else 3.4,
            sharex=True,
            gridspec_kw={"height_ratios": [3, 1.2][:rows]},
        )
        ax = axes[0, 0]
        seen: set[int] = set()
        for m in range(a.shape[1]):
            lvl = int(mode_levels[m])
            color = LEVEL_COLORS[lvl % len(LEVEL_COLORS)]
            s = float(singular_values[m])
            label = f"stage {lvl}: {mode_names[m]} (s={s:.2g})"
            if lvl in seen:
                label = f"         {mode_names[m]}"
            seen.add(lvl)
            ax.plot(t, a[:, m], color=color, lw=1.4, alpha=0.9, label=label)
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        mark_transitions(ax, level_transitions, _level_labels(len(level_transitions)))
        ax.set_xscale("log")
        ax.set_xlim(t[0], t[-1] * 1.05)
        ax.set_ylabel("mode strength  a / s")
        ax.set_ylim(-0.05, 1.1)
        fig.suptitle(title)
        ax.legend(
            loc="center left", ncol=1, fontsize=7, frameon=True, framealpha=0.9, edgecolor="none"
        )
        if train_loss is not None:
            ax2 = axes[1, 0]
            loss = np.asarray(train_loss, dtype=float)
            ax2.plot(t, loss, color="k", lw=1.2)
            ax2.set_yscale("log")
            # below ~1e-8 of its start the loss is only float round-off: do not let it set the scale
            ax2.set_ylim(
                max(float(np.nanmin(loss)), 1e-8 * float(np.nanmax(loss))) / 2,
                2 * float(np.nanmax(loss)),
            )
            ax2.set_ylabel("training loss")
            mark_transitions(ax2, level_transitions, label_text=False)
            ax2.set_xlabel("training step (log scale); dashed: stage transitions (a/s = ½)")
        else:
            ax.set_xlabel("training step (log scale); dashed: stage transitions (a/s = ½)")
    return fig


def _symmetric(ax: Axes, values: list[np.ndarray]) -> None:
    """Y limits symmetric about 0 (so twin axes share their zero line)."""
    m = max((float(np.nanmax(np.abs(v))) for v in values if np.isfinite(v).any()), default=1.0)
    m = m if m > 0 else 1.0
    ax.set_ylim(-1.12 * m, 1.12 * m)


def plot_influence_curves(
    steps: Sequence[int],
    curves: Mapping[str, np.ndarray],
    panel_titles: Sequence[str],
    level_transitions: Sequence[float],
    healthy: Sequence[bool] | None = None,
    bif_label: str = "BIF (+Cov)",
    left_ylabel: str = "BIF / analytic  (+Cov)",
    right_ylabel: str = "leave-one-out  Δloss",
    title: str = "Influence over training",
    right_key: str = "leave-one-out",
) -> Figure:
    """Figure 2: influence of one item on others over training, one panel per target.

    Args:
        steps: ``[T]`` checkpoint steps.
        curves: ``{"BIF": [T, K], "analytic": [T, K], "leave-one-out": [T, K]}`` for ``K`` panels;
            every key except ``right_key`` shares the left axis, ``right_key`` gets its own
            (both axes symmetric about 0, so the zero lines coincide).
        panel_titles: ``K`` titles ("dog → sparrow ...").
        level_transitions: stage transition steps (dashed lines).
        healthy: ``[T]`` chain health; unhealthy BIF checkpoints are drawn hollow.
    """
    t = np.asarray(steps, dtype=float)
    k_panels = len(panel_titles)
    with house_style():
        fig, axes = new_figure(k_panels, 1, width=6.4, height=2.3 * k_panels + 0.6, sharex=True)
        for k in range(k_panels):
            ax = axes[k, 0]
            left = []
            for name, c in curves.items():
                if name == right_key:
                    continue
                y = np.asarray(c, dtype=float)[:, k]
                left.append(y)
                color = ESTIMATOR_COLORS.get(name, None)
                if name == "BIF":
                    ax.plot(t, y, color=color, lw=1.6, label=bif_label, zorder=3)
                    ok = np.ones_like(t, dtype=bool) if healthy is None else np.asarray(healthy)
                    ax.scatter(t[ok], y[ok], s=12, color=color, zorder=4)
                    if (~ok).any():
                        ax.scatter(
                            t[~ok],
                            y[~ok],
                            s=22,
                            facecolors="white",
                            edgecolors=color,
                            zorder=4,
                            label="BIF, unhealthy chains",
                        )
                else:
                    ax.plot(
                        t,
                        y,
                        color=color,
                        lw=1.4,
                        ls="-.",
                        label=f"{name} prediction" if name == "analytic" else name,
                        zorder=2,
                    )
            _symmetric(ax, left)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_ylabel(left_ylabel)
            ax.set_xscale("log")
            mark_transitions(
                ax, level_transitions, _level_labels(len(level_transitions)), label_text=(k == 0)
            )
            ax.set_title(panel_titles[k], loc="left")
            handles, labels = ax.get_legend_handles_labels()
            if right_key in curves:
                axr = ax.twinx()
                y = np.asarray(curves[right_key], dtype=float)[:, k]
                color = ESTIMATOR_COLORS.get(right_key)
                (line,) = axr.plot(
                    t,
                    y,
                    color=color,
                    lw=1.4,
                    ls="--",
                    marker="s",
                    ms=2.5,
                    label=f"{right_key} (right axis)",
                )
                _symmetric(axr, [y])
                axr.set_ylabel(right_ylabel, color=color)
                axr.tick_params(axis="y", colors=color)
                axr.grid(False)
                axr.spines["right"].set_visible(True)
                handles.append(line)
                labels.append(line.get_label())
            if k == 0:
                gap = 0.75 if right_key in curves else 0.05  # clear of the right axis
                legend_beside(ax, handles, labels, gap_in=gap, frameon=False)
        axes[-1, 0].set_xlabel("training step (log scale); dashed: stage transitions")
        fig.suptitle(title)
    return fig


def plot_influence_matrices(
    steps: Sequence[int],
    matrices: Mapping[str, np.ndarray],
    item_names: Sequence[str],
    title: str = "Item x item influence at key steps",
    row_labels: Mapping[str, str] | None = None,
) -> Figure:
    """Figure 3: ``[P, P]`` influence matrices (rows: estimators, columns: steps).

    Each panel is scaled by its own largest off-diagonal ``|value|`` (shown in its title); the
    diagonal (self-influence, much larger) is greyed out. Rows of a matrix are the influenced item
    (query), columns the influencing item (train).

    Args:
        steps: ``K`` steps (column titles).
        matrices: ``{estimator: [K, P, P]}``.
        item_names: ``P`` tick labels.
        row_labels: optional longer names of the estimators.
    """
    names = list(matrices)
    k_cols = len(steps)
    p = len(item_names)
    with house_style():
        fig, axes = new_figure(
            len(names), k_cols, width=1.9 * k_cols + 1.0, height=1.95 * len(names) + 0.5
        )
        im = None
        cmap = mpl.colormaps[DIVERGING_CMAP].with_extremes(bad="#d9d9d9")
        for r, name in enumerate(names):
            mats = np.asarray(matrices[name], dtype=float)
            for c in range(k_cols):
                ax = axes[r, c]
                m = mats[c].copy()
                np.fill_diagonal(m, np.nan)
                scale = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0
                shown = m / scale if scale > 0 else m
                im = ax.imshow(shown, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
                ax.set_title(f"step {steps[c]}  (max {scale:.1e})", fontsize=7.5)
                ax.set_xticks(range(p))
                ax.set_yticks(range(p))
                ax.grid(False)
                if r == len(names) - 1:
                    ax.set_xticklabels(item_names, rotation=90, fontsize=6.5)
                    ax.set_xlabel("influencing item", fontsize=7.5)
                else:
                    ax.set_xticklabels([])
                if c == 0:
                    ax.set_yticklabels(item_names, fontsize=6.5)
                    label = (row_labels or {}).get(name, name)
                    ax.set_ylabel(f"{label}\ninfluenced item", fontsize=7.5)
                else:
                    ax.set_yticklabels([])
        if im is not None:
            cb = fig.colorbar(im, ax=axes, shrink=0.6, pad=0.02)
            cb.set_label("influence / max |off-diagonal|\n(red = helpful, blue = harmful)")
        fig.suptitle(title)
    return fig
