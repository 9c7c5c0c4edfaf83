"""Embedded image data, the stratified split and the ImageFolder checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.data.images import (
    ImageFolderError,
    image_folder,
    load_embedded_images,
    stratified_split,
)


def test_stratified_split_is_seeded_and_balanced():
    labels = torch.arange(10).repeat_interleave(20)
    tr1, te1 = stratified_split(labels, 3, seed=0)
    tr2, te2 = stratified_split(labels, 3, seed=0)
    _, te3 = stratified_split(labels, 3, seed=1)
    assert torch.equal(te1, te2) and torch.equal(tr1, tr2)
    assert not torch.equal(te1, te3)
    assert torch.bincount(labels[te1]).tolist() == [3] * 10
    assert set(tr1.tolist()).isdisjoint(te1.tolist())
    assert len(tr1) + len(te1) == 200


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_embedded_images_load_normalised(name):
    data = load_embedded_images(name, test_per_class=5, train_per_class=20, seed=0)
    x, y = data.train.tensors
    assert x.dim() == 4 and x.shape[1] == 1
    assert torch.bincount(y).tolist() == [20] * 10
    assert len(data.test) == 50
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    img = data.unnormalize(x[0])
    assert img.min() >= 0 and img.max() <= 1


def test_unknown_embedded_dataset():
    with pytest.raises(ValueError, match="cifar"):
        load_embedded_images("cifar")


def test_image_folder_errors_and_success(tmp_path):
    from PIL import Image

    with pytest.raises(ImageFolderError, match="does not exist"):
        image_folder(tmp_path / "nope")
    with pytest.raises(ImageFolderError, match="no class sub-folders"):
        image_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "cat" / "a.png")
    with pytest.raises(ImageFolderError, match="dog"):
        image_folder(tmp_path)
    Image.fromarray(np.full((4, 4, 3), 255, dtype=np.uint8)).save(tmp_path / "dog" / "b.png")
    ds = image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 2
