"""`make reproduce`'s runner: progress per experiment, times kept for the next estimate, a summary
table, a failing step stops the run with its exit status, and experiments run side by side
(longest chain first, dependencies respected, timing experiments alone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bifrepro.reproduce import STEPS, Step, headline, main, schedule, thread_env


def _metrics(results: Path, folder: str, metrics: dict) -> None:
    (results / folder).mkdir(parents=True, exist_ok=True)
    (results / folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_every_step_is_a_make_target() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for step in STEPS:
        assert f"\n{step.target}: " in makefile, step.target


def test_steps_run_in_order_with_progress_times_and_a_summary(tmp_path: Path, capsys) -> None:
    _metrics(tmp_path, "toy_hierarchy", {"spearman_bif_loo_mean": 0.517})
    rc = main(["--only", "toy", "stagewise", "--results", str(tmp_path), "--make", "true",
               "--jobs", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "[1/2] toy (make reproduce-toy)" in out and "[2/2] stagewise" in out
    assert "| toy | 0.0 min | ok | Spearman BIF vs leave-one-out 0.52 |" in out
    assert "| stagewise | 0.0 min | ok | n/a (no metrics.json) |" in out
    times = json.loads((tmp_path / "reproduce_times.json").read_text())
    assert set(times) == {"toy", "stagewise"}
    # the next run estimates the remaining time from these
    main(["--only", "toy", "--results", str(tmp_path), "--make", "true", "--jobs", "1"])
    assert "remaining ~0.0 min" in capsys.readouterr().out


def test_a_failing_step_stops_the_run_with_its_status(tmp_path: Path, capsys) -> None:
    rc = main(
        ["--only", "toy", "lds", "--results", str(tmp_path), "--make", "false", "--jobs", "1"]
    )
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


def _fake_make(tmp_path: Path, fail: str = "") -> str:
    """A `make` that logs start / end time and its thread count per target (and fails on `fail`)."""
    script = tmp_path / "fake_make.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $1 $(date +%s.%N) $OMP_NUM_THREADS" >> {tmp_path}/events\n'
        "sleep 0.6\n"
        f'echo "end $1 $(date +%s.%N)" >> {tmp_path}/events\n'
        f'if [ "$1" = "{fail}" ]; then echo "boom in $1"; exit 3; fi\n'
    )
    script.chmod(0o755)
    return str(script)


def _intervals(tmp_path: Path) -> dict[str, tuple[float, float, str]]:
    start, end, threads = {}, {}, {}
    for line in (tmp_path / "events").read_text().splitlines():
        kind, target, t, *rest = line.split()
        (start if kind == "start" else end)[target] = float(t)
        if rest:
            threads[target] = rest[0]
    return {k: (start[k], end[k], threads[k]) for k in start}


def _overlap(a: tuple[float, float, str], b: tuple[float, float, str]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_schedule_puts_timing_steps_first_then_the_longest_chain() -> None:
    steps = [
        Step("a", "t-a", "a", str, minutes=5),
        Step("b", "t-b", "b", str, minutes=10),
        Step("c", "t-c", "c", str, minutes=8, after=("a",)),  # chain a -> c: 13 minutes
        Step("timing", "t-t", "t", str, minutes=1, exclusive=True),
    ]
    assert [s.name for s in schedule(steps, {})] == ["timing", "a", "b", "c"]
    # measured times replace the estimates
    assert [s.name for s in schedule(steps, {"b": 60 * 20})] == ["timing", "b", "a", "c"]
    with pytest.raises(ValueError, match="cycle"):
        schedule(
            [Step("x", "t", "x", str, after=("y",)), Step("y", "t", "y", str, after=("x",))], {}
        )


def test_thread_env_splits_the_cores_unless_the_caller_chose(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_env(2, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert thread_env(2, cpus=8)["OMP_NUM_THREADS"] == "4"
    assert thread_env(4, cpus=2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_env(2, cpus=8)["OMP_NUM_THREADS"] == "3"


def test_parallel_run_overlaps_steps_keeps_deps_and_runs_timing_alone(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    only = ["toy", "lds", "stagewise", "stagewise_controls", "compute"]
    rc = main(["--only", *only, "--results", str(tmp_path), "--make", _fake_make(tmp_path),
               "--jobs", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "5/5 experiments" in out and out.count("| ok |") == 5
    runs = _intervals(tmp_path)
    compute = runs.pop("reproduce-compute")
    assert not any(_overlap(compute, other) for other in runs.values())  # alone
    assert int(compute[2]) >= max(int(r[2]) for r in runs.values())  # on every core
    assert runs["reproduce-stagewise"][1] <= runs["reproduce-stagewise-controls"][0]  # after
    assert any(_overlap(runs[a], runs[b]) for a in runs for b in runs if a < b), (
        "no two steps ran side by side"
    )
    assert (tmp_path / "reproduce_logs" / "toy.log").is_file()
    assert set(json.loads((tmp_path / "reproduce_times.json").read_text())) == set(only)


def test_parallel_failure_stops_new_steps_and_shows_the_log(tmp_path: Path, capsys) -> None:
    rc = main(["--only", "toy", "lds", "vision", "--results", str(tmp_path), "--make",
               _fake_make(tmp_path, fail="reproduce-lds"), "--jobs", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 3 and "FAILED (3)" in out and "| boom in reproduce-lds" in out
    ran = set(_intervals(tmp_path))
    assert "reproduce-lds" in ran and len(ran) == 2  # the third never started


def test_a_run_writes_its_summary_and_the_docs_block_reads_it(tmp_path: Path, capsys) -> None:
    from bifrepro.report import reproduce_block

    assert "No `make reproduce` run recorded" in reproduce_block(tmp_path)
    (tmp_path / "cache" / "x").mkdir(parents=True)
    (tmp_path / "cache" / "x" / "model.pt").write_text("cached")
    rc = main(["--only", "toy", "lds", "--results", str(tmp_path), "--make",
               _fake_make(tmp_path, fail="reproduce-lds"), "--jobs", "1"])  # fmt: skip
    assert rc == 3
    summary = json.loads((tmp_path / "reproduce_summary.json").read_text())
    assert summary["jobs"] == 1 and summary["status"] == 3
    assert summary["cached_files_at_start"] == 1
    assert [r["name"] for r in summary["steps"]] == ["toy", "lds"]
    block = reproduce_block(tmp_path)
    assert "1 experiment(s) at a time" in block and "with 1 cached files" in block
    assert "| toy | 0.0 min | ok |" in block and "| lds | 0.0 min | FAILED (3) |" in block
    # a step the failure kept from starting is listed as not run
    main(["--only", "toy", "lds", "vision", "--results", str(tmp_path), "--make",
          _fake_make(tmp_path, fail="reproduce-toy"), "--jobs", "1"])  # fmt: skip
    assert "| lds | n/a | not run |" in reproduce_block(tmp_path)


def test_one_experiment_at_a_time_unless_asked() -> None:
    from bifrepro.reproduce import default_jobs

    assert default_jobs(2) == 1 and default_jobs(16) == 1  # side by side was not faster


def test_the_quick_profile_runs_every_target_quick_into_results_quick(tmp_path: Path) -> None:
    script = tmp_path / "record_make.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2 $BIFREPRO_RESULTS" >> {tmp_path}/calls\n'
    )  # fmt: skip
    script.chmod(0o755)
    rc = main(["--profile", "quick", "--only", "toy", "lds", "--results", str(tmp_path),
               "--make", str(script), "--jobs", "1"])  # fmt: skip
    assert rc == 0
    quick = (tmp_path / "quick").resolve()
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"reproduce-toy PROFILE=quick {quick}",
        f"reproduce-lds PROFILE=quick {quick}",
    ]
    summary = json.loads((quick / "reproduce_summary.json").read_text())
    assert summary["profile"] == "quick"
    assert not (tmp_path / "reproduce_summary.json").exists()  # the full results stay as they are
    from bifrepro.report import reproduce_block

    block = reproduce_block(tmp_path)
    assert "Last quick-profile run" in block and "results/quick/reproduce_summary.json" in block
    assert "full-profile" not in block
    # the full profile writes into --results itself
    (tmp_path / "calls").unlink()
    assert main(["--only", "toy", "--results", str(tmp_path), "--make", str(script)]) == 0
    assert (tmp_path / "calls").read_text().split() == [
        "reproduce-toy", "PROFILE=full", str(tmp_path.resolve())
    ]  # fmt: skip


def test_every_quick_target_has_its_quick_config() -> None:
    """Each `experiment=<name>$(Q)` of the Makefile names a conf/experiment/<name>_quick.yaml,
    and every reproduce step's target takes the profile."""
    import re

    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text()
    quick = re.findall(r"experiment=(\w+)\$\(Q\)", makefile)
    assert len(quick) >= len(STEPS)
    for name in quick:
        assert (repo / "conf" / "experiment" / f"{name}_quick.yaml").is_file(), name
    for step in STEPS:
        recipe = makefile.split(f"\n{step.target}: ", 1)[1].split("\n\n", 1)[0]
        assert "$(Q)" in recipe, step.target


