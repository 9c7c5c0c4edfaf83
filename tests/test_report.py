"""README blocks come from results files, and the committed README matches them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bifrepro.report import ReportError, main, render_readme

ROOT = Path(__file__).resolve().parents[1]
README = "intro 0.5\n<!-- report:accuracy:begin -->\nold text\n<!-- report:accuracy:end -->\ntail\n"


def _write_results(root: Path, spearman: float = 0.8123) -> Path:
    folder = root / "accuracy"
    folder.mkdir(parents=True)
    rows = [
        ("lin", "sgld_cal", "SGLD, calibrated ε", 1e-3, spearman, 0.01, "healthy", True),
        ("lin", "rms_cal", "RMSProp-SGLD, calibrated ε", 2e-3, 0.5, 0.02, "healthy", False),
        ("lin", "sgld_x4", "SGLD, 4×", 4e-3, 0.9, 0.03, "unhealthy", True),
    ]
    cols = ["task", "setting", "description", "step_size", "spearman_cov_mean"]
    cols += ["spearman_cov_sd", "verdict", "accurate"]
    df = pd.DataFrame(rows, columns=cols).assign(seeds=3, seed_agreement_mean=0.7, seconds_mean=2.0)
    df.to_csv(folder / "summary.csv", index=False)
    pd.DataFrame(
        {"healthy": [True, True, False], "accurate": [True, False, True], "settings": [1, 1, 1]}
    ).to_csv(folder / "health_vs_accuracy.csv", index=False)
    pd.DataFrame(
        {
            "problem": ["lin", "lin", "log", "log"],
            "preconditioner": ["none", "rmsprop_frozen", "none", "rmsprop_frozen"],
            "calibration_healthy": [True, True, False, True],
        }
    ).to_csv(folder / "calibration.csv", index=False)
    return root


def test_blocks_are_rewritten_from_results_and_nothing_else_changes(tmp_path: Path) -> None:
    out = render_readme(README, _write_results(tmp_path))
    assert out.startswith("intro 0.5\n<!-- report:accuracy:begin -->\n") and out.endswith(
        "<!-- report:accuracy:end -->\ntail\n"
    )
    assert "old text" not in out
    assert "0.81 ± 0.01" in out  # the calibrated row, rounded once
    assert "SGLD, 4× (best)" in out  # the best setting is always shown
    assert "Healthy but not accurate: `lin/rms_cal`." in out
    assert "plain SGLD on 1 of 2 (lin); frozen RMSProp-SGLD on 2 of 2" in out
    assert "(the sampler healthy most often)" in out


def test_check_fails_when_a_number_is_edited_by_hand(tmp_path: Path) -> None:
    results = _write_results(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(render_readme(README, results))
    assert main(["--check", "--readme", str(readme), "--results", str(results)]) == 0
    readme.write_text(readme.read_text().replace("0.81 ± 0.01", "0.91 ± 0.01"))
    assert main(["--check", "--readme", str(readme), "--results", str(results)]) == 1
    assert main(["--readme", str(readme), "--results", str(results)]) == 0  # regenerate
    assert "0.81 ± 0.01" in readme.read_text()


def test_a_missing_results_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"summary\.csv: missing"):
        render_readme(README, tmp_path)


def test_committed_readme_matches_the_committed_results() -> None:
    """Numbers in README.md's generated blocks are exactly what results/ says (`make report`)."""
    args = ["--check", "--readme", str(ROOT / "README.md"), "--results", str(ROOT / "results")]
    assert main(args) == 0


def test_committed_readme_and_docs_match_the_committed_results() -> None:
    """Every generated block of README.md and docs/**/*.md is what results/ says."""
    assert main(["--check", "--root", str(ROOT)]) == 0


