"""Fashion-MNIST: IDX parsing, the order of sources, conversion, subsets, and the fallback.

Every test except the last runs on tiny generated IDX files; each image carries its label and
its position in two marker pixels, so which file and which items were read is a known answer.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bifrepro.data import fashion_mnist as fm
from bifrepro.data.fashion_mnist import (
    CONFUSABLE_GROUPS,
    FASHION_CLASSES,
    IDX_FILES,
    debian_files,
    locate_fashion_mnist,
    raw_folder,
    read_split,
)
from bifrepro.data.fashion_mnist_data import (
    FashionMNISTDataConfig,
    FashionMNISTNotFoundError,
    load_fashion_mnist,
    stratified_subset,
)
from bifrepro.data.idx import IDXFormatError, idx_bytes, parse_idx, read_idx

NO_ENV: dict[str, str] = {}


def fake_split(per_class: int, marker: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[10 * per_class, 28, 28]``: pixel (0, 0) = label, (0, 1) = position % 256,
    (0, 2) = ``marker`` (which copy of the data this is); labels cycle through 0..9."""
    n = 10 * per_class
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng = np.random.default_rng(marker)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels
    images[:, 0, 1] = np.arange(n) % 256
    images[:, 0, 2] = marker
    return images, labels


def write_fake(folder: Path, marker: int, gz: bool, per_class=(12, 4)) -> Path:
    """The four files of a fake Fashion-MNIST in ``folder`` (``.gz`` like the Debian package)."""
    folder.mkdir(parents=True, exist_ok=True)
    for (split, (img_name, lab_name)), k in zip(IDX_FILES.items(), per_class, strict=True):
        images, labels = fake_split(k, marker + (split == "test"))
        for name, array in ((img_name, images), (lab_name, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# --- IDX format ---------------------------------------------------------------------------------


def test_idx_round_trip_and_header_layout(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    assert data[:4] == bytes([0, 0, 0x08, 3])  # magic: 00 00, unsigned byte, 3 dimensions
    assert data[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])  # big-endian sizes
    np.testing.assert_array_equal(parse_idx(data, ndim=3), array)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"\x12\x34" + d[2:], "wrong magic number"),
        (lambda d: d[:2] + b"\x0d" + d[3:], "not unsigned byte"),
        (lambda d: d[:3] + b"\x02" + d[4:], "expected 3"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d[:10], "truncated header"),
        (lambda d: d + b"\x00", "trailing bytes"),
    ],
    ids=["magic", "type", "rank", "truncated", "short-header", "trailing"],
)
def test_malformed_idx_is_a_clear_error(mutate, message):
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(IDXFormatError, match=message):
        parse_idx(mutate(data), "x", ndim=3)


def test_broken_gzip_is_an_idx_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(50, dtype=np.uint8)))[:-12])
    with pytest.raises(IDXFormatError, match="decompress"):
        read_idx(path)


# --- sources ------------------------------------------------------------------------------------


def test_class_names_and_confusable_groups():
    assert len(FASHION_CLASSES) == 10 and FASHION_CLASSES[0] == "T-shirt/top"
    named = {k: {FASHION_CLASSES[i] for i in v} for k, v in CONFUSABLE_GROUPS.items()}
    assert named == {
        "tops": {"T-shirt/top", "Pullover", "Coat", "Shirt"},
        "footwear": {"Sandal", "Sneaker", "Ankle boot"},
    }


def test_root_comes_before_the_debian_package(tmp_path, caplog):
    root = tmp_path / "root"
    write_fake(raw_folder(root), marker=1, gz=False)
    deb = write_fake(tmp_path / "deb", marker=7, gz=True)
    with caplog.at_level(logging.INFO, "bifrepro.data.fashion_mnist"):
        found = locate_fashion_mnist(root, deb, environ=NO_ENV, sizes=None)
    assert found is not None and found.kind == "root"
    images, labels = read_split(found.raw, "train")
    assert int(images[0, 0, 2]) == 1  # the root's copy, not the package's (marker 7)
    assert "source 1/3" in caplog.text


