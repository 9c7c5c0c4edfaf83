"""The LM-family compute comparison: a tiny end-to-end run, its tables and figures, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import experiments.compute_lm as compute_lm
from bifrepro.config import ConfigError
from bifrepro.evaluation.lm_scaling import BIF_PHASES, EKFAC_PHASES


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = [
    "experiment=compute_lm",
    "data.num_documents=60",
    "data.num_queries=16",
    "data.max_natural_sentences=8",
    "model.vocab_size=300",
    "model.max_position_embeddings=32",
    "compute_lm.hidden_sizes=[8,16]",
    "compute_lm.num_layers=[1,2]",
    "compute_lm.num_heads=[2,2]",
    "compute_lm.train_steps=6",
    "compute_lm.train_batch_size=8",
    "compute_lm.seq_len=16",
    "compute_lm.num_train=12",
    "compute_lm.num_query=3",
    "compute_lm.q_grid=[2,5]",
    "compute_lm.q_sizes=[0]",
    "compute_lm.q_num_train=6",
    "compute_lm.q_draws=2",
    "compute_lm.pilot_burn_in=2",
    "compute_lm.pilot_draws=4",
    "compute_lm.resolved_k=3",
    "compute_lm.min_draws=5",
    "compute_lm.max_draws=20",
    "sampler.num_chains=2",
    "sampler.burn_in=4",
    "sampler.batch_size=8",
    "sampler.eval_batch_size=16",
]


def test_tiny_family_end_to_end(hydra_compose, tmp_path: Path):
    cfg = hydra_compose([*TINY, f"results_dir={tmp_path}", "tracking.enabled=false"])
    metrics = compute_lm.run(cfg)
    out = tmp_path / "compute"
    table = pd.read_csv(out / "lm_family" / "model_scaling.csv")
    assert {"method", "num_params", "phase", "seconds", "peak_memory_mb", "status", "healthy",
            "device", "train_loss"} <= set(table.columns)  # fmt: skip
    assert table["num_params"].nunique() == 2
    for method, phases in (("ekfac", EKFAC_PHASES), ("bif", BIF_PHASES)):
        got = table[table["method"] == method].groupby("num_params")["phase"].apply(set)
        assert all(g == {*phases, "total"} for g in got)
    assert set(table["status"]) <= {"measured", "scaled"}
    assert (table.loc[table["method"] == "ekfac", "status"] == "measured").all()
    assert table.loc[table["method"] == "bif", "healthy"].notna().all()
    assert (table["device"] == "cpu (1 thread)").all()
    assert (table["seconds"] >= 0).all() and table["train_loss"].notna().all()
    # the set in lm_family/: figures, q sweep, fits, extrapolation and the generated summary
    fam = out / "lm_family"
    for name in ("model_scaling.png", "q_scaling.png", "phase_breakdown.png", "fits.csv",
                 "extrapolation.csv", "summary.md", "members.csv"):  # fmt: skip
        assert (fam / name).is_file(), name
    q = pd.read_csv(fam / "q_scaling.csv")
    assert sorted(q["q"].unique()) == [2, 5] and q["num_params"].nunique() == 1
    assert set(q["method"]) == {"bif", "ekfac"} and (q["n"] == 6).all()
    assert set(q["phase"]) == {"scores_token", "draws"}
    extra = pd.read_csv(fam / "extrapolation.csv")
    assert "pythia-2.8b" in set(extra["model"])
    saved = json.loads((fam / "metrics.json").read_text())
    assert saved["device"] == "cpu (1 thread)"
    assert metrics["ratio/largest_ekfac_over_bif"] > 0
    assert "exponent/bif/total" in metrics and "exponent/ekfac/total" in metrics
    assert "Pythia-2.8B" in (fam / "summary.md").read_text()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("compute_lm.num_heads=[3,2]", "num_heads"),
        ("compute_lm.q_sizes=[5]", "q_sizes"),
        ("compute_lm.num_train=3", "num_train"),
        ("compute_lm.seq_len=64", "seq_len"),
        ("compute_lm.q_num_train=13", "q_num_train"),
    ],
)
def test_bad_settings_fail_before_compute(hydra_compose, tmp_path: Path, override, key):
    cfg = hydra_compose([*TINY, override, f"results_dir={tmp_path}", "tracking.enabled=false"])
    with pytest.raises(ConfigError, match=key):
        compute_lm.run(cfg)
    assert not (tmp_path / "compute").exists()


def test_a_locally_saved_pythia_style_checkpoint(hydra_compose, tmp_path: Path):
    """model=pythia with a local folder (GPT-NeoX architecture, saved here): one size, nothing
    trained, both methods timed on it; no family to fit, so no extrapolation is claimed."""
    from tests.experiments._hf_model import save_tiny_gpt_neox

    model = save_tiny_gpt_neox(tmp_path / "hf_model", num_documents=60, num_queries=16)
    cfg = hydra_compose(
        [*TINY, "model=pythia", f"model.name_or_path={tmp_path / 'hf_model'}",
         "model.local_files_only=true", f"results_dir={tmp_path}", "tracking.enabled=false"]
    )  # fmt: skip
    compute_lm.run(cfg)
    table = pd.read_csv(tmp_path / "compute" / "lm_family" / "model_scaling.csv")
    assert not (tmp_path / "compute" / "model_scaling.csv").exists()  # one copy, in the set
    assert table["num_params"].nunique() == 1
    assert int(table["num_params"].iloc[0]) == sum(p.numel() for p in model.parameters())
    assert set(table["method"]) == {"bif", "ekfac"}
    assert not list((tmp_path / "cache").rglob("lm-*"))  # nothing was trained
