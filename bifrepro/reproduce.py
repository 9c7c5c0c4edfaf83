"""``make reproduce``: every experiment's make target in turn, a progress line per experiment
(elapsed, and remaining as estimated from the previous run's times), and a summary table at the
end (experiment, wall time, headline metric, results folder).

Each step is the experiment's own ``make reproduce-<name>`` target, so a step runs exactly what
a user running it alone would; its wall time is measured here (an experiment's
``metrics.json`` records only its last invocation, which may have reused caches). The times go
to ``results/reproduce_times.json`` and estimate the next run's remaining time. A failing step
stops the run (exit status of the step) after printing the table so far.

Two profiles: ``quick`` (every target with ``PROFILE=quick``, i.e. each experiment's
``conf/experiment/<name>_quick.yaml``: fewer draws, seeds and sizes; written to
``results/quick/``; target 45 min on 2 cores, the last run's time in its
``reproduce_summary.json``) and ``full`` (the settings of the committed ``results/``, about
2.5 h on 2 cores).

    python -m bifrepro.reproduce [--profile quick|full] [--only toy lds ...] [--results results]
                                 [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bifrepro.io import atomic_write_json

__all__ = [
    "PROFILES",
    "STEPS",
    "Step",
    "default_jobs",
    "headline",
    "main",
    "schedule",
    "summary_table",
    "thread_env",
]


@dataclass(frozen=True)
class Step:
    """One experiment: its make target, results folder and headline metric."""

    name: str
    target: str
    folder: str
    #: metrics.json -> one short headline string (KeyError: "n/a")
    headline: Callable[[dict[str, Any]], str]
    #: wall minutes on 2 cores, to order the first run (later runs use the measured times)
    minutes: float = 10.0
    #: steps that must finish first (they share a cache)
    after: tuple[str, ...] = ()
    #: a timing experiment: runs alone, on every core, so that no other step skews its times
    exclusive: bool = False
    #: part of the quick profile (False: only ``--profile full`` runs it)
    quick: bool = True
    #: the quick profile's wall minutes on 2 cores, for its first run
    quick_minutes: float = 5.0


#: profile -> results subfolder (under ``--results``) it writes to
PROFILES: dict[str, str] = {"full": "", "quick": "quick"}


def profile_results(results: Path, profile: str) -> Path:
    """The results folder of a profile: ``results`` itself (full) or ``results/quick``."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    return Path(results) / PROFILES[profile] if PROFILES[profile] else Path(results)


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _lds_headline(m: dict[str, Any]) -> str:
    """LDS of BIF (corr) and EK-FAC at the smallest subset fraction the run has."""
    alphas = sorted(
        float(k.rsplit("alpha_", 1)[1]) for k in m if k.startswith("lds/bif_correlation/alpha_")
    )
    if not alphas:
        raise KeyError("lds/bif_correlation/alpha_*")
    a = f"{alphas[0]:g}"
    return (
        f"LDS α={a} BIF (corr) {_f(m[f'lds/bif_correlation/alpha_{a}'])}, EK-FAC "
        f"{_f(m[f'lds/ekfac/alpha_{a}'])}"
    )


