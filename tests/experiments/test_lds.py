"""The LDS experiment end to end: run(cfg), caches and resume, sweep stages, MLflow read-back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.lds as lds_exp
from bifrepro.config import ConfigError
from bifrepro.evaluation.lds import load_masks, subset_masks
from bifrepro.evaluation.lds_protocol import model_spec
from bifrepro.evaluation.retrain import MissingRetrainError
from tests.experiments._calibration import FAST_CALIBRATION, assert_calibration_recorded

REPO = Path(__file__).resolve().parents[2]
#: A tiny but complete run: 60 training digits, 10 queries, 2 fractions x 5 subsets (MNIST-5k,
#: the comparison data: results in results_dir/lds/mnist5k/; one retraining and sampler seed).
TINY = [
    "experiment=lds",
    "data=mnist5k",
    "experiment.seeds=[0]",
    "experiment.bif_seeds=null",
    "experiment.attribution_jobs=1",
    "methods.trak.num_checkpoints=1",
    "data.train_per_class=6",
    "data.test_per_class=1",
    "model.width=2",
    "model.hidden=8",
    "model.epochs=2",
    "experiment.num_subsets=5",
    "experiment.alphas=[0.2,0.5]",
    "experiment.retrain_jobs=1",
    "experiment.num_bootstrap=200",
    "sampler.num_chains=2",
    "sampler.num_draws=12",
    "sampler.burn_in=2",
    "methods.trak.proj_dim=128",
]
FILES = (
    "lds_vs_alpha.png",
    "lds.csv",
    "lds_per_query.csv",
    "costs.csv",
    "bif_draws.csv",
    "masks.npz",
    "metrics.json",
)
VARIANTS = ("bif_covariance", "bif_correlation", "ekfac", "trak", "gradsim")


def _cfg(hydra_compose, tmp_path: Path, mlflow_uri: str | None, *extra: str):
    tracking = [f"tracking.uri={mlflow_uri}"] if mlflow_uri else ["tracking=disabled"]
    return hydra_compose([*TINY, f"results_dir={tmp_path}", *tracking, *extra])


@pytest.fixture(scope="session")
def tiny_lds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """One tiny LDS run (no MLflow), shared: its caches serve later runs and the compute test."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments import CONF_DIR

    results = tmp_path_factory.mktemp("tiny_lds")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"results_dir={results}", "tracking=disabled"])
    GlobalHydra.instance().clear()
    return results, lds_exp.run(cfg)


def test_run_writes_results_mlflow_and_reuses_caches(
    tiny_lds, hydra_compose, mlflow_uri, search_runs
) -> None:
    results, first = tiny_lds
    out = results / "lds" / "mnist5k"  # not the primary data (Fashion-MNIST): its own folder
    assert not (results / "lds" / "lds.csv").exists()
    cache = next((results / "cache" / "lds").iterdir())
    entries = sorted(p.stat().st_mtime_ns for p in cache.glob("*/seed*.pt"))
    assert len(entries) == 10  # 2 fractions x 5 subsets x 1 seed
    # a second run (with MLflow): every retrained model, the full model and every score from cache
    metrics = lds_exp.run(_cfg(hydra_compose, results, mlflow_uri))
    assert sorted(p.stat().st_mtime_ns for p in cache.glob("*/seed*.pt")) == entries
    assert pd.read_csv(out / "costs.csv")["from_cache"].all()
    for key, value in first.items():
        if key.startswith("lds/"):
            assert metrics[key] == pytest.approx(value), key

    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))
    table = pd.read_csv(out / "lds.csv")
    assert len(table) == len(VARIANTS) * 2
    assert set(table["variant"]) == set(VARIANTS)
    assert ((table["lds"] >= -1) & (table["lds"] <= 1)).all()
    assert (table["ci_low"] <= table["lds"] + 1e-9).all()
    assert (table["lds"] <= table["ci_high"] + 1e-9).all()
    assert set(table["subset_size"]) == {12, 30}
    for v in VARIANTS:
        for a in (0.2, 0.5):
            value = table[(table.variant == v) & (table.alpha == a)]["lds"].iloc[0]
            assert metrics[f"lds/{v}/alpha_{a:g}"] == pytest.approx(value, abs=1e-5)
    # the saved masks are the seeded ones
    masks = load_masks(out / "masks.npz")
    assert torch.equal(masks[0.2], subset_masks(60, 0.2, 5, seed=0))
    paired = pd.read_csv(out / "lds_paired_vs_ekfac.csv")
    assert len(paired) == (len(VARIANTS) - 1) * 2 and "ekfac" not in set(paired["variant"])
    row = paired[(paired.variant == "gradsim") & (paired.alpha == 0.5)].iloc[0]
    lds_of = table.set_index(["variant", "alpha"])["lds"]
    if table["num_queries"].eq(10).all():  # no undefined query: the mean difference is exact
        assert row["lds_difference"] == pytest.approx(
            lds_of[("gradsim", 0.5)] - lds_of[("ekfac", 0.5)], abs=1e-5
        )
    assert row["ci_low"] <= row["lds_difference"] <= row["ci_high"]
    per_query = pd.read_csv(out / "lds_per_query.csv")
    assert len(per_query) == len(VARIANTS) * 2 * 10
    curve = pd.read_csv(out / "bif_draws.csv")
    assert curve["draws_per_chain"].max() == 12 and (curve["seconds"] > 0).all()
    costs = pd.read_csv(out / "costs.csv").set_index("method")
    assert (costs["device"] == "cpu").all() and (costs["total_seconds"] > 0).all()
    assert costs.loc["bif", "fit_seconds"] < costs.loc["bif", "score_seconds"]  # no fit phase

    runs = search_runs("lds")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    row = runs.iloc[0]
    assert row["params.experiment.num_subsets"] == "5" and row["tags.dataset"] == "mnist5k"
    assert row["metrics.lds/ekfac/alpha_0.5"] == pytest.approx(metrics["lds/ekfac/alpha_0.5"])
    from bifrepro.tracking import get_client

    client = get_client(mlflow_uri)
    assert {a.path for a in client.list_artifacts(row["run_id"], "figures")} == {
        "figures/lds_vs_alpha.png"
    }
    hist = client.get_metric_history(row["run_id"], "lds_vs_alpha_percent/gradsim")
    assert sorted(m.step for m in hist) == [20, 50]


