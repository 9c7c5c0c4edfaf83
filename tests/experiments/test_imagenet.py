"""The gallery experiment end to end: stand-in fallback, the ImageNet path on a tiny ImageFolder
with a random GoogLeNet, the errors that must not fall back, and the MLflow read-back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

import experiments.imagenet as imagenet
from bifrepro.config import ConfigError
from bifrepro.config.imagenet import DEFAULT_STANDIN
from bifrepro.data.fashion_mnist import raw_folder
from bifrepro.data.imagenet import IMAGENET_ROOT_ENV, ImageNetRootError
from tests.data.test_fashion_mnist import write_fake
from tests.data.test_imagenet import make_image_folder

FIGURES = ("gallery_helpful.png", "gallery_harmful.png", "label_agreement.png")
TABLES = ("label_agreement.csv", "topk_overlap.csv", "per_query.csv", "metrics.json")
#: The stand-in at toy size: sklearn digits, 10 pool images and 3 queries per class.
TINY_STANDIN = [
    "experiment=imagenet",
    "data@standin.data=imagenet_standin",
    "standin.experiment.bif_seeds=1",
    "standin.data.name=digits",
    "standin.data.test_per_class=5",
    "standin.data.pool_per_class=10",
    "standin.data.queries_per_class=3",
    "standin.model.width=4",
    "standin.model.hidden=16",
    "standin.model.pool_size=2",
    "standin.model.epochs=4",
    "standin.model.lr=1e-2",
    "standin.methods=[bif,ekfac,gradsim]",
    "standin.sampler.num_chains=2",
    "standin.sampler.num_draws=30",
    "standin.sampler.burn_in=10",
    "experiment.n_boot=200",
]
#: The default stand-in (Fashion-MNIST) at toy size, every arm, 2 BIF seeds, 2 TRAK checkpoints.
TINY_FASHION = [
    "experiment=imagenet",
    "standin.data.train_per_class=20",
    "standin.data.test_per_class=6",
    "standin.data.pool_per_class=8",
    "standin.data.queries_per_class=6",
    "standin.model.width=4",
    "standin.model.hidden=16",
    "standin.model.pool_size=2",
    "standin.model.epochs=3",
    "standin.experiment.bif_seeds=2",
    "standin.method_settings.trak.num_checkpoints=2",
    "methods.trak.proj_dim=128",
    "standin.sampler.num_chains=2",
    "standin.sampler.num_draws=20",
    "standin.sampler.burn_in=5",
    "experiment.n_boot=200",
]
ARMS = ["bif", "bif_cov", "ekfac", "ekfac_relatif", "trak", "gradsim"]
#: The ImageNet path at toy size: random GoogLeNet, 32x32 crops, 3 classes.
TINY_REAL = [
    "experiment=imagenet_real",
    "model.weights=null",
    "model.num_classes=3",
    "data.resize=36",
    "data.crop=32",
    "data.pool_per_class=3",
    "data.query_classes=[0,2]",
    "data.extra_queries=2",
    "data.num_workers=0",
    "sampler.num_chains=2",
    "sampler.num_draws=4",
    "sampler.burn_in=1",
    "sampler.batch_size=4",
    "sampler.step_size=1e-6",
    "experiment.ekfac_last_layers=2",
    "experiment.ks=[1,3]",
    "experiment.n_boot=200",
    "experiment.device=cpu",
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, torch's spinning threads cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_imagenet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IMAGENET_ROOT_ENV, raising=False)


def test_standin_run_says_so_and_writes_everything(
    hydra_compose, mlflow_uri, search_runs, tmp_path, no_imagenet, caplog
) -> None:
    cfg = hydra_compose([*TINY_STANDIN, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"])
    with caplog.at_level(logging.INFO):
        metrics = imagenet.run(cfg)
    fallback = [r for r in caplog.records if "stand-in" in r.getMessage()]
    assert len(fallback) == 1 and IMAGENET_ROOT_ENV in fallback[0].getMessage()
    # the final summary line is still logged after kronfluence touched the root logger
    assert any("label agreement@3" in r.getMessage() for r in caplog.records)

    out = tmp_path / "imagenet" / "digits"  # results are filed under the dataset that ran
    for name in FIGURES + TABLES:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))
    table = pd.read_csv(out / "label_agreement.csv")
    assert set(table.method) == {"bif", "ekfac", "gradsim"} and set(table.dataset) == {"digits"}
    assert set(table.k) == {1, 3, 10}
    assert (table.ci_low <= table.agreement + 1e-9).all()
    assert (table.agreement <= table.ci_high + 1e-9).all()
    # 30 queries over 10 classes of 10 pool images each: chance is 1/10
    assert metrics["n_queries"] == 30 and metrics["chance_agreement"] == pytest.approx(0.1)
    for method in ("bif", "ekfac", "gradsim"):
        assert 0.0 <= metrics[f"{method}/agreement_top3"] <= 1.0
    # a trained digits CNN: the most helpful images share the query's digit far above chance
    assert metrics["bif/agreement_top3"] > 0.5
    per_query = pd.read_csv(out / "per_query.csv")
    assert len(per_query) == 30 and per_query.in_gallery.sum() == 4
    # score uncertainty: how much of each query's BIF top-k is more than Monte Carlo noise
    k = [c for c in per_query.columns if c.startswith("bif_top") and c.endswith("_resolved")]
    assert len(k) == 1 and per_query[k[0]].between(0, 1).all()
    assert metrics[k[0].replace("bif_", "bif/") + "_fraction"] == pytest.approx(
        per_query[k[0]].mean()
    )
    assert metrics["bif/score_se_median"] > 0 and metrics["bif/draws_per_chain_for_se_0.01"] >= 1
    assert metrics["bif/health/step_ok"] == 1.0 and "bif/detrend/topk_overlap" in metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"] == "digits" and saved["standin"] is True
    assert saved["config"]["model"]["name"] == "small_cnn"

    runs = search_runs("imagenet")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["tags.dataset"] == "digits" and row["tags.standin"] == "true"
    assert row["tags.ekfac_layers"] == "all"
    # MLflow records the settings that actually ran (the stand-in's), not the ImageNet ones
    assert row["params.data.name"] == "digits" and row["params.model.name"] == "small_cnn"
    assert row["params.sampler.num_draws"] == "30"
    assert row["metrics.bif/agreement_top3"] == pytest.approx(metrics["bif/agreement_top3"])
    from bifrepro.tracking import get_client

    client = get_client(mlflow_uri)
    figs = {a.path for a in client.list_artifacts(row["run_id"], "figures")}
    assert figs == {f"figures/{f}" for f in FIGURES}


def test_default_standin_is_fashion_mnist_with_every_arm_and_group_metrics(
    hydra_compose, tmp_path, no_imagenet
) -> None:
    root = tmp_path / "data"
    write_fake(raw_folder(root), marker=1, gz=False, per_class=(20, 6))
    where = [f"standin.data.root={root}", f"standin.data.debian_dir={tmp_path / 'none'}"]
    cfg = hydra_compose(
        [*TINY_FASHION, *where, f"results_dir={tmp_path}", "tracking.enabled=false"]
    )
    assert cfg.standin.data.name == DEFAULT_STANDIN == "fashion_mnist"
    assert list(cfg.standin.methods) == ARMS
    metrics = imagenet.run(cfg)
    out = tmp_path / "imagenet" / "fashion_mnist"
    for name in FIGURES + TABLES + ("group_agreement.csv", "group_agreement_ranking.csv"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert "Fashion-MNIST" in saved["title"] and saved["dataset"] == "fashion_mnist"
    table = pd.read_csv(out / "label_agreement.csv")
    assert list(dict.fromkeys(table.method)) == ARMS and metrics["n_queries"] == 60
    # within the look-alike groups: tops (4 classes) and footwear (3) -> 7 of 10 classes
    assert metrics["n_group_queries"] == 42
    groups = pd.read_csv(out / "group_agreement.csv")
    assert set(groups.group) == {"all groups", "tops", "footwear"}
    assert set(groups.metric) == {"exact", "group_other"} and set(groups.method) == set(ARMS)
    pooled = groups[(groups.group == "all groups") & (groups.k == 3)]
    assert (pooled.n_queries == 42).all()
    ranking = pd.read_csv(out / "group_agreement_ranking.csv")
    assert set(ranking.k) == {1, 3, 10} and sorted(ranking["rank"].unique()) == list(range(1, 7))
    # both BIF estimators from the same traces: same seconds, different scores' agreement rows
    assert metrics["bif_cov/seconds"] == metrics["bif/seconds"]
    seeds = pd.read_csv(out / "bif_seeds.csv")
    assert set(seeds.sampler_seed) == {0, 1} and set(seeds.method) == {"bif", "bif_cov"}
    first = seeds[(seeds.method == "bif") & (seeds.k == 3) & (seeds.sampler_seed == 0)]
    assert float(first.agreement.iloc[0]) == pytest.approx(metrics["bif/agreement_top3"])
    assert (seeds.spread >= 0).all()
    assert metrics["bif/num_seeds"] == 2 and "bif/seed_spread_agreement_top3" in metrics
    assert metrics["ekfac_relatif/self_influence_seconds"] > 0
    # TRAK ensembled the analysed CNN with one more trained from scratch (cached)
    assert list((tmp_path / "cache" / "imagenet").glob("small_cnn_fashion_mnist_trak_*.pt"))


def test_missing_fashion_mnist_falls_back_to_mnist5k_and_says_so(
    hydra_compose, tmp_path, no_imagenet, caplog
) -> None:
    where = [f"standin.data.root={tmp_path / 'no'}", f"standin.data.debian_dir={tmp_path / 'no'}"]
    small = ["standin.methods=[bif,ekfac]", "standin.experiment.bif_seeds=1"]
    cfg = hydra_compose(
        [*TINY_FASHION, *where, *small, f"results_dir={tmp_path}", "tracking.enabled=false"]
    )
    with caplog.at_level(logging.WARNING):
        imagenet.run(cfg)
    assert "MNIST-5k instead" in caplog.text
    assert not (tmp_path / "imagenet" / "fashion_mnist").exists()
    out = tmp_path / "imagenet" / "mnist5k"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"] == "mnist5k" and saved["requested_dataset"] == "fashion_mnist"
    assert "MNIST-5k (fallback" in saved["title"]
    assert set(pd.read_csv(out / "label_agreement.csv").dataset) == {"mnist5k"}
    assert not (out / "group_agreement.csv").exists()  # digits have no look-alike groups


def test_imagenet_path_on_a_tiny_image_folder(
    hydra_compose, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_image_folder(tmp_path / "imagenet", train_per_class=4, val_per_class=3)
    monkeypatch.setenv(IMAGENET_ROOT_ENV, str(root))
    cfg = hydra_compose([*TINY_REAL, f"results_dir={tmp_path}", "tracking.enabled=false"])
    metrics = imagenet.run(cfg)
    out = tmp_path / "imagenet" / "imagenet"
    for name in FIGURES + TABLES:
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["standin"] is False and saved["dataset"] == "imagenet"
    assert saved["ekfac_tracked_layers"] == ["inception5b.branch4.1.conv", "fc"]
    assert saved["gallery_queries"][0].startswith("val/n01000001/")
    assert metrics["n_pool"] == 9 and metrics["n_queries"] == 4
    assert metrics["n_sgld_train"] == 12  # SGLD minibatches from the whole training folder
    # traces were written to disk under the cache (imagenet_real: resumable)
    assert list((tmp_path / "cache" / "imagenet" / "traces").glob("*/manifest.json"))
    assert metrics["chance_agreement"] == pytest.approx(1 / 3)


def test_a_set_but_missing_root_is_an_error_not_a_fallback(
    hydra_compose, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMAGENET_ROOT_ENV, str(tmp_path / "no_such_folder"))
    cfg = hydra_compose(
        [*TINY_STANDIN, f"results_dir={tmp_path}", "tracking.enabled=false", "model.weights=null"]
    )
    with pytest.raises(ImageNetRootError, match=f"{IMAGENET_ROOT_ENV}=.*does not exist"):
        imagenet.run(cfg)
    assert not (tmp_path / "imagenet").exists()


def test_imagenet_real_refuses_to_fall_back(hydra_compose, tmp_path, no_imagenet) -> None:
    cfg = hydra_compose(["experiment=imagenet_real", f"results_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=IMAGENET_ROOT_ENV):
        imagenet.run(cfg)


def test_bad_settings_fail_before_any_compute(hydra_compose, tmp_path, no_imagenet) -> None:
    cfg = hydra_compose([*TINY_STANDIN, f"results_dir={tmp_path}", "standin.sampler.step_size=-1"])
    with pytest.raises(ConfigError, match="sampler.step_size"):
        imagenet.run(cfg)
    cfg = hydra_compose([*TINY_STANDIN, f"results_dir={tmp_path}", "standin.methods=[bif,trak]"])
    with pytest.raises(ConfigError, match="methods"):
        imagenet.run(cfg)
    assert not (tmp_path / "imagenet").exists()
    assert not Path(tmp_path / "cache").exists()


def test_a_corrupt_weights_file_fails_before_the_image_folder_scan(
    hydra_compose, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bifrepro.data.imagenet as imagenet_data

    root = make_image_folder(tmp_path / "imagenet", train_per_class=2, val_per_class=1)
    monkeypatch.setenv(IMAGENET_ROOT_ENV, str(root))

    def no_scan(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the ImageFolder scan started before the weights were checked")

    monkeypatch.setattr(imagenet_data, "image_folder", no_scan)
    garbage = tmp_path / "googlenet-1378be20.pth"
    garbage.write_bytes(b"\x80\x02}q\x00garbage" * 50)
    base = [*TINY_REAL, f"results_dir={tmp_path}", "tracking.enabled=false"]
    with pytest.raises(ConfigError, match=r"model\.weights_path=") as info:
        imagenet.run(hydra_compose([*base, f"model.weights_path={garbage}"]))
    message = str(info.value)
    assert str(garbage) in message and "weights_only" not in message
    assert "Unpickling" not in message and info.value.__cause__ is None
    with pytest.raises(ConfigError, match="does not exist"):
        imagenet.run(hydra_compose([*base, f"model.weights_path={tmp_path / 'none.pth'}"]))
    assert not (tmp_path / "imagenet" / "imagenet").exists()


def test_a_diverged_sampler_fails_the_run_and_keeps_the_old_results(
    hydra_compose, mlflow_uri, search_runs, tmp_path, no_imagenet, monkeypatch
) -> None:
    from bifrepro.sampling import SamplerDivergedError

    def diverge(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SamplerDivergedError("chain 0 diverged at step 3")

    monkeypatch.setattr(imagenet, "bif_arms", diverge)
    out = tmp_path / "imagenet" / "digits"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"old": true}')
    cfg = hydra_compose([*TINY_STANDIN, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"])
    with pytest.raises(SamplerDivergedError):
        imagenet.run(cfg)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert json.loads((out / "metrics.json").read_text()) == {"old": True}
    assert not list(out.parent.glob(".*staging"))
    assert search_runs("imagenet").iloc[0]["status"] == "FAILED"
