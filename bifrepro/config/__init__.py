"""Structured configs of the experiment harness: schemas, registration, validation.

Every config group option in ``conf/`` extends a dataclass schema stored in Hydra's ConfigStore
(``<group>/<name>_schema``), so Hydra rejects an unknown key or a value of the wrong type while
composing, with the full key in the message. Ranges are checked by the dataclasses'
``__post_init__``; :func:`validate_config` instantiates every group (``OmegaConf.to_object``) and
re-raises the first problem as a :class:`ConfigError` naming the key, e.g.
``sampler.step_size=-1.0 is invalid: must be a finite number > 0``. Experiments call it first
thing in ``run(cfg)``, before any compute.

Importing this module registers the schemas and the ``bifrepro.abspath`` resolver (used by
``results_dir`` in ``conf/config.yaml``); :func:`register_configs` is idempotent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bifrepro.attribution.configs import MethodConfig, method_config_from_mapping
from bifrepro.config.toy_hierarchy import (
    DeepLinearModelConfig,
    HierarchyDataConfig,
    ToyHierarchyConfig,
    ToyRobustnessConfig,
)
from bifrepro.sampling.config import SGLDConfig
from bifrepro.validation import bad as _bad

__all__ = [
    "ConfigError",
    "HierarchyDataConfig",
    "DeepLinearModelConfig",
    "TrackingConfig",
    "ToyHierarchyConfig",
    "ToyRobustnessConfig",
    "ValidatedConfig",
    "method_settings",
    "register_configs",
    "validate_config",
    "abspath_from_original_cwd",
]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range (message names the key)."""


@dataclass
class TrackingConfig:
    """MLflow tracking (:mod:`bifrepro.tracking`)."""

    #: Log to MLflow at all (results/ files are written either way).
    enabled: bool = True
    #: Tracking URI; an absolute ``sqlite:////abs/path/mlflow.db`` (the plain file store is refused
    #: by MLflow 3). conf/tracking/mlflow.yaml sets it to ``<results_dir>/mlflow.db``.
    uri: str = MISSING
    #: MLflow experiment the runs go to.
    experiment_name: str = "bifrepro"
    #: Artifact root for a newly created MLflow experiment (absolute path or URI; null = MLflow's).
    artifact_location: str | None = None
    #: Run name (null: the experiment name, plus the job's overrides inside a multirun).
    run_name: str | None = None
    #: Extra tags for every run.
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.enabled:
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", self.uri):
                _bad(self, "uri", "must be a URI such as sqlite:////abs/path/mlflow.db")
            if self.uri.startswith("sqlite:///") and not self.uri.startswith("sqlite:////"):
                _bad(self, "uri", "a sqlite URI must hold an absolute path (sqlite:////abs/...)")
            if not self.experiment_name:
                _bad(self, "experiment_name", "must not be empty")


@dataclass
class ValidatedConfig:
    """Every group of a composed config as its validated dataclass (or plain container)."""

    seed: int
    results_dir: Path
    groups: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["groups"][name]
        except KeyError:
            raise AttributeError(name) from None


#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("sampler", "sgld", SGLDConfig),
    ("tracking", "mlflow", TrackingConfig),
)


