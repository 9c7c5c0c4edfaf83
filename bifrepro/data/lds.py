"""Training set and queries of the LDS experiment, as in-memory normalised image tensors.

Two sources, neither downloads anything:

* :func:`embedded_lds_data`: an embedded dataset (MNIST-5k, scikit-learn digits) split stratified
  by :func:`bifrepro.data.images.load_embedded_images`; the held-out images are the queries.
* :func:`folder_lds_data`: a local ``train/<class>/<img>`` + ``test/<class>/<img>`` tree (CIFAR-10
  exported as PNGs for the paper's setting), seeded subsets, normalised with training statistics.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from bifrepro.data.images import ImageFolderError, image_folder, load_embedded_images

__all__ = ["LDSData", "embedded_lds_data", "folder_lds_data"]


@dataclass
class LDSData:
    """Training set and queries as in-memory ``TensorDataset(x, y)`` (normalised images)."""

    name: str
    source: str
    train: TensorDataset
    queries: TensorDataset
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train.tensors[0].shape[1])


@functools.lru_cache(maxsize=4)
def embedded_lds_data(
    name: str, test_per_class: int, train_per_class: int, split_seed: int
) -> LDSData:
    """An embedded dataset's stratified split; loaded once per process (asked for repeatedly)."""
    d = load_embedded_images(name, test_per_class, train_per_class, seed=split_seed)
    return LDSData(d.name, d.source, d.train, d.test, d.num_classes)


def _folder_tensors(
    root: Path, classes: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of an ImageFolder tree as ``[0, 1]`` tensors, its labels and class names."""
    from torchvision import transforms

    ds = image_folder(root, transform=transforms.ToTensor())
    if classes is not None and ds.classes != classes:
        raise ImageFolderError(f"{root}: classes {ds.classes} differ from the training split's")
    loader = torch.utils.data.DataLoader(ds, batch_size=512, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys), ds.classes


def folder_lds_data(
    name: str,
    root: str | os.PathLike[str],
    train_subdir: str = "train",
    test_subdir: str = "test",
    num_train: int | None = None,
    num_queries: int = 100,
    split_seed: int = 0,
) -> LDSData:
    """Training images (seeded subset of ``num_train``; ``None``: all) and ``num_queries`` seeded
    queries from a local tree, both normalised per channel with the training statistics.

    Raises:
        ImageFolderError: a split is missing, malformed, or its classes differ from training's.
    """
    root = Path(root).expanduser()
    x, y, classes = _folder_tensors(root / train_subdir)
    xq, yq, _ = _folder_tensors(root / test_subdir, classes)
    g = torch.Generator().manual_seed(split_seed)
    if num_train is not None and num_train < len(y):
        keep = torch.randperm(len(y), generator=g)[:num_train]
        x, y = x[keep], y[keep]
    pick = torch.randperm(len(yq), generator=g)[:num_queries]
    xq, yq = xq[pick], yq[pick]
    mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
    return LDSData(
        name,
        f"ImageFolder {root}",
        TensorDataset((x - mean) / std, y),
        TensorDataset((xq - mean) / std, yq),
        len(classes),
    )