def test_lds_block_marks_only_differences_whose_ci_excludes_zero(tmp_path: Path) -> None:
    from bifrepro.report import lds_block

    folder = tmp_path / "lds"
    folder.mkdir()
    base = {"subset_size": 50, "lds_std_over_queries": 0.1, "num_queries": 50}
    base |= {"num_subsets": 40, "num_seeds": 1}
    pd.DataFrame(
        [
            {
                "method": "BIF (corr)",
                "variant": "c",
                "alpha": 0.05,
                "lds": 0.45,
                "ci_low": 0.41,
                "ci_high": 0.49,
                **base,
            },
            {
                "method": "EK-FAC",
                "variant": "e",
                "alpha": 0.05,
                "lds": 0.29,
                "ci_low": 0.24,
                "ci_high": 0.34,
                **base,
            },
        ]  # fmt: skip
    ).to_csv(folder / "lds.csv", index=False)
    pd.DataFrame(
        [
            {
                "method": "BIF (corr)",
                "alpha": 0.05,
                "lds_difference": 0.16,
                "ci_low": 0.1,
                "ci_high": 0.23,
            },
            {
                "method": "BIF (corr)",
                "alpha": 0.1,
                "lds_difference": 0.04,
                "ci_low": -0.01,
                "ci_high": 0.09,
            },
        ]  # fmt: skip
    ).to_csv(folder / "lds_paired_vs_ekfac.csv", index=False)
    ranking = {"alpha": 0.05, "next_method": "", "difference": 0.16, "ci_low": 0.1, "ci_high": 0.2}
    pd.DataFrame(
        [
            {**ranking, "rank": 1, "method": "BIF (corr)", "resolved": True},
            {**ranking, "rank": 2, "method": "GradSim", "resolved": False},
            {**ranking, "rank": 3, "method": "EK-FAC", "resolved": False},
        ]
    ).to_csv(folder / "lds_ranking.csv", index=False)
    text = lds_block(tmp_path)
    assert "- α = 0.05: BIF (corr) > GradSim ≈ EK-FAC" in text
    assert "| 0.05 | 0.45 [0.41, 0.49] | 0.29 [0.24, 0.34] |" in text
    assert "α = 0.05: +0.16 [0.10, 0.23] (resolved)" in text
    assert "α = 0.1: +0.04 [-0.01, 0.09];" not in text  # last entry: no separator
    assert "α = 0.1: +0.04 [-0.01, 0.09]" in text and text.count("(resolved)") == 1


def test_lds_block_names_the_dataset_and_reports_bifs_seeds(tmp_path: Path) -> None:
    """New-style results: the dataset line, only each method's main arm in the table, and BIF's
    sampler seeds (each, mean ± sd, averaged scores) below it."""
    import json

    from bifrepro.report import lds_block

    folder = tmp_path / "lds"
    folder.mkdir()
    base = {"subset_size": 50, "num_queries": 100, "num_subsets": 40, "num_seeds": 3}
    row = {"alpha": 0.05, "ci_low": 0.3, "ci_high": 0.5, **base}
    pd.DataFrame(
        [
            {**row, "method": "BIF (cov)", "variant": "bif_covariance", "arm": "main", "lds": 0.4},
            {**row, "method": "BIF (cov) seed 0", "variant": "x", "arm": "seed", "lds": 0.35},
            {**row, "method": "EK-FAC", "variant": "ekfac", "arm": "main", "lds": 0.3},
        ]
    ).to_csv(folder / "lds.csv", index=False)
    diff = {"alpha": 0.05, "lds_difference": 0.05, "ci_low": -0.01, "ci_high": 0.1}
    pd.DataFrame([{**diff, "method": "BIF (cov) seed 0"}]).to_csv(
        folder / "lds_paired_vs_ekfac.csv", index=False
    )
    pd.DataFrame(
        [
            {"alpha": 0.05, "rank": 1, "method": "BIF (cov)", "resolved": False},
            {"alpha": 0.05, "rank": 2, "method": "EK-FAC", "resolved": False},
        ]
    ).to_csv(folder / "lds_ranking.csv", index=False)
    pd.DataFrame(
        [
            {
                "variant": "bif_covariance",
                "method": "BIF (cov)",
                "alpha": 0.05,
                "num_seeds": 2,
                "lds_seed0": 0.35,
                "lds_seed1": 0.39,
                "seed_mean": 0.37,
                "seed_std": 0.028,
                "seed_min": 0.35,
                "seed_max": 0.39,
                "averaged_scores_lds": 0.4,
                "averaged_scores_ci_low": 0.3,
                "averaged_scores_ci_high": 0.5,
            }
        ]  # fmt: skip
    ).to_csv(folder / "lds_bif_seeds.csv", index=False)
    saved = {"dataset": "fashion_mnist", "n_train": 1000, "n_query": 100, "bif_seeds": [0, 1]}
    (folder / "metrics.json").write_text(json.dumps({**saved, "trak_num_checkpoints": 5}))
    text = lds_block(tmp_path)
    assert text.startswith("Dataset: fashion_mnist (n = 1,000 training images; q = 100 queries")
    assert "BIF over 2 sampler seeds" in text and "TRAK over 5 models" in text
    assert "| α | BIF (cov) | EK-FAC |" in text  # the seed arm is not a table column
    assert "- BIF (cov), α = 0.05: seeds 0.35, 0.39; 0.37 ± 0.03; averaged scores 0.40" in text
    assert "- BIF (cov) seed 0 − EK-FAC: α = 0.05: +0.05 [-0.01, 0.10]" in text
    assert "- α = 0.05: BIF (cov) ≈ EK-FAC" in text


