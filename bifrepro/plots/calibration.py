"""Figures of SGLD calibration, chain health and score uncertainty (one function per figure).

Every ``plot_*`` function returns a matplotlib ``Figure`` in the house style
(:mod:`bifrepro.plots.style`, no pyplot state) and never saves it: callers save with
:func:`bifrepro.io.atomic_save_figure` or log with ``mlflow.log_figure``.
:func:`save_calibration` and :func:`record_calibration` write a
:class:`~bifrepro.sampling.calibration.CalibrationReport` with its figures (the report itself only
writes tables).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bifrepro.plots.style import house_style, new_figure

if TYPE_CHECKING:
    from bifrepro.sampling.calibration import CalibrationReport
    from bifrepro.sampling.uncertainty import ScoreUncertainty

__all__ = [
    "calibration_figures",
    "save_calibration",
    "record_calibration",
    "plot_calibration_summary",
    "plot_calibration_traces",
    "plot_sampler_sweep",
    "plot_topk_uncertainty",
    "summarize_sampler_sweep",
]

_OK, _BAD, _SKIP = "#2a9d8f", "#d62828", "#8d99ae"

# (statistic column, panel title, threshold attribute of HealthThresholds, "min" or "max" limit)
_PANELS = (
    ("ess_projected", "projected ESS of the real run", "min_ess", "min"),
    ("trend_max_abs_t", "max |trend t| (AR(1)-corrected)", "max_trend_t", "max"),
    ("rhat", "split R-hat", "max_rhat", "max"),
    ("trend_share", "trend share of item covariance", "max_trend_share", "max"),
    ("distance_ratio", "E|w-w*|² / (d/(γ(1-εγ/4)))", "distance_slack", "max"),
    ("llc_ratio", "λ̂ / (d/2)", "loss_slack", "max"),
)


def calibration_figures(report: CalibrationReport) -> dict[str, Figure]:
    """``{"calibration_summary": fig, "calibration_traces": fig}`` of one calibration."""
    return {
        "calibration_summary": plot_calibration_summary(report),
        "calibration_traces": plot_calibration_traces(report),
    }


def save_calibration(report: CalibrationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write the report's table, JSON and figures (PNG) to ``out_dir``; returns the paths."""
    return report.save(out_dir, calibration_figures(report))


def record_calibration(
    report: CalibrationReport, tracker: Any, out_dir: str | Path, prefix: str = "calibration/"
) -> dict[str, float]:
    """What every experiment does with a report of ``sampler=auto``: save table, JSON and figures
    under ``out_dir``, log them as ``calibration/`` artifacts of ``tracker`` (a
    :class:`bifrepro.tracking.RunTracker`) and return the metrics to log."""
    return report.record(tracker, out_dir, prefix, calibration_figures(report))


def plot_calibration_summary(report: CalibrationReport) -> Figure:
    """Each health statistic against the step size, with its threshold and the chosen ε.

    Healthy candidates are green circles, unhealthy ones red crosses; diverged or skipped
    candidates are grey triangles along the bottom. One line per (γ, nβ) pair searched.
    """
    with house_style():
        return _calibration_summary(report)


