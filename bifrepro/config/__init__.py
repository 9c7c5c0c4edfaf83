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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bifrepro.sampling.config import SGLDConfig
from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least
from bifrepro.validation import one_of as _one_of
from bifrepro.validation import positive as _positive

__all__ = [
    "ConfigError",
    "HierarchyDataConfig",
    "DeepLinearModelConfig",
    "TrackingConfig",
    "ToyHierarchyConfig",
    "ValidatedConfig",
    "register_configs",
    "validate_config",
    "abspath_from_original_cwd",
]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range (message names the key)."""


@dataclass
class HierarchyDataConfig:
    """The Saxe–McClelland–Ganguli tree dataset (:mod:`bifrepro.data.hierarchy`)."""

    #: Dataset name (recorded as the MLflow ``dataset`` tag).
    name: str = "hierarchy"
    #: Levels below the root (>= 1); there are branching**depth items.
    depth: int = 3
    #: Children per internal node (>= 2).
    branching: int = 2
    #: Item names, left to right (null: dog, cat, ... for the 2 x 3 tree, else item0, item1, ...).
    item_names: list[str] | None = None

    def __post_init__(self) -> None:
        _int_at_least(self, "depth", 1)
        _int_at_least(self, "branching", 2)
        if self.branching**self.depth > 4096:
            _bad(self, "depth", f"branching**depth = {self.branching**self.depth} items (max 4096)")
        if self.item_names is not None:
            n = self.branching**self.depth
            if len(self.item_names) != n or len(set(self.item_names)) != n:
                _bad(self, "item_names", f"needs {n} distinct names")


@dataclass
class DeepLinearModelConfig:
    """Bias-free deep linear network (:class:`bifrepro.models.linear.DeepLinearNetwork`)."""

    #: Model name (recorded as a tag).
    name: str = "deep_linear"
    #: Width of every hidden layer.
    hidden: int = 16
    #: Number of weight matrices (2 = one hidden layer).
    num_layers: int = 2
    #: Standard deviation of the initial weights (small => stagewise learning).
    init_scale: float = 1e-3

    def __post_init__(self) -> None:
        _int_at_least(self, "hidden", 1)
        _int_at_least(self, "num_layers", 1)
        _positive(self, "init_scale")


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


_NORMALIZE = ("covariance", "correlation")


@dataclass
class ToyHierarchyConfig:
    """Settings of ``experiments/toy_hierarchy.py`` (training, checkpoints, figures, metrics)."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "toy_hierarchy"
    #: Full-batch gradient descent learning rate.
    lr: float = 0.1
    #: Number of gradient descent steps.
    steps: int = 3000
    #: Number of log-spaced checkpoints (BIF, analytic and leave-one-out at each).
    num_checkpoints: int = 24
    #: First checkpoint step (the grid runs log-spaced from here to ``steps``).
    first_checkpoint: int = 40
    #: BIF estimator shown in the figures: "covariance" (+Cov, same units as the analytic
    #: prediction) or "correlation" (Pearson). Both are computed and reported.
    normalize: str = "covariance"
    #: Source item of the influence-curve figure (null: the first item).
    focus_item: str | None = None
    #: Target items of that figure (null: one per depth of common ancestor, closest first).
    focus_targets: list[str] | None = None
    #: Steps for the influence-matrix figure (null: chosen around the mode transitions).
    matrix_steps: list[int] | None = None
    #: Checkpoints where |leave-one-out| < sign_tolerance x its peak are skipped in sign agreement.
    sign_tolerance: float = 0.05
    #: A curve "flips sign" if both its max and -min exceed flip_threshold x max |curve|.
    flip_threshold: float = 0.2
    #: Output folder for figures and tables (null: results_dir/<name>, or the Hydra job folder
    #: inside a multirun so that sweep jobs do not overwrite each other).
    output_dir: str | None = None
    #: Torch device for the BIF sampling ("cpu", "cuda", ...).
    device: str = "cpu"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        _positive(self, "lr")
        _int_at_least(self, "steps", 1)
        _int_at_least(self, "num_checkpoints", 2)
        _int_at_least(self, "first_checkpoint", 1)
        if self.first_checkpoint > self.steps:
            _bad(self, "first_checkpoint", f"must be <= steps ({self.steps})")
        _one_of(self, "normalize", _NORMALIZE)
        for name in ("sign_tolerance", "flip_threshold"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 <= v < 1:
                _bad(self, name, "must be in [0, 1)")
        if self.matrix_steps is not None:
            if not self.matrix_steps or any(s < 0 or s > self.steps for s in self.matrix_steps):
                _bad(
                    self, "matrix_steps", f"must be a non-empty list of steps in [0, {self.steps}]"
                )


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
    ("data", "hierarchy", HierarchyDataConfig),
    ("model", "deep_linear", DeepLinearModelConfig),
    ("sampler", "sgld", SGLDConfig),
    ("tracking", "mlflow", TrackingConfig),
    ("experiment_schema", "toy_hierarchy", ToyHierarchyConfig),
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
        out[key] = obj
    return ValidatedConfig(seed=int(seed), results_dir=Path(results_dir), groups=out)

