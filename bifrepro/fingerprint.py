"""Cheap, deterministic fingerprints of what a trace store's numbers depend on.

A trace store is resumed only when the data, weights, loss functions and settings that produced
it are the same; these functions turn each into a short hex digest (SHA-256, 16 hex digits):

- tensors: dtype, shape and raw bytes (so equal values on CPU and GPU hash alike);
- datasets: their length plus up to ``max_items`` items at evenly spaced, deterministic
  positions (always including the first and the last), collated as the sampler collates them.
  A big dataset is therefore fingerprinted on a sample: a change confined to items between the
  sampled positions is not seen (the losses at w* of every observed item are compared as well);
- models: every entry of the state dict (trainable weights, frozen weights and buffers);
- loss functions: qualified name (without the module) plus a hash of the source code when ``inspect.getsource`` works
  (``functools.partial`` arguments and simple closure values included). A callable whose source
  is unavailable is identified by its qualified name only.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["hash_value", "dataset_fingerprint", "model_fingerprint", "callable_fingerprint"]

#: Items of a dataset that enter its fingerprint (evenly spaced, first and last included).
MAX_FINGERPRINT_ITEMS = 512
_DIGITS = 16


def _update(h: Any, value: Any) -> None:
    """Feed ``value`` (tensors, arrays, numbers, strings and containers of them) into ``h``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"array{a.dtype}{a.shape}".encode())
        if a.dtype == object:
            for item in a.flat:
                _update(h, item)
        else:
            h.update(a.tobytes())
    elif isinstance(value, Mapping):
        h.update(f"map{len(value)}".encode())
        for key in sorted(value, key=str):
            _update(h, str(key))
            _update(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"seq{len(value)}".encode())
        for item in value:
            _update(h, item)
    elif isinstance(value, str | bytes):
        h.update(f"{type(value).__name__}{len(value)}:".encode())
        h.update(value.encode() if isinstance(value, str) else value)
    elif value is None or isinstance(value, bool | numbers.Number):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        h.update(f"object:{type(value).__module__}.{type(value).__qualname__}".encode())


def hash_value(value: Any) -> str:
    """Digest of a nested structure of tensors, arrays, numbers and strings."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()[:_DIGITS]


def fingerprint_positions(n: int, max_items: int = MAX_FINGERPRINT_ITEMS) -> list[int]:
    """Deterministic item positions: all of ``range(n)``, or ``max_items`` evenly spaced ones."""
    if n <= max_items:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, max_items).round()})


def dataset_fingerprint(
    data: Dataset,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    max_items: int = MAX_FINGERPRINT_ITEMS,
) -> str:
    """Digest of a dataset: its length and the collated items at :func:`fingerprint_positions`."""
    n = len(data)  # type: ignore[arg-type]
    items = [data[i] for i in fingerprint_positions(n, max_items)]
    collate = collate_fn or default_collate
    h = hashlib.sha256()
    _update(h, ("dataset", n, collate(items) if items else None))
    return h.hexdigest()[:_DIGITS]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Digest of every state-dict entry (name, dtype, shape, bytes) of ``model``."""
    return hash_value(dict(model.state_dict()))


def _source_digest(obj: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:_DIGITS]
    except (OSError, TypeError):
        return None


def _simple(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | numbers.Number)


def callable_fingerprint(fn: Callable[..., Any]) -> dict[str, Any]:
    """Qualified name and source digest of a loss function (a JSON-able dict).

    ``functools.partial`` is unwrapped (its simple arguments are recorded); a callable object is
    identified by its class; closure cells holding numbers or strings are recorded too.
    """
    out: dict[str, Any] = {}
    if isinstance(fn, functools.partial):
        out["partial_args"] = [repr(a) if _simple(a) else type(a).__qualname__ for a in fn.args]
        out["partial_kwargs"] = {
            k: repr(v) if _simple(v) else type(v).__qualname__
            for k, v in sorted(fn.keywords.items())
        }
        fn = fn.func
    target: Any = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    # The qualified name without the module: a script run as __main__ and the same file imported
    # as a module define the same function.
    out["name"] = getattr(target, "__qualname__", type(target).__qualname__)
    out["source"] = _source_digest(target)
    closure = getattr(fn, "__closure__", None) or ()
    cells = []
    for cell in closure:
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _simple(value):
            cells.append(repr(value))
    if cells:
        out["closure"] = cells
    return out


def describe_difference(stored: Any, requested: Any, path: Sequence[str] = ()) -> list[str]:
    """Dotted paths of the leaves where two JSON-like structures differ."""
    if isinstance(stored, Mapping) and isinstance(requested, Mapping):
        out = []
        for key in sorted(set(stored) | set(requested), key=str):
            out += describe_difference(stored.get(key), requested.get(key), (*path, str(key)))
        return out
    return [] if stored == requested else [".".join(path) or "<root>"]