def _calibration_summary(report: CalibrationReport) -> Figure:
    df = report.table
    th = report.calibration.thresholds
    fig, axes = new_figure(2, 3, width=12, height=6.5)
    pairs = (
        list(dict.fromkeys(zip(df["localization"], df["nbeta"], strict=True))) if len(df) else []
    )
    styles = ["-", "--", ":", "-."]
    for ax, (col, title, limit_name, kind) in zip(axes.flat, _PANELS, strict=True):
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step size ε")
        ax.set_ylabel(title, fontsize=8)
        ran = df[df["status"] == "ok"] if len(df) else df
        for k, (g, nb) in enumerate(pairs):
            sub = ran[(ran["localization"] == g) & (ran["nbeta"] == nb)]
            if col not in sub or not len(sub):
                continue
            sub = sub.sort_values("step_size")
            ax.plot(
                sub["step_size"],
                sub[col],
                styles[k % len(styles)],
                color="0.6",
                lw=1,
                label=f"γ={g:g}, nβ={nb:g}" if len(pairs) > 1 else None,
            )
            good = sub[sub["healthy"]]
            bad = sub[~sub["healthy"]]
            ax.plot(good["step_size"], good[col], "o", color=_OK, ms=6)
            ax.plot(bad["step_size"], bad[col], "x", color=_BAD, ms=7, mew=2)
        if col in {"ess_projected", "distance_ratio"}:
            ax.set_yscale("log")
        elif col == "llc_ratio":
            ax.set_yscale("symlog", linthresh=1e-4)
        limit = getattr(th, limit_name)
        ax.axhline(limit, color="k", ls="--", lw=0.8)
        ax.text(
            0.99,
            limit,
            f"{'>=' if kind == 'min' else '<='} {limit:g} ",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=7,
        )
        stopped = df[df["status"] != "ok"] if len(df) else df
        if len(stopped):
            ax.plot(
                stopped["step_size"],
                np.zeros(len(stopped)),
                "v",
                color=_SKIP,
                ms=7,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        if report.chosen is not None:
            ax.axvline(report.chosen.step_size, color=_OK, lw=1.5, alpha=0.6)
        if len(pairs) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(_wrap(report.summary(), 140), fontsize=10)
    return fig


def plot_calibration_traces(report: CalibrationReport, max_candidates: int = 8) -> Figure:
    """Per candidate: the pilot's loss rise over w* and its distance from w*, draw by draw.

    One column per candidate (largest step first), one line per pilot chain. The distance panel
    shows the Gaussian bound ``√(d/(γ(1-εγ/4)))`` on the root-mean-square distance.
    """
    with house_style():
        return _calibration_traces(report, max_candidates)


def _calibration_traces(report: CalibrationReport, max_candidates: int) -> Figure:
    order = sorted(report.candidates, key=lambda c: (c.localization, c.nbeta, -c.step_size))
    cands = order[:max_candidates]
    n = max(len(cands), 1)
    fig, axes = new_figure(2, n, width=2.6 * n + 1, height=5.2)
    for j, cand in enumerate(cands):
        top, bottom = axes[0, j], axes[1, j]
        colour = _OK if cand.healthy else (_BAD if cand.status == "ok" else _SKIP)
        verdict = (
            "healthy" if cand.healthy else ("UNHEALTHY" if cand.status == "ok" else cand.status)
        )
        chosen = " (chosen)" if cand is report.chosen else ""
        top.set_title(f"ε={cand.step_size:.3g}{chosen}\n{verdict}", fontsize=9, color=colour)
        if cand.pooled_loss is None or cand.distance is None:
            top.text(0.5, 0.5, _wrap(cand.message, 28), ha="center", va="center", fontsize=7,
                     transform=top.transAxes)  # fmt: skip
            top.axis("off")
            bottom.axis("off")
            continue
        loss = cand.pooled_loss.double().numpy() - cand.init_loss
        dist = cand.distance.double().numpy()
        for c in range(loss.shape[0]):
            top.plot(loss[c], lw=0.8)
            bottom.plot(dist[c], lw=0.8)
        top.axhline(0, color="k", lw=0.5)
        if math.isfinite(cand.distance_bound):
            bottom.axhline(math.sqrt(cand.distance_bound), color="k", ls="--", lw=0.8)
        bottom.set_xlabel("draw")
        if j == 0:
            top.set_ylabel("loss - loss at w*\n(observed train items)")
            bottom.set_ylabel("|w - w*|  (-- Gaussian bound)")
        if cand.health is not None and not cand.healthy:
            names = ", ".join(c.name for c in cand.health.failed)
            bottom.text(0.02, 0.02, f"failed: {names}", transform=bottom.transAxes, fontsize=7,
                        color=_BAD)  # fmt: skip
    for j in range(len(cands), n):
        axes[0, j].axis("off")
        axes[1, j].axis("off")
    fig.suptitle(
        f"Calibration pilots ({report.candidates[0].pilot_chains if cands else 0} chains each, "
        f"γ, nβ per candidate in the table)",
        fontsize=10,
    )
    return fig


#: Health columns looked for in a sweep's runs (first present is the healthy flag/fraction).
HEALTH_COLUMNS = (
    "metrics.health/healthy",
    "metrics.chain/healthy",
    "metrics.chains_healthy_fraction",
)
#: Further chain-health statistics plotted when present.
HEALTH_STATS = (
    "metrics.health/ess_projected",
    "metrics.chain/rhat",
    "metrics.health/rhat",
    "metrics.chain/max_abs_trend_t",
)


def plot_sampler_sweep(
    runs: pd.DataFrame,
    metric: str,
    x: str = "params.sampler.step_size",
    hue: str | None = "params.sampler.localization",
    style: str | None = "params.sampler.nbeta",
    health: str | None = None,
    health_stats: tuple[str, ...] | None = None,
) -> Figure:
    """Quality metric and chain health against a swept hyperparameter (one row per run).

    Left: ``metric`` vs ``x``, one line per ``hue`` (and ``style``) value, runs whose chains were
    not all healthy ringed in red. Right: the health flag/fraction and the chain-health statistics
    that are present, against ``x``.

    Args:
        runs: child runs of a sweep (:func:`bifrepro.sampling.sweep_runs.load_sweep_runs` or
            ``mlflow.search_runs``).
        metric: quality column, e.g. ``"metrics.spearman_bif_loo_mean"``.
        x, hue, style: parameter columns (strings in MLflow; converted to numbers).
        health: column with 1 = healthy (or the healthy fraction); default: the first of
            :data:`HEALTH_COLUMNS` present.
        health_stats: further columns to plot (default: those of :data:`HEALTH_STATS` present).
    """
    if metric not in runs or x not in runs:
        raise ValueError(f"runs need columns {metric!r} and {x!r}; have {sorted(runs.columns)}")
    if health is None:
        health = next((c for c in HEALTH_COLUMNS if c in runs), None)
    if health_stats is None:
        health_stats = tuple(c for c in HEALTH_STATS if c in runs)[:2]
    stats = [c for c in (health, *health_stats) if c is not None and c in runs]
    with house_style():
        return _sampler_sweep(runs, metric, x, hue, style, health, stats)


def _sampler_sweep(
    runs: pd.DataFrame,
    metric: str,
    x: str,
    hue: str | None,
    style: str | None,
    health: str | None,
    stats: list[str],
) -> Figure:
    df = runs.copy()
    for col in (x, hue, style, metric, health, *stats):
        if col is not None and col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    hue = hue if hue in df else None
    style = style if style in df else None
    fig, grid = new_figure(1, 1 + len(stats), width=4.5 * (1 + len(stats)), height=3.8)
    axes = grid[0]
    keys = [k for k in (hue, style) if k is not None]
    groups = df.groupby(keys, dropna=False) if keys else [((), df)]
    cmap = mpl.colormaps["viridis"]
    hue_values = sorted(df[hue].dropna().unique()) if hue else []
    style_values = sorted(df[style].dropna().unique()) if style else []
    styles = ["-", "--", ":", "-."]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        hv = key[0] if hue else None
        sv = key[-1] if style else None
        colour = (
            cmap(hue_values.index(hv) / max(len(hue_values) - 1, 1))
            if hue and hv in hue_values
            else "C0"
        )
        ls = styles[style_values.index(sv) % len(styles)] if style and sv in style_values else "-"
        sub = sub.sort_values(x)
        label = ", ".join(
            f"{k.split('.')[-1]}={v:g}" for k, v in zip(keys, key, strict=True) if v == v
        )
        for a, col in [(axes[0], metric)] + [(axes[i + 1], c) for i, c in enumerate(stats)]:
            a.plot(sub[x], sub[col], ls, color=colour, marker="o", ms=4, label=label or None)
            if health is not None:
                bad = sub[sub[health] < 1.0]
                a.plot(bad[x], bad[col], "o", ms=9, mfc="none", mec=_BAD, mew=1.5)
    axes[0].set_ylabel(metric.split(".", 1)[-1])
    axes[0].set_title("quality (red rings: not all chains healthy)")
    for i, col in enumerate(stats):
        axes[i + 1].set_title(col.split(".", 1)[-1])
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel(x.split(".")[-1])
    if keys:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"SGLD sweep: {len(df)} runs")
    return fig


