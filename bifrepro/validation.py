"""Field checks shared by the settings dataclasses: each raises ``ValueError`` naming the field.

The message reads ``<Class>.<field>=<value> is invalid: <why>``;
:func:`bifrepro.config.validate_config` rewrites it to the config key (e.g. ``experiment.alphas``).
Every check that takes a number refuses NaN and infinity; :func:`finite_numbers` (first thing in a
``__post_init__``) does it for all float fields at once, so a field without a range check cannot
let ``inf`` through (``sampler.rmsprop_eps=inf`` would divide every step by infinity).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["bad", "finite_numbers", "int_at_least", "positive", "nonneg_float", "one_of"]


def bad(cfg: Any, name: str, why: str) -> None:
    """Raise the ``ValueError`` for field ``name`` of ``cfg``."""
    raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r} is invalid: {why}")


def finite_numbers(cfg: Any) -> None:
    """Every float field of the dataclass ``cfg``, and every float in a list or tuple field, is
    finite (not NaN, not +-inf). ``None``, ints, strings and nested dataclasses are left to their
    own checks."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, list | tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            bad(cfg, f.name, "must be finite (not nan or inf)")


def int_at_least(cfg: Any, name: str, low: int) -> None:
    """``cfg.name`` is an integer (not a bool) >= ``low``."""
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        bad(cfg, name, f"must be an integer >= {low}")


def positive(cfg: Any, name: str) -> None:
    """``cfg.name`` is a finite number > 0."""
    v = getattr(cfg, name)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        bad(cfg, name, "must be a finite number > 0")


def nonneg_float(cfg: Any, name: str, allow_none: bool = False) -> None:
    """``cfg.name`` is a finite number >= 0 (or ``None`` where allowed)."""
    v = getattr(cfg, name)
    if v is None and allow_none:
        return
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        bad(cfg, name, "must be a finite number >= 0" + (" or null" if allow_none else ""))


def one_of(cfg: Any, name: str, options: tuple[str, ...]) -> None:
    """``cfg.name`` is one of ``options``."""
    if getattr(cfg, name) not in options:
        bad(cfg, name, f"must be one of {list(options)}")
