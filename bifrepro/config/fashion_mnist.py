"""Registers the Fashion-MNIST data schema (``data=fashion_mnist``, conf/data/fashion_mnist.yaml).

The schema itself lives with its loader in :mod:`bifrepro.data.fashion_mnist_data`; this table is
picked up by :func:`bifrepro.config.all_schemas` like every experiment module's ``SCHEMAS``.
"""

from __future__ import annotations

from bifrepro.data.fashion_mnist_data import FashionMNISTDataConfig

__all__ = ["SCHEMAS"]

#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (("data", "fashion_mnist", FashionMNISTDataConfig),)
