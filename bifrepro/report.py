"""Generated blocks of README.md and docs/**/*.md, from the files under ``results/``.

Numbers quoted in the README and the docs are never typed by hand: each generated block sits
between ``<!-- report:<name>:begin -->`` and ``<!-- report:<name>:end -->`` and is rewritten from
the results tables by the generator registered under ``<name>`` in :data:`BLOCKS` (rounding rules:
``_num``, ``_sci``, ``_ci``). ``python -m bifrepro.report`` (``make report``) rewrites every block
of every such file; ``--check`` exits 1 naming each file and block that differs from what the
results say (a test runs the same check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

from bifrepro.evaluation.ranking import ranking_text
from bifrepro.evaluation.token_links import EXAMPLE_PREFIX
from bifrepro.evaluation.token_scale import projected_agreement
from bifrepro.io import atomic_write_text
from bifrepro.report_language_scale import (
    above_chance_cells,
    chance_text,
    language_scale_block,
    reproduced_categories,
)
from bifrepro.report_stagewise_controls import stagewise_controls_block
from bifrepro.report_time_to_accuracy import time_to_accuracy_block

__all__ = [
    "BLOCKS",
    "ReportError",
    "accuracy_block",
    "accuracy_headline",
    "block_names",
    "calibration_block",
    "claims_block",
    "compute_grid_block",
    "compute_headline",
    "compute_lm_block",
    "language_block",
    "language_headline",
    "lds_block",
    "lds_headline",
    "main",
    "render_readme",
    "render_text",
    "report_files",
    "stagewise_block",
    "stagewise_headline",
    "stale_blocks",
    "toy_block",
    "toy_headline",
    "vision_block",
    "vision_headline",
]


class ReportError(RuntimeError):
    """A results file a README block needs is missing or malformed (names the file)."""


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ReportError(f"{path}: missing (run the make target that writes it)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read as CSV ({err})") from err


def _num(x: float, digits: int = 2) -> str:
    """Fixed decimals, the one rounding rule of the generated blocks."""
    return "n/a" if pd.isna(x) else f"{x:.{digits}f}"


def _sci(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.2g}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _verdict(row: pd.Series) -> str:
    """``healthy``, or the verdict with the rules that failed (``precision×3``: in 3 seeds)."""
    verdict = str(row.get("verdict", "n/a"))
    failed = row.get("failed_rules")
    return verdict if verdict == "healthy" or pd.isna(failed) else f"{verdict} ({failed})"


#: The preconditioner of ``conf/sampler/auto.yaml`` (tests/test_report.py checks they agree).
_AUTO_PRECONDITIONER = "rmsprop_frozen"
_PRECONDITIONER_NAMES = {
    "none": "plain SGLD",
    "rmsprop": "adaptive RMSProp-SGLD",
    "rmsprop_frozen": "frozen RMSProp-SGLD",
}


def _calibration_line(calibration: pd.DataFrame) -> str:
    """How often the calibration found a healthy step per sampler: the bench's case for the
    sampler that ``sampler=auto`` uses."""
    for extra in ("choose_thinning", "precision_target"):  # one row per problem and sampler
        if extra in calibration.columns:
            calibration = calibration[~calibration[extra].astype(bool)]
    problems = calibration["problem"].nunique()
    parts, healthy = [], {}
    for pre, g in calibration.groupby("preconditioner", sort=False):
        ok = sorted(g.loc[g["calibration_healthy"].astype(bool), "problem"])
        healthy[pre] = len(ok)
        where = f" ({', '.join(ok)})" if 0 < len(ok) < problems else ""
        parts.append(f"{_PRECONDITIONER_NAMES.get(pre, pre)} on {len(ok)} of {problems}{where}")
    best = healthy.get(_AUTO_PRECONDITIONER, -1) >= max(healthy.values())
    why = "the sampler healthy most often" if best else "NOT the sampler healthy most often here"
    return (
        "The calibration (`calibrate()`, pilots only) found a healthy step for "
        + "; ".join(parts)
        + f". `sampler=auto` calibrates {_PRECONDITIONER_NAMES[_AUTO_PRECONDITIONER]} ({why})."
    )


def accuracy_block(results_dir: Path) -> str:
    """The "How accurate is BIF here" section, from ``results/accuracy/`` (``make bench-accuracy``)."""
    folder = Path(results_dir) / "accuracy"
    summary = _read_csv(folder / "summary.csv")
    crossed = _read_csv(folder / "health_vs_accuracy.csv")
    need = {"task", "setting", "description", "step_size", "spearman_cov_mean", "spearman_cov_sd"}
    missing = need - set(summary.columns)
    if missing:
        raise ReportError(f"{folder / 'summary.csv'}: columns {sorted(missing)} missing")
    seeds = int(summary["seeds"].max())
    lines = [
        f"`make bench-accuracy` compares BIF with exact answers ({len(summary.task.unique())} "
        f"tasks, {len(summary.setting.unique())} sampler settings each, {seeds} sampler seeds "
        "per setting; tasks and truths in `bench/accuracy.py`). Spearman is BIF (covariance) "
        "against the truth, mean ± s.d. over seeds; *agreement* is the seed-to-seed Spearman; "
        "*accurate* means within 0.05 of the best Spearman any setting reaches at the same budget.",
        "",
        _row(["task", "setting", "ε", "Spearman", "agreement", "seconds", "health", "accurate"]),
        _row(["---"] * 8),
    ]
    for task, g in summary.groupby("task", sort=False):
        best = g.loc[g["spearman_cov_mean"].idxmax()]
        shown = g[g["setting"].isin(["sgld_cal", "rms_cal", "frz_cal", "hmc_cal", "auto"])]
        if best["setting"] not in set(shown["setting"]):
            shown = pd.concat([shown, best.to_frame().T])
        for _, r in shown.iterrows():
            label = r["description"] + (" (best)" if r["setting"] == best["setting"] else "")
            lines.append(
                _row(
                    [
                        f"`{task}`",
                        label,
                        _sci(float(r["step_size"])),
                        f"{_num(r['spearman_cov_mean'])} ± {_num(r['spearman_cov_sd'])}",
                        _num(r.get("seed_agreement_mean", float("nan"))),
                        _num(r.get("seconds_mean", float("nan")), 1),
                        _verdict(r),
                        "yes" if bool(r.get("accurate", False)) else "no",
                    ]
                )
            )
    settings = crossed.set_index(["healthy", "accurate"])["settings"]

    def count(healthy: bool, accurate: bool) -> int:
        return int(settings.get((healthy, accurate), 0))

    lines += [
        "",
        "Health verdict against accuracy, counted over task × setting (all seeds):",
        "",
        _row(["", "accurate", "not accurate"]),
        _row(["---"] * 3),
        _row(["healthy", str(count(True, True)), str(count(True, False))]),
        _row(["unhealthy", str(count(False, True)), str(count(False, False))]),
    ]
    wrong = summary[(summary["verdict"] == "healthy") & ~summary["accurate"].astype(bool)]
    if len(wrong):
        names = ", ".join(f"`{t}/{s}`" for t, s in zip(wrong.task, wrong.setting, strict=True))
        lines += ["", f"Healthy but not accurate: {names}."]
    lines += ["", _calibration_line(_read_csv(folder / "calibration.csv"))]
    lines += ["", "All settings: `results/accuracy/summary.csv`; figure: "
              "`results/accuracy/accuracy_vs_time.png`."]  # fmt: skip
    return "\n".join(lines)


def _ci(value: float, low: float, high: float, signed: bool = False) -> str:
    head = f"{value:+.2f}" if signed else _num(value)
    return f"{head} [{_num(low)}, {_num(high)}]"


def _lds_setting(folder: Path) -> list[str]:
    """Dataset and ensembles of an LDS run (from ``metrics.json``; nothing for results written
    before they were recorded)."""
    path = folder / "metrics.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if "dataset" not in saved:
        return []
    parts = [f"n = {saved['n_train']:,} training images", f"q = {saved['n_query']} queries"]
    model = saved.get("retrain_config", {}).get("model", {})
    scores = saved.get("metrics", {})
    if model and "model/train_accuracy" in scores:
        width = model.get("kwargs", {}).get("width")
        parts.append(
            f"model {model['name']}{f' (width {width})' if width else ''}, "
            f"{scores['model/num_params']:,.0f} parameters, training accuracy "
            f"{scores['model/train_accuracy']:.2f}, query accuracy {scores['model/test_accuracy']:.2f}"
        )
    if saved.get("bif_seeds"):
        parts.append(f"BIF over {len(saved['bif_seeds'])} sampler seeds (seed-averaged scores)")
    if saved.get("trak_num_checkpoints"):
        parts.append(f"TRAK over {saved['trak_num_checkpoints']} models")
    return [f"Dataset: {saved['dataset']} ({'; '.join(parts)}).", ""]


def _lds_seed_lines(folder: Path) -> list[str]:
    """BIF's sampler seeds: each seed's LDS, their mean ± sd, the seed-averaged scores' LDS."""
    path = folder / "lds_bif_seeds.csv"
    if not path.is_file():
        return []
    seeds = _read_csv(path)
    lines = ["", "BIF over sampler seeds (each seed's LDS; mean ± sd over seeds; LDS of the "
             "seed-averaged scores with its 95% CI):", ""]  # fmt: skip
    for (method, alpha), r in seeds.set_index(["method", "alpha"]).sort_index().iterrows():
        each = ", ".join(_num(r[c]) for c in r.index if c.startswith("lds_seed"))
        avg = _ci(
            r["averaged_scores_lds"], r["averaged_scores_ci_low"], r["averaged_scores_ci_high"]
        )
        lines.append(
            f"- {method}, α = {alpha:g}: seeds {each}; {_num(r['seed_mean'])} ± "
            f"{_num(r['seed_std'])}; averaged scores {avg}"
        )
    return lines