def test_sampler_auto_calibrates_bif_and_records_the_evidence(tiny_lds, hydra_compose) -> None:
    """`sampler=auto`: BIF runs with the calibrated step size; the evidence is saved next to it."""
    results, first = tiny_lds
    out = results / "auto"
    metrics = lds_exp.run(
        _cfg(
            hydra_compose, results, None, "sampler=auto", "experiment.methods=[bif]",
            f"experiment.output_dir={out}", *FAST_CALIBRATION,
        )
    )  # fmt: skip
    chosen = assert_calibration_recorded(metrics, out / "calibration", configured_step=5e-5)
    # the BIF run used what the calibration returned, and says so in its results
    used = json.loads((out / "metrics.json").read_text())["bif_sampler"]
    assert used["step_size"] == pytest.approx(chosen) and used["nbeta"] == 100.0
    assert np.isfinite(metrics["lds/bif_covariance/alpha_0.5"])


def test_calibration_evidence_reaches_bifs_health_rules(tiny_lds, hydra_compose, monkeypatch):
    """What only the calibration can measure (here a failed step-halving check) is judged with
    BIF's chains: the run's verdict names it."""
    from bifrepro.sampling import CalibrationReport
    from bifrepro.sampling.health import HealthCheck

    biased = HealthCheck("step_halving", 5.0, 3.0, False, "ε and ε/2 disagree (test)")
    monkeypatch.setattr(
        CalibrationReport, "health_evidence", lambda self, config=None: {"extra_checks": (biased,)}
    )
    results, _ = tiny_lds
    out = results / "auto_evidence"
    metrics = lds_exp.run(
        _cfg(
            hydra_compose, results, None, "sampler=auto", "experiment.methods=[bif]",
            f"experiment.output_dir={out}", "experiment.reuse_scores=false", *FAST_CALIBRATION,
        )
    )  # fmt: skip
    assert [v for k, v in metrics.items() if k.endswith("step_halving_ok")] == [0.0]
    chains = json.loads((out / "metrics.json").read_text())["bif_chains"]
    assert "step_halving" in chains["bif"]