def test_make_refuses_an_unknown_profile_and_expands_quick() -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run(["make", "-n", "-C", str(repo), "reproduce-lds", "PROFILE=fast"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "PROFILE must be full or quick" in bad.stderr
    ok = subprocess.run(["make", "-n", "-C", str(repo), "reproduce-lds", "PROFILE=quick"],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0 and "experiment=lds_quick" in ok.stdout
    full = subprocess.run(["make", "-n", "-C", str(repo), "reproduce-lds"],
                          capture_output=True, text=True)  # fmt: skip
    assert "experiment=lds\n" in full.stdout


def test_the_quick_profile_leaves_out_what_it_cannot_afford(tmp_path: Path, capsys) -> None:
    assert main(["--profile", "quick", "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    quick = [s for s in STEPS if s.quick]
    assert f"{len(quick)} experiments" in out and "stagewise_controls" not in out
    # the first quick run's remaining time comes from the quick estimates, not the full ones
    expected = sum(s.quick_minutes for s in quick)
    assert f"remaining ~{expected:.1f} min" in out
    assert main(["--results", str(tmp_path), "--dry-run"]) == 0
    assert "stagewise_controls" in capsys.readouterr().out


def test_the_lds_headline_uses_the_smallest_fraction_the_run_has(tmp_path: Path) -> None:
    lds = next(s for s in STEPS if s.name == "lds")
    _metrics(tmp_path, "lds", {
        "lds/bif_correlation/alpha_0.5": 0.3, "lds/ekfac/alpha_0.5": 0.4,
        "lds/bif_correlation/alpha_0.1": 0.44, "lds/ekfac/alpha_0.1": 0.45,
    })  # fmt: skip
    assert headline(lds, tmp_path) == "LDS α=0.1 BIF (corr) 0.44, EK-FAC 0.45"
