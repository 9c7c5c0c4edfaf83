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