def test_diverged_sampler_fails_the_run_and_keeps_the_results(
    tiny_lds, hydra_compose, mlflow_uri, search_runs
) -> None:
    """A diverged chain is never swallowed: the run fails (MLflow FAILED), results/ untouched."""
    from bifrepro.sampling.diagnostics import SamplerDivergedError

    results, _ = tiny_lds
    out = results / "lds" / "mnist5k"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cfg = _cfg(
        hydra_compose, results, mlflow_uri, "experiment.methods=[bif]", "sampler.step_size=1e6"
    )
    with pytest.raises(SamplerDivergedError):
        lds_exp.run(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(results.glob("**/.mnist5k.*"))  # no staging folder left behind
    assert not list(results.glob(".lds.*"))
    runs = search_runs("lds")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FAILED"


def test_retrain_stage_then_merge(hydra_compose, tmp_path) -> None:
    def stage(*extra: str) -> dict[str, float]:
        return lds_exp.run(_cfg(hydra_compose, tmp_path, None, *extra))

    # a "sweep job": subset 1 only, into the cache; nothing else is computed
    assert stage("experiment.stage=retrain", "experiment.subset_index=1")["retrained_models"] == 2
    assert not (tmp_path / "lds" / "mnist5k").exists()
    # the merge step refuses to train and names what is missing
    with pytest.raises(MissingRetrainError, match="4 of 5"):
        stage("experiment.stage=evaluate", "experiment.methods=[gradsim]")
    # the remaining jobs (here: one job for all subsets) train only what is missing
    assert stage("experiment.stage=retrain")["retrained_models"] == 8
    merged = stage("experiment.stage=evaluate", "experiment.methods=[gradsim]")
    assert np.isfinite(merged["lds/gradsim/alpha_0.5"])
    assert merged["retrained/margin_std_over_subsets/alpha_0.2"] > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("experiment.alphas=[0.5,1.5]", "experiment.alphas"),
        ("experiment.methods=[bif,foo]", "experiment.methods"),
        ("experiment.subset_index=7", "experiment.subset_index"),
        ("experiment.alphas=[0.001]", "experiment.alphas"),  # floor(0.001 * 60) = 0 items
        ("sampler.step_size=-1", "sampler.step_size"),
    ],
)
def test_bad_config_fails_before_compute(hydra_compose, tmp_path, override: str, key: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=key.split(".")[-1]):
        lds_exp.run(_cfg(hydra_compose, tmp_path, None, override))
    assert not (tmp_path / "cache").exists()


def test_paper_setting_config_and_image_folder(hydra_compose, tmp_path) -> None:
    """ResNet-9 on CIFAR-10 from a local folder: composes, refuses a missing root, loads a tree."""
    from PIL import Image

    cfg = hydra_compose(
        ["experiment=lds_cifar10", f"results_dir={tmp_path}", "tracking=disabled", "data.root=null"]
    )
    assert cfg.model.name == "resnet9" and cfg.data.name == "cifar10"
    with pytest.raises(ConfigError, match="CIFAR10_ROOT"):
        lds_exp.run(cfg)
    rng = np.random.default_rng(0)
    for split, per in (("train", 6), ("test", 3)):
        for c in ("cat", "dog"):
            (tmp_path / "c10" / split / c).mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "c10" / split / c / f"{i}.png"
                )
    cfg = hydra_compose(
        [
            "experiment=lds_cifar10",
            f"data.root={tmp_path / 'c10'}",
            "data.num_queries=4",
            "model.width=2",
        ]
    )
    from bifrepro.config import validate_config

    vc = validate_config(cfg, groups=("data", "model", "experiment"))
    data = vc.data.load()
    assert len(data.train) == 12 and len(data.queries) == 4 and data.num_classes == 2
    x = data.train.tensors[0]
    assert x.shape == (12, 3, 8, 8) and abs(float(x.mean())) < 1e-4  # normalised
    model = model_spec(vc.model, data).build(0)
    assert model(x).shape == (12, 2)