def test_the_reported_auto_sampler_is_the_configured_one(hydra_compose) -> None:
    """The README's sentence about `sampler=auto` names the preconditioner the config uses."""
    from bifrepro.report import _AUTO_PRECONDITIONER

    assert hydra_compose(["sampler=auto"]).sampler.preconditioner == _AUTO_PRECONDITIONER


def _write_vision(folder: Path, groups: bool, title: str) -> None:
    """A gallery results folder as experiments/imagenet.py writes it (two methods, k = 1, 3)."""
    import json

    folder.mkdir(parents=True)
    rows = [
        {"method": m, "direction": d, "k": k, "agreement": a, "ci_low": a - 0.05,
         "ci_high": a + 0.05, "n_queries": 500, "chance": 0.1}
        for m, a in (("bif", 0.9), ("ekfac", 0.6))
        for d in ("helpful", "harmful")
        for k in (1, 3)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "label_agreement.csv", index=False)
    metrics = {"bif/seconds": 100.0, "ekfac/seconds": 20.0}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "title": title}))
    rank = [
        {"k": k, "rank": r, "method": m, "resolved": res}
        for k in (1, 3)
        for r, m, res in ((1, "bif", True), (2, "ekfac", False))
    ]
    pd.DataFrame(rank).to_csv(folder / "label_agreement_ranking.csv", index=False)
    if not groups:
        return
    g = [
        {"method": m, "group": "all groups", "k": k, "metric": metric, "value": v,
         "ci_low": v - 0.1, "ci_high": v + 0.1, "n_queries": 350, "chance": 0.1}
        for m, exact in (("bif", 0.7), ("ekfac", 0.4))
        for k in (1, 3)
        for metric, v in (("exact", exact), ("group_other", 1 - exact))
    ]  # fmt: skip
    pd.DataFrame(g).to_csv(folder / "group_agreement.csv", index=False)
    within = [
        {"k": k, "rank": r, "method": m, "resolved": res}
        for k in (1, 3)
        for r, m, res in ((1, "ekfac", False), (2, "bif", False))
    ]
    pd.DataFrame(within).to_csv(folder / "group_agreement_ranking.csv", index=False)
    seeds = [
        {"method": "bif", "k": k, "sampler_seed": s, "agreement": 0.9 - 0.01 * s, "spread": 0.02}
        for k in (1, 3)
        for s in (0, 1, 2)
    ]
    pd.DataFrame(seeds).to_csv(folder / "bif_seeds.csv", index=False)


def test_vision_block_reads_the_default_standin_with_groups_seeds_and_rankings(
    tmp_path: Path,
) -> None:
    from bifrepro.config.imagenet import DEFAULT_STANDIN
    from bifrepro.report import vision_block

    _write_vision(tmp_path / "imagenet" / "mnist5k", False, "Stand-in for ImageNet: MNIST-5k · x")
    _write_vision(tmp_path / "imagenet" / DEFAULT_STANDIN, True,
                  "Stand-in for ImageNet: Fashion-MNIST · cnn")  # fmt: skip
    text = vision_block(tmp_path)
    assert "Data: Stand-in for ImageNet: Fashion-MNIST (`imagenet/fashion_mnist/`)" in text
    assert "| BIF (correlation) | 0.90 [0.85, 0.95] | 0.90 [0.85, 0.95] | 100.0 |" in text
    assert (
        "| EK-FAC (raw score) | 0.40 [0.30, 0.50] | 0.40 [0.30, 0.50] | 0.60 [0.50, 0.70] |" in text
    )
    assert "- agreement@3: BIF (correlation) > EK-FAC (raw score)" in text
    assert "- exact class within the look-alike groups@3: EK-FAC (raw score) ≈ BIF (corr" in text
    assert "sampler seeds 0, 1, 2" in text and "0.90, 0.89, 0.88 (spread 0.02)" in text


def test_vision_block_falls_back_to_the_mnist5k_folder(tmp_path: Path) -> None:
    from bifrepro.report import vision_block

    _write_vision(tmp_path / "imagenet" / "mnist5k", False, "Stand-in for ImageNet: MNIST-5k · x")
    text = vision_block(tmp_path)
    assert "(`imagenet/mnist5k/`)" in text and "look-alike" not in text
    assert "- agreement@1: BIF (correlation) > EK-FAC (raw score)" in text