def test_debian_files_are_converted_into_root_then_read_from_there(tmp_path):
    root = tmp_path / "root"
    deb = write_fake(tmp_path / "deb", marker=7, gz=True)
    found = locate_fashion_mnist(root, deb, environ=NO_ENV, sizes=None)
    assert found is not None and found.kind == "debian" and found.raw == raw_folder(root)
    assert sorted(p.name for p in files_under(root)) == sorted(
        n for pair in IDX_FILES.values() for n in pair
    )
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert (raw_folder(root) / name).read_bytes() == gzip.decompress(
            (deb / f"{name}.gz").read_bytes()
        )
    again = locate_fashion_mnist(root, tmp_path / "nothing", environ=NO_ENV, sizes=None)
    assert again is not None and again.kind == "root"
    # torchvision reads the converted files without downloading anything
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(root), train=False, download=False)
    assert len(ds) == 40 and [int(ds[i][1]) for i in range(3)] == [0, 1, 2]


def test_debian_folder_from_the_environment(tmp_path):
    deb = write_fake(tmp_path / "deb", marker=3, gz=True)
    found = debian_files(None, environ={fm.DEBIAN_DIR_ENV: str(deb)})
    assert found is not None and set(found) == {n for p in IDX_FILES.values() for n in p}
    assert debian_files(tmp_path / "empty", environ={fm.DEBIAN_DIR_ENV: str(deb)}) is None


def test_real_package_sizes_are_checked(tmp_path):
    deb = write_fake(tmp_path / "deb", marker=7, gz=True)
    with pytest.raises(IDXFormatError, match="expected 60000"):
        locate_fashion_mnist(tmp_path / "root", deb, environ=NO_ENV)
    assert files_under(tmp_path / "root") == []


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_corrupt_package_leaves_root_untouched(tmp_path, damage):
    root = tmp_path / "root"
    deb = write_fake(tmp_path / "deb", marker=7, gz=True)
    path = deb / "t10k-labels-idx1-ubyte.gz"  # the last file: the others are fine
    data = gzip.decompress(path.read_bytes())
    data = b"\x08\x08" + data[2:] if damage == "magic" else data[:-3]
    path.write_bytes(gzip.compress(data))
    with pytest.raises(IDXFormatError, match="magic" if damage == "magic" else "truncated"):
        locate_fashion_mnist(root, deb, environ=NO_ENV, sizes=None)
    assert files_under(root) == []


def test_download_only_when_asked(tmp_path, monkeypatch, caplog):
    calls = []

    def fake_download(root: Path) -> Path:
        calls.append(root)
        write_fake(raw_folder(root), marker=5, gz=False)
        return raw_folder(root)

    monkeypatch.setattr(fm, "_download", fake_download)
    empty = tmp_path / "empty"
    assert locate_fashion_mnist(tmp_path / "a", empty, download=False, environ=NO_ENV) is None
    assert calls == []
    found = locate_fashion_mnist(tmp_path / "b", empty, download=True, environ=NO_ENV)
    assert found is not None and found.kind == "download" and len(calls) == 1

    def offline(root: Path) -> Path:
        raise OSError("network unreachable")

    monkeypatch.setattr(fm, "_download", offline)
    with caplog.at_level(logging.WARNING):
        assert locate_fashion_mnist(tmp_path / "c", empty, download=True, environ=NO_ENV) is None
    assert "download failed" in caplog.text


