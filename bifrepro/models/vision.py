"""Vision models for influence galleries: torchvision GoogLeNet and a cached small CNN stand-in.

* :func:`build_googlenet` — Inception-v1 as in the BIF paper. Weights from a torchvision enum
  name (``"IMAGENET1K_V1"``: torchvision downloads it into its cache on first use, so only where
  the machine can reach the internet), from a local state-dict file (``weights_path``, no
  network), or random (neither; for tests). Built in eval mode without auxiliary heads.
* :func:`trained_small_cnn` — a :class:`~bifrepro.models.small.SmallCNN` trained from scratch on
  the embedded stand-in data and cached under ``results/cache/`` (keyed by the model and training
  settings, the seed and a fingerprint of the training data), so repeated runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from bifrepro.io import atomic_torch_save
from bifrepro.models.small import SmallCNN, count_parameters
from bifrepro.training import TrainConfig, accuracy, train_model
from bifrepro.validation import bad as _bad
from bifrepro.validation import finite_numbers

__all__ = [
    "GoogLeNetConfig",
    "SmallCNNConfig",
    "build_googlenet",
    "load_googlenet_weights",
    "load_state_dict_file",
    "WeightsFileError",
    "trained_small_cnn",
    "describe_model",
    "linear_conv_layers",
    "keep_last_layers",
]

log = logging.getLogger(__name__)


@dataclass
class GoogLeNetConfig:
    """torchvision GoogLeNet (Inception-v1); Hydra group ``model=googlenet``."""

    #: Model name (MLflow tag ``model``).
    name: str = "googlenet"
    #: torchvision weights enum name ("IMAGENET1K_V1" / "DEFAULT"); null with no weights_path:
    #: random initialisation. The enum downloads into torch's cache on first use.
    weights: str | None = "IMAGENET1K_V1"
    #: Local state-dict file (e.g. googlenet-1378be20.pth); takes precedence over ``weights``.
    weights_path: str | None = None
    #: Convert ImageNet-normalised inputs to the original GoogLeNet normalisation inside the
    #: model (null: on for pretrained weights, as torchvision does; off for random init).
    transform_input: bool | None = None
    #: Output classes of a randomly initialised model (pretrained files set their own).
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            _bad(self, "num_classes", "must be an integer >= 2")


@dataclass
class SmallCNNConfig:
    """Small CNN stand-in trained from scratch (and cached); Hydra group ``model=small_cnn``."""

    #: Model name (MLflow tag ``model``).
    name: str = "small_cnn"
    #: Channels of the first conv layer (the second has twice as many).
    width: int = 16
    #: Width of the hidden linear layer.
    hidden: int = 64
    #: Side of the adaptive-pooled feature map fed to the head.
    pool_size: int = 4
    #: Training: epochs, minibatch size, learning rate, optimizer ("adam" | "sgd"), weight decay.
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    #: Reuse a cached trained model (results/cache/) when the settings and data match.
    cache: bool = True

    def __post_init__(self) -> None:
        finite_numbers(self)
        for name in ("width", "hidden", "pool_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _bad(self, name, "must be an integer >= 1")
        self.train_config()  # validates the training fields (TrainConfig names the field)

    def train_config(self, seed: int = 0) -> TrainConfig:
        """The :class:`~bifrepro.training.TrainConfig` of these settings."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            seed=seed,
        )


class WeightsFileError(ValueError):
    """A model weights file is missing or is not a readable state dict (names key and file)."""


