"""The stagewise controls experiment end to end on tiny settings, its config checks and the
README block generated from its results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.stagewise_controls as sc
from bifrepro.report_stagewise_controls import stagewise_controls_block

TINY = [
    "experiment=stagewise_controls",
    "data.num_documents=60",
    "data.num_queries=16",
    "data.max_natural_sentences=8",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "model.max_position_embeddings=32",
    "model.vocab_size=300",
    "model.train.steps=24",
    "model.train.batch_size=8",
    "model.train.warmup_steps=2",
    "model.train.checkpoint_every=12",
    "experiment.seq_len=20",
    "experiment.num_observed=4",
    "experiment.num_observed_synthetic=2",
    "experiment.num_query=3",
    "experiment.late_start_step=12",
    "experiment.train_seeds=[0,1]",
    "experiment.sampler_seeds=[0,1]",
    "experiment.bif_steps=[6,12,18,24]",
    "experiment.scan_every=6",
    "experiment.intervention_step=6",
    "experiment.intervention_window=3",
    "experiment.intervention_classes=[induction,other]",
    "experiment.induction_sequences=4",
    "experiment.induction_half_len=4",
    "experiment.induction_vocab=20",
    "experiment.induction_min_rise=0.0",
    "experiment.induction_level=0.001",
    "experiment.pair_query_seqs=1",
    "experiment.pair_train_seqs=1",
    "experiment.workers=2",  # the process pool, as in the full run
    "sampler.num_chains=2",
    "sampler.num_draws=6",
    "sampler.burn_in=2",
    "sampler.batch_size=8",
    "sampler.eval_batch_size=16",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, _mlflow_template_db):
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = tmp_path_factory.mktemp("controls")
    db = root / "mlflow.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    conf = Path(__file__).resolve().parents[2] / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"results_dir={root}", f"tracking.uri={uri}"])
    GlobalHydra.instance().clear()
    n = torch.get_num_threads()
    try:
        metrics = sc.run(cfg)
    finally:
        torch.set_num_threads(n)
    return root, uri, metrics


def test_tiny_run_writes_every_output(tiny_run) -> None:
    root, uri, metrics = tiny_run
    out = root / "stagewise_controls"
    for name in (*sc.FIGURES, *sc.TABLES):
        assert (out / name).stat().st_size > 0, name
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs.arm, runs.seed, strict=True)) == [
        ("early", 0), ("early", 1), ("late", 0), ("late", 1)
    ]  # fmt: skip
    assert set(runs.influence_change_step) <= {9, 15, 21}  # midpoints of the shared grid
    shift = pd.read_csv(out / "shift.csv").set_index("quantity")
    t = runs.pivot(index="seed", columns="arm", values="transition_step")
    assert shift.loc["transition_step", "n"] == int((t.early.notna() & t.late.notna()).sum())
    d = runs.pivot(index="seed", columns="arm", values="influence_change_step")
    assert shift.loc["influence_change_step", "mean"] == pytest.approx(
        float((d.late - d.early).mean())
    )
    ck = pd.read_csv(out / "checkpoints.csv")
    assert len(ck) == 2 * 2 * 2 * 4 and ck.health_summary.str.len().gt(0).all()
    scan = pd.read_csv(out / "induction_scan.csv")
    assert set(scan.step) == {6, 12, 18, 24}
    eff = pd.read_csv(out / "intervention.csv")
    assert list(eff.condition[:3]) == ["control", "induction", "other"]
    assert (eff[eff.condition == "control"].delta_induction == 0).all()
    # reweighting changed the continuation: some effect is non-zero
    assert np.nanmax(eff[eff.condition != "control"].filter(like="delta_loss_").abs()) > 0
    pairs = pd.read_csv(out / "intervention_pairs.csv")
    assert len(pairs) == 2 * 2 * 5
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["verdict"]["text"] in ("holds", "does not hold")
    assert 0 <= metrics["chains_healthy_fraction"] <= 1
    assert np.isfinite(metrics["intervention/correlation/all_pairs/agreement"])

    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.search_runs(experiment_names=["stagewise_controls"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(found) == 1 and found.iloc[0]["status"] == "FINISHED"
    assert found.iloc[0]["tags.prediction"] == saved["verdict"]["text"]


def test_the_late_arm_model_differs_and_early_arm_is_unchanged_by_the_curriculum(tiny_run) -> None:
    """Before the late arm's start step both arms train on corpus-only vs mixed batches, so their
    snapshots differ from the first scan step on."""
    root, _, _ = tiny_run
    scan = pd.read_csv(root / "stagewise_controls" / "induction_scan.csv")
    e = scan[(scan.arm == "early") & (scan.seed == 0)].induction_score.to_numpy()
    la = scan[(scan.arm == "late") & (scan.seed == 0)].induction_score.to_numpy()
    assert not np.allclose(e, la)


def test_block_states_shift_and_verdict(tiny_run) -> None:
    root, _, metrics = tiny_run
    text = stagewise_controls_block(root)
    assert "the induction transition (induction score reaching" in text and "Intervention" in text
    verdict = json.loads((root / "stagewise_controls" / "metrics.json").read_text())["verdict"]
    assert f"**{verdict['text']}**" in text
    with pytest.raises(FileNotFoundError, match="reproduce-stagewise-controls"):
        stagewise_controls_block(root / "nowhere")


def test_block_on_known_numbers(tmp_path) -> None:
    """A shift table where the influence change moves with the transition: 'holds'."""
    folder = tmp_path / "stagewise_controls"
    folder.mkdir()
    rows = [
        {"quantity": q, "mean": m, "std_error": 20.0, "t_low": m - 100, "t_high": m + 100,
         "boot_low": m - 80, "boot_high": m + 80, "n": 3, "confidence": 0.95,
         "excludes_zero": True}
        for q, m in (("transition_step", 600.0), ("influence_change_step", 580.0),
                     ("induction_self_change_step", 500.0))
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "shift.csv", index=False)
    exp = {"late_start_step": 600, "normalize": "correlation", "intervention_factor": 3.0,
           "intervention_window": 150, "intervention_step": 300}  # fmt: skip
    m = {"chains_healthy_fraction": 0.5, "transition_detected_fraction": 1.0}
    (folder / "metrics.json").write_text(json.dumps({"metrics": m, "experiment": exp}))
    text = stagewise_controls_block(tmp_path)
    assert "moves by +600 steps" in text and "**holds**" in text
    rows[1] |= {"mean": 20.0, "t_low": -80.0, "t_high": 120.0, "excludes_zero": False}
    pd.DataFrame(rows).to_csv(folder / "shift.csv", index=False)
    assert "**does not hold**" in stagewise_controls_block(tmp_path)
    assert "Mean |class-level change|" not in stagewise_controls_block(tmp_path)
    p = "stage_change/early/"
    m |= {p + "ratio_of_means": 2.0, p + "difference_mean": 0.01, p + "difference_t_low": 0.002,
          p + "difference_t_high": 0.018, p + "seeds_larger_across": 3, p + "seeds": 3}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps({"metrics": m, "experiment": exp}))
    text = stagewise_controls_block(tmp_path)
    assert "early arm 2× (across − before +0.0100, t interval +0.0020 to +0.0180" in text
    assert "larger in 3 of 3 training seeds" in text and "late arm" not in text


def test_config_checks(hydra_compose, tmp_path) -> None:
    from bifrepro.config import ConfigError
    from bifrepro.config.stagewise_controls import validate_controls

    base = [*TINY, f"results_dir={tmp_path}", "tracking.enabled=false"]
    for bad, match in (
        ("experiment.intervention_step=7", "intervention_step"),
        ("experiment.bif_steps=[12,6]", "bif_steps"),
        ("experiment.intervention_factor=1.0", "intervention_factor"),
        ("experiment.train_seeds=[0,0]", "train_seeds"),
        ("experiment.late_start_step=30", "late_start_step"),
    ):
        with pytest.raises((ConfigError, ValueError), match=match):
            validate_controls(hydra_compose([*base, bad]))
