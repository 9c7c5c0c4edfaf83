"""GoogLeNet builders (random init, local weights file), layer restriction, the cached small CNN."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from bifrepro.models.vision import (
    GoogLeNetConfig,
    SmallCNNConfig,
    WeightsFileError,
    build_googlenet,
    keep_last_layers,
    linear_conv_layers,
    load_googlenet_weights,
    load_state_dict_file,
    trained_small_cnn,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, torch's spinning threads cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random GoogLeNet *with* auxiliary heads saved like torchvision's file (3 classes)."""
    from torchvision.models import googlenet

    torch.manual_seed(0)
    model = googlenet(
        weights=None, aux_logits=True, init_weights=True, transform_input=True, num_classes=3
    ).eval()
    path = tmp_path_factory.mktemp("weights") / "googlenet.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_random_googlenet_runs_at_small_resolution() -> None:
    model = build_googlenet(GoogLeNetConfig(weights=None, num_classes=5))
    assert not model.training and model.aux1 is None and not model.transform_input
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_googlenet_from_a_weights_file_reproduces_the_saved_model(googlenet_file) -> None:
    path, reference = googlenet_file
    model = build_googlenet(GoogLeNetConfig(weights=None, weights_path=str(path)))
    assert model.fc.out_features == 3 and model.transform_input  # torchvision's default
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    # a file holding {"state_dict": ...} with DataParallel's "module." prefix loads the same
    wrapped = path.parent / "wrapped.pth"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, wrapped
    )
    again = build_googlenet(GoogLeNetConfig(weights_path=str(wrapped)))
    with torch.no_grad():
        assert torch.allclose(again(x), reference(x), atol=1e-5)


def test_bad_weights_are_refused_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match=r"model\.weights_path=.*nope\.pth.*does not exist"):
        build_googlenet(GoogLeNetConfig(weights_path=str(tmp_path / "nope.pth")))
    torch.save({"fc.weight": torch.zeros(3, 1024)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        build_googlenet(GoogLeNetConfig(weights_path=str(tmp_path / "partial.pth")))
    torch.save({"foo": 1}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_state_dict_file(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="GoogLeNet_Weights"):
        build_googlenet(GoogLeNetConfig(weights="IMAGENET22K"))
    torch.save({"fc.bias": torch.zeros(3)}, tmp_path / "no_fc.pth")
    with pytest.raises(WeightsFileError, match="no fc.weight"):
        load_googlenet_weights(GoogLeNetConfig(weights_path=str(tmp_path / "no_fc.pth")))
    assert load_googlenet_weights(GoogLeNetConfig(weights_path=None)) is None


@pytest.mark.parametrize(
    "content", [b"garbage, not a checkpoint" * 10, b"PK\x03\x04 truncated zip", b""]
)
def test_a_corrupt_weights_file_names_key_and_file_never_the_unsafe_workaround(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "model.weights_path=" in message and str(path) in message
    assert "weights_only" not in message and "Unpickling" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # a pickle of a non-tensor object: torch's refusal suggests weights_only=False; not passed on
    path.write_bytes(pickle.dumps({"fc.weight": Path("x")}))
    with pytest.raises(WeightsFileError) as info:
        load_state_dict_file(path, key="model.weights_path")
    assert "weights_only" not in str(info.value)


def test_keep_last_layers_keeps_outputs_and_hides_the_rest_from_kronfluence() -> None:
    from bifrepro.attribution.ekfac import supported_modules
    from bifrepro.models.small import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 4, width=4, hidden=8)
    names = linear_conv_layers(model)
    assert len(names) == 4
    x = torch.randn(3, 1, 12, 12)
    for k, expected in ((1, names[-1:]), (2, names[-2:]), (0, names), (9, names)):
        work, kept = keep_last_layers(model, k)
        assert kept == expected and supported_modules(work) == expected
        with torch.no_grad():
            assert torch.allclose(work(x), model(x), atol=1e-6)
    assert linear_conv_layers(model) == names  # the original is untouched


def test_small_cnn_is_trained_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(40)
    x = torch.randn(80, 1, 8, 8, generator=gen) + 2.0 * y.view(-1, 1, 1, 1).float()
    data = TensorDataset(x, y)
    cfg = SmallCNNConfig(width=4, hidden=8, pool_size=2, epochs=3, lr=1e-2)
    model, info = trained_small_cnn(cfg, data, 2, seed=0, cache_dir=tmp_path, test_data=data)
    assert not info["cached"] and Path(info["cache_file"]).is_file()
    assert info["test_accuracy"] > 0.9  # the classes differ by a mean shift of 2
    again, info2 = trained_small_cnn(cfg, data, 2, seed=0, cache_dir=tmp_path)
    assert info2["cached"] and info2["train_seconds"] == pytest.approx(info["train_seconds"])
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # different data or settings: a different cache entry
    _, info3 = trained_small_cnn(cfg, TensorDataset(x[:60], y[:60]), 2, seed=0, cache_dir=tmp_path)
    assert not info3["cached"] and info3["cache_file"] != info["cache_file"]
    with pytest.raises(ValueError, match="epochs"):
        SmallCNNConfig(epochs=0)