def test_compute_lm_block_says_plainly_when_the_paper_does_not_reproduce(tmp_path: Path) -> None:
    from bifrepro.report import compute_lm_block

    folder = tmp_path / "compute" / "lm_family"
    folder.mkdir(parents=True)
    (folder / "summary.md").write_text("**LM family.** measured things\n")
    rows = {"model": ["pythia-70m", "pythia-2.8b"], "ratio_ekfac_over_bif": [0.1, 0.54]}
    pd.DataFrame(rows).to_csv(folder / "extrapolation.csv", index=False)
    text = compute_lm_block(tmp_path)
    assert text.startswith("**Not reproduced here**") and "0.54×" in text
    assert "**LM family.** measured things" in text
    rows["ratio_ekfac_over_bif"] = [0.1, 120.0]
    pd.DataFrame(rows).to_csv(folder / "extrapolation.csv", index=False)
    assert "Not reproduced" not in compute_lm_block(tmp_path)


def test_toy_block_reads_the_single_run_and_the_robustness_study(tmp_path: Path) -> None:
    import json

    from bifrepro.report import toy_block

    one = tmp_path / "toy_hierarchy"
    one.mkdir()
    metrics = {f"transition_step/stage{k}": 100.0 * (k + 1) for k in range(4)}
    metrics |= {
        "sign_agreement_bif_loo_mean": 0.79, "spearman_bif_loo_mean": 0.52,
        "spearman_analytic_loo_mean": 0.46, "chains_healthy_fraction": 0.375,
        "sign_flip_fraction_bif": 0.89, "sign_flip_fraction_analytic": 0.43,
        "sign_flip_fraction_loo": 1.0,
    }  # fmt: skip
    (one / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    text = toy_block(tmp_path)
    assert "steps 100, 200, 300, 400" in text and "BIF 0.89" in text
    assert "Robustness" not in text  # not run yet: only the single run is reported
    rob = tmp_path / "toy_robustness"
    rob.mkdir()
    pd.DataFrame(
        {
            "init_seed": [0, 0, 1, 1],
            "ancestor_depth": [0, 1, 0, 1],
            "pairs": [16, 8, 16, 8],
            "bif_flips_any_seed": [10, 2, 9, 1],
            "bif_flips_every_seed": [3, 0, 2, 0],
            "bif_robust_flips": [1, 0, 2, 0],
            "analytic_flips": [0, 0, 0, 0],
            "loo_flips": [16, 8, 16, 8],
        }  # fmt: skip
    ).to_csv(rob / "robustness_summary.csv", index=False)
    summary = {"robust_flip_fraction": 0.0625, "single_run_flip_share_mean": 0.7,
               "single_run_flip_share_sd": 0.12, "flip_fraction_loo": 1.0,
               "flip_fraction_analytic": 0.0}  # fmt: skip
    experiment = {"sampler_seeds": [0, 1, 2, 3, 4], "init_seeds": [0, 1], "confidence": 0.95}
    (rob / "metrics.json").write_text(json.dumps({"metrics": summary, "experiment": experiment}))
    text = toy_block(tmp_path)
    assert "5 sampler seeds at each of 2 initialisations" in text
    assert "| cross-kingdom (living thing) | 32 | 19 | 5 | 3 | 0 | 32 |" in text
    assert "0.70 ± 0.12" in text


def test_stagewise_block_names_the_changes_that_survive_the_partial_correlation(
    tmp_path: Path,
) -> None:
    import json

    from bifrepro.report import stagewise_block

    folder = tmp_path / "stagewise_lm"
    folder.mkdir()
    metrics = {
        "induction_transition/detected": 1.0, "induction_transition/onset_step": 611.0,
        "induction_transition/midpoint_step": 857.0, "induction_transition/end_step": 1144.0,
        "induction/score_first": 0.004, "induction/score_last": 0.41, "loss_drop_step/1": 32.0,
        "chains_healthy_fraction": 1.0, "num_checkpoints": 12.0,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    text = stagewise_block(tmp_path)
    assert "onset step 611" in text and "partial" not in text
    pd.DataFrame(
        {"token_topk_resolved": [0.15, 0.03, 0.05], "token_draws_for_target": [5100, 6300, 4000]}
    ).to_csv(folder / "checkpoints.csv", index=False)
    text = stagewise_block(tmp_path)
    assert "3%–15% of each query token's top-10" in text and "about 5100 draws" in text
    pd.DataFrame(
        {"query_class": ["number", "number", "other"], "train_class": ["number", "other", "other"],
         "correlation_significant": [True, True, False], "survives_partial": [True, False, False]}
    ).to_csv(folder / "class_changes_by_estimator.csv", index=False)  # fmt: skip
    text = stagewise_block(tmp_path)
    assert "Of the 2 class pairs" in text and "1 still do" in text and "number→number." in text


def test_language_block_reports_every_category_and_the_resolved_ranking(tmp_path: Path) -> None:
    from bifrepro.report import language_block

    folder = tmp_path / "language"
    folder.mkdir()
    base = {"level": "token", "scope": "all", "subset": "all", "num_queries": 10}
    rows = [
        {**base, "method": "bif", "form": "any", "category": c, "precision_at_1": 0.9, "mrr": 0.95}
        for c in ("all", "num")
    ] + [
        {**base, "method": m, "form": "other", "category": "num", "precision_at_1": p, "mrr": p}
        for m, p in (("bif", 0.1), ("ekfac", 0.0))
    ]
    pd.DataFrame(rows).to_csv(folder / "benchmark.csv", index=False)
    text = language_block(tmp_path)
    assert "| num | 10 | 0.90 / 0.95 | 0.10 / 0.10 | 0.00 / 0.00 |" in text
    assert "ranked" not in text  # no ranking table: no ranking lines
    common = {"level": "token", "scope": "all", "form": "other", "category": "num"}
    pd.DataFrame(
        [
            {**common, "rank": 1, "method": "bif", "resolved": False},
            {**common, "rank": 2, "method": "ekfac", "resolved": False},
            {**common, "level": "sequence", "rank": 1, "method": "gradsim", "resolved": True},
        ]
    ).to_csv(folder / "benchmark_ranking.csv", index=False)
    text = language_block(tmp_path)
    assert "- num: bif ≈ ekfac" in text and "gradsim" not in text  # per token only
    rows = [
        ("wall seconds", 80.0, 100.0),
        ("peak RSS increase (MB)", 200.0, 480.0),
        ("Pearson vs bifrepro seed 0", 0.12, 0.11),
    ]
    table = pd.DataFrame(rows, columns=["quantity", "bifrepro", "devinterp"])
    table.to_csv(folder / "devinterp_comparison.csv", index=False)
    text = language_block(tmp_path)
    assert "bifrepro 80 s vs devinterp 100 s (0.80 of its wall time" in text
    assert "bfloat16" not in text
    bf16 = [
        ("wall seconds, bifrepro with bfloat16 observables", 45.0, 100.0),
        ("Pearson, bfloat16 vs float32 observables on the same draws", 0.987, None),
    ]
    table = pd.DataFrame(rows + bf16, columns=["quantity", "bifrepro", "devinterp"])
    table.to_csv(folder / "devinterp_comparison.csv", index=False)
    text = language_block(tmp_path)
    assert "45 s, 0.45 of devinterp's time" in text and "Pearson 0.987" in text
    assert "paired runs" not in text  # one run per side: no repeats to report
    import json

    m = {"timing_repeats": 3.0, "speedup_min": 1.25, "speedup_max": 1.6}
    (folder / "devinterp_comparison.json").write_text(json.dumps({"metrics": m}))
    text = language_block(tmp_path)
    assert "medians of 3 paired runs" in text and "took 0.62–0.80 of devinterp's time" in text


DOC = "# page\n<!-- report:accuracy:begin -->\nstale\n<!-- report:accuracy:end -->\nend\n"


def test_docs_pages_are_rewritten_and_check_names_the_file_and_block(
    tmp_path: Path, capsys
) -> None:
    """Blocks live in README.md and in docs/**/*.md; `--check` names each stale file and block,
    and a plain run rewrites all of them."""
    from bifrepro.report import report_files

    _write_results(tmp_path / "results")
    (tmp_path / "README.md").write_text("no blocks here\n")
    page = tmp_path / "docs" / "experiments" / "x.md"
    page.parent.mkdir(parents=True)
    page.write_text(DOC)
    assert report_files(tmp_path) == [tmp_path / "README.md", page]
    assert main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{page}: out of date blocks accuracy" in out and "README.md" not in out
    assert main(["--root", str(tmp_path)]) == 0
    assert "0.81 ± 0.01" in page.read_text() and "stale" not in page.read_text()
    assert (tmp_path / "README.md").read_text() == "no blocks here\n"
    assert main(["--check", "--root", str(tmp_path)]) == 0


def test_nothing_is_written_when_one_file_cannot_be_rendered(tmp_path: Path) -> None:
    _write_results(tmp_path / "results")
    (tmp_path / "README.md").write_text(DOC)
    bad = tmp_path / "docs" / "bad.md"
    bad.parent.mkdir()
    bad.write_text("<!-- report:lds:begin -->\n<!-- report:lds:end -->\n")  # no LDS results
    assert main(["--root", str(tmp_path)]) == 2
    assert "stale" in (tmp_path / "README.md").read_text()  # the good file was not touched


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- report:nope:begin -->\n<!-- report:nope:end -->\n", "unknown block 'nope'"),
        ("<!-- report:toy:begin -->\n", "'toy' has no end marker"),
        ("<!-- report:toy:end -->\n", "'toy' ends without its begin marker"),
        (
            "<!-- report:toy:begin -->\n<!-- report:lds:begin -->\n",
            "'lds' begins inside 'toy'",
        ),
    ],
)
def test_malformed_markers_are_errors_naming_the_file(text: str, message: str) -> None:
    from bifrepro.report import render_text

    with pytest.raises(ReportError, match=f"page.md: .*{message}"):
        render_text(text, Path("."), source="page.md")


