"""The LDS figure's additions: BIF's spread over sampler seeds as a band, the ranking note."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from bifrepro.plots.lds import plot_lds_vs_alpha, ranking_note  # noqa: E402


def test_bif_seeds_are_a_band_around_bifs_line() -> None:
    rows = [
        {"method": m, "alpha": a, "lds": 0.3, "ci_low": 0.2, "ci_high": 0.4}
        for m in ("BIF (cov)", "EK-FAC")
        for a in (0.05, 0.5)
    ]
    bands = pd.DataFrame(
        [
            {"method": "BIF (cov)", "alpha": a, "num_seeds": 3, "seed_min": 0.1, "seed_max": 0.5}
            for a in (0.05, 0.5)
        ]
    )
    fig = plot_lds_vs_alpha(pd.DataFrame(rows), "title", seed_bands=bands)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "BIF (cov): range over 3 sampler seeds" in labels
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == 0.1 and ys.max() == 0.5
    plain = plot_lds_vs_alpha(pd.DataFrame(rows), "title").axes[0]
    assert len(plain.get_legend().get_texts()) == 2  # no band without seeds


def test_lds_title_note_marks_unresolved_ranking_steps() -> None:
    import pandas as pd

    def ranking(alpha: float, resolved: list[bool]) -> list[dict[str, object]]:
        names = ["BIF (cov)", "EK-FAC", "TRAK"]
        return [
            {"alpha": alpha, "rank": i + 1, "method": n, "resolved": r}
            for i, (n, r) in enumerate(zip(names, resolved, strict=True))
        ]

    resolved = pd.DataFrame(ranking(0.05, [True, True, False]))
    assert ranking_note(resolved).startswith("ranking resolved at every α")
    mixed = pd.DataFrame(ranking(0.05, [True, True, False]) + ranking(0.5, [False, True, False]))
    note = ranking_note(mixed)
    assert note.startswith("UNRESOLVED") and "α=0.5: BIF (cov) ≈ EK-FAC" in note
    assert "EK-FAC ≈ TRAK" not in note  # the resolved step is not listed
    wide = pd.DataFrame([r for a in range(20) for r in ranking(a / 100 + 0.01, [False] * 3)])
    assert all(len(line) <= 60 for line in ranking_note(wide, width=60).splitlines())
    assert "α=0.05" not in note
    assert ranking_note(pd.DataFrame()) == ""


def test_legend_stays_clear_of_the_data_where_every_alpha_is_low() -> None:
    """The committed MNIST-5k and Fashion-MNIST figures had a low method's interval under a legend
    placed inside the axes; the legend sits beside them."""
    from bifrepro.plots.checks import figure_problems

    rows = [
        {"method": m, "alpha": a, "lds": v, "ci_low": v - 0.05, "ci_high": v + 0.05}
        for m, v in (("BIF (cov)", 0.45), ("EK-FAC", 0.4), ("TRAK", 0.05), ("GradSim", 0.25))
        for a in (0.05, 0.1, 0.25, 0.5)
    ]
    fig = plot_lds_vs_alpha(pd.DataFrame(rows), "title")
    assert figure_problems(fig) == []
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1


def test_the_two_bif_variants_differ_in_the_legend() -> None:
    rows = [
        {"method": m, "alpha": a, "lds": 0.3, "ci_low": 0.2, "ci_high": 0.4}
        for m in ("BIF (cov)", "BIF (corr)")
        for a in (0.05, 0.5)
    ]
    bands = pd.DataFrame(
        [
            {"method": m, "alpha": a, "num_seeds": 3, "seed_min": 0.1, "seed_max": 0.5}
            for m in ("BIF (cov)", "BIF (corr)")
            for a in (0.05, 0.5)
        ]
    )
    ax = plot_lds_vs_alpha(pd.DataFrame(rows), "title", seed_bands=bands).axes[0]
    handles = {lab: h for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)}
    assert set(handles) == {t.get_text() for t in ax.get_legend().get_texts()}
    cov, corr = handles["BIF (cov)"], handles["BIF (corr)"]
    # same colour (one method), told apart by marker and line style
    cov_line, corr_line = cov.lines[0], corr.lines[0]
    assert cov_line.get_color() == corr_line.get_color()
    assert cov_line.get_marker() != corr_line.get_marker()
    assert cov_line.get_linestyle() != corr_line.get_linestyle()
    cov_band = handles["BIF (cov): range over 3 sampler seeds"]
    corr_band = handles["BIF (corr): range over 3 sampler seeds"]
    assert cov_band.get_hatch() != corr_band.get_hatch()