STEPS: tuple[Step, ...] = (
    Step("toy", "reproduce-toy", "toy_hierarchy",
         lambda m: f"Spearman BIF vs leave-one-out {_f(m['spearman_bif_loo_mean'])}", 3, quick_minutes=2),
    Step("toy_robustness", "reproduce-toy-robustness", "toy_robustness",
         lambda m: f"robust sign-flip share {_f(m['robust_flip_fraction'])}", 14, quick_minutes=4),
    Step("language", "reproduce-language", "language",
         lambda m: f"chains healthy {bool(m['chains_healthy'])}; per-token top-10 resolved "
                   f"{_f(m.get('health/resolved_share', math.nan))}", 20, quick_minutes=6),
    Step("language_scale", "reproduce-language-scale", "language_scale",
         lambda m: "cross-form P@1 (all) per size: " + ", ".join(
             f"{k.split('/')[1]} {_f(v)}" for k, v in m.items()
             if k.startswith("bif/") and k.endswith("/all/precision_at_1")), 25, quick_minutes=4.5),
    Step("vision", "reproduce-imagenet", "imagenet/fashion_mnist",
         lambda m: f"BIF top-1 label agreement {_f(m['bif/agreement_top1'])}", 7.5, quick_minutes=5),
    Step("lds", "reproduce-lds", "lds",
         _lds_headline, 15, quick_minutes=5),
    Step("compute", "reproduce-compute", "compute",
         lambda m: f"EK-FAC / BIF time at the base sizes {_f(m['ratio/time_EK-FAC_over_BIF'], 3)}", 18,
         exclusive=True, quick_minutes=10.5),
    Step("stagewise", "reproduce-stagewise", "stagewise_lm",
         lambda m: f"induction transition midpoint step "
                   f"{_f(m['induction_transition/midpoint_step'], 0)}", 15,
         quick_minutes=5.5),
    Step("stagewise_controls", "reproduce-stagewise-controls", "stagewise_controls",
         lambda m: f"transition shift {_f(m['shift/transition_step/mean'], 0)} steps, influence "
                   f"change shift {_f(m['shift/influence_change_step/mean'], 0)}", 24,
         after=("stagewise",),  # both use results/cache/stagewise_lm
         # six LM trainings of 2,100 steps (two arms x three seeds): ~15 min on 2 cores before any
         # BIF, a third of the quick profile's budget, so the quick profile leaves it out
         quick=False),
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


def _ok(rows: dict[str, dict[str, Any]], name: str) -> bool:
    return name in rows and rows[name]["status"] in ("ok", "planned")


def default_jobs(cpus: int | None = None) -> int:
    """One experiment at a time on every core (``cpus`` is accepted for a future rule). Side by
    side (``--jobs 2``) was not faster in the one full run measured: experiments with process
    pools of their own (LDS retraining, stagewise controls) oversubscribe a one-core slot, and
    each experiment's chains already run in one-thread worker processes when it has the cores
    (``sampler.chain_processes``); see ``docs/experiments.md``."""
    del cpus
    return 1


def _remaining(steps: Sequence[Step], previous: dict[str, float], jobs: int) -> float:
    """Estimated wall time of ``steps`` on ``jobs`` slots: their total time / jobs, but never
    less than the longest one (previous run's times, else each step's estimate)."""
    alone = sum(_cost(s, previous) for s in steps if s.exclusive)
    times = [_cost(s, previous) for s in steps if not s.exclusive]
    return alone + max(sum(times) / max(1, jobs), max(times, default=0.0))


def _cost(step: Step, previous: dict[str, float]) -> float:
    return previous.get(step.name, step.minutes * 60.0)


def schedule(steps: Sequence[Step], previous: dict[str, float]) -> list[Step]:
    """Launch order for several slots: the longest chain first (a step's time plus the longest
    chain of steps that must follow it; previous run's times, else each step's estimate), a
    step only after the steps it must follow."""
    by_name = {s.name: s for s in steps}

    def chain(step: Step, seen: frozenset[str] = frozenset()) -> float:
        if step.name in seen:
            raise ValueError(f"dependency cycle through {step.name}")
        followers = [s for s in steps if step.name in s.after]
        tail = max((chain(f, seen | {step.name}) for f in followers), default=0.0)
        return _cost(step, previous) + tail

    priority = {s.name: chain(s) for s in steps}
    pending, order, done = list(steps), [], set()
    while pending:
        ready = [s for s in pending if all(a in done or a not in by_name for a in s.after)]
        # timing steps first (nothing else runs yet, so no slot idles waiting for them)
        nxt = max(ready, key=lambda s: (s.exclusive, priority[s.name]))
        order.append(nxt)
        done.add(nxt.name)
        pending.remove(nxt)
    return order


def thread_env(jobs: int, cpus: int | None = None, results: Path | None = None) -> dict[str, str]:
    """Environment of one step: the CPU cores split between the ``jobs`` slots (an explicit
    ``OMP_NUM_THREADS`` of the caller wins), and ``BIFREPRO_RESULTS`` (the experiments'
    ``results_dir``) when ``results`` is given. Small models run faster as one-thread processes
    side by side than as one process on two threads (`docs/experiments.md`)."""
    env = dict(os.environ)
    if results is not None:
        env["BIFREPRO_RESULTS"] = str(Path(results).resolve())
    if "OMP_NUM_THREADS" not in env:
        threads = max(1, (cpus or os.cpu_count() or 1) // max(1, jobs))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def write_summary(
    results: Path,
    rows: Sequence[dict[str, Any]],
    steps: Sequence[Step],
    jobs: int,
    threads: str,
    total: float,
    status: int,
    cached_files: int = 0,
    profile: str = "full",
) -> None:
    """``results/reproduce_summary.json``: what this run did, on what, in how long (the
    documentation's "last full run" line is generated from it)."""
    atomic_write_json(
        {
            "commit": _commit(),
            "profile": profile,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "jobs": jobs,
            "threads_per_job": int(threads),
            "total_seconds": total,
            "status": status,
            "cached_files_at_start": cached_files,
            "planned": [s.name for s in steps],
            "steps": [{k: r[k] for k in ("name", "seconds", "status", "headline")} for r in rows],
        },
        Path(results) / "reproduce_summary.json",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="full",
        help="quick: conf/experiment/<name>_quick.yaml into <results>/quick; full: the "
        "committed results' settings into <results>",
    )  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], default=None)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--make", default="make", help="make command (e.g. 'make -s')")
    parser.add_argument(
        "--jobs", type=int, default=0,
        help="experiments run side by side, each on cores/jobs torch threads (0: the default, 1; "
        "see docs/experiments.md)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the table")
    args = parser.parse_args(argv)
    if args.jobs < 0:
        parser.error(f"--jobs must be >= 0, got {args.jobs}")
    jobs = args.jobs or default_jobs()
    args.results = profile_results(args.results, args.profile)
    times_path = args.results / "reproduce_times.json"
    previous: dict[str, float] = json.loads(times_path.read_text()) if times_path.is_file() else {}
    # first estimates of the quick profile (measured times, once there are some, come first)
    estimates = {s.name: 60.0 * s.quick_minutes for s in STEPS} if args.profile == "quick" else {}
    steps = [
        s for s in STEPS
        if (args.only is None or s.name in args.only) and (args.profile == "full" or s.quick)
    ]  # fmt: skip
    if jobs > 1:  # longest first keeps the slots busy; one slot runs the declared order
        steps = schedule(steps, {**estimates, **previous})
    log_dir = args.results / "reproduce_logs"
    env = thread_env(jobs, results=args.results)
    print(
        f"bifrepro reproduce ({args.profile} profile, into {args.results}): "
        f"{len(steps)} experiments, {jobs} at a time, "
        f"{env['OMP_NUM_THREADS']} torch thread(s) each"
        + (f"; each step's output in {log_dir}/<experiment>.log" if jobs > 1 else ""),
        flush=True,
    )
    cache = args.results / "cache"
    cached = sum(p.is_file() for p in cache.rglob("*")) if cache.is_dir() else 0
    rows: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[subprocess.Popen | None, float, Any]] = {}
    pending, finished, status = list(steps), set(), 0
    t_start = time.perf_counter()

    def launch(step: Step, index: int) -> None:
        elapsed = time.perf_counter() - t_start
        left = _remaining(
            [s for s in steps if s.name not in finished], {**estimates, **previous}, jobs
        )
        print(
            f"[{index}/{len(steps)}] {step.name} (make {step.target})"
            f"{', alone' if step.exclusive and jobs > 1 else ''}; elapsed {_minutes(elapsed)}, "
            f"remaining ~{_minutes(left)} (previous run's times, else estimates)",
            flush=True,
        )
        out = None
        if args.dry_run:
            proc = None
        else:
            if jobs > 1:
                log_dir.mkdir(parents=True, exist_ok=True)
                out = open(log_dir / f"{step.name}.log", "w")  # noqa: SIM115 (closed on exit)
            proc = subprocess.Popen(
                [*args.make.split(), step.target, f"PROFILE={args.profile}"], stdout=out,
                env=thread_env(1, results=args.results) if step.exclusive else env,
                stderr=subprocess.STDOUT if out else None,
            )  # fmt: skip
        running[step.name] = (proc, time.perf_counter(), out)

    def reap(name: str, rc: int) -> None:
        proc, t0, out = running.pop(name)
        if out is not None:
            out.close()
        seconds = time.perf_counter() - t0
        step = next(s for s in steps if s.name == name)
        if not args.dry_run and rc == 0:
            previous[name] = seconds
            atomic_write_json(previous, times_path)
        finished.add(name)
        rows[name] = {
            "name": name, "seconds": math.nan if args.dry_run else seconds,
            "status": "planned" if args.dry_run else ("ok" if rc == 0 else f"FAILED ({rc})"),
            "headline": headline(step, args.results), "folder": str(args.results / step.folder),
        }  # fmt: skip
        if not args.dry_run:
            print(
                f"    {name}: {rows[name]['status']} in {_minutes(seconds)}; elapsed "
                f"{_minutes(time.perf_counter() - t_start)}",
                flush=True,
            )
        if rc != 0 and out is not None:  # the end of the failed step's log, where the error is
            tail = Path(out.name).read_text(errors="replace").splitlines()[-20:]
            print("\n".join(f"    | {line}" for line in tail), flush=True)

    chosen, by_name = {s.name for s in steps}, {s.name: s for s in steps}
    launched = 0
    try:
        while pending or running:
            ready = [s for s in pending if all(_ok(rows, a) or a not in chosen for a in s.after)]
            while status == 0 and ready and len(running) < jobs:
                alone = any(by_name[n].exclusive for n in running)
                if alone or (ready[0].exclusive and running):
                    break  # a timing step runs alone
                step = ready.pop(0)
                pending.remove(step)
                launched += 1
                launch(step, launched)
            if status != 0 and not running:
                break
            if not running:  # nothing runnable: a step waits on a failed or missing one
                break
            for name, (proc, _, _) in list(running.items()):
                rc = 0 if proc is None else proc.poll()
                if rc is not None:
                    reap(name, rc)
                    if rc != 0 and status == 0:
                        status = rc
            time.sleep(0 if args.dry_run else 1.0)
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            if proc is not None:
                proc.terminate()
        raise
    total = time.perf_counter() - t_start
    done_rows = [rows[s.name] for s in steps if s.name in rows]
    if not args.dry_run:
        write_summary(
            args.results,
            done_rows,
            steps,
            jobs,
            env["OMP_NUM_THREADS"],
            total,
            status,
            cached,
            profile=args.profile,
        )
    print(f"\nbifrepro reproduce: {len(done_rows)}/{len(steps)} experiments in {_minutes(total)}\n")
    print(summary_table(done_rows), flush=True)
    if status and jobs > 1:
        print(f"\nfull output of every step: {log_dir}/<experiment>.log", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
