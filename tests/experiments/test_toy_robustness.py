"""The toy robustness study end to end at a tiny scale, and its config checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import experiments.toy_robustness as robustness
from bifrepro.config import ConfigError

TINY = [
    "experiment=toy_robustness",
    "experiment.steps=600",
    "experiment.num_checkpoints=6",
    "experiment.first_checkpoint=60",
    "experiment.sampler_seeds=[0,1,2]",
    "experiment.init_seeds=[0,1]",
    "sampler.num_chains=2",
    "sampler.num_draws=30",
    "sampler.burn_in=5",
    "sampler.thinning=2",
]


def test_run_writes_tables_figures_and_metrics(hydra_compose, tmp_path) -> None:
    metrics = robustness.run(hydra_compose([*TINY, f"results_dir={tmp_path}"]))
    out = tmp_path / "toy_robustness"
    for name in ("flip_counts.png", "seed_bands.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "pair_robustness.csv")
    assert len(table) == 2 * 28 and set(table["init_seed"]) == {0, 1}
    assert table["flips_bif"].between(0, 3).all() and (table["seeds"] == 3).all()
    # a robust flip has both extremes resolved, with the right signs
    robust = table[table["robust_flip_bif"]]
    assert (robust["at_helpful_peak_ci_low"] > 0).all()
    assert (robust["at_harmful_peak_ci_high"] < 0).all()
    # leave-one-out is deterministic: dog -> sparrow flips at every initialisation
    pair = table[(table.source == "dog") & (table.target == "sparrow")]
    assert pair["sign_flip_loo"].all()
    summary = pd.read_csv(out / "robustness_summary.csv")
    assert summary["pairs"].sum() == len(table)
    assert metrics["robust_flip_fraction"] == pytest.approx(table["robust_flip_bif"].mean())
    assert np.isfinite(metrics["single_run_flip_share_sd"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["experiment"]["sampler_seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("experiment.sampler_seeds=[0]", "sampler_seeds"),
        ("experiment.init_seeds=[1,1]", "init_seeds"),
        ("experiment.confidence=1.5", "confidence"),
    ],
)
def test_bad_settings_are_refused_by_name(hydra_compose, tmp_path, override, key) -> None:
    with pytest.raises(ConfigError, match=key):
        robustness.run(hydra_compose([*TINY, override, f"results_dir={tmp_path}"]))
