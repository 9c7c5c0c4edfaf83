"""Datasets and batching helpers.

Fashion-MNIST names are exported lazily (importing a sub-module such as ``bifrepro.data.text``
does not load torch-heavy loaders it does not need).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Exported name -> sub-module defining it.
_EXPORTS = {
    "FASHION_CLASSES": "fashion_mnist",
    "CONFUSABLE_GROUPS": "fashion_mnist",
    "locate_fashion_mnist": "fashion_mnist",
    "FashionMNISTDataConfig": "fashion_mnist_data",
    "FashionMNISTNotFoundError": "fashion_mnist_data",
    "load_fashion_mnist": "fashion_mnist_data",
    "IDXFormatError": "idx",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
