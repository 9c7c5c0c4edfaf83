"""README blocks generated from the files under ``results/`` (``make report``).

Numbers quoted in the README are never typed by hand: each generated block sits between
``<!-- report:<name>:begin -->`` and ``<!-- report:<name>:end -->`` and is rewritten from the
results tables by :func:`render_readme`. ``python -m bifrepro.report --check`` exits 1 when a
committed block differs from what the results say (a test runs the same check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bifrepro.evaluation.ranking import ranking_text

__all__ = [
    "BLOCKS",
    "ReportError",
    "accuracy_block",
    "lds_block",
    "vision_block",
    "render_readme",
    "main",
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


def lds_block(results_dir: Path) -> str:
    """The LDS table (α × method, 95% bootstrap CIs over queries), the paired differences against
    EK-FAC (every arm), BIF's sampler seeds and the resolved ranking, from ``results/lds/``
    (``make reproduce-lds``)."""
    folder = Path(results_dir) / "lds"
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


#: README block name -> its generator (results folder -> markdown).
def compute_lm_block(results_dir: Path) -> str:
    """The LM-family compute comparison: the summary ``experiments/compute_lm.py`` writes from its
    measurements (``results/compute/lm_family/summary.md``; ``make reproduce-compute``)."""
    folder = Path(results_dir) / "compute" / "lm_family"
    path = folder / "summary.md"
    if not path.is_file():
        raise ReportError(f"{path}: missing (run make reproduce-compute)")
    extra = _read_csv(folder / "extrapolation.csv").set_index("model")
    ratio = float(extra.at["pythia-2.8b", "ratio_ekfac_over_bif"])
    verdict = (
        f"**Not reproduced here**: extrapolated to Pythia-2.8B, EK-FAC takes {ratio:.2g}× BIF's "
        "time (the paper: about 100×, i.e. BIF two orders of magnitude cheaper)."
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
            f"target is 0.5), peak memory {float(mem[0]):.0f} MB vs {float(mem[1]):.0f} MB; "
            f"devinterp's scores agree with bifrepro's as well as a second bifrepro seed does "
            f"(Pearson {float(agree):.3f} vs {float(ref):.3f}).",
        ]
    return "\n".join(lines)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ReportError(f"{path}: missing (run the make target that writes it)")
    return path


BLOCKS: dict[str, Callable[[Path], str]] = {
    "toy": toy_block,
    "accuracy": accuracy_block,
    "lds": lds_block,
    "vision": vision_block,
    "compute_lm": compute_lm_block,
    "stagewise": stagewise_block,
    "language": language_block,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- report:{name}:begin -->\n)(.*?)(<!-- report:{name}:end -->)", re.DOTALL
    )


def render_readme(text: str, results_dir: Path) -> str:
    """``text`` with every generated block present in it rewritten from ``results_dir``."""
    for name, make in BLOCKS.items():
        pattern = _pattern(name)
        if pattern.search(text):
            body = make(results_dir)
            text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the README blocks from results/.")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    try:
        new = render_readme(old, args.results)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"{args.readme}: generated blocks are out of date; run `make report`")
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
        print(f"{args.readme}: blocks rewritten from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