def test_fallback_to_mnist5k_is_announced_and_named(tmp_path, caplog):
    cfg = FashionMNISTDataConfig(
        root=str(tmp_path / "root"), debian_dir=str(tmp_path / "empty"), train_per_class=20,
        test_per_class=5, pool_per_class=10, queries_per_class=2,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        data = load_fashion_mnist(cfg)
    assert data.name == "mnist5k" and data.source.startswith("FALLBACK for Fashion-MNIST")
    assert "MNIST-5k instead" in caplog.text
    assert torch.bincount(data.train.tensors[1]).tolist() == [20] * 10
    none = FashionMNISTDataConfig(
        root=str(tmp_path / "root"), debian_dir=str(tmp_path / "empty"), fallback="none"
    )
    with pytest.raises(FashionMNISTNotFoundError, match="data.fallback=none"):
        load_fashion_mnist(none)


def test_corrupt_root_is_an_error_not_a_fallback(tmp_path):
    root = tmp_path / "root"
    write_fake(raw_folder(root), marker=1, gz=False)
    (raw_folder(root) / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00")
    cfg = FashionMNISTDataConfig(root=str(root), debian_dir=str(tmp_path / "empty"))
    with pytest.raises(IDXFormatError, match="train-labels"):
        load_fashion_mnist(cfg)


# --- subsets and loaders ------------------------------------------------------------------------


def test_stratified_subset_is_seeded_balanced_and_checked():
    labels = torch.arange(10).repeat(30)
    a, b = stratified_subset(labels, 7, seed=0), stratified_subset(labels, 7, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, stratified_subset(labels, 7, seed=1))
    assert torch.bincount(labels[a]).tolist() == [7] * 10 and len(set(a.tolist())) == 70
    assert len(set(labels[a[:10]].tolist())) > 3  # classes interleaved, not sorted
    assert sorted(stratified_subset(labels, None, 0).tolist()) == list(range(300))
    with pytest.raises(ValueError, match="fewer than per_class=31"):
        stratified_subset(labels, 31, seed=0)


def fake_cfg(tmp_path: Path, **kw) -> FashionMNISTDataConfig:
    root = tmp_path / "root"
    if not raw_folder(root).exists():
        write_fake(raw_folder(root), marker=1, gz=False, per_class=(30, 10))
    base = dict(train_per_class=12, test_per_class=6, pool_per_class=4, queries_per_class=3)
    return FashionMNISTDataConfig(root=str(root), debian_dir=str(tmp_path / "empty"), **(base | kw))


def test_loader_subsets_normalises_and_names_the_source(tmp_path):
    cfg = fake_cfg(tmp_path)
    data = load_fashion_mnist(cfg)
    x, y = data.train.tensors
    assert data.name == "fashion_mnist" and "IDX files in" in data.source
    assert data.class_names == list(FASHION_CLASSES)
    assert x.shape == (120, 1, 28, 28) and torch.bincount(y).tolist() == [12] * 10
    assert torch.bincount(data.test.tensors[1]).tolist() == [6] * 10
    # marker pixel (0, 0) holds the label: images and labels stay paired through the subset
    raw = data.unnormalize(x)[:, 0, 0, 0] * 255
    assert torch.equal(raw.round().long(), y)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    same = load_fashion_mnist(cfg)
    assert torch.equal(same.train.tensors[0], x)
    other = load_fashion_mnist(fake_cfg(tmp_path, split_seed=1))
    assert not torch.equal(other.train.tensors[0], x)


def test_lds_and_gallery_views(tmp_path):
    cfg = fake_cfg(tmp_path, gallery_queries=4)
    lds = cfg.load()
    assert lds.name == "fashion_mnist" and lds.num_classes == 10 and lds.in_channels == 1
    assert len(lds.train) == 120 and torch.bincount(lds.queries.tensors[1]).tolist() == [3] * 10
    pool = cfg.load_pool(seed=0)
    assert pool.n_pool == 40 and pool.n_query == 30 and not pool.info["fallback"]
    assert len({int(pool.query_labels[g]) for g in pool.gallery}) == 4
    assert pool.label(9) == "9 Ankle boot"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("fallback", "cifar", "fallback"),
        ("train_per_class", 6001, "train_per_class"),
        ("queries_per_class", 60, "queries_per_class"),
        ("pool_per_class", 600, "pool_per_class"),
        ("gallery_queries", 11, "gallery_queries"),
    ],
)
def test_config_checks(field, value, match):
    with pytest.raises(ValueError, match=match):
        FashionMNISTDataConfig(**{field: value})


# --- the real files -----------------------------------------------------------------------------


@pytest.mark.skipif(debian_files() is None, reason="Debian package dataset-fashion-mnist absent")
def test_real_debian_package(tmp_path):
    found = locate_fashion_mnist(tmp_path, environ=NO_ENV)
    assert found is not None and found.kind == "debian"
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = read_split(found.raw, split, expected=n)
        assert images.shape == (n, 28, 28)
        assert np.bincount(labels).tolist() == [n // 10] * 10
