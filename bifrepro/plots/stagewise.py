"""Figures of the stagewise language-model experiment (influence across training checkpoints).

Every function takes plain arrays and returns a ``Figure``; all share a log-scaled step axis with
the detected stage transitions drawn as dashed lines, and a strip with the induction score on the
same axis so influence can be read against the stage it is supposed to follow. Influence arrays
are laid out ``[T, ...]`` (checkpoints first); positive = helpful.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.stagewise_merge import StagewiseMerge
from bifrepro.plots.style import (
    DIVERGING_CMAP,
    ESTIMATOR_COLORS,
    LEVEL_COLORS,
    health_note,
    house_style,
    legend_beside,
    mark_transitions,
    new_figure,
)
from bifrepro.sampling import SGLDConfig

__all__ = [
    "INDUCTION_COLOR",
    "plot_stages",
    "plot_class_influence",
    "plot_token_pairs",
    "plot_class_matrices",
    "figure_notes",
    "stagewise_figures",
]

#: Colour of the induction-score curve in every figure.
INDUCTION_COLOR = "#CC6677"
_BIF = ESTIMATOR_COLORS["BIF"]


def _x(steps: Sequence[float]) -> np.ndarray:
    """Steps on a log axis (step 0 drawn at 0.5)."""
    return np.maximum(np.asarray(steps, dtype=float), 0.5)


def _log_x(ax: Axes) -> None:
    """Log step axis with plain labels (10, 100, 1000) and unlabelled minor ticks."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


_TRANSITION_COLORS = (INDUCTION_COLOR, *LEVEL_COLORS[1:])


def _transitions(ax: Axes, transitions: Mapping[str, float], label: bool = False) -> None:
    """Dashed lines at the transitions; ``label`` adds them to the axes' legend handles."""
    names = list(transitions)
    mark_transitions(
        ax, [transitions[n] for n in names], names, colors=_TRANSITION_COLORS, label_text=False
    )
    if label:
        for k, n in enumerate(names):
            v = transitions[n]
            if v is not None and v == v:
                ax.plot([], [], ls="--", lw=1.0, color=_TRANSITION_COLORS[k % len(_TRANSITION_COLORS)],
                        label=f"{n}: step {v:.0f}")  # fmt: skip


def _induction_strip(
    ax: Axes,
    steps: Sequence[float],
    score: Sequence[float],
    transitions: Mapping[str, float],
    xlabel: str,
) -> None:
    ax.plot(
        _x(steps), np.asarray(score, dtype=float), color=INDUCTION_COLOR, marker="o", ms=3,
        label="induction score",
    )  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("induction\nscore (nats)")
    _log_x(ax)
    _transitions(ax, transitions, label=True)
    ax.legend(loc="upper left", frameon=True, framealpha=0.85, fontsize=7)
    ax.set_xlabel(xlabel)


def _symmetric(ax: Axes, arrays: Sequence[np.ndarray]) -> None:
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    m = max((float(f.max()) for f in finite if f.size), default=1.0)
    m = m if m > 0 else 1.0
    ax.set_ylim(-1.15 * m, 1.15 * m)


def _curve(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    se: np.ndarray | None,
    healthy: np.ndarray,
    color: str = _BIF,
) -> None:
    ax.plot(x, y, color=color, lw=1.3, zorder=3)
    if se is not None and np.isfinite(se).any():
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.2, lw=0, zorder=2)
    ax.scatter(x[healthy], y[healthy], s=9, color=color, zorder=4)
    if (~healthy).any():
        ax.scatter(x[~healthy], y[~healthy], s=16, facecolors="white", edgecolors=color, zorder=4)


