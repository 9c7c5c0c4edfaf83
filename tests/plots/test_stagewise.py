"""Figures of the stagewise LM experiment from a merged run."""

from __future__ import annotations

import numpy as np
from matplotlib.text import Text

from bifrepro.dynamics.stagewise_merge import merge_checkpoints
from bifrepro.plots.stagewise import figure_notes, stagewise_figures
from bifrepro.sampling import SGLDConfig
from tests.dynamics._stagewise_fakes import SETTINGS, fake_data, fake_results


def test_figure_notes_name_health_sampler_and_calibration() -> None:
    note, sampler_note = figure_notes(np.array([True, False]), SGLDConfig(), "correlation")
    assert "chains healthy at 1/2 checkpoints" in note and "SGLD ε=" in sampler_note
    note, sampler_note = figure_notes(np.array([True]), SGLDConfig(), "covariance", "ε calibrated")
    assert note.endswith("; ε calibrated") and sampler_note.endswith("; ε calibrated")


def test_stagewise_figures() -> None:
    m = merge_checkpoints(fake_results(), fake_data(), None, SETTINGS)
    notes = figure_notes(m.healthy, SGLDConfig(), "correlation")
    figures = stagewise_figures(m, "tiny LM", notes, "correlation", 2, 2)
    assert set(figures) == {
        "fig1_stages.png", "fig2_class_influence.png", "fig3_token_pairs.png",
        "fig4_class_matrices.png",
    }  # fmt: skip
    texts = [t.get_text() for t in figures["fig1_stages.png"].findobj(Text)]
    assert any("Stages of tiny LM" in t for t in texts)
    m.pairs.titles.clear()  # no pair changes sign: no fig3
    assert "fig3_token_pairs.png" not in stagewise_figures(m, "x", notes, "correlation", 2, 2)
