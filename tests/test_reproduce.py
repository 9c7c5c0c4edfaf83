"""`make reproduce`'s runner: progress per experiment, times kept for the next estimate, a summary
table, and a failing step stops the run with its exit status."""

from __future__ import annotations

import json
from pathlib import Path

from bifrepro.reproduce import STEPS, headline, main


def _metrics(results: Path, folder: str, metrics: dict) -> None:
    (results / folder).mkdir(parents=True, exist_ok=True)
    (results / folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_every_step_is_a_make_target() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for step in STEPS:
        assert f"\n{step.target}: " in makefile, step.target


def test_steps_run_in_order_with_progress_times_and_a_summary(tmp_path: Path, capsys) -> None:
    _metrics(tmp_path, "toy_hierarchy", {"spearman_bif_loo_mean": 0.517})
    rc = main(["--only", "toy", "stagewise", "--results", str(tmp_path), "--make", "true"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[1/2] toy (make reproduce-toy)" in out and "[2/2] stagewise" in out
    assert "| toy | 0.0 min | ok | Spearman BIF vs leave-one-out 0.52 |" in out
    assert "| stagewise | 0.0 min | ok | n/a (no metrics.json) |" in out
    times = json.loads((tmp_path / "reproduce_times.json").read_text())
    assert set(times) == {"toy", "stagewise"}
    # the next run estimates the remaining time from these
    main(["--only", "toy", "--results", str(tmp_path), "--make", "true"])
    assert "remaining ~0.0 min" in capsys.readouterr().out


def test_a_failing_step_stops_the_run_with_its_status(tmp_path: Path, capsys) -> None:
    rc = main(["--only", "toy", "lds", "--results", str(tmp_path), "--make", "false"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED (1)" in out and "[2/2]" not in out
    assert "1/2 experiments" in out
    assert not (tmp_path / "reproduce_times.json").exists()  # failed steps set no estimate


def test_headline_is_na_for_incomplete_metrics(tmp_path: Path) -> None:
    lds = next(s for s in STEPS if s.name == "lds")
    _metrics(tmp_path, "lds", {"lds/bif_correlation/alpha_0.05": 0.44})  # EK-FAC missing
    assert headline(lds, tmp_path) == "n/a"
    _metrics(
        tmp_path, "lds", {"lds/bif_correlation/alpha_0.05": 0.44, "lds/ekfac/alpha_0.05": 0.45}
    )
    assert headline(lds, tmp_path) == "LDS α=0.05 BIF (corr) 0.44, EK-FAC 0.45"
