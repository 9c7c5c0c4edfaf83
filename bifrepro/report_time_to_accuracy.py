"""docs/accuracy.md block of the time-to-accuracy bench, generated from its results files.

:func:`time_to_accuracy_block` reads ``results/accuracy/time_to_target/time_to_target.csv``
(``make bench-time-to-accuracy``) and writes, per task and target, each sampler's seconds to reach
the target per sampler seed and its speed-up over the baseline sampler, then states for every
task whether some sampler is at least :data:`SPEEDUP_TARGET` times faster than the baseline, and
whether that is resolved (every seed of the faster sampler before every seed of the baseline).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SPEEDUP_TARGET", "time_to_accuracy_block", "task_verdicts"]

#: The speed issue's target: time to Spearman 0.9 at least this many times lower.
SPEEDUP_TARGET = 3.0
BASELINE = "sgld_cal"


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run make bench-time-to-accuracy)")
    return pd.read_csv(path)


def _seconds(text: str) -> list[float]:
    return [math.nan if p.strip() == "not reached" else float(p) for p in str(text).split(";")]


def _cell(x: float, digits: int = 1) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def task_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per task and target kind: the fastest sampler against the baseline, and the verdict.

    ``resolved``: every seed of the faster sampler reached the target before every seed of the
    baseline (a seed of the baseline that never reached it counts as its whole budget).
    """
    rows = []
    for (task, kind), g in table.groupby(["task", "target_kind"], sort=False):
        base = g[g["setting"] == BASELINE]
        others = g[(g["setting"] != BASELINE) & np.isfinite(g["speedup_vs_baseline"])]
        if base.empty or others.empty:
            rows.append({"task": task, "target_kind": kind, "target": g["target"].iloc[0],
                         "best": "", "speedup": math.nan, "bound": "", "met": False,
                         "resolved": False})  # fmt: skip
            continue
        best = others.loc[others["speedup_vs_baseline"].idxmax()]
        b = np.array(_seconds(base["seconds_per_seed"].iloc[0]))
        b = np.where(np.isnan(b), float(base["budget_seconds"].iloc[0]), b)
        o = np.array(_seconds(best["seconds_per_seed"]))
        resolved = bool(np.all(np.isfinite(o)) and np.nanmax(o) < np.min(b))
        rows.append(
            {
                "task": task,
                "target_kind": kind,
                "target": float(best["target"]),
                "best": best["setting"],
                "speedup": float(best["speedup_vs_baseline"]),
                "bound": best["speedup_bound"],
                "met": bool(best["speedup_vs_baseline"] >= SPEEDUP_TARGET),
                "resolved": resolved,
            }
        )
    return pd.DataFrame(rows)


def time_to_accuracy_block(results_dir: Path) -> str:
    """Markdown: seconds to the Spearman target per task and sampler, speed-ups, verdicts."""
    folder = Path(results_dir) / "accuracy" / "time_to_target"
    table = _read(folder / "time_to_target.csv")
    seeds = int(table["seeds"].max())
    lines = [
        "`make bench-time-to-accuracy` (`bench/time_to_accuracy.py`) puts every prefix of long "
        "chains on a time axis (calibration included) and asks how long each sampler needs to "
        f"reach Spearman {table['target'].max():.1f} against the exact answer ({seeds} sampler "
        "seeds; a target of 0.9 × the best Spearman reached where no sampler reaches 0.9). "
        f"Speed-up = the baseline `{BASELINE}`'s median time over the sampler's; `≥`: the "
        "baseline did not reach the target within its budget in some seed.",
        "",
        "| task | target | sampler | seconds per seed | median s | speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    unreached = []
    for (task, _), g in table.groupby(["task", "target_kind"], sort=False):
        if not np.isfinite(g["median_seconds"]).any():
            unreached.append((task, float(g["target"].iloc[0])))
    skip = set(unreached)
    for r in table.itertuples():
        if (r.task, r.target) in skip:
            continue
        speed = (
            "baseline"
            if r.setting == BASELINE
            else f"{'≥ ' if r.speedup_bound == '>=' else ''}{_cell(r.speedup_vs_baseline)}×"
            if np.isfinite(r.speedup_vs_baseline)
            else "not reached"
        )
        lines.append(
            f"| `{r.task}` | {r.target:.2f} ({r.target_kind}) | {r.setting} | "
            f"{r.seconds_per_seed} | {_cell(r.median_seconds)} | {speed} |"
        )
    if unreached:
        lines += [
            "",
            "No sampler (the baseline included) reaches the target in most seeds: "
            + ", ".join(f"`{t}` at {x:.2f}" for t, x in unreached)
            + ".",
        ]
    lines += ["", f"Against the {SPEEDUP_TARGET:g}× target:", ""]
    for v in task_verdicts(table).itertuples():
        if (v.task, v.target) in skip:
            continue
        if not v.best:
            lines.append(
                f"- `{v.task}` (target {v.target:.2f}, {v.target_kind}): no sampler reaches it "
                f"in most seeds, or the baseline has no runs."
            )
            continue
        bound = "at least " if v.bound == ">=" else ""
        if v.speedup < 1:
            lines.append(
                f"- `{v.task}` (target {v.target:.2f}, {v.target_kind}): no sampler shown faster "
                f"than the baseline (best {v.best}, {bound}{v.speedup:.1f}×): not met."
            )
            continue
        met = "met" if v.met else "not met"
        noise = "every seed before every baseline seed" if v.resolved else "seeds overlap"
        lines.append(
            f"- `{v.task}` (target {v.target:.2f}, {v.target_kind}): fastest {v.best}, "
            f"{bound}{v.speedup:.1f}× the baseline's speed: {met} ({noise})."
        )
    lines += [
        "",
        "Curves: `results/accuracy/time_to_target/time_to_accuracy.png`; every prefix: "
        "`accuracy_curves.csv`.",
    ]
    return "\n".join(lines)
