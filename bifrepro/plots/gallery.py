"""Influence galleries in the poster's layout: one row per query, top-k training images per method.

Row layout: the query image with its label, then for each method its top-k training images
(most helpful by default, most harmful with ``direction="harmful"``) with the score
(``"Corr=0.346"`` for BIF's correlation, ``"Score=1.2e+03"`` for EK-FAC's raw score) and the
class label. A label that matches the query's class is drawn in green, others in red, so label
agreement is visible at a glance. Images are un-normalised before plotting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from bifrepro.data.imagenet import InfluencePool
from bifrepro.evaluation.agreement import topk_indices
from bifrepro.evaluation.gallery import DISPLAY_NAMES, MethodResult
from bifrepro.plots.style import ESTIMATOR_COLORS, house_style, new_figure

__all__ = ["GalleryMethod", "plot_gallery", "plot_agreement", "format_value", "gallery_figures"]

MATCH_COLOR = "#1a7f37"
MISMATCH_COLOR = "#c62828"
#: Colours of the display names the house palette lacks (lighter shades of their parent's).
_EXTRA_COLORS = {"BIF (cov)": "#6baed6", "EK-FAC (RelatIF)": "#98df8a"}


def _color(name: str) -> str | None:
    return ESTIMATOR_COLORS.get(name, _EXTRA_COLORS.get(name))


@dataclass
class GalleryMethod:
    """One method's block in the gallery.

    Attributes:
        name: column header, e.g. ``"BIF"``.
        scores: ``[n_query, n_train]``, positive = helpful.
        value_name: prefix of the value under each image, e.g. ``"Corr"`` or ``"Score"``.
        subtitle: a short note under the header (estimator, draws, tracked layers...).
    """

    name: str
    scores: torch.Tensor
    value_name: str = "Score"
    subtitle: str = ""


def format_value(value: float) -> str:
    """3 decimals for values in (-10, 10) (correlations), 3 significant digits otherwise."""
    if not math.isfinite(value):
        return "nan"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.3g}"


def _image(
    dataset: Dataset, index: int, unnormalize: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    x = dataset[index][0]
    img = unnormalize(torch.as_tensor(x)).detach().float().cpu()
    if img.dim() == 3:
        img = img.permute(1, 2, 0)
    if img.shape[-1] == 1:
        img = img[..., 0]
    return img.clamp(0, 1)


def _show(ax, img: torch.Tensor, border: str | None = None) -> None:  # noqa: ANN001
    ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_edgecolor(border)
            spine.set_linewidth(2.0)


def plot_gallery(
    methods: Sequence[GalleryMethod],
    queries: Dataset,
    query_rows: Sequence[int],
    query_labels: torch.Tensor,
    train: Dataset,
    train_labels: torch.Tensor,
    label_text: Callable[[int], str],
    unnormalize: Callable[[torch.Tensor], torch.Tensor],
    k: int = 3,
    direction: str = "helpful",
    title: str = "",
    image_size: float = 1.25,
) -> Figure:
    """The gallery figure (see the module docstring).

    Args:
        methods: blocks, left to right (e.g. BIF then EK-FAC).
        queries / train: datasets of ``(image, label)``, normalised as the model saw them.
        query_rows: positions in ``queries`` (and rows of every method's scores) to show.
        query_labels / train_labels: class indices of all queries / training items.
        label_text: class index → display label (e.g. ``"528 Border collie"``).
        unnormalize: normalised image → image in [0, 1].
        k: images per method.
        direction: ``"helpful"`` (largest scores) or ``"harmful"`` (most negative).
        title: figure title (say dataset, model, estimator, draws, chain health).
    """
    if not methods:
        raise ValueError("plot_gallery needs at least one method")
    query_labels = torch.as_tensor(query_labels).long().cpu()
    train_labels = torch.as_tensor(train_labels).long().cpu()
    tops = [topk_indices(m.scores.cpu(), k, direction) for m in methods]
    n_rows = len(query_rows)
    what = "most helpful" if direction == "helpful" else "most harmful"
    with house_style():
        fig = Figure(
            figsize=(
                image_size * (1 + k * len(methods)) + 0.4 * len(methods),
                image_size * 1.5 * n_rows + 1.1,
            ),
            layout="constrained",
        )
        subfigs = fig.subfigures(1, 1 + len(methods), width_ratios=[1.15] + [k] * len(methods))
        # the query column
        qfig = subfigs[0]
        qfig.suptitle("Query\n", fontsize=9, fontweight="bold")
        q_axes = qfig.subplots(n_rows, 1, squeeze=False)[:, 0]
        for r, q in enumerate(query_rows):
            _show(q_axes[r], _image(queries, q, unnormalize), border="#222222")
            q_axes[r].set_title(label_text(int(query_labels[q])), fontsize=8, fontweight="bold")
        # one block per method
        for m, top, sub in zip(methods, tops, subfigs[1:], strict=True):
            header = f"{m.name}: top-{k} {what}"
            sub.suptitle(
                header + (f"\n{m.subtitle}" if m.subtitle else "\n"),
                fontsize=9,
                color=_color(m.name) or "#222222",
                fontweight="bold",
            )
            axes = sub.subplots(n_rows, k, squeeze=False)
            for r, q in enumerate(query_rows):
                q_label = int(query_labels[q])
                for j in range(k):
                    t = int(top[q, j])
                    t_label = int(train_labels[t])
                    color = MATCH_COLOR if t_label == q_label else MISMATCH_COLOR
                    _show(axes[r, j], _image(train, t, unnormalize), border=color)
                    value = format_value(float(m.scores[q, t]))
                    axes[r, j].set_title(
                        f"{m.value_name}={value}\n{label_text(t_label)}", fontsize=7, color=color
                    )
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def _bars(ax, rows_by_method: dict, ks: list[int], value: str, **kwargs) -> None:  # noqa: ANN001
    """Grouped bars (one group per k, one bar per method) with CI error bars."""
    methods = list(rows_by_method)
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        rows = rows_by_method[m].set_index("k").reindex(ks)
        x = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(ks))]
        err = [
            (rows[value] - rows.ci_low).clip(lower=0).to_numpy(),
            (rows.ci_high - rows[value]).clip(lower=0).to_numpy(),
        ]
        ax.bar(x, rows[value].to_numpy(), width=width, yerr=err, capsize=2, label=m,
               color=_color(m), **kwargs)  # fmt: skip
        # a bar's top as a thick line of its colour: a zero-height bar stays visible
        ax.hlines(rows[value].to_numpy(), np.subtract(x, width / 2), np.add(x, width / 2),
                  colors=_color(m), lw=2.5, zorder=3)  # fmt: skip
    ax.set_xticks(range(len(ks)), [f"top-{k}" for k in ks])
    ax.set_xlabel("top-k training items by score")
    ax.set_ylim(-0.03, 1.05)  # room below 0 for the zero lines


def plot_agreement(
    table: pd.DataFrame, title: str = "", groups: pd.DataFrame | None = None
) -> Figure:
    """Bar chart of top-k label agreement with CIs: most helpful and most harmful, and with
    ``groups`` (:func:`~bifrepro.evaluation.agreement.group_agreement_table`, pooled rows) the
    exact-class share for queries in a confusable group.

    ``table`` is :func:`bifrepro.evaluation.agreement.agreement_table`'s output (``method`` may
    hold display names). Dashed lines: the chance level (a random ranking). The legend sits
    below the panels, never on the bars.
    """
    directions = [d for d in ("helpful", "harmful") if d in set(table.direction)]
    methods = list(dict.fromkeys(table.method))
    ks = sorted(set(table.k))
    pooled = None
    if groups is not None and not groups.empty:
        pooled = groups[(groups.group == groups.group.iloc[0]) & (groups.metric == "exact")]
    n_panels = len(directions) + (pooled is not None)
    with house_style():
        fig, axes = new_figure(1, n_panels, width=3.4 * n_panels + 0.6, height=3.2)
        for ax, direction in zip(axes[0], directions, strict=False):
            sub = table[table.direction == direction]
            _bars(ax, {m: sub[sub.method == m] for m in methods}, ks, "agreement")
            chance = float(sub.chance.iloc[0])
            ax.axhline(chance, color="#555555", ls="--", lw=1.0, label="chance")
            ax.set_ylabel("label agreement with the query")
            n = int(sub.n_queries.iloc[0])
            ci = f"{round(100 * float(sub.confidence.iloc[0]))}% CI"
            ax.set_title(f"most {direction} ({n} queries, {ci})")
        if pooled is not None:
            ax = axes[0][-1]
            _bars(ax, {m: pooled[pooled.method == m] for m in methods}, ks, "value")
            ax.axhline(float(pooled.chance.iloc[0]), color="#555555", ls="--", lw=1.0)
            ax.set_ylabel("share of the top-k with the exact class")
            n = int(pooled.n_queries.iloc[0])
            ax.set_title(f"most helpful, queries in a look-alike group ({n})")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)),
                   frameon=False)  # fmt: skip
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def gallery_figures(
    pool: InfluencePool,
    results: Mapping[str, MethodResult],
    table: pd.DataFrame,
    *,
    normalize: str,
    gallery_k: int,
    confidence: float,
    title: str,
    groups: pd.DataFrame | None = None,
) -> dict[str, Figure]:
    """The gallery experiment's figures, keyed by file name: the helpful and harmful galleries
    (BIF beside EK-FAC, and EK-FAC (RelatIF) when it ran, with their mean label agreement in the
    title; the title names the dataset that ran) and the agreement plot (with ``groups``, the
    within-group panel)."""
    gallery_methods = [
        GalleryMethod(
            "BIF",
            results["bif"].scores,
            "Corr" if normalize == "correlation" else "Cov",
            results["bif"].note,
        ),
        GalleryMethod("EK-FAC", results["ekfac"].scores, "Score", results["ekfac"].note),
    ]
    if "ekfac_relatif" in results:
        r = results["ekfac_relatif"]
        gallery_methods.append(GalleryMethod("EK-FAC (RelatIF)", r.scores, "Rel", r.note))
    shown = ("bif", "ekfac", "ekfac_relatif")
    figures = {}
    for direction in ("helpful", "harmful"):
        sub = table[(table.direction == direction) & (table.k == gallery_k)]
        agree = ", ".join(
            f"{DISPLAY_NAMES[r.method]} {r.agreement:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
            for r in sub.itertuples()
            if r.method in shown
        )
        what = "Most helpful" if direction == "helpful" else "Most harmful (most negative)"
        full = (
            f"{what} training images · {title}\n"
            f"share of the top-{gallery_k} with the query's label, mean over {pool.n_query} "
            f"queries ({round(100 * confidence)}% CI): {agree}"
        )
        figures[f"gallery_{direction}.png"] = plot_gallery(
            gallery_methods,
            pool.queries,
            pool.gallery,
            pool.query_labels,
            pool.pool,
            pool.pool_labels,
            pool.label,
            pool.unnormalize,
            k=gallery_k,
            direction=direction,
            title=full,
        )
    names = {m: DISPLAY_NAMES[m] for m in results}
    figures["label_agreement.png"] = plot_agreement(
        table.assign(method=table.method.map(names)),
        title=f"Top-k label agreement · {title}",
        groups=None if groups is None else groups.assign(method=groups.method.map(names)),
    )
    return figures