def plot_stages(
    train_steps: Sequence[float] | None,
    train_loss: Sequence[float] | None,
    steps: Sequence[float],
    induction: Sequence[float],
    first_loss: Sequence[float],
    second_loss: Sequence[float],
    transitions: Mapping[str, float],
    eval_loss: Sequence[float] | None = None,
    llc: Sequence[float] | None = None,
    llc_se: Sequence[float] | None = None,
    title: str = "Stages of the language model",
) -> Figure:
    """Loss curve, induction probe and (optionally) the LLC on one log-step axis.

    Args:
        train_steps, train_loss: the per-step training loss (``None`` for models trained
            elsewhere, e.g. Pythia revisions).
        steps: ``[T]`` checkpoint steps; ``induction``, ``first_loss``, ``second_loss``: the
            induction score and the loss on the first / second copy of repeated random tokens.
        transitions: ``{label: step}`` dashed lines (NaN: not detected).
        eval_loss: ``[T]`` mean token loss of the query sequences at each checkpoint.
        llc, llc_se: ``[T]`` local learning coefficient and its standard error.
    """
    x = _x(steps)
    rows = 3 if llc is not None else 2
    with house_style():
        fig, axes = new_figure(
            rows, 1, width=6.4, height=1.9 * rows + 0.7, sharex=True,
            gridspec_kw={"height_ratios": [1.2, 1.2, 1.0][:rows]},
        )  # fmt: skip
        ax = axes[0, 0]
        if train_steps is not None and train_loss is not None:
            ax.plot(
                _x(train_steps), train_loss, color="k", lw=0.8, alpha=0.7, label="training loss"
            )
        if eval_loss is not None:
            ax.plot(x, eval_loss, color=_BIF, marker="o", ms=3, lw=1.2, label="query loss at w*")
        _log_x(ax)
        ax.set_ylabel("loss (nats/token)")
        _transitions(ax, transitions, label=True)
        ax.legend(loc="lower left", frameon=True, framealpha=0.85)
        fig.suptitle(title)

        ax = axes[1, 0]
        ax.plot(x, induction, color=INDUCTION_COLOR, marker="o", ms=3, label="induction score")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("induction score\n(nats, 1st − 2nd copy)")
        _transitions(ax, transitions, label=False)
        axr = ax.twinx()
        axr.plot(x, first_loss, color="#777777", ls="--", lw=1.0, label="loss, 1st copy")
        axr.plot(x, second_loss, color="#777777", ls=":", lw=1.2, label="loss, 2nd copy")
        axr.set_ylabel("loss on repeated\nrandom tokens", color="#555555")
        axr.grid(False)
        axr.spines["right"].set_visible(True)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = axr.get_legend_handles_labels()
        legend_beside(ax, h1 + h2, l1 + l2, gap_in=0.75, frameon=False)

        if llc is not None:
            ax = axes[2, 0]
            y = np.asarray(llc, dtype=float)
            ax.plot(x, y, color="#117733", marker="o", ms=3)
            if llc_se is not None:
                se = np.asarray(llc_se, dtype=float)
                ax.fill_between(x, y - se, y + se, color="#117733", alpha=0.2, lw=0)
            ax.set_ylabel("LLC λ̂")
            _transitions(ax, transitions, label=False)
        axes[-1, 0].set_xlabel("training step (log scale); dashed: detected transitions")
    return fig


