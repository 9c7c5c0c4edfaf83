"""Figure checks: each check catches a figure built to break it, and every figure of
``bifrepro.plots`` (built on tiny synthetic inputs) passes all of them."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from bifrepro.plots.checks import (  # noqa: E402
    check_axis_labels,
    check_legends_clear,
    check_titles,
    check_y_ticks,
    data_axes,
    figure_problems,
)

# ---------------------------------------------------------------- each check can fail


def _line_figure() -> tuple[Figure, object]:
    """A clean figure: one labelled, titled line from (0, 0) to (10, 10), legend off the axes."""
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    x = np.linspace(0, 10, 50)
    ax.plot(x, x, label="rising")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("a line")
    return fig, ax


def test_a_clean_figure_passes_every_check() -> None:
    fig, ax = _line_figure()
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    assert figure_problems(fig) == []
    assert data_axes(fig) == [ax]


def test_legend_over_a_line_is_caught_and_a_clear_corner_is_not() -> None:
    fig, ax = _line_figure()
    ax.legend(loc="center")  # the diagonal passes through the centre
    problems = check_legends_clear(fig)
    assert len(problems) == 1 and "legend covers line 'rising'" in problems[0]
    ax.legend(loc="upper left")  # the line runs from bottom left to top right: corner is free
    assert check_legends_clear(fig) == []
    ax.get_legend().remove()
    fig.legend(loc="center")  # a figure legend over the axes counts too
    assert check_legends_clear(fig) != []


def test_legend_over_a_line_segment_without_a_vertex_is_caught() -> None:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot([0, 10], [0, 10], label="two points")  # no vertex under a centred legend
    ax.legend(loc="center")
    assert "line 'two points'" in check_legends_clear(fig)[0]


def test_legend_over_bars_scatter_and_error_caps_is_caught() -> None:
    fig = Figure(figsize=(5, 4))
    bars, dots, caps = fig.subplots(1, 3)
    bars.bar([0, 1, 2], [1.0, 1.0, 1.0], label="bars")
    bars.legend(loc="center")
    dots.scatter([0.5], [0.5], label="dot")
    dots.set_xlim(0, 1)
    dots.set_ylim(0, 1)
    dots.legend(loc="center")
    caps.errorbar([0.5], [0.5], yerr=[0.1], ls="none", capsize=4, label="caps")
    caps.set_xlim(0, 1)
    caps.set_ylim(0, 1)
    caps.legend(loc="center")
    text = " | ".join(check_legends_clear(fig))
    assert "bar" in text and "scatter 'dot'" in text and "errorbar/segments" in text


def test_reference_lines_in_axes_coordinates_are_not_data() -> None:
    fig, ax = _line_figure()
    ax.axvline(1.0, color="k")  # a guide running under an upper-left legend
    ax.legend(loc="upper left")
    assert check_legends_clear(fig) == []


def test_missing_title_and_labels_are_caught() -> None:
    fig, ax = _line_figure()
    ax.set_title("")
    assert check_titles(fig) == ["axes #0: no title and no figure suptitle"]
    fig.suptitle("figure title")
    assert check_titles(fig) == []
    ax.set_xlabel("")
    ax.set_ylabel("")
    assert check_axis_labels(fig) == ["axes #0: no x-axis label", "axes #0: no y-axis label"]


def test_a_shared_x_axis_may_carry_its_label_once() -> None:
    fig = Figure()
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax in (top, bottom):
        ax.plot([1, 2], [1, 2])
        ax.set_ylabel("y")
    bottom.set_xlabel("x")
    assert check_axis_labels(fig) == []
    alone = Figure().subplots()
    alone.plot([1, 2], [1, 2])
    alone.set_ylabel("y")
    assert check_axis_labels(alone.figure) == ["axes #0: no x-axis label"]


def test_a_single_y_tick_label_is_caught() -> None:
    fig, ax = _line_figure()
    ax.set_yticks([5.0])
    assert check_y_ticks(fig) == ["'a line': a single y tick label ('5')"]
    ax.set_yticks([0.0, 5.0])
    assert check_y_ticks(fig) == []
    log_fig = Figure()
    log_ax = log_fig.subplots()
    log_ax.plot([1, 2], [20.0, 30.0])  # within one decade: one major label on a log axis
    log_ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter

    log_ax.yaxis.set_major_locator(LogLocator(base=10))
    log_ax.yaxis.set_minor_formatter(NullFormatter())
    log_ax.set_ylim(5, 50)
    assert len(check_y_ticks(log_fig)) == 1


def test_image_and_text_axes_are_not_data_axes() -> None:
    fig = Figure()
    img, txt = fig.subplots(1, 2)
    img.imshow(np.zeros((3, 3)))
    img.set_axis_off()
    txt.text(0.5, 0.5, "note")
    assert data_axes(fig) == [] and figure_problems(fig) == []


# ---------------------------------------------------------------- every project figure passes


def _assert_clean(figures: dict[str, Figure]) -> None:
    problems = {name: figure_problems(fig) for name, fig in figures.items()}
    assert {name: p for name, p in problems.items() if p} == {}
    for fig in figures.values():
        fig.clear()


def test_lds_and_compute_figures() -> None:
    from bifrepro.plots.compute import plot_cost_scaling, plot_time_to_equal_lds
    from bifrepro.plots.lds import plot_lds_vs_alpha

    lds = pd.DataFrame(
        [
            {"method": m, "alpha": a, "lds": 0.1 * k + a, "ci_low": 0.1 * k + a - 0.05,
             "ci_high": 0.1 * k + a + 0.05}
            for k, m in enumerate(["BIF (cov)", "BIF (corr)", "EK-FAC", "TRAK"])
            for a in (0.05, 0.25, 0.5)
        ]
    )  # fmt: skip
    bands = pd.DataFrame(
        [{"method": "BIF (cov)", "alpha": a, "num_seeds": 3, "seed_min": a - 0.1,
          "seed_max": a + 0.1} for a in (0.05, 0.25, 0.5)]
    )  # fmt: skip
    # BIF flat and high from the left edge (as in the committed costs): a legend in the upper
    # left corner would cover it
    rows = [
        {"method": m, "axis": axis, "x": x,
         "total_seconds": 20 * x**0.05 if k == 0 else x / 10 / k,
         "fit_seconds": x / 100, "peak_mb": 50.0 + x * (k + 1)}
        for axis in ("n_train", "n_query", "draws")
        for x in (10, 30, 100, 300)
        for k, m in enumerate(("BIF (cov)", "EK-FAC", "TRAK"))
        if not (axis == "draws" and m != "BIF (cov)")
    ]  # fmt: skip
    curve = pd.DataFrame(
        {"alpha": [0.1] * 3 + [0.5] * 3, "total_draws": [8, 16, 32] * 2,
         "seconds": [1.0, 2.0, 4.0] * 2, "lds": [0.1, 0.2, 0.25, 0.3, 0.4, 0.45]}
    )  # fmt: skip
    ref = pd.DataFrame({"alpha": [0.1, 0.5], "lds": [0.15, 0.5], "seconds": [3.0, 3.0]})
    _assert_clean(
        {
            "lds": plot_lds_vs_alpha(lds, "LDS", seed_bands=bands),
            "cost_scaling": plot_cost_scaling(
                pd.DataFrame(rows), {("BIF (cov)", "n_train"): 1.0}, "cost"
            ),
            "time_to_equal": plot_time_to_equal_lds(
                pd.concat(
                    [curve.assign(estimator="covariance"), curve.assign(estimator="correlation")]
                ),
                ref,
                "t",
            ),  # fmt: skip
        }
    )


def test_lm_scaling_figures() -> None:
    from bifrepro.evaluation import lm_scaling as ls
    from bifrepro.plots.lm_scaling import plot_model_scaling, plot_phase_breakdown, plot_q_scaling

    sizes = [1e5, 3e5, 1e6, 3e6]
    rows = pd.DataFrame(
        [
            {"method": m, "phase": ph, "num_params": p, "seconds": (1e-3 if m == "bif" else 1e-6)
             * p ** (0.5 if m == "bif" else 1.2), "peak_memory_mb": p / 1e4,
             "status": "scaled" if ph == "draws" else "measured", "size": f"{p:.0e}",
             "healthy": "False" if (m == "bif" and p == sizes[0]) else "True"}
            for m, phases in (("bif", ls.BIF_PHASES), ("ekfac", ls.EKFAC_PHASES))
            for ph in phases
            for p in sizes
        ]
    )  # fmt: skip
    table = ls.with_totals(rows)
    fits = ls.fit_power_laws(table)
    q_table = pd.concat([rows.assign(q=q, seconds=rows["seconds"] * q) for q in (1, 4, 16)])
    q_table = q_table[q_table["num_params"].isin(sizes[:2])]
    _assert_clean(
        {
            "model_scaling": plot_model_scaling(
                table, fits, ls.extrapolate(fits), "assumptions:\nlinear in draws", "scaling"
            ),
            "q_scaling": plot_q_scaling(q_table, "q"),
            "phase_breakdown": plot_phase_breakdown(table, "phases"),
        }
    )


def test_gallery_and_agreement_figures() -> None:
    from bifrepro.evaluation.agreement import agreement_table
    from bifrepro.evaluation.gallery import MethodResult
    from bifrepro.plots.gallery import gallery_figures
    from tests.evaluation.test_gallery import tiny_pool

    pool = tiny_pool()
    as_images = {
        k: TensorDataset(getattr(pool, k).tensors[0].view(-1, 1, 2, 2), getattr(pool, k).tensors[1])
        for k in ("pool", "queries")
    }
    pool = dataclasses.replace(pool, **as_images)
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    results = {"bif": MethodResult(scores, 1.0, "note"), "ekfac": MethodResult(-scores, 1.0, "")}
    table = agreement_table(
        {k: r.scores for k, r in results.items()}, pool.pool_labels, pool.query_labels,
        ks=[1, 2], n_boot=100,
    )  # fmt: skip
    _assert_clean(
        gallery_figures(
            pool, results, table, normalize="correlation", gallery_k=2, confidence=0.9, title="T"
        )
    )


@pytest.fixture(scope="module")
def calibration_report():
    from bifrepro.sampling import SGLDConfig
    from bifrepro.sampling.calibration import CalibrationConfig, calibrate_report
    from tests.sampling._models import mse_loss, regression_problem

    x, y, model = regression_problem(n=40, d=3)
    config = SGLDConfig(
        step_size=1e-4, nbeta=100.0, localization=20.0, num_chains=4, num_draws=100, burn_in=20,
        batch_size=40,
    )  # fmt: skip
    cal = CalibrationConfig(
        grid_min=1e-5, grid_max=1e-1, grid_points=4, refine_points=2, exhaustive=True
    )
    return calibrate_report(
        model, mse_loss, TensorDataset(x, y), config, calibration=cal, progress=False
    )


def test_calibration_figures(calibration_report) -> None:
    from bifrepro.plots.calibration import (
        calibration_figures,
        plot_sampler_sweep,
        plot_topk_uncertainty,
    )
    from bifrepro.sampling.uncertainty import ScoreUncertainty

    runs = pd.DataFrame(
        {
            "params.sampler.step_size": ["1e-05", "0.0001", "0.001"] * 2,
            "params.sampler.localization": ["100"] * 3 + ["1000"] * 3,
            "params.sampler.nbeta": ["10"] * 6,
            "metrics.lds": [0.1, 0.3, 0.2, 0.15, 0.35, 0.3],
            "metrics.chain/healthy": [0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            "metrics.chain/rhat": [1.5, 1.01, 1.3, 1.4, 1.02, 1.05],
        }
    )
    scores = torch.tensor([[0.9, 0.5, 0.49, 0.1, 0.0]], dtype=torch.float64)
    u = ScoreUncertainty(scores, torch.full_like(scores, 0.05), "correlation", "chains", 4, 100, 4)
    figures = calibration_figures(calibration_report) | {
        "sweep": plot_sampler_sweep(runs, "metrics.lds"),
        "topk": plot_topk_uncertainty(u, query=0, k=3, labels=list("abcde")),
    }
    _assert_clean(figures)


def test_toy_and_toy_robustness_figures() -> None:
    from bifrepro.plots.toy_figures import toy_figures
    from bifrepro.plots.toy_robustness import plot_flip_counts, plot_seed_bands
    from tests.dynamics._toy_run import tiny_toy_run

    h, _, r = tiny_toy_run()
    figures = toy_figures(
        h, r, normalize="correlation", src=0, targets=[1, 2, 4], model_desc="linear 8-16-15",
        lr=0.1, first_checkpoint=40, matrix_steps=[r.steps[1]],
    )  # fmt: skip
    summary = pd.DataFrame(
        {"ancestor_depth": [0, 1, 2], "pairs": [10, 8, 6], "bif_flips_any_seed": [6, 4, 1],
         "bif_flips_every_seed": [3, 2, 0], "bif_robust_flips": [2, 1, 0],
         "analytic_flips": [5, 3, 0], "loo_flips": [4, 3, 1]}
    )  # fmt: skip
    steps = [10, 20, 40, 80, 160]
    rng = np.random.default_rng(0)
    curves = {f"a ↔ {t}": rng.normal(size=(3, len(steps))) for t in "bc"}
    figures |= {
        "flip_counts": plot_flip_counts(summary, {0: "root", 1: "mid", 2: "leaf"}, "flips"),
        "seed_bands": plot_seed_bands(steps, curves, [30.0, 90.0], "bands"),
    }
    _assert_clean(figures)


def test_stagewise_figures() -> None:
    from bifrepro.dynamics.stagewise_merge import merge_checkpoints
    from bifrepro.plots.stagewise import figure_notes, stagewise_figures
    from bifrepro.sampling import SGLDConfig
    from tests.dynamics._stagewise_fakes import SETTINGS, fake_data, fake_results

    m = merge_checkpoints(fake_results(), fake_data(), None, SETTINGS)
    notes = figure_notes(m.healthy, SGLDConfig(), "correlation")
    _assert_clean(stagewise_figures(m, "tiny LM", notes, "correlation", 2, 2))


def test_token_figures() -> None:
    from bifrepro.plots.tokens import TokenPanel, TokenRow, plot_token_panels

    row = TokenRow("#1 seq 4", [" Marie", " has", " three"], np.array([0.0, 0.8, -0.3]))
    panel = TokenPanel('"3" -> "three"', [" Marie", " has", " 3"], 2, [row])
    _assert_clean({"tokens": plot_token_panels([panel], "tokens")})


def test_language_scale_figure_with_the_ekfac_reference() -> None:
    from bifrepro.plots.token_scale import plot_category_scaling

    rows = []
    for method, sizes in (("bif", ("S", "M", "L")), ("ekfac", ("S", "M", "L"))):
        for i, size in enumerate(sizes):
            for cat in ("numbers", "verbs", "all"):
                p = 0.1 * (i + 1) if method == "bif" else 0.05 * (i + 1)
                rows.append(
                    {
                        "method": method,
                        "size": size,
                        "category": cat,
                        "precision_at_1": p,
                        "precision_at_1_q_low": max(0.0, p - 0.05),
                        "precision_at_1_q_high": p + 0.05,
                    }
                )
    table = pd.DataFrame(rows)
    params = {"S": 10_000, "M": 100_000, "L": 1_000_000}
    fig = plot_category_scaling(
        table[table["method"] == "bif"],
        params,
        "P@1 vs size",
        reference=table[(table["method"] == "ekfac") & (table["category"] == "all")],
    )
    _, labels = fig.axes[0].get_legend_handles_labels()
    assert "all, EK-FAC per token" in labels
    _assert_clean({"scaling": fig})
