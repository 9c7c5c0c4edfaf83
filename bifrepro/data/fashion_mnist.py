"""Fashion-MNIST files: where they come from, converted into torchvision's layout, read checked.

Fashion-MNIST is 70,000 28×28 grey photographs of clothing in 10 classes (60,000 training, 10,000
test), stored as four IDX files. :func:`locate_fashion_mnist` tries these sources in order and
logs each step:

1. ``<root>/FashionMNIST/raw/*-ubyte`` — the decompressed files, exactly where
   ``torchvision.datasets.FashionMNIST(root, download=False)`` reads them;
2. the Debian package ``dataset-fashion-mnist`` (files found with ``dpkg -L``, or in the folder
   given by the ``debian_dir`` argument or ``$FASHION_MNIST_DEBIAN_DIR``): its ``.gz`` files are
   checked and decompressed into ``<root>/FashionMNIST/raw/``, so the next run takes source 1
   (Debian recompresses the files, so torchvision's checksums of the ``.gz`` files do not apply;
   the check here is the IDX structure and the expected counts);
3. torchvision's download, only when ``download=True`` (and the network allows it);
4. nothing: ``None``; the caller decides about a fallback (:mod:`bifrepro.data.fashion_mnist_data`).

A corrupt file is an :class:`~bifrepro.data.idx.IDXFormatError`, never a silent fallback, and
a failed conversion leaves ``root`` as it was (all four files are checked before one is written).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bifrepro.data.idx import IDXFormatError, parse_idx, read_idx
from bifrepro.io import atomic_write_bytes

__all__ = [
    "FASHION_CLASSES",
    "CONFUSABLE_GROUPS",
    "DEBIAN_PACKAGE",
    "DEBIAN_DIR_ENV",
    "ROOT_ENV",
    "IDX_FILES",
    "SPLIT_SIZES",
    "FashionMNISTFiles",
    "default_root",
    "raw_folder",
    "debian_files",
    "convert_debian_files",
    "locate_fashion_mnist",
    "read_split",
]

log = logging.getLogger(__name__)

#: Class names in label order (label 0 is "T-shirt/top").
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Groups of classes that look alike (labels): upper-body garments and footwear. Attribution
#: methods that tell them apart should find training images of the same class, not of the group.
CONFUSABLE_GROUPS: dict[str, tuple[int, ...]] = {
    "tops": (0, 2, 4, 6),
    "footwear": (5, 7, 9),
}
#: The Debian package holding the four ``.gz`` files.
DEBIAN_PACKAGE = "dataset-fashion-mnist"
#: Folder with the package's files, overriding ``dpkg -L`` (tests, unpacked ``.deb`` files).
DEBIAN_DIR_ENV = "FASHION_MNIST_DEBIAN_DIR"
#: Default data root when ``data.root`` is null.
ROOT_ENV = "FASHION_MNIST_ROOT"
#: (images file, labels file) of each split, named as torchvision names the decompressed files.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Items per split of the real dataset.
SPLIT_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}
#: Fallback folder of the Debian package when dpkg is not available.
_DEBIAN_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class FashionMNISTFiles:
    """Where the four decompressed files were found: ``raw`` holds them; ``kind`` is ``"root"``,
    ``"debian"`` or ``"download"``; ``description`` is a sentence for logs and figure notes."""

    raw: Path
    kind: str
    description: str


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$FASHION_MNIST_ROOT``, else ``~/.cache/bifrepro/data``."""
    environ = os.environ if environ is None else environ
    value = environ.get(ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "bifrepro" / "data"


def raw_folder(root: str | os.PathLike[str]) -> Path:
    """``<root>/FashionMNIST/raw``: where torchvision's ``FashionMNIST`` keeps the IDX files."""
    return Path(root).expanduser() / "FashionMNIST" / "raw"


def _all_names() -> list[str]:
    return [name for pair in IDX_FILES.values() for name in pair]


def debian_files(
    debian_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Path] | None:
    """The package's four files (``name -> path``, ``.gz`` or plain), or ``None`` if absent.

    Looked up in ``debian_dir``, else ``$FASHION_MNIST_DEBIAN_DIR``, else the file list of the
    installed package (``dpkg -L``). A folder given explicitly is the only place looked at.
    """
    environ = os.environ if environ is None else environ
    folder = debian_dir if debian_dir is not None else environ.get(DEBIAN_DIR_ENV) or None
    if folder is not None:
        candidates = [p for p in Path(folder).expanduser().glob("*") if p.is_file()]
    else:
        candidates = _dpkg_listing()
    found: dict[str, Path] = {}
    for name in _all_names():
        for path in candidates:
            if path.name in (name, f"{name}.gz"):
                found[name] = path
                break
    if len(found) == len(_all_names()):
        return found
    if found:
        missing = sorted(set(_all_names()) - set(found))
        log.warning("Fashion-MNIST package files incomplete (missing %s): ignored", missing)
    return None


def _dpkg_listing() -> list[Path]:
    """Files of the installed Debian package (empty when dpkg or the package is missing)."""
    if shutil.which("dpkg") is None:
        return [p for p in _DEBIAN_DEFAULT_DIR.glob("*") if p.is_file()]
    try:
        out = subprocess.run(
            ["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [Path(line) for line in out.stdout.splitlines() if Path(line).is_file()]


def _checked_split(images: np.ndarray, labels: np.ndarray, name: str, expected: int | None) -> None:
    """Images ``[N, 28, 28]``, labels ``[N]`` in 0..9, ``N == expected`` (when given)."""
    if images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{name}: images of shape {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise IDXFormatError(f"{name}: {len(images)} images but {len(labels)} labels")
    if expected is not None and len(labels) != expected:
        raise IDXFormatError(f"{name}: {len(labels)} items, expected {expected}")
    if len(labels) and int(labels.max()) >= len(FASHION_CLASSES):
        raise IDXFormatError(f"{name}: label {int(labels.max())} outside 0..9")


def read_split(
    raw: str | os.PathLike[str], split: str, expected: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of ``split`` from the folder ``raw``.

    Raises:
        IDXFormatError: a file is malformed or the images and labels do not match.
        FileNotFoundError: a file is missing.
    """
    image_name, label_name = IDX_FILES[split]
    images = read_idx(Path(raw) / image_name, ndim=3)
    labels = read_idx(Path(raw) / label_name, ndim=1)
    _checked_split(images, labels, f"{raw} ({split})", expected)
    return images, labels


def convert_debian_files(
    files: Mapping[str, Path],
    root: str | os.PathLike[str],
    sizes: Mapping[str, int] | None = SPLIT_SIZES,
) -> Path:
    """Decompress the package's files into ``raw_folder(root)`` after checking all of them.

    Each file is parsed (magic number, shape, size, labels 0..9, and ``sizes`` items per split:
    60,000/10,000; ``None``: any) before anything is written, and each is written atomically, so
    a corrupt package leaves ``root`` as it was. Returns the raw folder.
    """
    decoded: dict[str, bytes] = {}
    for name in _all_names():
        path = files[name]
        try:
            data = path.read_bytes()
            decoded[name] = gzip.decompress(data) if path.suffix == ".gz" else data
        except (EOFError, OSError, zlib.error) as err:
            raise IDXFormatError(f"{path}: cannot be read or decompressed ({err})") from err
    for split, (image_name, label_name) in IDX_FILES.items():
        images = parse_idx(decoded[image_name], str(files[image_name]), ndim=3)
        labels = parse_idx(decoded[label_name], str(files[label_name]), ndim=1)
        _checked_split(
            images,
            labels,
            f"{DEBIAN_PACKAGE} ({split})",
            None if sizes is None else sizes[split],
        )
    raw = raw_folder(root)
    for name, data in decoded.items():
        atomic_write_bytes(raw / name, data)
    return raw


def _root_status(raw: Path) -> str:
    """``"complete"``, ``"absent"`` or ``"partial"`` (some of the four files)."""
    present = [name for name in _all_names() if (raw / name).is_file()]
    if len(present) == len(_all_names()):
        return "complete"
    return "partial" if present else "absent"


def _download(root: Path) -> Path:
    """torchvision's download of both splits into ``root`` (raises on any failure)."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return raw_folder(root)


def locate_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    debian_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    environ: Mapping[str, str] | None = None,
    sizes: Mapping[str, int] | None = SPLIT_SIZES,
) -> FashionMNISTFiles | None:
    """The first source that has Fashion-MNIST (module docstring), or ``None``; each step logged.

    Args:
        root: data root (``None``: :func:`default_root`); files end up in ``<root>/FashionMNIST/raw``.
        debian_dir: folder with the package's files instead of ``dpkg -L``.
        download: allow torchvision's download when the first two sources have nothing.
        environ: environment variables (``None``: ``os.environ``).
        sizes: items per split the package must hold (``None``: any; for tests).

    Raises:
        IDXFormatError: the package's files are corrupt (nothing is written to ``root``).
    """
    root = Path(root).expanduser() if root is not None else default_root(environ)
    raw = raw_folder(root)
    status = _root_status(raw)
    if status == "complete":
        log.info("Fashion-MNIST: source 1/3, decompressed IDX files in %s", raw)
        return FashionMNISTFiles(raw, "root", f"Fashion-MNIST (IDX files in {raw})")
    log.info("Fashion-MNIST: source 1/3, %s has %s", raw, "only some files" if status == "partial"
             else "no files")  # fmt: skip
    files = debian_files(debian_dir, environ)
    if files is not None:
        origin = Path(next(iter(files.values()))).parent
        log.info("Fashion-MNIST: source 2/3, Debian package files in %s: converting", origin)
        convert_debian_files(files, root, sizes)
        log.info("Fashion-MNIST: decompressed into %s", raw)
        return FashionMNISTFiles(
            raw, "debian", f"Fashion-MNIST (Debian package {DEBIAN_PACKAGE}, {origin} -> {raw})"
        )
    log.info("Fashion-MNIST: source 2/3, Debian package %s not found", DEBIAN_PACKAGE)
    if not download:
        log.info("Fashion-MNIST: source 3/3, download is off (data.download=false)")
        return None
    try:
        log.info("Fashion-MNIST: source 3/3, downloading with torchvision into %s", root)
        raw = _download(root)
    except Exception as err:  # noqa: BLE001 - any network or server failure means "not available"
        log.warning("Fashion-MNIST: download failed (%s: %s)", type(err).__name__, err)
        return None
    return FashionMNISTFiles(raw, "download", f"Fashion-MNIST (torchvision download into {raw})")