def test_every_marker_in_the_repository_has_a_generator() -> None:
    from bifrepro.report import BLOCKS, block_names, report_files

    used = set()
    for path in report_files(ROOT):
        used |= set(block_names(path.read_text(), str(path)))
    assert used <= set(BLOCKS)
    headline = {"claims", "toy_headline", "vision_headline", "lds_headline", "language_headline",
                "stagewise_headline", "compute_headline", "accuracy_headline"}  # fmt: skip
    assert headline <= set(block_names((ROOT / "README.md").read_text()))


def test_the_readme_is_a_front_page_with_each_experiment_in_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 230
    for name in ("toy", "vision", "lds", "language", "stagewise", "compute", "compute_lm"):
        page = ROOT / "docs" / "experiments" / f"{name}.md"
        assert page.is_file() and f"docs/experiments/{name}.md" in readme
    for page, block in [("accuracy.md", "accuracy"), ("sampling.md", "calibration"),
                        ("experiments/language.md", "language"),
                        ("experiments/stagewise.md", "stagewise")]:  # fmt: skip
        assert f"<!-- report:{block}:begin -->" in (ROOT / "docs" / page).read_text()


def _prose(text: str) -> str:
    """``text`` without code blocks, generated blocks and inline code."""
    import re

    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(
        r"<!-- report:(\w+):begin -->.*?<!-- report:\1:end -->", "", text, flags=re.DOTALL
    )
    return re.sub(r"`[^`]*`", "", text)


