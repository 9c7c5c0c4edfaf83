"""Atomic result sets: a failed run leaves the previous set untouched, a good one swaps whole."""

from __future__ import annotations

import pytest

from bifrepro.io import recover_staged_directory, staged_directory


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_success_replaces_the_whole_set_and_keeps_other_runs_subfolders(tmp_path):
    final = tmp_path / "toy"
    _write(final, **{"fig1.png": "old", "fig3.png": "old", "metrics.json": "old"})
    _write(final / "calibrated", **{"metrics.json": "other run"})
    with staged_directory(final) as stage:
        assert stage != final and not any(stage.iterdir())
        _write(stage, **{"fig1.png": "new", "metrics.json": "new"})
    assert sorted(p.name for p in final.iterdir()) == ["calibrated", "fig1.png", "metrics.json"]
    assert (final / "fig1.png").read_text() == "new"
    assert (final / "calibrated" / "metrics.json").read_text() == "other run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no staging left behind


def test_failure_leaves_the_old_set_and_no_temporaries(tmp_path):
    final = tmp_path / "toy"
    _write(final, **{"fig1.png": "old", "metrics.json": "old"})
    with pytest.raises(RuntimeError), staged_directory(final) as stage:
        _write(stage, **{"fig1.png": "half"})
        raise RuntimeError("sampler diverged")
    assert (final / "fig1.png").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_first_run_creates_the_folder(tmp_path):
    final = tmp_path / "nested" / "lds"
    with staged_directory(final) as stage:
        _write(stage, **{"lds.csv": "x"})
    assert (final / "lds.csv").read_text() == "x"


def test_recover_puts_back_a_set_moved_aside_by_a_crash(tmp_path):
    final = tmp_path / "toy"
    _write(tmp_path / ".toy.old", **{"metrics.json": "old"})
    _write(tmp_path / ".toy.staging", **{"metrics.json": "half"})
    recover_staged_directory(final)
    assert (final / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_round_significant_rounds_floats_only():
    import pandas as pd

    from bifrepro.io import round_significant

    df = pd.DataFrame({"x": [0.123456789, float("nan")], "n": [1, 2], "s": ["a", "b"]})
    out = round_significant(df, digits=3)
    assert out["x"].iloc[0] == 0.123 and pd.isna(out["x"].iloc[1])
    assert out["n"].tolist() == [1, 2] and out["s"].tolist() == ["a", "b"]
    assert df["x"].iloc[0] == 0.123456789  # the input is not modified


def test_a_log_being_written_survives_the_swap(tmp_path):
    """In a multirun the result folder is Hydra's job folder, whose ``<job>.log`` is open."""
    final = tmp_path / "job0"
    (final / ".hydra").mkdir(parents=True)
    (final / "old_figure.png").write_text("old")
    with open(final / "run.log", "a") as log:
        log.write("before\n")
        log.flush()
        with staged_directory(final) as stage:
            (stage / "metrics.json").write_text("{}")
        log.write("after\n")
    assert (final / "run.log").read_text() == "before\nafter\n"
    assert (final / ".hydra").is_dir()
    assert not (final / "old_figure.png").exists()
    assert (final / "metrics.json").exists()