@pytest.mark.slow
def test_multirun_retrain_sweep_with_joblib_then_merge(mlflow_uri, tmp_path) -> None:
    """The scale-out path: subset index as a sweep axis on the joblib launcher, then the merge."""
    overrides = [*TINY, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"]
    env = {**__import__("os").environ, "MLFLOW_DISABLE_TELEMETRY": "true"}

    def lds(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "experiments.lds", *args]
        return subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env
        )

    # `-m` goes before the overrides: Hydra's parser takes one run of positional overrides
    proc = lds(
        "-m",
        *overrides,
        "hydra/launcher=local_parallel",
        "experiment.stage=retrain",
        "experiment.subset_index=range(0,5)",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merge = lds(*overrides, "experiment.stage=evaluate", "experiment.methods=[gradsim,ekfac]")
    assert merge.returncode == 0, merge.stderr[-3000:]
    saved = json.loads((tmp_path / "lds" / "mnist5k" / "metrics.json").read_text())
    assert np.isfinite(saved["metrics"]["lds/ekfac/alpha_0.5"])


#: The default data (Fashion-MNIST) at tiny scale, with the paper-grade ensembles switched on:
#: 2 retraining seeds per subset, 2 BIF sampler seeds (in 2 processes), TRAK over 3 models.
FASHION_TINY = [
    "experiment=lds",
    "data.train_per_class=6",
    "data.pool_per_class=6",
    "data.test_per_class=1",
    "data.queries_per_class=1",
    "model.width=2",
    "model.hidden=8",
    "model.epochs=2",
    "experiment.num_subsets=5",
    "experiment.alphas=[0.2,0.5]",
    "experiment.seeds=[0,1]",
    "experiment.bif_seeds=[0,1]",
    "experiment.attribution_jobs=2",
    "experiment.retrain_jobs=1",
    "experiment.methods=[bif,ekfac,trak]",
    "experiment.num_bootstrap=200",
    "sampler.num_chains=2",
    "sampler.num_draws=12",
    "sampler.burn_in=2",
    "methods.trak.proj_dim=128",
    "methods.trak.num_checkpoints=3",
    "tracking=disabled",
]


def test_fashion_mnist_default_with_seed_ensembles(hydra_compose, tmp_path, monkeypatch) -> None:
    """Fashion-MNIST is the default data and is named in the outputs; a subset's actual output is
    the mean over its retraining seeds; every BIF seed is reported next to the seed-averaged
    scores; TRAK ensembles over the configured number of models."""
    from bifrepro.data.fashion_mnist import locate_fashion_mnist
    from bifrepro.evaluation.lds import lds as lds_score
    from bifrepro.evaluation.lds import mask_hash

    if locate_fashion_mnist(str(tmp_path / "cache" / "data"), None, False) is None:
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    titles: list[str] = []
    plot = lds_exp.plot_lds_vs_alpha
    monkeypatch.setattr(
        lds_exp, "plot_lds_vs_alpha", lambda *a, **k: titles.append(a[1]) or plot(*a, **k)
    )
    metrics = lds_exp.run(hydra_compose([*FASHION_TINY, f"results_dir={tmp_path}"]))
    out = tmp_path / "lds"  # the primary data writes to results_dir/lds/ itself
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"] == "fashion_mnist" and "Fashion-MNIST" in saved["data"]["source"]
    assert titles and titles[0].startswith("LDS on fashion_mnist")
    assert "2 sampler seed(s)" in titles[0] and "TRAK over 3 models" in titles[0]
    assert "ranking" in titles[0]  # resolved or not, the title says (wrapped over lines)
    # retraining: 2 fractions x 5 subsets x 2 seeds, and the outputs are the seeds' mean
    cache = next(p for p in (tmp_path / "cache" / "lds").iterdir() if p.is_dir())
    assert len(list(cache.glob("*/seed*.pt"))) == 20
    table = pd.read_csv(out / "lds.csv")
    assert (table["num_seeds"] == 2).all()
    masks = load_masks(out / "masks.npz")[0.5]
    outputs = [
        [torch.load(cache / mask_hash(m) / f"seed{s}.pt")["outputs"] for s in (0, 1)] for m in masks
    ]
    mean = torch.stack([torch.stack(o).mean(0) for o in outputs])  # [m, q]
    trak = torch.load(next((cache / "scores").glob("trak_*.pt")))
    expected = lds_score(trak["scores"]["trak"], masks, mean, num_bootstrap=0).mean
    main = table[table["arm"] == "main"].set_index(["variant", "alpha"])["lds"]
    assert main[("trak", 0.5)] == pytest.approx(expected, abs=1e-5)
    # TRAK: w* plus 2 more full-data models (seeds 1, 2), cached
    assert saved["trak_num_checkpoints"] == 3 and metrics["cost/trak/num_checkpoints"] == 3
    assert {p.name for p in cache.glob("full_model_seed*.pt")} == {
        f"full_model_seed{s}.pt" for s in (0, 1, 2)
    }
    # BIF: each seed, the mean over seeds, the seed-averaged scores, all paired against EK-FAC
    assert saved["bif_seeds"] == [0, 1]
    seeds = pd.read_csv(out / "lds_bif_seeds.csv")
    assert len(seeds) == 2 * 2 and set(seeds["num_seeds"]) == {2}
    every = table.set_index(["variant", "alpha"])["lds"]
    for r in seeds.itertuples():
        pair = [every[(f"{r.variant}_seed{s}", r.alpha)] for s in (0, 1)]
        assert [getattr(r, f"lds_seed{s}") for s in (0, 1)] == pytest.approx(pair, abs=1e-5)
        assert every[(f"{r.variant}_seedmean", r.alpha)] == pytest.approx(np.mean(pair), abs=1e-5)
        assert r.seed_mean == pytest.approx(np.mean(pair), abs=1e-5)
        assert r.seed_std == pytest.approx(np.std(pair, ddof=1), abs=1e-5)
        assert r.averaged_scores_lds == pytest.approx(main[(r.variant, r.alpha)], abs=1e-5)
    arms = set(table["arm"])
    assert arms == {"main", "seed", "seed_mean"}
    paired = pd.read_csv(out / "lds_paired_vs_ekfac.csv")
    assert set(paired["arm"]) == arms and len(paired) == 2 * (2 + 4 + 2 + 1)  # per α: BIF 8, TRAK
    ranking = pd.read_csv(out / "lds_ranking.csv")
    assert set(ranking["method"]) == {"BIF (cov)", "BIF (corr)", "EK-FAC", "TRAK"}
