"""Build an attributor from a Hydra ``method`` config (or a settings dataclass, or a dict).

Methods are imported lazily, so choosing ``gradsim`` never imports kronfluence or traker::

    attributor = build_attributor(cfg.method)   # cfg.method.name in METHODS
    attributor.fit(model, task, train_set)
    scores = attributor.score(query_set)        # [n_query, n_train], positive = helpful
"""

from __future__ import annotations

import importlib
from typing import Any

from bifrepro.attribution.base import Attributor
from bifrepro.attribution.configs import METHOD_CONFIGS, method_config_from_mapping

__all__ = ["METHODS", "build_attributor", "attributor_class"]

#: Method name → ``module:class`` of its attributor.
METHODS: dict[str, str] = {
    "bif": "bifrepro.attribution.bif_method:BIFAttributor",
    "ekfac": "bifrepro.attribution.ekfac:EKFACAttributor",
    "trak": "bifrepro.attribution.trak:TRAKAttributor",
    "gradsim": "bifrepro.attribution.gradsim:GradSimAttributor",
    "exact_if": "bifrepro.attribution.exact_if:ExactIFAttributor",
}
assert set(METHODS) == set(METHOD_CONFIGS)


def attributor_class(name: str) -> type[Attributor]:
    """The attributor class registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; known: {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_attributor(cfg: Any, **overrides: Any) -> Attributor:
    """An unfitted attributor from a method config (``name`` selects the method).

    ``cfg`` may be a Hydra/OmegaConf node, a dict or a settings dataclass; ``overrides`` replace
    fields first (e.g. ``per_token="train"``). Settings are validated (``ValueError`` naming the
    field) before anything heavy is imported.
    """
    if overrides:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        if isinstance(cfg, dict):
            cfg = {**cfg, **overrides}
        else:
            import dataclasses

            cfg = dataclasses.replace(cfg, **overrides)
    settings = method_config_from_mapping(cfg)
    return attributor_class(settings.name)(settings)
