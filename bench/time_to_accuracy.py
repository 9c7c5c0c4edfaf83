"""Time to accuracy: how long each sampler takes to reach a Spearman target against exact answers.

The accuracy bench (``bench/accuracy.py``) scores every setting at one budget. This bench asks
the question speed-ups are judged by: *how many seconds until the BIF scores reach Spearman 0.9
against the truth?* It runs a few samplers on the accuracy bench's problems with a long budget,
scores every prefix of the chains (a chain's first k draws are exactly a k-draw run with the same
seed), and puts each prefix on a time axis.

Time of a prefix of k draws: the calibration's seconds (every setting here is calibrated) plus
the run's measured sampling seconds pro rata, ``seconds × (burn_in + k·thinning) /
(burn_in + K·thinning)`` (one SGLD step per unit; a kept draw also evaluates the observed items,
so this slightly favours short prefixes of every setting alike). Reported per sampler seed;
"not reached" means not within the budget, and a ratio against it is a lower bound (``≥``).

Settings: ``sgld_cal`` (plain SGLD at its calibrated ε: ``sampler=auto`` when the speed issue was
filed, the baseline), ``frz_cal`` (frozen RMSProp-SGLD at its calibrated ε: today's
``sampler=auto`` before its draw budget is chosen), ``frz_proc`` (the same chains in two worker
processes, ``chain_processes=2``: identical traces, other wall time), ``hmc_cal`` (frozen
RMSProp-SGHMC) and ``hmc_sgld_cal`` (SGHMC at plain SGLD's step).

Targets: Spearman 0.9 (absolute), and, for problems where no setting gets there, 90% of the best
mean Spearman any setting reaches at the full budget (relative; stated in the table).

Outputs (``--out``, default ``results/accuracy/time_to_target``): ``time_to_target.csv`` (task × setting × target:
per-seed seconds, median, ratio to the baseline), ``accuracy_curves.csv`` (task × setting × seed ×
prefix: seconds, Spearman) and ``time_to_accuracy.png``.

    python bench/time_to_accuracy.py [--quick] [--out DIR] [--draws K] [--problems a,b]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402  (the accuracy bench's problems, truths and calibration)

from bifrepro.evaluation.lds import spearman_rows  # noqa: E402
from bifrepro.io import (  # noqa: E402
    atomic_save_figure,
    atomic_write_csv,
    round_significant,
    staged_directory,
)
from bifrepro.plots.style import house_style, new_figure  # noqa: E402
from bifrepro.sampling import SGLDConfig  # noqa: E402

#: The absolute target of the speed issue.
TARGET = 0.9
#: Relative target where no setting reaches ``TARGET``: this share of the best reached.
RELATIVE_TARGET = 0.9
BASELINE = "sgld_cal"


@dataclass(frozen=True)
class Arm:
    """One sampler in this bench."""

    name: str
    description: str
    preconditioner: str
    integrator: str = "sgld"
    chain_processes: int = 1
    #: Draws of this arm / the bench's draws (the baseline runs longer: a lower bound on its
    #: time to the target is only as large as its budget).
    draws_factor: float = 1.0


ARMS: tuple[Arm, ...] = (
    Arm(
        "sgld_cal",
        "SGLD, calibrated ε (the default when the speed issue was filed), 3× the draws",
        "none",
        draws_factor=3.0,
    ),
    Arm("frz_cal", "frozen RMSProp-SGLD, calibrated ε (today's sampler=auto)", "rmsprop_frozen"),
    Arm(
        "frz_proc",
        "frozen RMSProp-SGLD, calibrated ε, chains in 2 worker processes",
        "rmsprop_frozen",
        chain_processes=2,
    ),
    Arm("hmc_cal", "frozen RMSProp-SGHMC, calibrated ε", "rmsprop_frozen", "sghmc"),
    Arm("hmc_sgld_cal", "SGHMC at plain SGLD's calibrated ε", "none", "sghmc"),
)


def prefix_grid(draws: int, first: int = 25) -> list[int]:
    """Prefix lengths: about four per doubling from ``first`` to ``draws`` (both included)."""
    grid = {draws}
    k = float(first)
    while k < draws:
        grid.add(int(round(k)))
        k *= 2**0.25
    return sorted(g for g in grid if 1 < g <= draws)


def prefix_seconds(
    seconds: float, burn_in: int, thinning: int, draws: int, prefix: Sequence[int], fixed: float
) -> np.ndarray:
    """Wall time of the first ``prefix`` draws: ``fixed`` + the run's time pro rata per step."""
    steps = burn_in + np.asarray(prefix, dtype=np.float64) * thinning
    return fixed + seconds * steps / (burn_in + draws * thinning)


