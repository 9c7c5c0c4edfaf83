"""Token panels as a PNG figure and as an HTML page."""

from __future__ import annotations

import numpy as np

from bifrepro.plots.tokens import TokenPanel, TokenRow, plot_token_panels, token_panels_html


def test_token_figure_and_html_page() -> None:
    rows = [
        TokenRow(
            "#1 seq 4",
            [" Marie", " has", " three", " cats", "."],
            np.array([0.0, 0.1, 0.8, -0.3, 0.0]),
        )
    ]
    panel = TokenPanel('"3" -> "three"', [" Marie", " has", " 3", " apples", "."], 2, rows)
    fig = plot_token_panels([panel, panel], "test figure")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("3") == 2 and texts.count("three") == 2
    boxes = [t.get_bbox_patch() for t in fig.axes[0].texts if t.get_text() == "three"]
    red = boxes[0].get_facecolor()
    assert red[0] > red[2]  # a positive score is drawn red, not blue
    page = token_panels_html([("numbers", [panel])], "page")
    assert (
        page.count("class='tok focus'") == 1
        and "title='+0.800'" in page
        and "title='-0.300'" in page
    )


def test_a_long_panel_header_wraps_inside_the_figure() -> None:
    long_title = '"5" -> "five" - NOT reproduced: first translation at rank 63 ' * 4
    panel = TokenPanel(long_title, [" I", " saw", " 5", " birds"], 2, [])
    fig = plot_token_panels([panel], "test figure", width_chars=60)
    ax = fig.axes[0]
    bold = [t for t in ax.texts if t.get_fontweight() == "bold"]
    assert len(bold) > 1  # wrapped onto several lines
    assert " ".join(t.get_text() for t in bold) == " ".join(long_title.split())
    fig.canvas.draw()
    right = fig.bbox.x1
    assert all(t.get_window_extent().x1 <= right for t in bold)  # none runs off the figure