def load_state_dict_file(
    path: str | Path, key: str = "model.weights_path"
) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file (plain, or wrapped in ``{"state_dict": ...}``/``{"model": ...}``).

    Loaded with ``weights_only=True`` (no pickled code runs); a ``module.`` prefix left by
    ``DataParallel`` is stripped. A missing, corrupt or non-tensor file raises
    :class:`WeightsFileError` naming the config ``key`` and the file (torch's own message, which
    suggests an unsafe workaround for files that are not plain tensors, is not passed on).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsFileError(f"{key}={str(path)!r} is invalid: the file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many types for an unreadable file
        raise WeightsFileError(
            f"{key}={str(path)!r} is invalid: {p} is not a readable PyTorch state-dict file "
            "(corrupt, truncated, or not a torch.save of tensors only)"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(
            f"{key}={str(path)!r} is invalid: {p} does not hold a state dict (a mapping of "
            "parameter names to tensors)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_googlenet_weights(cfg: GoogLeNetConfig) -> dict[str, torch.Tensor] | None:
    """The state dict of ``cfg.weights_path`` without auxiliary heads (``None`` if unset).

    Cheap next to an ImageNet folder scan: experiments call it first, so a bad file fails fast.
    """
    if not cfg.weights_path:
        return None
    state = load_state_dict_file(cfg.weights_path)
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    if "fc.weight" not in state:
        raise WeightsFileError(
            f"model.weights_path={cfg.weights_path!r} is invalid: not a GoogLeNet state dict "
            "(no fc.weight)"
        )
    return state


def _weights_enum(name: str) -> Any:
    from torchvision.models import GoogLeNet_Weights

    key = name.split(".")[-1]
    try:
        return GoogLeNet_Weights[key]
    except KeyError:
        raise ValueError(
            f"model.weights={name!r} is not a GoogLeNet_Weights member; known: "
            f"{[w.name for w in GoogLeNet_Weights] + ['DEFAULT']}"
        ) from None


def build_googlenet(
    cfg: GoogLeNetConfig | None = None, state: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """GoogLeNet in eval mode, without auxiliary heads (see the module docstring).

    ``state``: the weights of ``cfg.weights_path`` if already loaded
    (:func:`load_googlenet_weights`); read from the file otherwise.
    """
    from torchvision.models import googlenet

    cfg = cfg or GoogLeNetConfig()
    if cfg.weights_path:
        state = state if state is not None else load_googlenet_weights(cfg)
        assert state is not None
        transform = True if cfg.transform_input is None else cfg.transform_input
        model = googlenet(
            weights=None,
            aux_logits=False,
            init_weights=False,
            transform_input=transform,
            num_classes=int(state["fc.weight"].shape[0]),
        )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{cfg.weights_path} does not match torchvision's GoogLeNet: missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        log.info("GoogLeNet weights from %s", cfg.weights_path)
    elif cfg.weights:
        weights = _weights_enum(cfg.weights)
        kwargs: dict[str, Any] = {}
        if cfg.transform_input is not None:
            kwargs["transform_input"] = cfg.transform_input
        try:
            model = googlenet(weights=weights, progress=False, **kwargs)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise RuntimeError(
                f"could not load GoogLeNet weights {cfg.weights} ({err}). torchvision downloads "
                "them on first use; on a machine without internet, fetch the file elsewhere "
                f"({weights.url}) and set model.weights_path=/path/to/{weights.url.split('/')[-1]}"
            ) from err
        log.info("GoogLeNet weights %s (torchvision)", weights)
    else:
        model = googlenet(
            weights=None,
            aux_logits=False,
            init_weights=True,
            transform_input=bool(cfg.transform_input),
            num_classes=cfg.num_classes,
        )
        log.info("GoogLeNet with random weights (no model.weights / model.weights_path)")
    model.eval()
    return model


def _data_fingerprint(dataset: TensorDataset) -> str:
    h = hashlib.sha256()
    for t in dataset.tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def trained_small_cnn(
    cfg: SmallCNNConfig,
    train_data: TensorDataset,
    num_classes: int,
    seed: int,
    cache_dir: str | Path | None = None,
    test_data: TensorDataset | None = None,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
    tag: str = "",
) -> tuple[nn.Module, dict[str, Any]]:
    """A :class:`SmallCNN` trained on ``train_data`` (cached in ``cache_dir``), in eval mode.

    Returns the model and an info dict: ``params``, ``train_seconds`` (of the original training),
    ``test_accuracy`` (when ``test_data`` is given), ``cached`` (loaded from the cache) and
    ``cache_file``.
    """
    in_channels = int(train_data.tensors[0].shape[1])
    key = {
        "model": asdict(cfg) | {"cache": None},
        "in_channels": in_channels,
        "num_classes": num_classes,
        "seed": seed,
        "data": _data_fingerprint(train_data),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = (
        Path(cache_dir) / f"small_cnn_{tag + '_' if tag else ''}{digest}.pt" if cache_dir else None
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(in_channels, num_classes, cfg.width, cfg.hidden, cfg.pool_size)
    info: dict[str, Any] = {"params": count_parameters(model), "cached": False}
    if cfg.cache and path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info.update(
            cached=True,
            train_seconds=float(saved["train_seconds"]),
            final_train_loss=float(saved["final_train_loss"]),
        )
        log.info("small CNN loaded from the cache %s", path)
    else:
        t0 = time.perf_counter()
        history = train_model(
            model,
            train_data,
            cfg.train_config(seed),
            device=device,
            progress=progress,
            desc="train small CNN",
        )
        info.update(train_seconds=time.perf_counter() - t0, final_train_loss=history[-1])
        model.cpu()
        if cfg.cache and path is not None:
            atomic_torch_save(
                {
                    "state_dict": model.state_dict(),
                    "key": json.dumps(key, sort_keys=True),
                    "train_seconds": info["train_seconds"],
                    "final_train_loss": info["final_train_loss"],
                },
                path,
            )
            log.info("small CNN trained in %.1f s, cached at %s", info["train_seconds"], path)
    model.to(device).eval()
    if test_data is not None:
        info["test_accuracy"] = accuracy(model, test_data)
    info["cache_file"] = str(path) if path is not None else ""
    return model, info


def describe_model(model: nn.Module) -> str:
    """``"GoogLeNet (6.6M params)"``-style one-liner for figure titles and logs."""
    n = count_parameters(model)
    size = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"
    return f"{type(model).__name__} ({size} params)"


def linear_conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Linear`` / ``nn.Conv2d`` layers in definition order.

    These are the layers kronfluence (EK-FAC) can track.
    """
    return [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


class _ConstantLinear(nn.Module):
    """``nn.Linear`` with its weights as buffers: same output, invisible to kronfluence."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _ConstantConv2d(nn.Module):
    """``nn.Conv2d`` with its weights as buffers: same output, invisible to kronfluence."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode={layer.padding_mode!r} is not supported here")
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def keep_last_layers(model: nn.Module, k: int) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` in which only the last ``k`` Linear/Conv2d layers remain such layers.

    The others become functionally identical modules holding their weights as buffers, so
    kronfluence (which tracks exactly the ``nn.Linear``/``nn.Conv2d`` modules) attributes through
    the last ``k`` layers only: the usual compromise for EK-FAC on large networks. ``k <= 0``
    keeps every layer. Returns the copy and the names of the layers that stay tracked.
    """
    import copy

    work = copy.deepcopy(model)
    names = linear_conv_layers(work)
    if k <= 0 or k >= len(names):
        return work, names
    keep, drop = names[-k:], names[:-k]
    modules = dict(work.named_modules())
    for name in drop:
        layer = modules[name]
        const = _ConstantLinear(layer) if isinstance(layer, nn.Linear) else _ConstantConv2d(layer)
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else work
        setattr(parent, attr, const)
    return work, keep