def lds_block(results_dir: Path, name: str = "lds") -> str:
    """The LDS table (α × method, 95% bootstrap CIs over queries), the paired differences against
    EK-FAC (every arm), BIF's sampler seeds and the resolved ranking, from ``results/<name>/``
    (``make reproduce-lds``; ``lds_resnet9``: ``make reproduce-lds-resnet9``)."""
    folder = Path(results_dir) / name
    lds = _read_csv(folder / "lds.csv")
    if "arm" in lds.columns:  # one column per method: BIF's seeds are listed below the table
        lds = lds[lds["arm"] == "main"]
    paired = _read_csv(folder / "lds_paired_vs_ekfac.csv")
    methods = list(dict.fromkeys(lds["method"]))
    subsets, seeds = int(lds["num_subsets"].max()), int(lds["num_seeds"].max())
    queries = int(lds["num_queries"].max())
    lines = [
        *_lds_setting(folder),
        f"LDS (Spearman, mean over {queries} queries, 95% bootstrap CI over queries; "
        f"{subsets} subsets × {seeds} retraining seed(s) per α):",
        "",
        _row(["α", *methods]),
        _row(["---"] * (len(methods) + 1)),
    ]
    for alpha, g in lds.groupby("alpha", sort=True):
        by = g.set_index("method")
        cells = [_ci(by.at[m, "lds"], by.at[m, "ci_low"], by.at[m, "ci_high"]) for m in methods]
        lines.append(_row([f"{alpha:g}", *cells]))
    lines += _lds_seed_lines(folder)
    lines += ["", "Paired against EK-FAC over the same queries (difference, 95% bootstrap CI; "
              "*resolved* when the CI excludes 0):", ""]  # fmt: skip
    for method, g in paired.groupby("method", sort=False):
        parts = []
        for _, r in g.sort_values("alpha").iterrows():
            resolved = r["ci_low"] > 0 or r["ci_high"] < 0
            ci = _ci(r["lds_difference"], r["ci_low"], r["ci_high"], signed=True)
            parts.append(f"α = {r['alpha']:g}: {ci}{' (resolved)' if resolved else ''}")
        lines.append(f"- {method} − EK-FAC: " + "; ".join(parts))
    ranking = _read_csv(folder / "lds_ranking.csv")
    lines += ["", "Ranking at each α (`>`: the paired 95% CI of the step excludes 0; `≈`: not "
              "resolved at this number of queries):", ""]  # fmt: skip
    for alpha, g in ranking.groupby("alpha", sort=True):
        lines.append(f"- α = {alpha:g}: {ranking_text(g)}")
    return "\n".join(lines)


#: Display names of the gallery methods, in table order.
_GALLERY_NAMES = {
    "bif": "BIF (correlation)",
    "bif_cov": "BIF (covariance)",
    "ekfac": "EK-FAC (raw score)",
    "ekfac_relatif": "EK-FAC (RelatIF)",
    "trak": "TRAK",
    "gradsim": "GradSim (cosine)",
}