def test_the_readme_types_no_measured_number_by_hand() -> None:
    """Outside generated blocks and code the README quotes no decimal result (0.95, 1.2×, 35 min)."""
    import re

    prose = _prose((ROOT / "README.md").read_text()).replace("3.11–3.13", "")
    assert not re.findall(r"\d\.\d+|\d+ ?(?:min|s)\b|\d+×", prose)


def _calibration_results(root: Path) -> Path:
    import json

    folder = root / "toy_hierarchy" / "calibration"
    folder.mkdir(parents=True)
    rows = [
        ("hand-picked", s, 1e-4, sp, 0.7, 0.8, 1.0, None)
        for s, sp in ((0, 0.50), (1, 0.40), (2, 0.45))
    ] + [
        ("sampler=auto", s, 9e-4, sp, 0.7, 0.6, 1.0, 0.06)
        for s, sp in ((0, 0.52), (1, 0.41), (2, 0.44))
    ]
    cols = ["sampler", "sampler_seed", "step_size", "spearman_bif_loo_mean",
            "sign_agreement_bif_loo_mean", "sign_flip_fraction_bif", "chains_healthy_fraction",
            "calibration_cost_fraction"]  # fmt: skip
    pd.DataFrame(rows, columns=cols).to_csv(folder / "calibration_vs_hand_picked.csv", index=False)
    (root / "stagewise_lm").mkdir()
    (root / "stagewise_lm" / "metrics.json").write_text(json.dumps({"calibration": None}))
    return root


def test_calibration_block_pairs_seeds_and_names_missing_evidence(tmp_path: Path) -> None:
    from bifrepro.report import calibration_block

    text = calibration_block(_calibration_results(tmp_path))
    # Spearman 0.45 ± 0.05 → 0.46 ± 0.06 over 3 seeds; paired differences +0.02, +0.01, −0.01
    assert "Spearman vs leave-one-out 0.45 ± 0.05 → 0.46 ± 0.06" in text
    assert "paired difference per seed -0.01…+0.02; higher in 2 of 3" in text
    assert "| 0.0001 | 0.0009 |" in text and "| 3 |" in text
    assert "No committed calibration result for: LDS, vision, language, stagewise LM" in text
    assert "`calibration: null`" in text


def test_claims_verdicts_come_from_the_paired_intervals() -> None:
    from bifrepro.report import _lds_verdict, _order

    paired = pd.DataFrame({"ci_low": [-0.2, -0.1], "ci_high": [-0.1, 0.1]})
    assert _lds_verdict(paired) == "EK-FAC ahead or tied at every α: not reproduced"
    assert _lds_verdict(paired.assign(ci_low=[-0.1, -0.1], ci_high=[0.1, 0.1])).startswith(
        "reproduces"
    )
    assert _lds_verdict(paired.assign(ci_low=[0.1, -0.1], ci_high=[0.2, 0.1])) == "BIF ahead here"
    ranking = pd.DataFrame(
        {"rank": [1, 2, 3], "method": ["a", "b", "c"], "resolved": [False, True, False]}
    )
    assert _order(ranking, "a", "b") == "≈"
    assert _order(ranking, "a", "c") == ">" and _order(ranking, "c", "a") == "<"
    assert _order(ranking, "a", "zzz") == "n/a"


