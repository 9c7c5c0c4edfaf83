"""Gallery figures: layout, ranking shown, labels and their colours, un-normalised images."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
from matplotlib.colors import to_hex
from torch.utils.data import TensorDataset

from bifrepro.plots.gallery import (
    MATCH_COLOR,
    MISMATCH_COLOR,
    GalleryMethod,
    format_value,
    plot_agreement,
    plot_gallery,
)

TRAIN_LABELS = torch.tensor([0, 1, 0, 1, 2])
QUERY_LABELS = torch.tensor([0, 1])
# query 0 ranks train 2 > 0 > 1 (labels 0, 0, 1); most harmful: train 4 (label 2)
SCORES = torch.tensor([[0.5, 0.1, 0.9, -0.2, -0.8], [0.0, 0.7, -0.5, 0.6, 0.2]])


def _data(n: int, labels: torch.Tensor) -> TensorDataset:
    # images normalised with mean 0.5, std 0.25: unnormalising maps them into [0, 1]
    x = (torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(n)) - 0.5) / 0.25
    return TensorDataset(x, labels)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return (x * 0.25 + 0.5).clamp(0, 1)


def _image_axes(fig):  # noqa: ANN001, ANN202
    return [ax for ax in fig.get_axes() if ax.images]


def test_gallery_layout_values_and_label_colours() -> None:
    methods = [
        GalleryMethod("BIF", SCORES, "Corr", "correlation"),
        GalleryMethod("EK-FAC", -SCORES, "Score"),
    ]
    fig = plot_gallery(
        methods,
        _data(2, QUERY_LABELS),
        [0, 1],
        QUERY_LABELS,
        _data(5, TRAIN_LABELS),
        TRAIN_LABELS,
        lambda c: f"class {c}",
        _unnormalize,
        k=2,
        title="test gallery",
    )
    axes = _image_axes(fig)
    assert len(axes) == 2 * (1 + 2 * 2)  # rows x (query + k per method)
    titles = [ax.get_title() for ax in axes]
    # axes come block by block: the query column, then each method's rows (row-major)
    assert titles[:2] == ["class 0", "class 1"]
    # BIF row 0: train 2 (0.9), 0 (0.5); EK-FAC (negated scores) row 0: train 4 (0.8), 3 (0.2)
    assert titles[2:4] == ["Corr=0.900\nclass 0", "Corr=0.500\nclass 0"]
    assert titles[6:8] == ["Score=0.800\nclass 2", "Score=0.200\nclass 1"]
    colours = [to_hex(axes[i].title.get_color()) for i in (2, 3, 6, 7)]
    assert colours == [MATCH_COLOR, MATCH_COLOR, MISMATCH_COLOR, MISMATCH_COLOR]
    # images are shown un-normalised, in [0, 1]
    for ax in axes:
        data = ax.images[0].get_array()
        assert data.min() >= 0 and data.max() <= 1
    texts = [t.get_text() for t in fig.texts] + [sf._suptitle.get_text() for sf in fig.subfigs]
    assert any("BIF: top-2 most helpful" in t for t in texts)
    assert fig._suptitle.get_text() == "test gallery"


def test_harmful_gallery_shows_the_most_negative_scores() -> None:
    fig = plot_gallery(
        [GalleryMethod("BIF", SCORES, "Corr")],
        _data(2, QUERY_LABELS),
        [0],
        QUERY_LABELS,
        _data(5, TRAIN_LABELS),
        TRAIN_LABELS,
        str,
        _unnormalize,
        k=1,
        direction="harmful",
    )
    titles = [ax.get_title() for ax in _image_axes(fig)]
    assert titles == ["0", "Corr=-0.800\n2"]


def test_format_value() -> None:
    assert format_value(0.34567) == "0.346"
    assert format_value(-1234.5) == "-1.23e+03"
    assert format_value(261.2) == "261"
    assert format_value(float("nan")) == "nan"


def test_agreement_plot_has_one_bar_per_method_and_k() -> None:
    rows = [
        {"method": m, "direction": d, "k": k, "agreement": a, "ci_low": a - 0.1,
         "ci_high": a + 0.05, "chance": 0.1, "n_queries": 50, "confidence": 0.95}
        for m, a in (("BIF", 0.9), ("EK-FAC", 0.6))
        for d in ("helpful", "harmful")
        for k in (1, 3)
    ]  # fmt: skip
    fig = plot_agreement(pd.DataFrame(rows), title="t")
    helpful, harmful = fig.get_axes()
    assert len(helpful.patches) == 2 * 2 and "50 queries" in helpful.get_title()
    assert sorted(round(p.get_height(), 3) for p in helpful.patches) == [0.6, 0.6, 0.9, 0.9]
    assert "harmful" in harmful.get_title()


def test_experiment_figure_set_names_the_methods_and_agreement() -> None:
    from bifrepro.evaluation.agreement import agreement_table
    from bifrepro.evaluation.gallery import MethodResult
    from bifrepro.plots.gallery import gallery_figures
    from tests.evaluation.test_gallery import tiny_pool

    pool = tiny_pool()
    as_images = {  # 1 x 2 x 2 "images" for the gallery rows
        k: TensorDataset(getattr(pool, k).tensors[0].view(-1, 1, 2, 2), getattr(pool, k).tensors[1])
        for k in ("pool", "queries")
    }
    pool = dataclasses.replace(pool, **as_images)
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    results = {
        "bif": MethodResult(scores, 1.0, "bif note"),
        "ekfac": MethodResult(-scores, 1.0, ""),
    }
    table = agreement_table(
        {k: r.scores for k, r in results.items()}, pool.pool_labels, pool.query_labels,
        ks=[1, 2], n_boot=200,
    )  # fmt: skip
    figs = gallery_figures(
        pool, results, table, normalize="correlation", gallery_k=2, confidence=0.9, title="T"
    )
    assert list(figs) == ["gallery_helpful.png", "gallery_harmful.png", "label_agreement.png"]
    title = figs["gallery_helpful.png"].get_suptitle()
    assert "BIF" in title and "EK-FAC" in title and "90% CI" in title and "4 queries" in title
    assert "Most harmful" in figs["gallery_harmful.png"].get_suptitle()
    for fig in figs.values():
        fig.clear()
