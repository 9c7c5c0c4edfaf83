"""ImageNet loading on a tiny generated ImageFolder, root checks, seeded selection, the stand-in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bifrepro.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_ROOT_ENV,
    ImageNetDataConfig,
    ImageNetRootError,
    StandinDataConfig,
    check_imagenet_root,
    load_imagenet_pool,
    load_standin_pool,
    per_class_indices,
    pick_distinct_classes,
    resolve_imagenet_root,
)

WNIDS = ("n01000001", "n01000002", "n01000003")
COLORS = ((220, 30, 30), (30, 220, 30), (30, 30, 220))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, torch's spinning threads cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_image_folder(root: Path, train_per_class: int = 5, val_per_class: int = 3) -> Path:
    """``root/train/<wnid>/*.png`` and ``root/val/<wnid>/*.png``: one colour per class, 40x48."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for wnid, color in zip(WNIDS, COLORS, strict=True):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-20, 20, size=(40, 48, 3))
                img = np.clip(np.array(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{wnid}_{i}.png")
    return root


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


def tiny_config(**kw) -> ImageNetDataConfig:  # noqa: ANN003
    base = dict(
        pool_per_class=2,
        query_classes=[0, 2],
        queries_per_class=1,
        extra_queries=2,
        resize=36,
        crop=32,
        num_workers=0,
    )
    return ImageNetDataConfig(**{**base, **kw})


def test_root_resolution_prefers_config_then_environment(tmp_path: Path) -> None:
    env = {IMAGENET_ROOT_ENV: str(tmp_path / "env")}
    assert resolve_imagenet_root(str(tmp_path / "cfg"), env) == (tmp_path / "cfg", "data.root")
    assert resolve_imagenet_root(None, env) == (tmp_path / "env", IMAGENET_ROOT_ENV)
    assert resolve_imagenet_root(None, {}) == (None, "unset")
    assert resolve_imagenet_root("  ", {IMAGENET_ROOT_ENV: ""}) == (None, "unset")


def test_root_errors_name_the_problem_and_origin(tmp_path: Path) -> None:
    with pytest.raises(ImageNetRootError, match=f"{IMAGENET_ROOT_ENV}=.*does not exist"):
        check_imagenet_root(tmp_path / "missing", IMAGENET_ROOT_ENV, "train", "val")
    (tmp_path / "train" / "n1").mkdir(parents=True)
    with pytest.raises(ImageNetRootError, match="no 'val' folder"):
        check_imagenet_root(tmp_path, "data.root", "train", "val")
    # the raw ImageNet validation folder: images, no class folders
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    with pytest.raises(ImageNetRootError, match="no class sub-folders.*sort"):
        check_imagenet_root(tmp_path, "data.root", "train", "val")
    (tmp_path / "val" / "n2").mkdir()
    with pytest.raises(ImageNetRootError, match="different class folders"):
        check_imagenet_root(tmp_path, "data.root", "train", "val")


def test_load_without_a_root_is_an_error() -> None:
    with pytest.raises(ImageNetRootError, match=IMAGENET_ROOT_ENV):
        load_imagenet_pool(tiny_config(), seed=0, environ={})


def test_load_imagenet_pool_on_a_tiny_image_folder(imagenet_root: Path) -> None:
    env = {IMAGENET_ROOT_ENV: str(imagenet_root)}
    pool = load_imagenet_pool(tiny_config(), seed=0, environ=env)
    # pool: 2 per class, from the training split, with the standard eval transforms
    assert pool.n_pool == 6 and torch.bincount(pool.pool_labels).tolist() == [2, 2, 2]
    x, y = pool.pool.tensors
    assert x.shape == (6, 3, 32, 32) and torch.equal(y, pool.pool_labels)
    assert all(i.startswith("train/") for i in pool.pool_ids)
    # normalised with the ImageNet mean/std: a red image has a high red channel after unnormalising
    red = pool.unnormalize(x[0])
    assert red.min() >= 0 and red.max() <= 1
    assert red[0].mean() > 0.7 and red[1].mean() < 0.3
    assert float(x[0, 0].mean()) == pytest.approx((float(red[0].mean()) - IMAGENET_MEAN[0]) / 0.229)
    # queries: one val image of class 0 and of class 2 (the gallery rows), then 2 extra ones
    assert pool.n_query == 4 and all(i.startswith("val/") for i in pool.query_ids)
    assert [int(pool.query_labels[g]) for g in pool.gallery] == [0, 2]
    assert len(set(pool.query_ids)) == 4
    assert pool.sgld_train is not pool.pool and len(pool.sgld_train) == 15
    assert pool.info["root_origin"] == IMAGENET_ROOT_ENV and pool.info["num_classes"] == 3
    # seeded: the same seed gives the same pool and queries, another seed does not
    again = load_imagenet_pool(tiny_config(), seed=0, environ=env)
    assert again.pool_ids == pool.pool_ids and again.query_ids == pool.query_ids
    other = load_imagenet_pool(tiny_config(extra_queries=0), seed=5, environ=env)
    assert other.pool_ids != pool.pool_ids


def test_explicit_query_images_and_bad_queries(imagenet_root: Path) -> None:
    wanted = [f"{WNIDS[1]}/{WNIDS[1]}_2.png"]
    cfg = tiny_config(query_images=wanted, extra_queries=0, sgld_source="pool")
    pool = load_imagenet_pool(cfg, seed=0, environ={IMAGENET_ROOT_ENV: str(imagenet_root)})
    assert pool.query_ids == [f"val/{wanted[0]}"] and pool.gallery == [0]
    assert pool.query_labels.tolist() == [1]
    assert pool.sgld_train is pool.pool
    with pytest.raises(ImageNetRootError, match="not found"):
        load_imagenet_pool(
            tiny_config(query_images=["n9/nope.png"]),
            0,
            environ={IMAGENET_ROOT_ENV: str(imagenet_root)},
        )
    with pytest.raises(ImageNetRootError, match="query_classes"):
        load_imagenet_pool(
            tiny_config(query_classes=[7]), 0, environ={"IMAGENET_ROOT": str(imagenet_root)}
        )


def test_data_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="crop"):
        ImageNetDataConfig(resize=100, crop=224)
    with pytest.raises(ValueError, match="sgld_source"):
        ImageNetDataConfig(sgld_source="val")
    with pytest.raises(ValueError, match="name"):
        StandinDataConfig(name="cifar10")
    with pytest.raises(ValueError, match="queries_per_class"):
        StandinDataConfig(test_per_class=5, queries_per_class=6)


def test_per_class_indices_and_distinct_picks_are_seeded() -> None:
    labels = torch.arange(4).repeat_interleave(10)
    a = per_class_indices(labels, 3, seed=1)
    assert torch.equal(a, per_class_indices(labels, 3, seed=1))
    assert not torch.equal(a, per_class_indices(labels, 3, seed=2))
    assert torch.bincount(labels[a]).tolist() == [3, 3, 3, 3]
    only = per_class_indices(labels, 20, seed=0, classes=[2])
    assert sorted(only.tolist()) == list(range(20, 30))  # fewer than asked: all of the class
    picks = pick_distinct_classes(labels, 4, seed=0)
    assert sorted(int(labels[p]) for p in picks) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="distinct"):
        pick_distinct_classes(labels, 5, seed=0)


def test_standin_pool_from_embedded_digits() -> None:
    cfg = StandinDataConfig(
        name="digits", test_per_class=5, pool_per_class=4, queries_per_class=3, gallery_queries=4
    )
    pool = load_standin_pool(cfg, seed=0)
    assert pool.n_pool == 40 and torch.bincount(pool.pool_labels).tolist() == [4] * 10
    assert pool.n_query == 30 and len(set(pool.query_ids)) == 30
    # the first queries cover many classes (interleaved), the gallery rows are distinct digits
    assert len(set(pool.query_labels[:10].tolist())) == 10
    assert len({int(pool.query_labels[g]) for g in pool.gallery}) == 4
    # SGLD samples the whole training split, of which the pool is a subset
    assert len(pool.sgld_train) == 1797 - 50
    img = pool.unnormalize(pool.pool.tensors[0][0])
    assert img.min() >= 0 and img.max() <= 1 and img.max() > 0.5
    assert pool.label(3) == "3"
    named = dataclasses.replace(
        pool, class_names=["zero", "a very long class name indeed"] + ["x"] * 8
    )
    assert named.label(0) == "0 zero"
    assert named.label(1) == "1 a very long class…" and len(named.label(1)) == 2 + 18