def test_a_generator_error_names_the_file_and_block(tmp_path: Path, monkeypatch) -> None:
    """Generators registered later may raise FileNotFoundError or KeyError: still a ReportError
    naming the page and the block."""
    from bifrepro import report

    def missing(results_dir: Path) -> str:
        raise FileNotFoundError("x/metrics.json is missing")

    monkeypatch.setitem(report.BLOCKS, "later", missing)
    text = "<!-- report:later:begin -->\n<!-- report:later:end -->\n"
    with pytest.raises(ReportError, match="page.md: block 'later': FileNotFoundError: x/metrics"):
        report.render_text(text, tmp_path, source="page.md")


def test_language_scale_claim_names_sizes_categories_and_seed_agreement(tmp_path: Path) -> None:
    from bifrepro.report import _language_scale_claim

    assert _language_scale_claim(tmp_path) is None  # not run: no row
    rows = [
        {"size": size, "category": cat, "num_seeds": 3, "precision_at_1": low + 0.1,
         "precision_at_1_q_low": low, "chance_precision": 0.05}
        for size, cat, low in (("S", "numbers", 0.0), ("L", "numbers", 0.2), ("L", "all", 0.1))
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "benchmark.csv", index=False)
    agree = pd.DataFrame({"size": ["S", "S", "L"], "pearson": [0.1, 0.3, 0.6]})
    agree.to_csv(tmp_path / "seed_agreement.csv", index=False)
    claim, here, verdict, seeds = _language_scale_claim(tmp_path)
    assert "L: numbers" in here and "(S … L)" in here and "seed agreement 0.20–0.60" in here
    assert "1 of 2 size × category cells" in here  # "all" is not a cell
    # 1 of 2 cells: P(>= 1 by chance) = 1 - 0.975^2 = 0.049 < 0.05
    assert verdict == "partly" and seeds.startswith("3 sampler seeds")
    pd.DataFrame(rows[:1]).to_csv(tmp_path / "benchmark.csv", index=False)
    assert _language_scale_claim(tmp_path)[2] == "not beyond chance at these sizes"
    # one cell above chance among 32 is what chance gives: not beyond it; EK-FAC rows reported
    from bifrepro.report_language_scale import CATEGORIES

    many = [
        {**rows[0], "method": m, "size": f"s{i}", "category": cat, "num_seeds": s,
         "precision_at_1_q_low": 0.2 if (i, j) == (0, 0) else 0.0}
        for m, s in (("bif", 3), ("ekfac", 1)) for i in range(4)
        for j, cat in enumerate(CATEGORIES[:8])
    ]  # fmt: skip
    pd.DataFrame(many).to_csv(tmp_path / "benchmark.csv", index=False)
    _, here, verdict, seeds = _language_scale_claim(tmp_path)
    assert verdict == "not beyond chance at these sizes" and seeds.startswith("3 sampler")
    assert "1 of 32 size × category cells (0.8 expected by chance alone" in here
    assert "BIF categories above chance: s0: numbers (s0 … s3)" in here
    assert "EK-FAC per token: s0: numbers, 1 of 32" in here


def test_language_health_sentence_reads_the_precision_rule(tmp_path: Path) -> None:
    import json

    from bifrepro.report import _language_health

    path = tmp_path / "metrics.json"
    assert _language_health(path) == ""
    path.write_text(json.dumps({"metrics": {"chains_healthy": 1.0}}))
    assert _language_health(path) == ""  # from before the per-token precision rule
    metrics = {
        "chains_healthy": 0.0,
        "health/resolved_share": 0.403,
        "health/draws_for_target": 339,
    }
    path.write_text(json.dumps({"metrics": metrics}))
    text = _language_health(path)
    assert (
        "chains UNHEALTHY" in text and "40% of each query token's" in text and "339 draws" in text
    )


def test_stagewise_controls_claim_reads_the_shifts_and_the_verdict(tmp_path: Path) -> None:
    import json

    from bifrepro.report import _stagewise_controls_claim

    path = tmp_path / "metrics.json"
    assert _stagewise_controls_claim(path) is None
    m = {"verdict/holds": 0.0}
    for name, (mean, lo, hi) in {"transition_step": (763, 550, 977),
                                 "influence_change_step": (0, 0, 0)}.items():  # fmt: skip
        m.update({f"shift/{name}/mean": mean, f"shift/{name}/t_low": lo,
                  f"shift/{name}/t_high": hi})  # fmt: skip
    exp = {"train_seeds": [0, 1, 2], "sampler_seeds": [0, 1]}
    path.write_text(json.dumps({"metrics": m, "experiment": exp}))
    _, here, verdict, seeds = _stagewise_controls_claim(path)
    assert "transition +763 steps [+550, +977]" in here and "change +0 steps [+0, +0]" in here
    assert verdict == "does not hold here" and seeds.startswith("3 training seeds per arm × 2")
    path.write_text(json.dumps({"metrics": {**m, "verdict/holds": 1.0}, "experiment": exp}))
    assert _stagewise_controls_claim(path)[2] == "reproduces"


