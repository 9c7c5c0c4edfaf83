"""``make reproduce``: every experiment's make target in turn, a progress line per experiment
(elapsed, and remaining as estimated from the previous run's times), and a summary table at the
end (experiment, wall time, headline metric, results folder).

Each step is the experiment's own ``make reproduce-<name>`` target, so a step runs exactly what
a user running it alone would; its wall time is measured here (an experiment's
``metrics.json`` records only its last invocation, which may have reused caches). The times go
to ``results/reproduce_times.json`` and estimate the next run's remaining time. A failing step
stops the run (exit status of the step) after printing the table so far.

    python -m bifrepro.reproduce [--only toy lds ...] [--results results] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bifrepro.io import atomic_write_json

__all__ = ["STEPS", "Step", "headline", "summary_table", "main"]


@dataclass(frozen=True)
class Step:
    """One experiment: its make target, results folder and headline metric."""

    name: str
    target: str
    folder: str
    #: metrics.json -> one short headline string (KeyError: "n/a")
    headline: Callable[[dict[str, Any]], str]


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


STEPS: tuple[Step, ...] = (
    Step("toy", "reproduce-toy", "toy_hierarchy",
         lambda m: f"Spearman BIF vs leave-one-out {_f(m['spearman_bif_loo_mean'])}"),
    Step("toy_robustness", "reproduce-toy-robustness", "toy_robustness",
         lambda m: f"robust sign-flip share {_f(m['robust_flip_fraction'])}"),
    Step("language", "reproduce-language", "language",
         lambda m: f"chains healthy {bool(m['chains_healthy'])}; per-token top-10 resolved "
                   f"{_f(m.get('health/resolved_share', math.nan))}"),
    Step("language_scale", "reproduce-language-scale", "language_scale",
         lambda m: "cross-form P@1 (all) per size: " + ", ".join(
             f"{k.split('/')[1]} {_f(v)}" for k, v in m.items()
             if k.startswith("bif/") and k.endswith("/all/precision_at_1"))),
    Step("vision", "reproduce-imagenet", "imagenet/fashion_mnist",
         lambda m: f"BIF top-1 label agreement {_f(m['bif/agreement_top1'])}"),
    Step("lds", "reproduce-lds", "lds",
         lambda m: f"LDS α=0.05 BIF (corr) {_f(m['lds/bif_correlation/alpha_0.05'])}, EK-FAC "
                   f"{_f(m['lds/ekfac/alpha_0.05'])}"),
    Step("compute", "reproduce-compute", "compute",
         lambda m: f"EK-FAC / BIF time at the base sizes {_f(m['ratio/time_EK-FAC_over_BIF'], 3)}"),
    Step("stagewise", "reproduce-stagewise", "stagewise_lm",
         lambda m: f"induction transition midpoint step "
                   f"{_f(m['induction_transition/midpoint_step'], 0)}"),
    Step("stagewise_controls", "reproduce-stagewise-controls", "stagewise_controls",
         lambda m: f"transition shift {_f(m['shift/transition_step/mean'], 0)} steps, influence "
                   f"change shift {_f(m['shift/influence_change_step/mean'], 0)}"),
)  # fmt: skip


def headline(step: Step, results_dir: Path) -> str:
    """The step's headline from its ``metrics.json`` ("n/a" when missing or incomplete)."""
    path = Path(results_dir) / step.folder / "metrics.json"
    if not path.is_file():
        return "n/a (no metrics.json)"
    saved = json.loads(path.read_text())
    try:
        return step.headline(saved.get("metrics", saved))
    except (KeyError, TypeError, ValueError):
        return "n/a"


def _minutes(seconds: float) -> str:
    return "n/a" if not math.isfinite(seconds) else f"{seconds / 60:.1f} min"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: experiment, wall time, status, headline metric, results folder."""
    lines = [
        "| experiment | wall time | status | headline | results |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_minutes(r['seconds'])} | {r['status']} | {r['headline']} | "
            f"`{r['folder']}` |"
        )
    return "\n".join(lines)


def _remaining(steps: Sequence[Step], previous: dict[str, float]) -> float:
    return sum(previous.get(s.name, math.nan) for s in steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], default=None)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--make", default="make", help="make command (e.g. 'make -s')")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the table")
    args = parser.parse_args(argv)
    steps = [s for s in STEPS if args.only is None or s.name in args.only]
    times_path = args.results / "reproduce_times.json"
    previous: dict[str, float] = json.loads(times_path.read_text()) if times_path.is_file() else {}
    rows: list[dict[str, Any]] = []
    t_start, status = time.perf_counter(), 0
    for i, step in enumerate(steps):
        elapsed = time.perf_counter() - t_start
        left = _remaining(steps[i:], previous)
        print(
            f"[{i + 1}/{len(steps)}] {step.name} (make {step.target}); elapsed "
            f"{_minutes(elapsed)}, remaining ~{_minutes(left)} (previous run's times)",
            flush=True,
        )
        t0 = time.perf_counter()
        rc = 0 if args.dry_run else subprocess.call([*args.make.split(), step.target])
        seconds = time.perf_counter() - t0
        if not args.dry_run and rc == 0:
            previous[step.name] = seconds
            atomic_write_json(previous, times_path)
        rows.append({
            "name": step.name, "seconds": math.nan if args.dry_run else seconds,
            "status": "planned" if args.dry_run else ("ok" if rc == 0 else f"FAILED ({rc})"),
            "headline": headline(step, args.results), "folder": str(args.results / step.folder),
        })  # fmt: skip
        if rc != 0:
            status = rc
            break
    total = time.perf_counter() - t_start
    print(f"\nbifrepro reproduce: {len(rows)}/{len(steps)} experiments in {_minutes(total)}\n")
    print(summary_table(rows), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