def abspath_from_original_cwd(path: str) -> str:
    """``path`` made absolute against the directory the program was launched from.

    Inside a Hydra app that is ``hydra.utils.get_original_cwd()``; elsewhere the current directory.
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return str(p)
    base = os.getcwd()
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            base = HydraConfig.get().runtime.cwd
    except Exception:  # noqa: BLE001 - hydra not initialised or not installed: use the cwd
        pass
    return str((Path(base) / p).resolve())


def all_schemas() -> list[tuple[str, str, type]]:
    """Every (group, option, schema) of the project: this module's, the methods', calibration's,
    and the ``SCHEMAS`` table of each experiment module in this package (``bifrepro/config/*.py``).
    """
    import importlib
    import pkgutil

    from bifrepro.attribution.configs import method_schemas
    from bifrepro.sampling.calibration import CalibrationConfig

    schemas: list[tuple[str, str, type]] = list(SCHEMAS)
    schemas.append(("calibration", "default", CalibrationConfig))
    schemas.extend(method_schemas())
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        schemas.extend(getattr(module, "SCHEMAS", ()))
    return schemas


@functools.cache
def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore as ``<group>/<name>_schema`` (once per process)
    and register the ``bifrepro.abspath`` resolver."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, name, schema in all_schemas():
        cs.store(group=group, name=f"{name}_schema", node=schema)
    if not OmegaConf.has_resolver("bifrepro.abspath"):
        OmegaConf.register_new_resolver("bifrepro.abspath", abspath_from_original_cwd)


def _rename(message: str, schema: type, key: str) -> str:
    """``SGLDConfig.step_size=...`` -> ``sampler.step_size=...`` in a validation message."""
    return message.replace(f"{schema.__name__}.", f"{key}.")


def _require_finite(value: Any, path: str) -> None:
    """Every float under ``value`` (dataclass fields, dict values, list items) is finite.

    Schemas check their own ranges; this one walk makes sure no numeric field of any schema,
    however nested, accepts ``nan`` or ``inf`` (``sampler.rmsprop_eps=inf`` is refused here).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{path}={value!r} is invalid: must be finite (not nan or inf)")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _require_finite(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _require_finite(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _require_finite(v, f"{path}[{i}]")


def validate_config(cfg: DictConfig, groups: tuple[str, ...] | None = None) -> ValidatedConfig:
    """Resolve and check a composed config; raise :class:`ConfigError` naming the first bad key.

    Args:
        cfg: the composed config (from ``@hydra.main`` or ``hydra.compose``).
        groups: top-level keys to instantiate (default: every top-level mapping except
            ``hydra``). Structured nodes become their dataclasses (validated in
            ``__post_init__``); plain mappings become dicts.
    """
    register_configs()
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"expected a DictConfig, got {type(cfg).__name__}")
    for key in ("seed", "results_dir"):
        if key not in cfg:
            raise ConfigError(f"config key '{key}' is missing")
    try:
        seed = cfg.seed
        results_dir = cfg.results_dir
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve a top-level key: {err}") from err
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} is invalid: must be an integer >= 0")
    if not isinstance(results_dir, str) or not os.path.isabs(results_dir):
        raise ConfigError(f"results_dir={results_dir!r} is invalid: must be an absolute path")
    if groups is None:
        groups = tuple(k for k in cfg if k != "hydra" and OmegaConf.is_dict(cfg._get_node(k)))
    out: dict[str, Any] = {}
    for key in groups:
        if key not in cfg:
            raise ConfigError(f"config group '{key}' is missing")
        node = cfg._get_node(key)
        schema = OmegaConf.get_type(node) if OmegaConf.is_dict(node) else None
        try:
            obj = OmegaConf.to_object(node)
        except OmegaConfBaseException as err:
            raise ConfigError(f"invalid config at '{key}': {err}") from err
        except (ValueError, TypeError) as err:
            msg = str(err)
            if schema is not None and dataclasses.is_dataclass(schema):
                msg = _rename(msg, schema, key)
            raise ConfigError(msg) from err
        _require_finite(obj, key)
        out[key] = obj
    return ValidatedConfig(seed=int(seed), results_dir=Path(results_dir), groups=out)


def method_settings(names: Sequence[str], settings: Mapping[str, Any]) -> dict[str, MethodConfig]:
    """The settings of every method in ``names``, from the ``methods`` node every experiment
    composes (``/method@methods.<name>: <name>``, conf/method/<name>.yaml); a missing node, an
    unknown key or a node of another method is a :class:`ConfigError` naming ``methods.<name>``."""
    out: dict[str, MethodConfig] = {}
    for name in names:
        if name not in settings:
            raise ConfigError(f"methods.{name} is missing: no settings for method {name!r}")
        try:
            cfg = method_config_from_mapping(settings[name])
        except ValueError as err:
            raise ConfigError(f"methods.{name}: {err}") from err
        if cfg.name != name:
            raise ConfigError(f"methods.{name}.name={cfg.name!r} must be {name!r}")
        out[name] = cfg
    return out