def vision_block(results_dir: Path) -> str:
    """Top-k label agreement of the most helpful images per method, with CIs and times, overall
    and within Fashion-MNIST's look-alike groups, BIF's spread over sampler seeds and the
    rankings with paired CIs, from ``results/imagenet/<default stand-in>/``
    (``make reproduce-imagenet``; the MNIST-5k folder when the stand-in fell back to it)."""
    from bifrepro.config.imagenet import DEFAULT_STANDIN

    folder = Path(results_dir) / "imagenet" / DEFAULT_STANDIN
    if not folder.is_dir() and (Path(results_dir) / "imagenet" / "mnist5k").is_dir():
        folder = Path(results_dir) / "imagenet" / "mnist5k"  # the stand-in's fallback
    table = _read_csv(folder / "label_agreement.csv")
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path}: missing (run make reproduce-imagenet)")
    saved = json.loads(metrics_path.read_text())
    metrics = saved["metrics"]
    helpful = table[table["direction"] == "helpful"]
    ks = sorted(int(k) for k in helpful["k"].unique())
    n_queries, chance = int(helpful["n_queries"].max()), float(helpful["chance"].max())
    methods = [m for m in _GALLERY_NAMES if m in set(helpful["method"])]
    title = saved.get("title", folder.name).split(" · ")[0]
    lines = [
        f"Data: {title} (`{folder.relative_to(results_dir)}/`).",
        "",
        _row(["method", *[f"agreement@{k}" for k in ks], "time (s)"]),
        _row(["---"] * (len(ks) + 2)),
    ]
    for method in methods:
        by = helpful[helpful["method"] == method].set_index("k")
        cells = [_ci(by.at[k, "agreement"], by.at[k, "ci_low"], by.at[k, "ci_high"]) for k in ks]
        seconds = metrics.get(f"{method}/seconds", float("nan"))
        lines.append(_row([_GALLERY_NAMES[method], *cells, _num(seconds, 1)]))
    lines += ["", f"{n_queries} queries; chance {_num(chance)}; brackets: 95% bootstrap CIs over "
              "queries; times from the same run (`metrics.json`)."]  # fmt: skip
    groups_path = folder / "group_agreement.csv"
    if groups_path.is_file():
        groups = _read_csv(groups_path)
        pooled = groups[groups["group"] == "all groups"]
        n_group = int(pooled["n_queries"].max())
        exact_chance = float(pooled[pooled["metric"] == "exact"]["chance"].mean())
        lines += [
            "",
            f"Within the look-alike groups ({n_group} queries whose class is a top or a shoe): "
            "share of the top-k with the *exact* class, and (last column) the share of the "
            f"top-{ks[len(ks) // 2]} that is another class of the same group:",
            "",
            _row(["method", *[f"exact@{k}" for k in ks], f"look-alike@{ks[len(ks) // 2]}"]),
            _row(["---"] * (len(ks) + 2)),
        ]
        for method in [m for m in methods if m in set(pooled["method"])]:
            by = pooled[pooled["method"] == method].set_index(["metric", "k"])
            cells = [
                _ci(by.at[("exact", k), "value"], by.at[("exact", k), "ci_low"],
                    by.at[("exact", k), "ci_high"])
                for k in ks
            ]  # fmt: skip
            mid = ("group_other", ks[len(ks) // 2])
            other = _ci(by.at[mid, "value"], by.at[mid, "ci_low"], by.at[mid, "ci_high"])
            lines.append(_row([_GALLERY_NAMES[method], *cells, other]))
        lines += ["", f"Chance (exact class): {_num(exact_chance)}."]
    seeds_path = folder / "bif_seeds.csv"
    if seeds_path.is_file():
        seeds = _read_csv(seeds_path)
        parts = []
        for method in [m for m in methods if m in set(seeds["method"])]:
            for k in ks:
                g = seeds[(seeds["method"] == method) & (seeds["k"] == k)]
                values = ", ".join(_num(v) for v in g.sort_values("sampler_seed")["agreement"])
                parts.append(f"{_GALLERY_NAMES[method]} @{k}: {values} (spread "
                             f"{_num(float(g['spread'].iloc[0]))})")  # fmt: skip
        seed_list = ", ".join(str(int(s)) for s in sorted(seeds["sampler_seed"].unique()))
        lines += ["", f"BIF over sampler seeds {seed_list} (the rows above use the first): "
                  + "; ".join(parts) + "."]  # fmt: skip
    ranking = _read_csv(folder / "label_agreement_ranking.csv")
    names = ranking.assign(method=ranking["method"].map(lambda m: _GALLERY_NAMES.get(m, m)))
    lines += ["", "Ranking (`>`: paired 95% CI over queries excludes 0; `≈`: not resolved):", ""]
    for k, g in names.groupby("k", sort=True):
        lines.append(f"- agreement@{k}: {ranking_text(g)}")
    ranking_path = folder / "group_agreement_ranking.csv"
    if ranking_path.is_file():
        within = _read_csv(ranking_path)
        within = within.assign(method=within["method"].map(lambda m: _GALLERY_NAMES.get(m, m)))
        for k, g in within.groupby("k", sort=True):
            lines.append(f"- exact class within the look-alike groups@{k}: {ranking_text(g)}")
    return "\n".join(lines)


#: EK-FAC / BIF time ratio at Pythia-2.8B from which BIF counts as "far cheaper" (paper: ~100).
FAR_CHEAPER = 10.0


def _pythia_ratio(folder: Path) -> tuple[float, str, bool]:
    """The EK-FAC / BIF ratio extrapolated to Pythia-2.8B; where the experiment wrote it, its
    leave-one-size-out range as text (``""`` otherwise); and whether that range straddles
    :data:`FAR_CHEAPER` (the extrapolation cannot tell either way)."""
    extra = _read_csv(folder / "extrapolation.csv").set_index("model")
    ratio = float(extra.at["pythia-2.8b", "ratio_ekfac_over_bif"])
    if "ratio_loo_low" not in extra.columns:
        return ratio, "", False
    lo, hi = (float(extra.at["pythia-2.8b", f"ratio_loo_{e}"]) for e in ("low", "high"))
    straddles = lo < FAR_CHEAPER <= hi
    return ratio, f" (leave-one-size-out refits: {_sci(lo)}–{_sci(hi)})", straddles


def compute_lm_block(results_dir: Path) -> str:
    """The LM-family compute comparison: the summary ``experiments/compute_lm.py`` writes from its
    measurements (``results/compute/lm_family/summary.md``; ``make reproduce-compute``)."""
    folder = Path(results_dir) / "compute" / "lm_family"
    path = folder / "summary.md"
    if not path.is_file():
        raise ReportError(f"{path}: missing (run make reproduce-compute)")
    ratio, spread, unresolved = _pythia_ratio(folder)
    verdict = (
        f"**Not resolved here**: extrapolated to Pythia-2.8B, EK-FAC takes {ratio:.2g}× BIF's "
        f"time{spread}: refitting without one measured size moves the extrapolation across the "
        "paper's range (about 100×), so these sizes cannot say whether BIF is far cheaper at "
        "2.8B; only the measured ratios below stand."
        if unresolved
        else f"**Not reproduced here**: extrapolated to Pythia-2.8B, EK-FAC takes {ratio:.2g}× BIF's "
        f"time{spread} (the paper: about 100×, i.e. BIF two orders of magnitude cheaper)."
        if ratio < 10
        else f"Extrapolated to Pythia-2.8B, EK-FAC takes {ratio:.3g}× BIF's time (the paper: ~100×)."
    )
    return (
        verdict
        + "\n\n"
        + path.read_text().strip()
        + (
            "\n\nFigures: `results/compute/lm_family/model_scaling.png` (time and memory against "
            "parameters), `q_scaling.png`, `phase_breakdown.png`; every row in `model_scaling.csv`."
        )
    )


_DEPTH_NAMES = {0: "cross-kingdom (living thing)", 1: "animal / plant", 2: "mammal, bird, …"}


def toy_block(results_dir: Path) -> str:
    """The toy hierarchy's numbers: one run (``results/toy_hierarchy/``) and the robustness of
    its sign flips over sampler and initialisation seeds (``results/toy_robustness/``)."""
    one = json.loads(_require(Path(results_dir) / "toy_hierarchy" / "metrics.json").read_text())
    m = one["metrics"]
    stages = [m[f"transition_step/stage{k}"] for k in range(4)]
    lines = [
        "One run (`results/toy_hierarchy/`, one initialisation, one sampler seed): stage "
        f"transitions at steps {', '.join(f'{s:.0f}' for s in stages)}; BIF has the sign of "
        f"leave-one-out at {m['sign_agreement_bif_loo_mean']:.0%} of the checkpoints where "
        "leave-one-out is non-negligible; Spearman of BIF with leave-one-out over the ordered "
        f"pairs {m['spearman_bif_loo_mean']:.2f} (analytic prediction: "
        f"{m['spearman_analytic_loo_mean']:.2f}); chains healthy at "
        f"{m['chains_healthy_fraction']:.0%} of the checkpoints. Share of ordered pairs whose "
        f"curve flips sign: BIF {m['sign_flip_fraction_bif']:.2f}, analytic "
        f"{m['sign_flip_fraction_analytic']:.2f}, leave-one-out {m['sign_flip_fraction_loo']:.2f}.",
    ]
    folder = Path(results_dir) / "toy_robustness"
    if (folder / "metrics.json").is_file():
        rob = json.loads((folder / "metrics.json").read_text())
        rm, exp = rob["metrics"], rob["experiment"]
        summary = _read_csv(folder / "robustness_summary.csv")
        per_depth = summary.groupby("ancestor_depth").sum(numeric_only=True)
        n_s, n_i = len(exp["sampler_seeds"]), len(exp["init_seeds"])
        lines += [
            "",
            f"Robustness (`results/toy_robustness/`, {n_s} sampler seeds at each of {n_i} "
            "initialisations): pairs (unordered) × initialisations whose curve flips, by the depth "
            "of the common ancestor. *Robust* = both extremes resolved over the sampler seeds "
            f"({exp['confidence']:.0%} t-intervals at peaks located on the other seeds' mean).",
            "",
            _row(
                [
                    "common ancestor",
                    "pairs × inits",
                    "BIF: any seed",
                    "BIF: every seed",
                    "BIF: robust",
                    "analytic",
                    "leave-one-out",
                ]
            ),  # fmt: skip
            _row(["---"] * 7),
        ]
        for depth, r in per_depth.iterrows():
            lines.append(_row([
                _DEPTH_NAMES.get(int(depth), str(depth)), str(int(r["pairs"])),
                *(str(int(r[c])) for c in ("bif_flips_any_seed", "bif_flips_every_seed",
                                           "bif_robust_flips", "analytic_flips", "loo_flips")),
            ]))  # fmt: skip
        lines += [
            "",
            f"A single run's share of flipping pairs varies with the sampler seed: "
            f"{rm['single_run_flip_share_mean']:.2f} ± {rm['single_run_flip_share_sd']:.2f} "
            f"(mean ± s.d. over the {n_s * n_i} runs); robust flips: "
            f"{rm['robust_flip_fraction']:.2f} of pairs; leave-one-out: "
            f"{rm['flip_fraction_loo']:.2f}; analytic: {rm['flip_fraction_analytic']:.2f}.",
        ]
    return "\n".join(lines)


def stagewise_block(results_dir: Path) -> str:
    """The stagewise LM's numbers (``results/stagewise_lm/``): the induction transition, how much
    class-level influence changes across it, and which changes survive the partial correlation
    that removes the per-draw loss rise."""
    folder = Path(results_dir) / "stagewise_lm"
    saved = json.loads(_require(folder / "metrics.json").read_text())
    m = saved["metrics"]
    lines = []
    if m.get("induction_transition/detected"):
        lines.append(
            f"Induction transition: onset step {m['induction_transition/onset_step']:.0f}, "
            f"midpoint {m['induction_transition/midpoint_step']:.0f}, end "
            f"{m['induction_transition/end_step']:.0f}; the induction score rises from "
            f"{m['induction/score_first']:.3f} to {m['induction/score_last']:.3f} nats; the "
            f"training loss drops fastest at steps "
            f"{', '.join(f'{m[k]:.0f}' for k in sorted(m) if k.startswith('loss_drop_step/'))}."
        )
    else:
        lines.append("No induction transition detected in this run.")
    lines.append(
        f"Chains healthy at {m['chains_healthy_fraction']:.0%} of {m['num_checkpoints']:.0f} "
        "checkpoints."
    )
    checkpoints = folder / "checkpoints.csv"
    if checkpoints.is_file():
        ck = _read_csv(checkpoints)
        if "token_topk_resolved" in ck.columns:
            share, draws = ck["token_topk_resolved"], ck["token_draws_for_target"]
            lines.append(
                f"Token level, {share.min():.0%}–{share.max():.0%} of each query token's top-10 "
                "training tokens are resolved beyond Monte Carlo noise (the precision rule asks "
                f"for 50%; about {draws.median():.0f} draws per chain would reach it, median over "
                "checkpoints): the token-pair panels are mostly noise. The class-level numbers "
                "below average over many tokens and carry their own standard errors."
            )
    if "class_change/ratio_induction_over_control" in m:
        lines.append(
            "Class-level influence (correlation) changes "
            f"{m['class_change/ratio_induction_over_control']:.2g}× more across the transition "
            f"than across an equally long window before it; "
            f"{m['class_pairs_changed_2se_fraction']:.0%} of the class pairs change by more than "
            "2 s.e. across it."
        )
    path = folder / "class_changes_by_estimator.csv"
    if path.is_file():
        by = _read_csv(path)
        sig = by[by["correlation_significant"].astype(bool)]
        kept = by[by["survives_partial"].astype(bool)]
        lines.append(
            f"Of the {len(sig)} class pairs whose correlation changes by more than 2 s.e., "
            f"{len(kept)} still do, with the same sign, as a partial correlation given the "
            "per-draw mean loss (the posterior's loss rise removed): "
            + (", ".join(f"{r.query_class}→{r.train_class}" for r in kept.itertuples()) or "none")
            + "."
        )
    return "\n\n".join(lines)


_LANGUAGE_ARMS = (
    ("bif", "token", "any", "BIF token, any form"),
    ("bif", "token", "other", "BIF token, cross-form"),
    ("ekfac", "token", "other", "EK-FAC token, cross-form"),
    ("gradsim", "sequence", "other", "GradSim sequence, cross-form"),
)


def language_block(results_dir: Path) -> str:
    """The token-link benchmark per category (``results/language/benchmark.csv``): P@1 and MRR
    per arm, and the resolved ranking of the arms per category when it exists."""
    folder = Path(results_dir) / "language"
    table = _read_csv(folder / "benchmark.csv")
    rows = table[(table["subset"] == "all") & (table["scope"] == "all")]
    arms = [a for a in _LANGUAGE_ARMS if ((rows.method == a[0]) & (rows.level == a[1])).any()]
    cats = ["all", *sorted(c for c in rows["category"].unique() if c != "all")]
    lines = [
        "Token-link benchmark (`results/language/benchmark.csv`): precision@1 / MRR of the linked "
        "training tokens per query token; *cross-form* counts only links to another surface form "
        "(3 → three, elle → she), the poster's claim.",
        "",
        _row(["category", "query tokens", *[a[3] for a in arms]]),
        _row(["---"] * (len(arms) + 2)),
    ]
    for cat in cats:
        cells, n = [], 0
        for method, level, form, _ in arms:
            hit = rows[(rows.method == method) & (rows.level == level) & (rows.form == form)
                       & (rows.category == cat)]  # fmt: skip
            if hit.empty:
                cells.append("–")
                continue
            r = hit.iloc[0]
            n = max(n, int(r["num_queries"]))
            cells.append(f"{_num(r['precision_at_1'])} / {_num(r['mrr'])}")
        lines.append(_row([cat, str(n), *cells]))
    path = folder / "benchmark_ranking.csv"
    if path.is_file():
        ranking = _read_csv(path)
        cross = ranking[
            (ranking["level"] == "token")
            & (ranking["scope"] == "all")
            & (ranking["form"] == "other")
        ]
        lines += ["", "Per-token methods ranked by cross-form reciprocal rank (`>`: paired 95% CI "
                  "over queries excludes 0; `≈`: not resolved):", ""]  # fmt: skip
        for cat, g in cross.groupby("category", sort=True):
            lines.append(f"- {cat}: {ranking_text(g)}")
    devinterp = folder / "devinterp_comparison.csv"
    if devinterp.is_file():
        d = _read_csv(devinterp).set_index("quantity")
        ours, theirs = d.at["wall seconds", "bifrepro"], d.at["wall seconds", "devinterp"]
        mem = (
            d.at["peak RSS increase (MB)", "bifrepro"],
            d.at["peak RSS increase (MB)", "devinterp"],
        )
        agree = d.at["Pearson vs bifrepro seed 0", "devinterp"]
        ref = d.at["Pearson vs bifrepro seed 0", "bifrepro"]
        lines += [
            "",
            f"devinterp's `bif()` on the same model, data and settings "
            f"(`devinterp_comparison.csv`): bifrepro {float(ours):.0f} s vs devinterp "
            f"{float(theirs):.0f} s ({float(ours) / float(theirs):.2f} of its wall time; the "
            f"target is 0.5), peak memory {float(mem[0]):.0f} MB vs {float(mem[1]):.0f} MB"
            f"{' (bifrepro in one process)' if 'wall seconds, bifrepro in one process' in d.index else ''}; "
            f"devinterp's scores agree with bifrepro's as well as a second bifrepro seed does "
            f"(Pearson {float(agree):.3f} vs {float(ref):.3f}).",
        ]
        runs = _json(devinterp.with_suffix(".json"))["metrics"] if devinterp.with_suffix(
            ".json").is_file() else {}  # fmt: skip
        if runs.get("timing_repeats", 1) > 1:
            lines[-1] += (
                f" Wall times are medians of {runs['timing_repeats']:.0f} paired runs in "
                f"alternating order; per pair, bifrepro took {1 / runs['speedup_max']:.2f}–"
                f"{1 / runs['speedup_min']:.2f} of devinterp's time."
            )
        single = "wall seconds, bifrepro in one process"
        if single in d.index:
            procs, threads = runs.get("bifrepro_chain_processes"), runs.get("torch_threads")
            lines[-1] += (
                f" bifrepro split the chains between {procs:.0f} one-thread worker processes "
                f"(`sampler.chain_processes`, the experiments' default), devinterp (which has no "
                f"such option) ran them in turn on {threads:.0f} threads; in one process, on "
                f"the same draws, bifrepro took {float(d.at[single, 'bifrepro']):.0f} s, "
                f"{float(d.at[single, 'bifrepro']) / float(theirs):.2f} of devinterp's time."
            )
        bf16 = "wall seconds, bifrepro with bfloat16 observables"
        if bf16 in d.index:
            same = d.at["Pearson, bfloat16 vs float32 observables on the same draws", "bifrepro"]
            lines[-1] += (
                f" With bfloat16 observable forwards (`sampler.observable_dtype=bfloat16`): "
                f"{float(d.at[bf16, 'bifrepro']):.0f} s, "
                f"{float(d.at[bf16, 'bifrepro']) / float(theirs):.2f} of devinterp's time; its "
                f"scores match float32 on the same draws at Pearson {float(same):.3f}."
            )
    return "\n".join(lines)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ReportError(f"{path}: missing (run the make target that writes it)")
    return path


def _json(path: Path) -> dict:
    try:
        return json.loads(_require(path).read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from err


def _mean_sd(values: pd.Series, digits: int = 2) -> str:
    """``mean ± s.d.`` over seeds (s.d. with n − 1; a single value has no spread)."""
    sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return f"{_num(float(values.mean()), digits)} ± {_num(sd, digits)}"


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.0%}"


# --- calibrated against hand-picked steps (docs/sampling.md) -------------------------------------


def _toy_calibration_row(results_dir: Path) -> list[str] | None:
    path = Path(results_dir) / "toy_hierarchy" / "calibration" / "calibration_vs_hand_picked.csv"
    if not path.is_file():
        return None
    t = _read_csv(path)
    hand, auto = (
        t[t["sampler"] == s].set_index("sampler_seed") for s in ("hand-picked", "sampler=auto")
    )
    seeds = sorted(set(hand.index) & set(auto.index))
    hand, auto = hand.loc[seeds], auto.loc[seeds]
    parts = []
    for col, name in (("spearman_bif_loo_mean", "Spearman vs leave-one-out"),
                      ("sign_agreement_bif_loo_mean", "sign agreement with leave-one-out"),
                      ("sign_flip_fraction_bif", "sign-flip share")):  # fmt: skip
        diff = auto[col] - hand[col]
        parts.append(
            f"{name} {_mean_sd(hand[col])} → {_mean_sd(auto[col])} (paired difference per seed "
            f"{float(diff.min()):+.2f}…{float(diff.max()):+.2f}; higher in "
            f"{int((diff > 0).sum())} of {len(seeds)})"
        )
    healthy = f"healthy at {_pct(hand['chains_healthy_fraction'].mean())} → "
    healthy += f"{_pct(auto['chains_healthy_fraction'].mean())} of checkpoints"
    return [
        "toy (`results/toy_hierarchy/calibration/`)",
        _sci(float(hand["step_size"].iloc[0])),
        _sci(float(auto["step_size"].iloc[0])),
        "; ".join(parts),
        str(len(seeds)),
        healthy,
        _pct(float(auto["calibration_cost_fraction"].mean())),
    ]


def _calibrated_metrics(folder: Path) -> tuple[dict, dict]:
    saved = _json(folder / "metrics.json")
    return saved, saved["metrics"]


def _lds_calibration_row(results_dir: Path) -> list[str] | None:
    folder = Path(results_dir) / "lds" / "calibrated"
    if not (folder / "metrics.json").is_file():
        return None
    saved, m = _calibrated_metrics(folder)
    lds = _read_csv(folder / "lds.csv")
    parts = []
    for method, g in lds.groupby("method", sort=False):
        if method.startswith("BIF"):
            values = "/".join(_num(v) for v in g.sort_values("alpha")["lds"])
            parts.append(f"{method} {values}")
    alphas = "/".join(f"{a:g}" for a in sorted(lds["alpha"].unique()))
    data = saved.get("data", {})
    name = data.get("name", "?") if isinstance(data, dict) else str(data)
    return [
        f"LDS ({name}, `results/lds/calibrated/`)",
        _sci(m.get("calibration/hand_picked_step_size", float("nan"))),
        _sci(m["calibration/step_size"]),
        f"calibrated run only: LDS at α = {alphas}: "
        + "; ".join(parts)
        + " (the hand-picked run on the same data is not in `results/`)",
        "1",
        f"{'healthy' if m.get('bif/health/healthy') else 'UNHEALTHY'}; ESS "
        f"{m.get('bif/health/ess_median', float('nan')):.0f}",
        f"{_pct(m['calibration/cost_fraction'])}, {m['calibration/seconds']:.0f} s",
    ]


def _vision_calibration_row(results_dir: Path) -> list[str] | None:
    base = Path(results_dir) / "imagenet"
    folder = base / "mnist5k_calibrated"
    if not (folder / "metrics.json").is_file():
        return None
    _, m = _calibrated_metrics(folder)

    def agreement(path: Path) -> str:
        t = _read_csv(path / "label_agreement.csv")
        t = t[(t["method"] == "bif") & (t["direction"] == "helpful")].sort_values("k")
        return "/".join(_num(v) for v in t["agreement"])

    ks = "/".join(
        str(int(k)) for k in sorted(_read_csv(folder / "label_agreement.csv")["k"].unique())
    )
    hand = agreement(base / "mnist5k") if (base / "mnist5k").is_dir() else "not in `results/`"
    return [
        "vision stand-in (MNIST-5k, `results/imagenet/mnist5k_calibrated/`)",
        _sci(m.get("calibration/hand_picked_step_size", float("nan"))),
        _sci(m["calibration/step_size"]),
        f"BIF top-{ks} label agreement {hand} → {agreement(folder)}",
        "1",
        f"{'healthy' if m.get('bif/health/healthy') else 'UNHEALTHY'}; ESS "
        f"{m.get('bif/health/ess_median', float('nan')):.0f}",
        f"{_pct(m['calibration/cost_fraction'])}, {m['calibration/seconds']:.0f} s",
    ]


def _language_calibration_row(results_dir: Path) -> list[str] | None:
    path = Path(results_dir) / "language" / "calibration" / "comparison.csv"
    if not path.is_file():
        return None
    t = _read_csv(path).set_index("run")
    hand, cal = t.loc["hand-picked"], t.loc["calibrated"]

    def scores(r: pd.Series) -> str:
        return (f"token P@1 {_num(r['token_same_concept_p_at_1'])}, MRR "
                f"{_num(r['token_same_concept_mrr'])}, cross-form P@1 "
                f"{_num(r['token_cross_form_p_at_1'])}")  # fmt: skip

    return [
        "language (RMSProp, `results/language/calibration/`)",
        _sci(float(hand["step_size"])),
        _sci(float(cal["step_size"])),
        f"{scores(hand)} → {scores(cal)}",
        "1",
        f"{'healthy' if bool(cal['healthy']) else 'UNHEALTHY'}; ESS {float(cal['ess']):.0f}",
        f"{int(cal['calibration_candidates_run'])} pilot(s), {float(cal['calibration_seconds']):.0f}"
        f" s ({_pct(float(cal['calibration_cost_fraction_actual']))} of the run's forward passes)",
    ]


def calibration_block(results_dir: Path) -> str:
    """Calibrated against hand-picked step sizes per experiment, from the calibration files under
    ``results/`` (rows whose files are missing are left out and named)."""
    results_dir = Path(results_dir)
    makers = {
        "toy": _toy_calibration_row,
        "LDS": _lds_calibration_row,
        "vision": _vision_calibration_row,
        "language": _language_calibration_row,
    }
    rows, missing = [], []
    for name, make in makers.items():
        row = make(results_dir)
        (rows.append(row) if row else missing.append(name))
    lines = [
        "Calibrated (`calibration=auto` / `sampler=auto`) against the hand-picked step, same "
        "model, data and draws; *seeds* is the number of sampler seeds behind the row (with one "
        "seed there is no spread: differences within the CIs of the experiment's own tables are "
        "not resolved).",
        "",
        _row(
            [
                "experiment",
                "hand-picked ε",
                "calibrated ε",
                "result, hand-picked → calibrated",
                "seeds",
                "chains",
                "pilots",
            ]
        ),  # fmt: skip
        _row(["---"] * 7),
        *(_row(r) for r in rows),
    ]
    stagewise = Path(results_dir) / "stagewise_lm" / "metrics.json"
    if stagewise.is_file() and _json(stagewise).get("calibration") is None:
        missing.append("stagewise LM (`calibration: null` in `results/stagewise_lm/metrics.json`)")
    if missing:
        lines += ["", "No committed calibration result for: " + ", ".join(missing) + "."]
    lines += _bad_step_lines(results_dir)
    return "\n".join(lines)


def _bad_step_lines(results_dir: Path) -> list[str]:
    """The deliberately bad step on the LDS task against the calibrated run, and the exhaustive
    grid of small steps."""
    bad, cal = results_dir / "lds" / "bad_step", results_dir / "lds" / "calibrated"
    lines: list[str] = []
    if (bad / "metrics.json").is_file() and (cal / "lds.csv").is_file():
        saved, m = _calibrated_metrics(bad)
        step = saved.get("bif_sampler", {}).get("step_size", float("nan"))
        b, c = _read_csv(bad / "lds.csv"), _read_csv(cal / "lds.csv")
        parts = []
        for method in [x for x in dict.fromkeys(b["method"]) if x.startswith("BIF")]:
            bb = b[b["method"] == method].set_index("alpha")["lds"]
            cc = c[c["method"] == method].set_index("alpha")["lds"]
            lower = [a for a in bb.index if bb[a] < cc.get(a, float("nan"))]
            where = (
                "every α"
                if len(lower) == len(bb)
                else ("α = " + ", ".join(f"{a:g}" for a in lower) if lower else "no α")
            )
            parts.append(f"{method} {'/'.join(_num(v) for v in bb.sort_index())} (lower than "
                         f"calibrated at {where})")  # fmt: skip
        verdict = "healthy" if m.get("bif/health/healthy") else "UNHEALTHY"
        lines += ["", f"A deliberately bad step, ε = {_sci(step)} on the LDS task "
                  f"(`results/lds/bad_step/`, 1 seed): ε·γ = {m.get('bif/health/step_times_gamma', float('nan')):.2g}, "
                  f"R-hat {m.get('bif/health/rhat', float('nan')):.3f}, ESS "
                  f"{m.get('bif/health/ess_median', float('nan')):.0f}; verdict {verdict}; LDS "
                  + "; ".join(parts) + "."]  # fmt: skip
    grid = cal / "calibration_exhaustive" / "calibration.csv"
    if grid.is_file():
        g = _read_csv(grid)
        ok = g[g["healthy"].astype(bool)]
        rules = sorted({part.split(":")[0].strip() for text in g.loc[~g["healthy"].astype(bool),
                        "reasons"].dropna() for part in str(text).split(";")})  # fmt: skip
        lines += ["", f"An exhaustive grid of smaller steps on the same task "
                  f"(`results/lds/calibrated/calibration_exhaustive/`): {len(g)} steps from "
                  f"{_sci(g['step_size'].min())} to {_sci(g['step_size'].max())}; healthy: "
                  + (", ".join(_sci(x) for x in ok["step_size"]) or "none")
                  + f"; the others fail {', '.join(rules) or 'no rule'}."]  # fmt: skip
    return lines


# --- headline tables (README) ---------------------------------------------------------------------


def toy_headline(results_dir: Path) -> str:
    """Sign flips over sampler and initialisation seeds, and BIF against leave-one-out over the
    hand-picked sampler's seeds."""
    rob = _json(Path(results_dir) / "toy_robustness" / "metrics.json")
    rm, exp = rob["metrics"], rob["experiment"]
    n_s, n_i = len(exp["sampler_seeds"]), len(exp["init_seeds"])
    lines = [
        _row(["quantity", "BIF", "leave-one-out", "analytic", "seeds"]),
        _row(["---"] * 5),
        _row(
            [
                "share of pairs whose influence flips sign (one run)",
                f"{_num(rm['single_run_flip_share_mean'])} ± {_num(rm['single_run_flip_share_sd'])}",
                _num(rm["flip_fraction_loo"]),
                _num(rm["flip_fraction_analytic"]),
                f"{n_s} sampler × {n_i} init; mean ± s.d.",
            ]
        ),  # fmt: skip
        _row(
            [
                "share of pairs whose flip is robust (both extremes resolved over seeds)",
                _num(rm["robust_flip_fraction"]),
                "–",
                "–",
                f"{n_s} sampler × {n_i} init",
            ]
        ),  # fmt: skip
    ]
    path = Path(results_dir) / "toy_hierarchy" / "calibration" / "calibration_vs_hand_picked.csv"
    if path.is_file():
        t = _read_csv(path)
        hand = t[t["sampler"] == "hand-picked"]
        lines.append(_row([
            "Spearman of BIF with leave-one-out over pairs", _mean_sd(hand["spearman_bif_loo_mean"]),
            "–", "–", f"{len(hand)} sampler seeds; mean ± s.d.",
        ]))  # fmt: skip
    return "\n".join(lines)


def accuracy_headline(results_dir: Path) -> str:
    """``sampler=auto`` per bench task: Spearman against the exact answer over sampler seeds."""
    summary = _read_csv(Path(results_dir) / "accuracy" / "summary.csv")
    auto = summary[summary["setting"] == "auto"]
    lines = [
        _row(["task", "Spearman vs truth (mean ± s.d.)", "best setting", "seeds", "health"]),
        _row(["---"] * 5),
    ]
    for _, r in auto.iterrows():
        best = summary[summary["task"] == r["task"]]["spearman_cov_mean"].max()
        lines.append(_row([
            f"`{r['task']}`", f"{_num(r['spearman_cov_mean'])} ± {_num(r['spearman_cov_sd'])}",
            _num(best), str(int(r["seeds"])), _verdict(r).split(" (")[0],
        ]))  # fmt: skip
    return "\n".join(lines)


def vision_headline(results_dir: Path) -> str:
    """Top-k label agreement per method with CIs; BIF's spread over sampler seeds."""
    from bifrepro.config.imagenet import DEFAULT_STANDIN

    folder = Path(results_dir) / "imagenet" / DEFAULT_STANDIN
    if not folder.is_dir():
        folder = Path(results_dir) / "imagenet" / "mnist5k"
    table = _read_csv(folder / "label_agreement.csv")
    helpful = table[table["direction"] == "helpful"]
    ks = sorted(int(k) for k in helpful["k"].unique())
    ks = [ks[0], ks[-1]]
    methods = [m for m in _GALLERY_NAMES if m in set(helpful["method"])]
    seeds = _read_csv(folder / "bif_seeds.csv") if (folder / "bif_seeds.csv").is_file() else None
    saved = _json(folder / "metrics.json")
    trak = saved.get("config", {}).get("experiment", {}).get("trak_num_checkpoints")
    lines = [_row(["method", *[f"agreement@{k}" for k in ks], "seeds"]), _row(["---"] * 4)]
    for method in methods:
        by = helpful[helpful["method"] == method].set_index("k")
        cells = [_ci(by.at[k, "agreement"], by.at[k, "ci_low"], by.at[k, "ci_high"]) for k in ks]
        if seeds is not None and method in set(seeds["method"]):
            s = seeds[seeds["method"] == method]
            note = (f"{s['sampler_seed'].nunique()} sampler seeds, spread ≤ "
                    f"{_num(float(s['spread'].max()))}")  # fmt: skip
        elif method == "trak":
            note = f"{trak} models" if trak else "an ensemble (its size is not in `metrics.json`)"
        else:
            note = "1 seed"
        lines.append(_row([_GALLERY_NAMES[method], *cells, note]))
    n = int(helpful["n_queries"].max())
    lines += ["", f"{n} queries (`{folder.relative_to(results_dir)}/`); chance "
              f"{_num(float(helpful['chance'].max()))}; 95% bootstrap CIs over queries."]  # fmt: skip
    return "\n".join(lines)


def lds_headline(results_dir: Path) -> str:
    """LDS per α of each method's main arm, with the seeds behind each."""
    folder = Path(results_dir) / "lds"
    lds = _read_csv(folder / "lds.csv")
    if "arm" in lds.columns:
        lds = lds[lds["arm"] == "main"]
    saved = _json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    methods = list(dict.fromkeys(lds["method"]))
    lines = [_row(["α", *methods]), _row(["---"] * (len(methods) + 1))]
    for alpha, g in lds.groupby("alpha", sort=True):
        by = g.set_index("method")
        cells = [_ci(by.at[m, "lds"], by.at[m, "ci_low"], by.at[m, "ci_high"]) for m in methods]
        lines.append(_row([f"{alpha:g}", *cells]))
    bif_seeds = len(saved.get("bif_seeds") or [0])
    spread = ""
    if (folder / "lds_bif_seeds.csv").is_file():
        s = _read_csv(folder / "lds_bif_seeds.csv")
        spread = f" (s.d. of the per-seed LDS ≤ {_num(float(s['seed_std'].max()))})"
    lines += [
        "",
        f"Spearman per query, mean over {int(lds['num_queries'].max())} queries, 95% bootstrap "
        f"CI; {int(lds['num_subsets'].max())} subsets × {int(lds['num_seeds'].max())} retraining "
        f"seeds per α; BIF: scores averaged over {bif_seeds} sampler seed(s){spread}; TRAK: "
        f"{saved.get('trak_num_checkpoints', 1)} models; EK-FAC, GradSim: 1 trained model.",
    ]
    return "\n".join(lines)


_TOKEN_METHODS = {"bif": "BIF", "ekfac": "EK-FAC"}


def language_headline(results_dir: Path) -> str:
    """Cross-form precision@1 per category: BIF against EK-FAC, per token, with the paired
    ranking."""
    folder = Path(results_dir) / "language"
    t = _read_csv(folder / "benchmark.csv")
    t = t[(t["subset"] == "all") & (t["scope"] == "all") & (t["level"] == "token")]
    t = t[t["form"] == "other"]
    ranking = _read_csv(folder / "benchmark_ranking.csv")
    ranking = ranking[(ranking["level"] == "token") & (ranking["scope"] == "all")
                      & (ranking["form"] == "other")]  # fmt: skip
    groups = _language_groups(folder)
    head = ["category", "queries", "BIF P@1", *(["BIF P@1 per group"] if groups else []),
            "EK-FAC P@1", "paired (reciprocal rank)"]  # fmt: skip
    lines = [_row(head), _row(["---"] * len(head))]
    for cat in ["all", *sorted(c for c in t["category"].unique() if c != "all")]:
        by = t[t["category"] == cat].set_index("method")
        if "bif" not in by.index:
            continue
        g = ranking[ranking["category"] == cat]
        lines.append(_row([
            cat, str(int(by.at["bif", "num_queries"])), _num(by.at["bif", "precision_at_1"]),
            *([groups[0].get(cat, "–")] if groups else []),
            _num(by.at["ekfac", "precision_at_1"]) if "ekfac" in by.index else "–",
            ranking_text(g.assign(method=g["method"].map(lambda m: _TOKEN_METHODS.get(m, m)))) if len(g) else "–",
        ]))  # fmt: skip
    seeds = (f"BIF P@1 pools every chain; per group: mean ± sd over {groups[1]}" if groups
             else "1 sampler seed")  # fmt: skip
    lines += ["", "Cross-form: links to another surface form only (3 → three, elle → she); "
              f"{seeds}; 1 trained model; `>` paired 95% CI over query tokens excludes 0, "
              "`≈` not resolved."]  # fmt: skip
    health = _language_health(results_dir / "language" / "metrics.json")
    if health:
        lines[-1] += " " + health
    return "\n".join(lines)


def _language_groups(folder: Path) -> tuple[dict[str, str], str] | None:
    """BIF's cross-form precision@1 per category over the run's groups of chains (``mean ± sd``)
    and a phrase naming the groups and their agreement; None for a run without groups."""
    path = folder / "bif_chain_groups.csv"
    if not path.is_file():
        return None
    g = _read_csv(path)
    g = g[(g["form"] == "other") & ~g["category"].astype(str).str.startswith(EXAMPLE_PREFIX)]
    cells = {
        cat: f"{_num(v.mean())} ± {_num(v.std(ddof=1))}"
        for cat, v in g.groupby("category")["precision_at_1"]
    }
    agree = _read_csv(folder / "chain_group_agreement.csv")
    m = _json(folder / "metrics.json")
    chains = int(m["config"]["sampler"]["num_chains"]) // g["group"].nunique()
    r, groups = float(agree["pearson"].mean()), int(g["group"].nunique())
    phrase = (
        f"{groups} groups of {chains} chains (independent random streams, as sampler seeds); "
        f"token scores agree between groups at r = {_num(r)} (two runs of all {groups * chains} "
        f"chains: r ≈ {_num(projected_agreement(r, groups))}, projected)"
    )
    return cells, phrase


def _language_health(path: Path) -> str:
    """One sentence on the language run's chain health and per-token precision ('' if absent)."""
    if not path.is_file():
        return ""
    m = json.loads(path.read_text()).get("metrics", {})
    if "health/resolved_share" not in m:
        return ""
    verdict = "healthy" if m.get("chains_healthy") else "UNHEALTHY"
    return (
        f"BIF chains {verdict}; per token, {m['health/resolved_share']:.0%} of each query token's "
        "top-10 training tokens are resolved beyond Monte Carlo noise (the precision rule asks for "
        f"50%; about {m['health/draws_for_target']:.0f} draws per chain would reach it)."
    )


def stagewise_headline(results_dir: Path) -> str:
    """The stagewise block, with the seeds it rests on, and the same question asked with seeds
    by the controls (when they have run)."""
    text = stagewise_block(results_dir) + "\n\nOne training seed and one sampler seed."
    seeded = _stage_change_with_seeds(Path(results_dir) / "stagewise_controls" / "metrics.json")
    if seeded is not None:
        text += (
            f" Asked again {seeded[0]} ({seeded[2]}): **{seeded[1]}**; the single run's ratio "
            "is not confirmed with seeds (the control trains at a constant learning rate)."
            if not seeded[1].startswith("larger")
            else f" Asked again {seeded[0]} ({seeded[2]}): **{seeded[1]}**."
        )
    return text


def compute_headline(results_dir: Path) -> str:
    """Measured and extrapolated EK-FAC / BIF time ratios (one timing run per size)."""
    m = _json(Path(results_dir) / "compute" / "lm_family" / "metrics.json")["metrics"]
    ratio, spread, _ = _pythia_ratio(Path(results_dir) / "compute" / "lm_family")
    grid = _json(Path(results_dir) / "compute" / "metrics.json")["metrics"]
    return "\n".join([
        _row(["setting", "EK-FAC time / BIF time", "source"]),
        _row(["---"] * 3),
        _row(["CNN grid, base sizes", _sci(grid["ratio/time_EK-FAC_over_BIF"]),
              "measured (`results/compute/`)"]),
        _row(["LM family, smallest", _sci(m["ratio/smallest_ekfac_over_bif"]),
              "measured (`results/compute/lm_family/`)"]),
        _row([f"LM family, largest ({m['largest_num_params']:.3g} parameters)",
              _sci(m["ratio/largest_ekfac_over_bif"]), "measured"]),
        _row(["Pythia-2.8B", _sci(ratio) + spread, "extrapolated from fitted power laws"]),
        "",
        "Paper: about 100 (BIF two orders of magnitude cheaper). One timing run per size on "
        "CPU (1 thread; no repeated seeds: timings, not estimates).",
    ])  # fmt: skip


# --- what reproduces and what does not (README) ------------------------------------------------


def _order(ranking: pd.DataFrame, a: str, b: str) -> str:
    """``>`` when ``a`` ranks above ``b`` with a resolved step between them, ``<`` the reverse,
    ``≈`` otherwise (from a ranking table of one setting)."""
    r = ranking.sort_values("rank").reset_index(drop=True)
    pos = {m: i for i, m in enumerate(r["method"])}
    if a not in pos or b not in pos:
        return "n/a"
    lo, hi = sorted((pos[a], pos[b]))
    if not r.loc[lo : hi - 1, "resolved"].astype(bool).any():
        return "≈"
    return ">" if pos[a] < pos[b] else "<"


def _main_paired(results_dir: Path, name: str = "lds") -> pd.DataFrame:
    """BIF's main arms paired against EK-FAC (every α) in ``results/<name>/``."""
    paired = _read_csv(Path(results_dir) / name / "lds_paired_vs_ekfac.csv")
    if "arm" in paired.columns:
        paired = paired[paired["arm"] == "main"]
    return paired[paired["method"].str.startswith("BIF")]


def _lds_seeds(results_dir: Path, name: str = "lds") -> str:
    lds = _read_csv(Path(results_dir) / name / "lds.csv")
    path = Path(results_dir) / name / "metrics.json"
    bif = len(_json(path).get("bif_seeds") or [0]) if path.is_file() else 1
    return f"BIF {bif} sampler seed(s), averaged; {int(lds['num_seeds'].max())} retraining seeds"


def _lds_claim(results_dir: Path, name: str = "lds") -> str:
    paired = _main_paired(results_dir, name)
    parts = []
    for method, g in paired[paired["method"].str.startswith("BIF")].groupby("method", sort=False):
        worse = int((g["ci_high"] < 0).sum())
        better = int((g["ci_low"] > 0).sum())
        parts.append(f"{method} − EK-FAC resolved below 0 at {worse}, above 0 at {better}, "
                     f"not resolved at {len(g) - worse - better} of {len(g)} α")  # fmt: skip
    return "; ".join(parts)


def _vision_seeds(folder: Path) -> str:
    path = folder / "bif_seeds.csv"
    n = _read_csv(path)["sampler_seed"].nunique() if path.is_file() else 1
    return f"BIF {n} sampler seed(s); EK-FAC 1"


def _toy_verdict(rm: dict) -> str:
    """``reproduces`` when BIF's robust flips match leave-one-out's at every depth of the common
    ancestor, else the depths where they fall short."""
    depths = sorted({k.split("/")[0] for k in rm if k.startswith("depth")})
    short = [d for d in depths if rm[f"{d}/robust_flip_fraction"] < rm[f"{d}/flip_fraction_loo"]]
    if not short:
        return "reproduces"
    names = ", ".join(_DEPTH_NAMES.get(int(d.removeprefix("depth")), d) for d in short)
    return f"partly: BIF resolves fewer flips than leave-one-out for {names} pairs"


def _lds_verdict(paired: pd.DataFrame) -> str:
    below, above = int((paired["ci_high"] < 0).sum()), int((paired["ci_low"] > 0).sum())
    if above and not below:
        return "BIF ahead here"
    if below and not above:
        return "EK-FAC ahead or tied at every α: not reproduced"
    return "reproduces (tied at every α)" if not (above or below) else "mixed"


def _language_scale_claim(folder: Path) -> list[str] | None:
    """The claims row of the model-size ladder (None when it has not run): which categories are
    above chance at which size, and how well sampler seeds agree."""
    if not ((folder / "benchmark.csv").is_file() and (folder / "seed_agreement.csv").is_file()):
        return None
    table = _read_csv(folder / "benchmark.csv")
    above = reproduced_categories(table)
    agree = _read_csv(folder / "seed_agreement.csv").groupby("size", sort=False)["pearson"].mean()
    sizes = list(above)
    found = [f"{s}: {', '.join(c)}" for s, c in above.items() if c]
    bif = table[table["method"] == "bif"] if "method" in table else table
    text = (
        f"BIF categories above chance: {'; '.join(found) or 'none at any size'} "
        f"({sizes[0]} … {sizes[-1]}), {chance_text(table)}"
    )
    if "method" in table and (table["method"] == "ekfac").any():
        ek = [f"{s}: {', '.join(c)}" for s, c in reproduced_categories(table, "ekfac").items() if c]
        text += f"; EK-FAC per token: {'; '.join(ek) or 'none'}, {chance_text(table, 'ekfac')}"
    beyond = above_chance_cells(table)["p_value"] < 0.05
    verdict = "partly" if found and beyond else "not beyond chance at these sizes"
    return [
        "the links appear with model scale (language, embedded LM sizes)",
        f"{text}; seed agreement {agree.min():.2f}–{agree.max():.2f}",
        verdict,
        f"{int(bif['num_seeds'].min())} sampler seeds per size, 1 trained model each",
    ]


def _stagewise_controls_claim(path: Path) -> list[str] | None:
    """The claims row of the curriculum control (None when it has not run): does the influence
    change move with the induction transition when the curriculum moves the transition?"""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    m, exp = saved["metrics"], saved.get("experiment", {})
    seeds, sampler_seeds = exp.get("train_seeds", []), exp.get("sampler_seeds", [])

    def shift(name: str) -> str:
        p = f"shift/{name}/"
        return f"{m[p + 'mean']:+.0f} steps [{m[p + 't_low']:+.0f}, {m[p + 't_high']:+.0f}]"

    holds = bool(m.get("verdict/holds"))
    return [
        "the influence change moves with the transition (stagewise LM, curriculum control)",
        f"delaying the repeated sequences moves the induction transition "
        f"{shift('transition_step')} and the largest class-level change "
        f"{shift('influence_change_step')}"
        + (
            f" (BIF at steps {', '.join(map(str, exp['bif_steps']))}: shifts resolve to that grid)"
            if exp.get("bif_steps")
            else ""
        ),
        "reproduces" if holds else "does not hold here",
        f"{len(seeds) or 'n/a'} training seeds per arm × {len(sampler_seeds) or 'n/a'} sampler "
        "seeds per checkpoint",
    ]


def _stage_change_with_seeds(path: Path) -> tuple[str, str, str] | None:
    """The stagewise-LM question asked again with seeds, from the controls' early arm (repeated
    sequences from step 0, constant LR): (what, verdict, seeds); None when it has not run."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    m, exp = saved["metrics"], saved.get("experiment", {})
    p = "stage_change/early/"
    if p + "ratio_of_means" not in m:
        return None
    lo, hi = m[p + "difference_t_low"], m[p + "difference_t_high"]
    what = (
        f"with 3 training seeds (constant-LR control, early arm) {m[p + 'ratio_of_means']:.2f}×, "
        f"across − before {m[p + 'difference_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], larger in "
        f"{m[p + 'seeds_larger_across']:.0f} of {m[p + 'seeds']:.0f} seeds"
    )
    verdict = (
        "larger across the transition, resolved over seeds" if lo > 0
        else "smaller across the transition over seeds" if hi < 0
        else "not resolved over training seeds"
    )  # fmt: skip
    n_train, n_sampler = len(exp.get("train_seeds", [])), len(exp.get("sampler_seeds", []))
    return what, verdict, f"{n_train} training × {n_sampler} sampler seeds"


def claims_block(results_dir: Path) -> str:
    """One line per paper claim with the numbers that decide it, and a verdict computed from
    them (never typed)."""
    results_dir = Path(results_dir)
    lines = [_row(["claim (paper)", "here", "verdict", "seeds"]), _row(["---"] * 4)]
    rob = _json(results_dir / "toy_robustness" / "metrics.json")
    rm, exp = rob["metrics"], rob["experiment"]
    robust = rm["robust_flip_fraction"]
    lines.append(_row([
        "influence between items changes sign as stages are learned (toy)",
        f"leave-one-out flips at {_num(rm['flip_fraction_loo'])} of pairs; BIF robustly at "
        f"{_num(robust)} (cross-kingdom pairs: {_num(rm.get('depth0/robust_flip_fraction', float('nan')))})",
        _toy_verdict(rm), f"{len(exp['sampler_seeds'])} sampler × "
        f"{len(exp['init_seeds'])} init",
    ]))  # fmt: skip
    from bifrepro.config.imagenet import DEFAULT_STANDIN

    folder = results_dir / "imagenet" / DEFAULT_STANDIN
    if (folder / "label_agreement_ranking.csv").is_file():
        ranking = _read_csv(folder / "label_agreement_ranking.csv")
        raw = {int(k): _order(g, "bif", "ekfac") for k, g in ranking.groupby("k")}
        rel = {int(k): _order(g, "bif", "ekfac_relatif") for k, g in ranking.groupby("k")}
        fmt = ", ".join
        lines.append(_row([
            "BIF's top images share the query's class more often than EK-FAC's (vision)",
            "BIF vs EK-FAC raw at k = " + fmt(f"{k}: {v}" for k, v in raw.items())
            + "; vs RelatIF: " + fmt(f"{k}: {v}" for k, v in rel.items()),
            "against raw EK-FAC only" if ">" in raw.values() and ">" not in rel.values()
            else ("reproduces" if ">" in rel.values() else "not resolved"),
            _vision_seeds(folder),
        ]))  # fmt: skip
    lines.append(_row([
        "BIF ≈ EK-FAC on LDS (LDS)", _lds_claim(results_dir),
        _lds_verdict(_main_paired(results_dir)),
        _lds_seeds(results_dir),
    ]))  # fmt: skip
    for name, setting in (("lds/mnist5k", "MNIST digits"), ("lds_resnet9", "ResNet-9 of width 8")):
        if (results_dir / name / "lds_paired_vs_ekfac.csv").is_file():  # comparison runs
            lines.append(_row([
                f"BIF ≈ EK-FAC on LDS (LDS, {setting})", _lds_claim(results_dir, name),
                _lds_verdict(_main_paired(results_dir, name)), _lds_seeds(results_dir, name),
            ]))  # fmt: skip
    bench = _read_csv(results_dir / "language" / "benchmark.csv")
    cross = bench[(bench["subset"] == "all") & (bench["scope"] == "all")
                  & (bench["level"] == "token") & (bench["form"] == "other")]  # fmt: skip
    bif = cross[cross["method"] == "bif"].set_index("category")["precision_at_1"]
    ek = cross[cross["method"] == "ekfac"].set_index("category")["precision_at_1"]
    zero = sorted(c for c in bif.index if c != "all" and bif[c] == 0)
    lines.append(_row([
        "per-token BIF links translations and concepts across forms (language)",
        f"cross-form P@1 BIF {_num(bif.get('all'))} vs EK-FAC {_num(ek.get('all'))}; BIF 0.00 in "
        f"{len(zero)} of {len(bif) - 1} categories ({', '.join(zero)})",
        (f"not for {', '.join(zero)}" if zero else "reproduces"),
        groups[1] if (groups := _language_groups(results_dir / "language")) else "1 sampler seed",
    ]))  # fmt: skip
    scale_row = _language_scale_claim(results_dir / "language_scale")
    if scale_row is not None:
        lines.append(_row(scale_row))
    m = _json(results_dir / "stagewise_lm" / "metrics.json")["metrics"]
    ratio = m.get("class_change/ratio_induction_over_control", float("nan"))
    seeded = _stage_change_with_seeds(results_dir / "stagewise_controls" / "metrics.json")
    here = f"class-level change {ratio:.2g}× larger across the induction transition than before it"
    verdict = (
        "larger across the transition (no control: see the next row)"
        if ratio > 1
        else "not reproduced"
    )
    seeds = "1 training, 1 sampler seed"
    if seeded is not None:
        here, verdict = f"{here} (1 run); {seeded[0]}", seeded[1]
        seeds = f"{seeds}; controls: {seeded[2]}"
    lines.append(_row([
        "influence changes at a developmental stage (stagewise LM)", here, verdict, seeds,
    ]))  # fmt: skip
    controls = _stagewise_controls_claim(results_dir / "stagewise_controls" / "metrics.json")
    if controls is not None:
        lines.append(_row(controls))
    r, spread, unresolved = _pythia_ratio(results_dir / "compute" / "lm_family")
    verdict = "does not reproduce" if r < FAR_CHEAPER else "reproduces"
    lines.append(_row([
        "BIF far cheaper than EK-FAC at Pythia-2.8B (compute)",
        f"EK-FAC / BIF time extrapolated to Pythia-2.8B: {_sci(r)}{spread}",
        "not resolved by the extrapolation" if unresolved else verdict, "1 timing run per size",
    ]))  # fmt: skip
    return "\n".join(lines)


def compute_grid_block(results_dir: Path) -> str:
    """The CNN cost grid (``results/compute/``): times at the base sizes, log-log slopes, the
    crossover and the draws BIF needs to match EK-FAC's LDS."""
    folder = Path(results_dir) / "compute"
    grid = _json(folder / "metrics.json")
    m = grid["metrics"]
    slopes = _read_csv(folder / "slopes.csv")
    slopes = slopes[slopes["quantity"] == "total_seconds"].set_index(["method", "axis"])["slope"]
    mem = _read_csv(folder / "slopes.csv")
    mem = mem[mem["quantity"] == "peak_mb"].set_index(["method", "axis"])["slope"]
    methods = list(dict.fromkeys(slopes.index.get_level_values(0)))
    axes = ["n_train", "n_query", "num_params"]
    lines = [
        f"Device: {grid.get('device', 'n/a')}; one timing run per grid point (no seeds).",
        "",
        _row(["method", *[f"time slope in {a}" for a in axes], *[f"memory slope in {a}" for a in axes]]),
        _row(["---"] * (1 + 2 * len(axes))),
    ]  # fmt: skip
    for method in methods:
        cells = [_num(slopes.get((method, a), float("nan"))) for a in axes]
        cells += [_num(mem.get((method, a), float("nan"))) for a in axes]
        lines.append(_row([method, *cells]))
    ratios = ", ".join(f"{k.split('_', 1)[1].replace('_over_', ' / ')} {_sci(v)}"
                       for k, v in m.items() if k.startswith("ratio/time_"))  # fmt: skip
    cross = m.get("crossover/model_q_at_n_base", float("nan"))
    lines += ["", f"Time ratios at the base sizes: {ratios}. Fitted crossover in q at the base n: "
              f"{cross:g}."]  # fmt: skip
    path = folder / "time_to_equal_lds.csv"
    if path.is_file():
        t = _read_csv(path)
        parts = []
        for est, g in t.groupby("bif_estimator", sort=False):
            each = ", ".join(
                f"α = {r.alpha:g}: " + (f"{r.draws_to_equal:.0f} draws ({r.seconds_to_equal:.1f} s)"
                                       if r.reached else "never")
                for r in g.itertuples()
            )  # fmt: skip
            parts.append(f"- BIF ({est}): {each}")
        ek = float(t["ekfac_seconds"].iloc[0])
        lines += ["", f"Draws (all chains) BIF needs to reach EK-FAC's LDS (EK-FAC: "
                  f"{ek:.1f} s; one sampler seed):", "", *parts]  # fmt: skip
    return "\n".join(lines)


def _reproduce_run(path: Path, label: str) -> list[str]:
    """One recorded ``make reproduce`` run (a ``reproduce_summary.json``) as a line and a table."""
    run = _json(path)
    ran = {r["name"] for r in run["steps"]}
    shown = "results/" + ("quick/" if path.parent.name == "quick" else "") + path.name
    lines = [
        f"{label} (`{shown}`): "
        f"commit `{run.get('commit') or 'unknown'}`, ended {run['finished']}, on {run['cpus']} CPU "
        f"cores, {run['jobs']} experiment(s) at a time with {run['threads_per_job']} torch "
        f"thread(s) each, "
        + (
            "from empty caches"
            if not run.get("cached_files_at_start")
            else f"with {run['cached_files_at_start']} cached files at the start"
        )
        + f": **{run['total_seconds'] / 60:.0f} min** "
        f"in all (the target is 45), "
        + (f"exit status {run['status']}." if isinstance(run["status"], int) else run["status"]),
        "",
        "| experiment | wall time | status |",
        "| --- | --- | --- |",
    ]
    for r in run["steps"]:
        lines.append(f"| {r['name']} | {r['seconds'] / 60:.1f} min | {r['status']} |")
    for name in run["planned"]:
        if name not in ran:
            lines.append(f"| {name} | n/a | not run |")
    return lines


def reproduce_block(results: Path) -> str:
    """The last recorded ``make reproduce`` run of each profile: the quick one
    (``results/quick/reproduce_summary.json``) and the full one (``results/reproduce_summary.json``):
    machine, slots, wall times."""
    runs = [
        (Path(results) / "quick" / "reproduce_summary.json", "Last quick-profile run (`make reproduce`)"),
        (Path(results) / "reproduce_summary.json", "Last full-profile run (`make reproduce REPRODUCE_PROFILE=full`)"),
    ]  # fmt: skip
    recorded = [(p, label) for p, label in runs if p.is_file()]
    if not recorded:
        return "No `make reproduce` run recorded in `results/reproduce_summary.json` yet."
    blocks = [_reproduce_run(p, label) for p, label in recorded]
    return "\n\n".join("\n".join(b) for b in blocks)


def _run_summary(path: Path) -> str:
    """A recorded ``make reproduce`` run in a few words: minutes, cores, commit, complete or not."""
    if not path.is_file():
        return "none recorded yet"
    run = _json(path)
    done = sum(r["status"] == "ok" for r in run["steps"])
    whole = done == len(run["planned"]) and run["status"] == 0
    return (
        f"**{run['total_seconds'] / 60:.0f} min** on {run['cpus']} cores "
        f"(commit `{run.get('commit') or 'unknown'}`"
        + ("" if whole else f"; incomplete: {done} of {len(run['planned'])} experiments")
        + ")"
    )


def reproduce_headline(results: Path) -> str:
    """README: how long the last run of each ``make reproduce`` profile took."""
    results = Path(results)
    return (
        f"Last quick-profile run: {_run_summary(results / 'quick' / 'reproduce_summary.json')}; "
        f"target 45 min. Last full-profile run: "
        f"{_run_summary(results / 'reproduce_summary.json')}."
    )


# --- the registry and the files it rewrites -----------------------------------------------------

#: Block name -> its generator (results folder -> markdown). A block may appear in README.md and in
#: any docs/**/*.md file; a new generator is one function above and one entry here (reserved for
#: the lead: ``stagewise_controls``, ``language_scale``).
BLOCKS: dict[str, Callable[[Path], str]] = {
    # full results, in docs/experiments/*.md and docs/accuracy.md
    "reproduce_headline": reproduce_headline,
    "toy": toy_block,
    "accuracy": accuracy_block,
    "time_to_accuracy": time_to_accuracy_block,
    "lds": lds_block,
    "lds_resnet9": partial(lds_block, name="lds_resnet9"),
    "lds_mnist5k": partial(lds_block, name="lds/mnist5k"),
    "vision": vision_block,
    "compute_lm": compute_lm_block,
    "compute_grid": compute_grid_block,
    "stagewise": stagewise_block,
    "language": language_block,
    "calibration": calibration_block,
    # the README's front page: one headline table per experiment and the claims
    "toy_headline": toy_headline,
    "accuracy_headline": accuracy_headline,
    "vision_headline": vision_headline,
    "lds_headline": lds_headline,
    "language_headline": language_headline,
    "stagewise_headline": stagewise_headline,
    "compute_headline": compute_headline,
    "claims": claims_block,
    "language_scale": language_scale_block,
    "stagewise_controls": stagewise_controls_block,
    "reproduce": reproduce_block,
}

_MARKER = re.compile(r"<!-- report:([A-Za-z0-9_]+):(begin|end) -->")


def report_files(root: Path) -> list[Path]:
    """The files ``make report`` rewrites: ``README.md`` and every Markdown file under ``docs/``."""
    root = Path(root)
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md"))


def block_names(text: str, source: str = "text") -> list[str]:
    """Names of the generated blocks in ``text``, in order; a marker without its partner, a
    nested block or an unknown name is an error naming ``source``."""
    names, open_name = [], None
    for match in _MARKER.finditer(text):
        name, kind = match.groups()
        if name not in BLOCKS:
            raise ReportError(f"{source}: unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if kind == "begin":
            if open_name is not None:
                raise ReportError(f"{source}: block {name!r} begins inside {open_name!r}")
            open_name = name
        else:
            if open_name != name:
                raise ReportError(f"{source}: block {name!r} ends without its begin marker")
            names.append(name)
            open_name = None
    if open_name is not None:
        raise ReportError(f"{source}: block {open_name!r} has no end marker")
    return names


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- report:{name}:begin -->\n)(.*?)(<!-- report:{name}:end -->)", re.DOTALL
    )


def render_text(
    text: str, results_dir: Path, source: str = "text", cache: dict[str, str] | None = None
) -> str:
    """``text`` with every generated block in it rewritten from ``results_dir`` (``cache`` shares
    the rendered blocks between files)."""
    cache = {} if cache is None else cache
    for name in dict.fromkeys(block_names(text, source)):
        if name not in cache:
            try:
                cache[name] = BLOCKS[name](Path(results_dir))
            except ReportError as err:
                raise ReportError(f"{source}: block {name!r}: {err}") from err
            except (OSError, KeyError, ValueError) as err:  # a generator's missing file or column
                raise ReportError(f"{source}: block {name!r}: {type(err).__name__}: {err}") from err
        body = cache[name]
        text = _pattern(name).sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(3), text)
    return text