def test_stage_change_with_seeds_reads_the_early_arm(tmp_path: Path) -> None:
    import json

    from bifrepro.report import _stage_change_with_seeds

    path = tmp_path / "metrics.json"
    assert _stage_change_with_seeds(path) is None
    p = "stage_change/early/"
    m = {p + "ratio_of_means": 1.6, p + "difference_mean": 0.004, p + "difference_t_low": -0.002,
         p + "difference_t_high": 0.010, p + "seeds_larger_across": 2, p + "seeds": 3}  # fmt: skip
    exp = {"train_seeds": [0, 1, 2], "sampler_seeds": [0, 1]}
    path.write_text(json.dumps({"metrics": m, "experiment": exp}))
    what, verdict, seeds = _stage_change_with_seeds(path)
    assert "1.60×" in what and "+0.004 [-0.002, +0.010]" in what and "2 of 3 seeds" in what
    assert verdict == "not resolved over training seeds" and seeds == "3 training × 2 sampler seeds"
    m[p + "difference_t_low"] = 0.001
    path.write_text(json.dumps({"metrics": m, "experiment": exp}))
    assert _stage_change_with_seeds(path)[1] == "larger across the transition, resolved over seeds"


def test_language_headline_reports_the_spread_over_groups_of_chains(tmp_path: Path) -> None:
    import json

    from bifrepro.report import language_headline

    folder = tmp_path / "language"
    folder.mkdir()
    base = {"level": "token", "scope": "all", "subset": "all", "form": "other", "num_queries": 10}
    pd.DataFrame(
        [{**base, "method": m, "category": "all", "precision_at_1": p}
         for m, p in (("bif", 0.3), ("ekfac", 0.2))]
    ).to_csv(folder / "benchmark.csv", index=False)  # fmt: skip
    pd.DataFrame(
        columns=["level", "scope", "form", "category", "rank", "method", "resolved"]
    ).to_csv(folder / "benchmark_ranking.csv", index=False)
    text = language_headline(tmp_path)
    assert "1 sampler seed" in text and "per group" not in text
    pd.DataFrame(
        [{"group": g, "form": f, "category": "all", "precision_at_1": p}
         for g, p in enumerate((0.2, 0.3, 0.4)) for f in ("other", "any")]
    ).to_csv(folder / "bif_chain_groups.csv", index=False)  # fmt: skip
    pd.DataFrame({"group_a": [0, 0, 1], "group_b": [1, 2, 2], "pearson": [0.2, 0.3, 0.4]}).to_csv(
        folder / "chain_group_agreement.csv", index=False
    )
    (folder / "metrics.json").write_text(json.dumps({"config": {"sampler": {"num_chains": 12}}}))
    text = language_headline(tmp_path)
    assert "| all | 10 | 0.30 | 0.30 ± 0.10 | 0.20 |" in text
    assert "3 groups of 4 chains" in text and "r = 0.30" in text and "1 sampler seed" not in text
    assert "two runs of all 12 chains: r ≈ 0.56, projected" in text  # 3 x 0.3 / (1 + 2 x 0.3)


def test_pythia_extrapolation_whose_refits_straddle_the_paper_is_not_resolved(
    tmp_path: Path,
) -> None:
    from bifrepro.report import _pythia_ratio

    row = {"model": "pythia-2.8b", "ratio_ekfac_over_bif": 1.4}
    pd.DataFrame([row]).to_csv(tmp_path / "extrapolation.csv", index=False)
    assert _pythia_ratio(tmp_path) == (1.4, "", False)  # from before the refits were written
    pd.DataFrame([{**row, "ratio_loo_low": 0.28, "ratio_loo_high": 2e4}]).to_csv(
        tmp_path / "extrapolation.csv", index=False
    )
    ratio, spread, unresolved = _pythia_ratio(tmp_path)
    assert unresolved and "0.28–2e+04" in spread
    pd.DataFrame([{**row, "ratio_loo_low": 0.2, "ratio_loo_high": 3.0}]).to_csv(
        tmp_path / "extrapolation.csv", index=False
    )
    assert not _pythia_ratio(tmp_path)[2]  # every refit below 10x: does not reproduce