def time_to_target(seconds: Sequence[float], values: Sequence[float], target: float) -> float:
    """First time a curve reaches ``target``, linear between grid points; NaN if it never does.

    The curve must then stay at or above the target at the next point as well (one noisy
    crossing is not reaching it), except at the last point.
    """
    t = np.asarray(seconds, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError("seconds and values must be 1-d and of one length")
    for i in range(len(v)):
        if not v[i] >= target:
            continue
        if i + 1 < len(v) and not v[i + 1] >= target:
            continue
        if i == 0 or not np.isfinite(v[i - 1]):
            return float(t[i])
        frac = (target - v[i - 1]) / (v[i] - v[i - 1]) if v[i] > v[i - 1] else 1.0
        return float(t[i - 1] + min(max(frac, 0.0), 1.0) * (t[i] - t[i - 1]))
    return math.nan


def ratio_to_baseline(baseline: Sequence[float], other: Sequence[float], budget: float) -> dict:
    """Median time of the baseline over the median time of ``other``.

    A baseline seed that never reaches the target counts as the baseline's budget and makes the
    ratio a lower bound; ``other`` not reaching it in most seeds gives no ratio.
    """
    b = np.asarray(baseline, dtype=np.float64)
    o = np.asarray(other, dtype=np.float64)
    if np.isnan(o).sum() * 2 >= len(o):
        return {"ratio": math.nan, "bound": "other not reached"}
    lower = bool(np.isnan(b).any())
    b = np.where(np.isnan(b), budget, b)
    o = np.where(np.isnan(o), np.inf, o)
    return {"ratio": float(np.median(b) / np.median(o)), "bound": ">=" if lower else "="}


def run_arm(
    problem: acc.Problem, config: SGLDConfig, grid: list[int]
) -> tuple[float, dict[str, np.ndarray]]:
    """Sample once; Spearman (covariance BIF vs each truth) at every prefix of the chains."""
    start = time.perf_counter()
    traces = acc.sample_problem(problem, config)
    seconds = time.perf_counter() - start
    curves = {}
    for task, (truth, items, _) in problem.truths.items():
        values = []
        for k in grid:
            scores = acc._restrict(acc._scores(problem, traces, "covariance", k), items)
            values.append(acc._mean_rows(spearman_rows, scores, truth))
        curves[task] = np.asarray(values)
    return seconds, curves


def run_problem(
    problem: acc.Problem,
    bench: acc.BenchConfig,
    arms: Sequence[Arm],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every arm × seed on one problem: one curve row per (task, arm, seed, prefix)."""
    base = acc.base_sampler(problem, bench)
    calibrated: dict[str, tuple[SGLDConfig, float]] = {}
    rows: list[dict[str, Any]] = []
    for arm in arms:
        if arm.preconditioner not in calibrated:
            cal, info, _ = acc.calibrated(problem, base.replace(preconditioner=arm.preconditioner))
            calibrated[arm.preconditioner] = (cal, float(info["calibration_seconds"]))
            log(f"  {problem.name}: {info['summary']}")
        cal, cal_seconds = calibrated[arm.preconditioner]
        draws = max(2, round(bench.draws * arm.draws_factor))
        grid = prefix_grid(draws)
        for seed in bench.seeds:
            config = base.replace(
                num_draws=draws,
                preconditioner=arm.preconditioner,
                integrator=arm.integrator,
                step_size=cal.step_size,
                thinning=bench.thinning,
                chain_processes=arm.chain_processes,
                seed=seed,
            )
            seconds, curves = run_arm(problem, config, grid)
            times = prefix_seconds(seconds, bench.burn_in, bench.thinning, draws, grid, cal_seconds)
            for task, values in curves.items():
                for k, t, v in zip(grid, times, values, strict=True):
                    rows.append(
                        {
                            "task": task,
                            "setting": arm.name,
                            "description": arm.description,
                            "seed": seed,
                            "step_size": config.step_size,
                            "chains": config.num_chains,
                            "draws": k,
                            "seconds": t,
                            "calibration_seconds": cal_seconds,
                            "run_seconds": seconds,
                            "spearman_cov": v,
                        }
                    )
            final = {t: v[-1] for t, v in curves.items()}
            log(
                f"  {problem.name} {arm.name:12s} seed {seed}: {seconds:.1f} s sampling, "
                + ", ".join(f"{t} {v:.3f}" for t, v in final.items())
            )
    return rows


def target_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task × setting × target: seconds to reach it per seed, the median and the ratio."""
    out = []
    for task, g in curves.groupby("task", sort=False):
        last = g.groupby("setting")["draws"].transform("max")
        full = g[g["draws"] == last]  # each setting at its own budget
        best = full.groupby("setting")["spearman_cov"].mean().max()
        targets = [("absolute", TARGET)]
        if not best >= TARGET:
            targets.append((f"{RELATIVE_TARGET:g} × best", RELATIVE_TARGET * best))
        base = g[g["setting"] == BASELINE]
        budget = base["seconds"].max() if len(base) else math.nan
        for kind, target in targets:
            reach: dict[str, list[float]] = {}
            for setting, s in g.groupby("setting", sort=False):
                reach[setting] = [
                    time_to_target(c["seconds"], c["spearman_cov"], target)
                    for _, c in s.sort_values("draws").groupby("seed")
                ]
            for setting, times in reach.items():
                s = g[g["setting"] == setting]
                done = [t for t in times if np.isfinite(t)]
                ratio = (
                    ratio_to_baseline(reach[BASELINE], times, budget)
                    if BASELINE in reach
                    else {"ratio": math.nan, "bound": ""}
                )
                final = s[s["draws"] == s["draws"].max()]["spearman_cov"]
                out.append(
                    {
                        "task": task,
                        "setting": setting,
                        "description": s["description"].iloc[0],
                        "target_kind": kind,
                        "target": target,
                        "seeds": len(times),
                        "seeds_reached": len(done),
                        "seconds_per_seed": ";".join(
                            "not reached" if not np.isfinite(t) else f"{t:.3g}" for t in times
                        ),
                        "median_seconds": float(np.median(done))
                        if len(done) * 2 > len(times)
                        else math.nan,
                        "budget_seconds": float(s["seconds"].max()),
                        "calibration_seconds": float(s["calibration_seconds"].iloc[0]),
                        "spearman_at_budget_mean": float(final.mean()),
                        "spearman_at_budget_sd": float(final.std(ddof=1))
                        if len(final) > 1
                        else math.nan,
                        "speedup_vs_baseline": ratio["ratio"],
                        "speedup_bound": ratio["bound"],
                    }
                )
    return pd.DataFrame(out)


def _verdict(rows: pd.DataFrame) -> str:
    """One task's title line: the fastest sampler to the target against the baseline."""
    rows = rows[(rows["setting"] != BASELINE) & np.isfinite(rows["speedup_vs_baseline"])]
    absolute = rows[rows["target_kind"] == "absolute"]
    rows = absolute if len(absolute) else rows
    if rows.empty:
        return "no sampler reaches the target in most seeds"
    r = rows.loc[rows["speedup_vs_baseline"].idxmax()]
    bound = "≥ " if r["speedup_bound"] == ">=" else ""
    head = f"to {r['target']:.2f}: {r['setting']} {bound}{r['speedup_vs_baseline']:.1f}×"
    if r["speedup_vs_baseline"] < 1:
        head = f"to {r['target']:.2f}: none faster than {BASELINE} (best {r['setting']} "
        head += f"{bound}{r['speedup_vs_baseline']:.1f}×"
        return head + f", {r['seeds_reached']}/{r['seeds']} seeds)"
    return head + f" {BASELINE}'s speed ({r['seeds_reached']}/{r['seeds']} seeds)"


def plot_curves(curves: pd.DataFrame, table: pd.DataFrame) -> Any:
    """Spearman against wall time per task (mean ± s.d. over seeds), the targets dotted."""
    tasks = list(dict.fromkeys(curves["task"]))
    settings = list(dict.fromkeys(curves["setting"]))
    colors = dict(
        zip(settings, ["0.35", "tab:blue", "tab:cyan", "tab:red", "tab:orange"], strict=False)
    )
    with house_style():
        ncols = 3
        nrows = math.ceil((len(tasks) + 1) / ncols)
        fig, axes = new_figure(nrows, ncols, width=12.0, height=3.6 * nrows)
        flat = np.atleast_1d(axes).flatten()
        for ax, task in zip(flat, tasks, strict=False):
            g = curves[curves["task"] == task]
            for setting in settings:
                s = g[g["setting"] == setting].groupby("draws")
                t, m, sd = s["seconds"].median(), s["spearman_cov"].mean(), s["spearman_cov"].std()
                ax.plot(t, m, color=colors.get(setting, "k"), lw=1.4, label=setting)
                ax.fill_between(t, m - sd, m + sd, color=colors.get(setting, "k"), alpha=0.15)
            for _, row in table[table["task"] == task].drop_duplicates("target").iterrows():
                ax.axhline(row["target"], color="k", ls=":", lw=0.9)
                ax.annotate(
                    f"target {row['target']:.2f} ({row['target_kind']})",
                    (0.02, row["target"]),
                    xycoords=("axes fraction", "data"),
                    xytext=(0, 2),
                    textcoords="offset points",
                    fontsize=7,
                )
            ax.set_title(f"{task}\n{_verdict(table[table['task'] == task])}", fontsize=8)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("wall time incl. calibration (s)")
            ax.set_ylabel("Spearman(BIF +Cov, truth)")
        legend_ax = flat[len(tasks)]
        legend_ax.axis("off")
        descriptions = dict(zip(curves["setting"], curves["description"], strict=True))
        for setting in settings:
            legend_ax.plot([], [], color=colors.get(setting, "k"), label=descriptions[setting])
        legend_ax.plot([], [], ":", color="k", label="target")
        legend_ax.legend(loc="center", frameon=False, fontsize=7)
        for ax in flat[len(tasks) + 1 :]:
            ax.axis("off")
        fig.suptitle(
            "Time to accuracy: BIF against exact answers as the chains grow "
            f"(mean ± s.d. over {curves['seed'].nunique()} sampler seeds)",
            fontsize=9,
        )
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1-minute smoke version")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--draws", type=int, default=2000, help="draws per chain (budget)")
    parser.add_argument(
        "--problems", default="linear,logistic,mlp,token", help="comma-separated problems"
    )
    parser.add_argument(
        "--replot", action="store_true", help="table and figure again from --out's curves"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench = acc.quick_config() if args.quick else acc.BenchConfig()
    bench.draws = 200 if args.quick else args.draws
    out = args.out or Path("results/accuracy/time_to_target" + ("_quick" if args.quick else ""))
    wanted = [p.strip() for p in args.problems.split(",") if p.strip()]
    builders = {
        "linear": acc.linear_problem,
        "logistic": acc.logistic_problem,
        "mlp": acc.mlp_problem,
        "token": acc.token_problem,
    }
    unknown = sorted(set(wanted) - set(builders))
    if unknown:
        parser.error(f"unknown problems {unknown}; choose from {sorted(builders)}")
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    if args.replot:
        curves = pd.read_csv(out / "accuracy_curves.csv")
    else:
        rows: list[dict[str, Any]] = []
        for name in wanted:
            problem = builders[name](**bench.problem_sizes.get(name, {}))
            log(f"{problem.name}: {problem.num_params} parameters, {len(problem.train)} items")  # type: ignore[arg-type]
            rows += run_problem(problem, bench, ARMS, log)
        curves = pd.DataFrame(rows)
    table = target_table(curves)
    with staged_directory(out) as stage:
        atomic_write_csv(round_significant(curves, 4), stage / "accuracy_curves.csv")
        atomic_write_csv(round_significant(table, 4), stage / "time_to_target.csv")
        atomic_save_figure(plot_curves(curves, table), stage / "time_to_accuracy.png")
    log(f"wrote {out}")
    show = ["task", "setting", "target", "seconds_per_seed", "median_seconds"]
    print(table[[*show, "speedup_vs_baseline", "speedup_bound"]].to_string(index=False))


if __name__ == "__main__":
    main()