def plot_class_influence(
    steps: Sequence[float],
    mean: np.ndarray,
    std_error: np.ndarray | None,
    class_names: Sequence[str],
    transitions: Mapping[str, float],
    induction: Sequence[float],
    healthy: Sequence[bool] | None = None,
    ylabel: str = "mean corr.",
    title: str = "Class x class influence over training",
) -> Figure:
    """A ``K x K`` grid of influence curves (row: query class, column: training class), plus the
    induction score on the same axis below.

    Args:
        mean, std_error: ``[T, K, K]`` class-level influence and its standard error (band).
        healthy: ``[T]`` chain health; unhealthy checkpoints are drawn hollow.
    """
    x = _x(steps)
    m = np.asarray(mean, dtype=float)
    se = None if std_error is None else np.asarray(std_error, dtype=float)
    k = len(class_names)
    ok = np.ones(len(x), bool) if healthy is None else np.asarray(healthy, bool)
    with house_style():
        fig = Figure(figsize=(1.75 * k + 1.2, 1.45 * k + 1.9), layout="constrained")
        gs = fig.add_gridspec(k + 1, k, height_ratios=[1.0] * k + [0.9])
        first = None
        for r in range(k):
            for c in range(k):
                ax = fig.add_subplot(gs[r, c], sharex=first)
                first = first or ax
                y = m[:, r, c]
                s = None if se is None else se[:, r, c]
                _curve(ax, x, y, s, ok)
                ax.axhline(0, color="k", lw=0.5)
                _log_x(ax)
                _symmetric(ax, [y if s is None else np.abs(y) + np.nan_to_num(s)])
                _transitions(ax, transitions)
                ax.tick_params(labelsize=6.5)
                if r == 0:
                    ax.set_title(f"train: {class_names[c]}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"query: {class_names[r]}\n{ylabel}", fontsize=7.5)
                ax.tick_params(labelbottom=False)  # the induction strip below carries them
        ax = fig.add_subplot(gs[k, :], sharex=first)
        _induction_strip(
            ax, steps, induction, transitions,
            "training step (log scale); band: ±1 s.e. (blocks of draws); hollow: unhealthy chains",
        )  # fmt: skip
        fig.suptitle(title)
    return fig


def plot_token_pairs(
    steps: Sequence[float],
    curves: np.ndarray,
    panel_titles: Sequence[str],
    transitions: Mapping[str, float],
    induction: Sequence[float],
    healthy: Sequence[bool] | None = None,
    ylabel: str = "corr.",
    title: str = "Token pairs whose influence changes sign",
    noise_se: Sequence[float] | None = None,
) -> Figure:
    """One panel per (query token, training token) pair: ``curves`` is ``[T, P]``.

    ``noise_se``: ``[T]`` standard error of one pair's score per checkpoint, drawn as a grey
    ±1.96 s.e. band around 0 (a curve inside it is not resolved from zero)."""
    x = _x(steps)
    c = np.asarray(curves, dtype=float)
    p = c.shape[1]
    ok = np.ones(len(x), bool) if healthy is None else np.asarray(healthy, bool)
    with house_style():
        fig, axes = new_figure(
            p + 1, 1, width=6.4, height=1.55 * p + 1.9, sharex=True,
            gridspec_kw={"height_ratios": [1.0] * p + [0.8]},
        )  # fmt: skip
        for k in range(p):
            ax = axes[k, 0]
            if noise_se is not None:
                band = 1.96 * np.asarray(noise_se, dtype=float)
                ax.fill_between(
                    x, -band, band, color="0.8", alpha=0.6, lw=0, zorder=0,
                    label="±1.96 s.e. of one pair's score (noise)",
                )  # fmt: skip
            _curve(ax, x, c[:, k], None, ok)
            ax.axhline(0, color="k", lw=0.6)
            _log_x(ax)
            _symmetric(ax, [c[:, k]] if noise_se is None else [c[:, k], band])
            _transitions(ax, transitions)
            ax.set_ylabel(ylabel)
            ax.set_title(panel_titles[k], loc="left", fontsize=8)
            if noise_se is not None and k == 0:
                ax.legend(loc="best", fontsize=7)
        _induction_strip(axes[p, 0], steps, induction, transitions, "training step (log scale)")
        fig.suptitle(title)
    return fig


def plot_class_matrices(
    steps: Sequence[float],
    matrices: np.ndarray,
    class_names: Sequence[str],
    title: str = "Class x class influence at key checkpoints",
    panel_labels: Sequence[str] | None = None,
) -> Figure:
    """``[S, K, K]`` class x class matrices side by side, one colour scale, values written in."""
    mats = np.asarray(matrices, dtype=float)
    s, k = mats.shape[0], len(class_names)
    scale = float(np.nanmax(np.abs(mats))) if np.isfinite(mats).any() else 1.0
    scale = scale if scale > 0 else 1.0
    cmap = mpl.colormaps[DIVERGING_CMAP].with_extremes(bad="#d9d9d9")
    with house_style():
        fig, axes = new_figure(1, s, width=2.2 * s + 1.2, height=2.9)
        im = None
        for j in range(s):
            ax = axes[0, j]
            im = ax.imshow(mats[j], cmap=cmap, vmin=-scale, vmax=scale, interpolation="nearest")
            for r in range(k):
                for c in range(k):
                    v = mats[j, r, c]
                    if np.isfinite(v):
                        ax.text(c, r, f"{v:+.2f}" if abs(v) >= 0.01 else f"{v:+.0e}",
                                ha="center", va="center", fontsize=5.5,
                                color="white" if abs(v) > 0.6 * scale else "black")  # fmt: skip
            label = panel_labels[j] if panel_labels is not None else ""
            ax.set_title(f"step {int(steps[j])}{label}", fontsize=8)
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
            ax.set_xticklabels(class_names, rotation=90, fontsize=6.5)
            ax.set_yticklabels(class_names if j == 0 else [], fontsize=6.5)
            ax.grid(False)
            ax.set_xlabel("training token class", fontsize=7.5)
            if j == 0:
                ax.set_ylabel("query token class", fontsize=7.5)
        if im is not None:
            cb = fig.colorbar(im, ax=axes, shrink=0.8, pad=0.02)
            cb.set_label("mean influence (red = helpful)")
        fig.suptitle(title)
    return fig


def figure_notes(
    healthy: np.ndarray, sampler: SGLDConfig, estimator: str, calibration: str | None = None
) -> tuple[str, str]:
    """Title fragments: the BIF estimator, draws and chain health; the sampler's settings (both
    followed by the ``calibration`` note, if any)."""
    draws = sampler.num_chains * sampler.num_draws
    note = health_note(int(healthy.sum()), len(healthy), draws, estimator)
    sampler_note = (
        f"SGLD ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, γ={sampler.localization:g}, "
        f"{sampler.preconditioner}"
    )
    if calibration is not None:
        note, sampler_note = f"{note}; {calibration}", f"{sampler_note}; {calibration}"
    return note, sampler_note


def stagewise_figures(
    m: StagewiseMerge,
    model_desc: str,
    notes: tuple[str, str],
    estimator: str,
    num_queries: int,
    num_observed: int,
) -> dict[str, Figure]:
    """The four figures of a merged run (fig3 only when some token pair changes sign)."""
    note, sampler_note = notes
    names, steps, marks, ind = list(TOKEN_CLASSES), m.steps, m.marks, m.induction
    ylabel = "mean corr." if estimator == "correlation" else "mean +cov"
    figures = {
        "fig1_stages.png": plot_stages(
            m.loss_steps, m.loss_curve, steps, ind, m.first_copy_loss, m.second_copy_loss, marks,
            eval_loss=m.query_loss, llc=m.llc, llc_se=m.llc_se,
            title=f"Stages of {model_desc}\nloss, induction probe, LLC ({sampler_note})",
        ),
        "fig2_class_influence.png": plot_class_influence(
            steps, m.class_mean, m.class_se, names, marks, ind, m.healthy, ylabel=ylabel,
            title=f"Per-token influence aggregated by token class (+ = helpful)\n{note}; "
            f"{num_queries} query x {num_observed} training sequences",
        ),
    }  # fmt: skip
    if m.pairs.titles:
        figures["fig3_token_pairs.png"] = plot_token_pairs(
            m.pairs.steps, m.pairs.curves, m.pairs.titles, marks, ind, m.healthy,
            ylabel=ylabel.replace("mean ", ""),
            title=f"The {len(m.pairs.titles)} strongest sign changes among "
            f"{m.pairs.num_candidates:,} token pairs (selected: extremes of many noisy curves)"
            f"\n{note}",
            noise_se=m.pairs.noise_se,
        )  # fmt: skip
    idx = m.matrix_index
    tags = {m.after: " (after)", m.before: " (before)"}  # before wins if they coincide
    trans = m.transition
    figures["fig4_class_matrices.png"] = plot_class_matrices(
        [steps[i] for i in idx], m.class_mean[idx], names,
        title=f"Class x class influence at key checkpoints (induction transition: onset "
        f"{trans.onset:.0f}, end {trans.end:.0f})\n{note}",
        panel_labels=[tags.get(i, "") for i in idx],
    )  # fmt: skip
    return figures