def render_readme(text: str, results_dir: Path) -> str:
    """``text`` (a README or a docs page) with every generated block rewritten from
    ``results_dir``."""
    return render_text(text, results_dir)


def stale_blocks(old: str, new: str) -> list[str]:
    """Names of the blocks whose content differs between ``old`` and ``new``."""
    stale = []
    for name in dict.fromkeys(block_names(new)):
        before, after = _pattern(name).findall(old), _pattern(name).findall(new)
        if [b[1] for b in before] != [a[1] for a in after]:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the blocks of README.md and docs/**/*.md from results/."
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument(
        "--readme", "--file", dest="files", type=Path, action="append",
        help="rewrite only this file (repeatable); default: README.md and docs/**/*.md",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=None, help="default: <root>/results")
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    files = args.files or report_files(args.root)
    results = args.results if args.results is not None else args.root / "results"
    cache: dict[str, str] = {}
    rendered = {}
    try:  # render everything before writing anything
        for path in files:
            old = path.read_text()
            rendered[path] = (old, render_text(old, results, str(path), cache))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    changed = {p: (o, n) for p, (o, n) in rendered.items() if o != n}
    if args.check:
        for path, (old, new) in changed.items():
            print(
                f"{path}: out of date blocks {', '.join(stale_blocks(old, new))}; run `make report`"
            )
        return 1 if changed else 0
    for path, (_, new) in changed.items():
        atomic_write_text(path, new)
        print(f"{path}: blocks rewritten from {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
