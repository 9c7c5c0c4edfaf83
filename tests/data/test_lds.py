"""LDS data: the embedded split (cached per process) and a local image-folder tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bifrepro.data.images import ImageFolderError
from bifrepro.data.lds import embedded_lds_data, folder_lds_data


def _tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per: dict | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (per or {"train": 6, "test": 3}).items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_embedded_split_is_stratified_and_cached() -> None:
    data = embedded_lds_data("digits", 1, 6, 0)
    assert len(data.train) == 60 and len(data.queries) == 10 and data.num_classes == 10
    assert data.in_channels == 1 and data.name == "digits"
    assert torch.bincount(data.queries.tensors[1]).tolist() == [1] * 10
    assert embedded_lds_data("digits", 1, 6, 0) is data  # loaded once per process
    other = embedded_lds_data("digits", 1, 6, 1)
    assert not torch.equal(other.queries.tensors[0], data.queries.tensors[0])


def test_folder_data_is_seeded_subset_and_normalised(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c10")
    data = folder_lds_data("toy", root, num_train=10, num_queries=4, split_seed=0)
    x = data.train.tensors[0]
    assert x.shape == (10, 3, 8, 8) and len(data.queries) == 4 and data.num_classes == 2
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert data.source == f"ImageFolder {root}" and data.in_channels == 3
    again = folder_lds_data("toy", root, num_train=10, num_queries=4, split_seed=0)
    assert torch.equal(again.queries.tensors[0], data.queries.tensors[0])
    every = folder_lds_data("toy", root, num_queries=100)
    assert len(every.train) == 12 and len(every.queries) == 6  # all, capped by what exists


def test_folder_data_refuses_mismatched_classes_and_missing_splits(tmp_path: Path) -> None:
    root = _tree(tmp_path / "a", per={"train": 2})
    _tree(root, classes=("cat", "cow"), per={"test": 2})
    with pytest.raises(ImageFolderError, match="differ"):
        folder_lds_data("toy", root)
    with pytest.raises(ImageFolderError, match="does not exist"):
        folder_lds_data("toy", tmp_path / "nowhere")
