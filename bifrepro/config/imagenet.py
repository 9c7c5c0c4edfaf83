"""Schemas and path choice of the gallery experiment (``experiments/imagenet.py``).

:class:`ImageNetExperimentConfig` is the ``experiment`` node; :data:`SCHEMAS` also registers the
ImageNet / stand-in data and model schemas. :func:`choose_imagenet_path` decides between ImageNet
and the embedded stand-in before anything is loaded, and :func:`check_weights_file` reads a
configured GoogLeNet weights file before the (minutes-long) ImageNet folder scan.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from bifrepro.config import ConfigError
from bifrepro.data.fashion_mnist_data import FashionMNISTDataConfig
from bifrepro.data.imagenet import (
    IMAGENET_ROOT_ENV,
    ImageNetDataConfig,
    StandinDataConfig,
    resolve_imagenet_root,
)
from bifrepro.models.vision import (
    GoogLeNetConfig,
    SmallCNNConfig,
    WeightsFileError,
    load_googlenet_weights,
)

__all__ = [
    "DEFAULT_STANDIN",
    "GALLERY_METHODS",
    "ImageNetExperimentConfig",
    "SCHEMAS",
    "check_weights_file",
    "choose_imagenet_path",
]

log = logging.getLogger(__name__)

#: Methods of the gallery experiment (bif and ekfac always run). ``bif_cov`` (BIF by covariance,
#: from BIF's traces) and ``ekfac_relatif`` (EK-FAC / sqrt(self-influence), from EK-FAC's fit)
#: are derived arms without a settings node of their own.
GALLERY_METHODS = ("bif", "bif_cov", "ekfac", "ekfac_relatif", "trak", "gradsim")
#: Dataset of the stand-in that ``make reproduce-imagenet`` runs by default (the folder
#: results/imagenet/<this>/ the README's vision block reads; MNIST-5k when it fell back).
DEFAULT_STANDIN = "fashion_mnist"


def check_methods(methods: list[str], key: str, bad: Callable[[str, str], None]) -> None:
    """``bad(key, why)`` unless ``methods`` holds bif, ekfac and only known names, once each."""
    unknown = sorted(set(methods) - set(GALLERY_METHODS))
    if unknown or not {"bif", "ekfac"} <= set(methods) or len(set(methods)) != len(methods):
        bad(key, f"must include 'bif' and 'ekfac' and only name {list(GALLERY_METHODS)}, once each")


@dataclass
class ImageNetExperimentConfig:
    """Settings of ``experiments/imagenet.py`` (the ``experiment`` node)."""

    #: Experiment name: results go to results_dir/<name>/<dataset>/, MLflow experiment <name>.
    name: str = "imagenet"
    #: Refuse to fall back to the stand-in when no ImageNet root is set (experiment=imagenet_real).
    require_imagenet: bool = False
    #: Methods on the ImageNet path: bif and ekfac (the galleries), optionally trak and gradsim.
    #: The stand-in uses standin.methods. Their settings: the top-level ``methods`` node
    #: (conf/method/<name>.yaml; e.g. methods.ekfac.query_batch_size=32), as in every experiment;
    #: BIF's SGLD settings are the top-level ``sampler`` node.
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac"])
    #: BIF estimator: "correlation" (Pearson; the poster ranks by it) or "covariance" (+Cov).
    normalize: str = "correlation"
    #: Query measurement for every method: "loss" (cross-entropy) or "margin" (-margin).
    measurement: str = "loss"
    #: Images per method in each gallery row (the poster shows 3).
    gallery_k: int = 3
    #: k of the label-agreement and overlap metrics.
    ks: list[int] = field(default_factory=lambda: [1, 3, 10])
    #: Confidence interval of the mean agreement: "bootstrap" (over queries) or "wilson".
    ci_method: str = "bootstrap"
    #: Confidence level and bootstrap resamples.
    confidence: float = 0.95
    n_boot: int = 2000
    #: BIF runs with this many sampler seeds (sampler.seed, sampler.seed + 1, ...); the headline
    #: arms and the galleries use the first (sampler.seed), bif_seeds.csv lists every seed's
    #: label agreement and their spread. The stand-in sets 3 (standin.experiment).
    bif_seeds: int = 1
    #: EK-FAC tracks only the last this many Linear/Conv2d layers in the model's definition order
    #: (0: all). ImageNet path only; the stand-in always tracks every layer.
    ekfac_last_layers: int = 0
    #: Pick the SGLD step size with the automatic calibration (bifrepro.sampling.calibrate)
    #: instead of sampler.step_size (as `sampler=auto` / `calibration=auto`; settings: the
    #: `calibration` node); the report is saved and compared with the hand-picked value.
    calibrate: bool = False
    #: Write the loss traces to disk (resumable) under cache_dir/traces/.
    traces_on_disk: bool = False
    #: Cache folder: trained stand-in model, traces (null: results_dir/cache/imagenet).
    cache_dir: str | None = None
    #: Output folder (null: results_dir/<name>/<dataset>).
    output_dir: str | None = None
    #: Torch device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(
                f"ImageNetExperimentConfig.{name}={getattr(self, name)!r} is invalid: {why}"
            )

        check_methods(self.methods, "methods", bad)
        if self.normalize not in ("correlation", "covariance"):
            bad("normalize", "must be 'correlation' or 'covariance'")
        if "bif_cov" in self.methods and self.normalize != "correlation":
            bad("normalize", "must be 'correlation' when methods include bif_cov")
        if not isinstance(self.bif_seeds, int) or self.bif_seeds < 1:
            bad("bif_seeds", "must be an integer >= 1")
        if self.measurement not in ("loss", "margin"):
            bad("measurement", "must be 'loss' or 'margin'")
        if not isinstance(self.gallery_k, int) or self.gallery_k < 1:
            bad("gallery_k", "must be an integer >= 1")
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            bad("ks", "must be a non-empty list of integers >= 1")
        if self.ci_method not in ("bootstrap", "wilson"):
            bad("ci_method", "must be 'bootstrap' or 'wilson'")
        if not 0 < self.confidence < 1:
            bad("confidence", "must be in (0, 1)")
        if not isinstance(self.n_boot, int) or self.n_boot < 100:
            bad("n_boot", "must be an integer >= 100")
        if not isinstance(self.ekfac_last_layers, int) or self.ekfac_last_layers < 0:
            bad("ekfac_last_layers", "must be an integer >= 0")


#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("data", "imagenet", ImageNetDataConfig),
    ("data", "imagenet_standin", StandinDataConfig),
    ("model", "googlenet", GoogLeNetConfig),
    ("model", "standin_cnn", SmallCNNConfig),
    ("experiment_schema", "imagenet", ImageNetExperimentConfig),
)


def choose_imagenet_path(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """``(config that will run, uses_standin)``; swaps in the ``standin`` node when needed.

    The returned config is a copy whose ``data``/``model``/``sampler`` are what actually runs, so
    MLflow records the real settings. A root that was set but is missing stays an error (raised
    when the pool is loaded), never a silent fallback.
    """
    exp = cfg.get("experiment")
    if exp is None or OmegaConf.get_type(exp) is not ImageNetExperimentConfig:
        raise ConfigError("experiment: expected the imagenet schema (experiment=imagenet)")
    data_type = OmegaConf.get_type(cfg.data)
    model_type = OmegaConf.get_type(cfg.model)
    if data_type in (StandinDataConfig, FashionMNISTDataConfig):
        if model_type is not SmallCNNConfig:
            raise ConfigError("model: the stand-in data (data=mnist5k) needs model=small_cnn")
        return cfg, True
    if data_type is not ImageNetDataConfig:
        raise ConfigError("data: expected data=imagenet or data=mnist5k")
    root, origin = resolve_imagenet_root(cfg.data.root)
    if root is not None:
        if model_type is not GoogLeNetConfig:
            raise ConfigError("model: ImageNet (data=imagenet) needs model=googlenet")
        log.info("ImageNet root %s (from %s)", root, origin)
        return cfg, False
    if cfg.experiment.require_imagenet:
        raise ConfigError(
            f"{IMAGENET_ROOT_ENV} is not set and data.root is null: experiment=imagenet_real "
            f"needs ImageNet (root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG); set "
            f"{IMAGENET_ROOT_ENV}=/path/to/imagenet, or use experiment=imagenet for the stand-in"
        )
    standin = cfg.get("standin")
    if standin is None:
        raise ConfigError(
            f"{IMAGENET_ROOT_ENV} is not set and the config has no 'standin' node to fall back to"
        )
    log.warning(
        "%s is not set: no ImageNet here, running the same pipeline on the embedded stand-in "
        "(%s, a small CNN trained from scratch); set %s=/path/to/imagenet for the real experiment",
        IMAGENET_ROOT_ENV,
        standin.data.name,
        IMAGENET_ROOT_ENV,
    )
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key in ("data", "model", "sampler"):
            del out[key]
            out[key] = copy.deepcopy(standin[key])
        out.experiment.methods = list(standin.methods)
    # the stand-in's own experiment fields (e.g. bif_seeds) and method settings (e.g. TRAK's
    # checkpoints), merged into the structured nodes so they are validated like any override
    try:
        if standin.get("experiment"):
            out.experiment = OmegaConf.merge(out.experiment, standin.experiment)
        if standin.get("method_settings"):
            with open_dict(out):
                out.methods = OmegaConf.merge(out.methods, standin.method_settings)
    except (ValueError, KeyError, AttributeError) as err:  # omegaconf errors: name the node
        raise ConfigError(f"standin: {err}") from None
    return out, True


def check_weights_file(model: GoogLeNetConfig) -> dict[str, torch.Tensor] | None:
    """The state dict of ``model.weights_path`` (``None`` if unset), read before any data scan;
    a missing or unreadable file is a :class:`ConfigError` naming the key and the file."""
    try:
        return load_googlenet_weights(model)
    except WeightsFileError as err:
        raise ConfigError(str(err)) from None