def summarize_sampler_sweep(
    sweep_dir: str | Path,
    metric: str,
    out_dir: str | Path | None = None,
    log_to_parent: bool = True,
    **plot_kwargs: Any,
) -> Path:
    """Summary figure and table of a finished Hydra multirun over sampler hyperparameters.

    Finds the sweep's MLflow parent run through ``<sweep_dir>/.mlflow_parent_run.json`` (written
    by :class:`bifrepro.hydra_callbacks.MLflowSweepCallback`), loads its child runs, writes
    ``sampler_sweep_summary.png`` and ``sampler_sweep_runs.csv`` to ``out_dir`` (default:
    ``sweep_dir``) and logs the figure to the parent run. ``metric`` is a metric name without the
    ``metrics.`` prefix. Returns the figure's path.
    """
    import json

    from bifrepro.io import atomic_save_figure, atomic_write_csv
    from bifrepro.sampling.sweep_runs import load_sweep_runs
    from bifrepro.tracking import PARENT_RUN_FILE

    sweep = Path(sweep_dir)
    info_path = sweep / PARENT_RUN_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: was the sweep run with MLflow tracking?")
    info = json.loads(info_path.read_text())
    runs = load_sweep_runs(info["tracking_uri"], parent_run_id=info["run_id"])
    if runs.empty:
        raise ValueError(f"the sweep's parent run {info['run_id']} has no child runs")
    fig = plot_sampler_sweep(runs, f"metrics.{metric}", **plot_kwargs)
    out = Path(out_dir) if out_dir is not None else sweep
    path = atomic_save_figure(fig, out / "sampler_sweep_summary.png")
    atomic_write_csv(runs, out / "sampler_sweep_runs.csv")
    if log_to_parent:
        from mlflow.tracking import MlflowClient

        MlflowClient(info["tracking_uri"]).log_figure(
            info["run_id"], fig, "sweep/sampler_sweep_summary.png"
        )
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m bifrepro.plots.calibration SWEEP_DIR --metric NAME``: sweep summary figure."""
    import argparse

    parser = argparse.ArgumentParser(description=summarize_sampler_sweep.__doc__)
    parser.add_argument("sweep_dir", help="the multirun folder (multirun/<experiment>/<time>)")
    parser.add_argument("--metric", required=True, help="quality metric name, e.g. lds_mean")
    parser.add_argument("--x", default="params.sampler.step_size", help="swept parameter column")
    parser.add_argument("--out-dir", default=None, help="where to write (default: sweep_dir)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the parent run")
    args = parser.parse_args(argv)
    path = summarize_sampler_sweep(
        args.sweep_dir, args.metric, args.out_dir, not args.no_mlflow, x=args.x
    )
    print(path)


def plot_topk_uncertainty(
    uncertainty: ScoreUncertainty,
    query: int,
    k: int = 10,
    z: float = 1.96,
    labels: Any = None,
) -> Figure:
    """Top-``k`` training items of one query with ±z·SE error bars.

    Items whose membership in the top-k is not resolved by the Monte Carlo error (see
    :func:`~bifrepro.sampling.uncertainty.topk_with_uncertainty`) are drawn hollow.
    ``labels``: optional sequence of names/classes of the training items for the tick labels.
    """
    from bifrepro.sampling.uncertainty import topk_with_uncertainty

    table = topk_with_uncertainty(uncertainty, query, k, z)
    with house_style():
        fig, axes = new_figure(1, 1, width=0.5 * len(table) + 3, height=3.5)
        _topk_bars(axes[0, 0], table, uncertainty, query, z, labels)
    return fig


def _topk_bars(
    ax: Any, table: pd.DataFrame, uncertainty: ScoreUncertainty, query: int, z: float, labels: Any
) -> None:
    pos = np.arange(len(table))
    sure = table["in_topk_for_sure"].to_numpy()
    ax.bar(pos[sure], table["score"][sure], color="C0", yerr=z * table["se"][sure], capsize=3)
    ax.bar(
        pos[~sure],
        table["score"][~sure],
        color="none",
        edgecolor="C0",
        yerr=z * table["se"][~sure],
        capsize=3,
    )
    names = [str(i) if labels is None else f"{i}\n{labels[i]}" for i in table["train_index"]]
    ax.set_xticks(pos, names, fontsize=7)
    ax.set_xlabel("training item (rank order)")
    ax.set_ylabel(f"BIF {uncertainty.normalize} (positive = helpful)")
    ax.set_title(
        f"query {query}: top-{len(table)} ± {z:g}·SE ({uncertainty.method}, "
        f"{uncertainty.num_chains}×{uncertainty.num_draws} draws); hollow = not resolved",
        fontsize=9,
    )


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


if __name__ == "__main__":
    main()
