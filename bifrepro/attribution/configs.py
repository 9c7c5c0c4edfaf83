"""Settings of every attribution method: validated dataclasses, also Hydra structured configs.

Each dataclass validates itself in ``__post_init__`` (a ``ValueError`` naming the field), so a
config built in Python or converted from Hydra with ``OmegaConf.to_object`` is checked the same
way. :func:`register_method_configs` stores them in Hydra's ConfigStore as ``method/<name>_schema``;
the YAML files ``conf/method/<name>.yaml`` extend those schemas, so Hydra type-checks overrides
such as ``method.proj_dim=1024`` at composition time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bifrepro.sampling.config import SGLDConfig
from bifrepro.validation import int_at_least as _int_at_least
from bifrepro.validation import nonneg_float as _nonneg_float
from bifrepro.validation import one_of as _one_of

__all__ = [
    "MethodConfig",
    "BIFMethodConfig",
    "EKFACConfig",
    "TRAKConfig",
    "GradSimConfig",
    "ExactIFConfig",
    "METHOD_CONFIGS",
    "method_schemas",
    "register_method_configs",
    "method_config_from_mapping",
]


@dataclass
class MethodConfig:
    """Fields shared by every method."""

    #: Registry name of the method.
    name: str = "base"
    #: Per-token layout: "none" | "train" | "query" | "both" (each method accepts a subset).
    per_token: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        _one_of(self, "per_token", ("none", "train", "query", "both"))


@dataclass
class BIFMethodConfig(MethodConfig):
    """Bayesian influence function: covariance or correlation of SGLD loss traces."""

    name: str = "bif"
    #: "correlation" (Pearson, in [-1, 1]; best for rankings) or "covariance" (+Cov).
    normalize: str = "correlation"
    #: Remove each chain's linear trend through its draws before the covariance (drift guard).
    detrend: bool = False
    #: SGLD settings (step size, nβ, localization γ, chains, draws, ...). In the Hydra configs this
    #: is the top-level ``sampler`` node (conf/sampler/), shared by every experiment.
    sampler: SGLDConfig = field(default_factory=SGLDConfig)
    #: Folder for resumable on-disk traces; null keeps them in memory.
    out_dir: str | None = None
    #: What to do when chains look unhealthy (drifting, non-mixing): "warn" or "raise".
    on_unhealthy: str = "warn"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def validate(self) -> None:
        super().validate()
        _one_of(self, "normalize", ("correlation", "covariance"))
        _one_of(self, "on_unhealthy", ("warn", "raise"))
        if self.sampler is None:  # a Hydra config without a top-level `sampler` node
            self.sampler = SGLDConfig()
        if isinstance(self.sampler, dict):  # plain mapping from a config file
            self.sampler = SGLDConfig.from_mapping(self.sampler)
        if isinstance(self.sampler, SGLDConfig):
            self.sampler.validate()


@dataclass
class EKFACConfig(MethodConfig):
    """kronfluence influence with EK-FAC (or K-FAC / diagonal / identity) curvature."""

    name: str = "ekfac"
    #: kronfluence factor strategy: "ekfac" | "kfac" | "diagonal" | "identity".
    strategy: str = "ekfac"
    #: Damping λ added to the curvature; null = kronfluence's heuristic 0.1 × mean eigenvalue.
    damping: float | None = None
    #: Fit factors on the empirical Fisher (true labels) instead of the true Fisher (sampled).
    use_empirical_fisher: bool = False
    #: Examples used to fit covariance and Lambda factors (null: the whole training set).
    max_fit_examples: int | None = None
    #: Batch size for fitting factors and for training gradients while scoring.
    train_batch_size: int = 64
    #: Batch size for query gradients.
    query_batch_size: int = 16
    #: Low-rank query-gradient approximation (kronfluence query batching); null = exact.
    query_gradient_low_rank: int | None = None
    #: Where kronfluence writes factors and scores; null = a temporary folder removed afterwards.
    output_dir: str | None = None
    #: Seed for the labels sampled from the model when fitting the true Fisher.
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        _one_of(self, "per_token", ("none", "train"))
        _one_of(self, "strategy", ("ekfac", "kfac", "diagonal", "identity"))
        _nonneg_float(self, "damping", allow_none=True)
        for name in ("train_batch_size", "query_batch_size"):
            _int_at_least(self, name, 1)
        for name in ("max_fit_examples", "query_gradient_low_rank"):
            if getattr(self, name) is not None:
                _int_at_least(self, name, 1)


@dataclass
class TRAKConfig(MethodConfig):
    """TRAK (traker): projected, Gauss–Newton-reweighted gradients, ensembled over checkpoints."""

    name: str = "trak"
    #: Random-projection dimension (traker's CPU projector needs >= 128).
    proj_dim: int = 512
    #: Checkpoints to ensemble: the model plus the first num_checkpoints-1 passed to fit().
    num_checkpoints: int = 1
    #: Model output f: "auto" (margin for classification, -loss otherwise), "margin" or "loss".
    model_output: str = "auto"
    #: Ridge term added to Φᵀ Φ before inversion.
    lambda_reg: float = 0.0
    #: Batch size for featurising and scoring.
    batch_size: int = 32
    #: Seed of the projection matrix.
    projector_seed: int = 0
    #: float16 storage (traker's default on GPU; float32 recommended on CPU).
    use_half_precision: bool = False
    #: Where traker writes its memory maps; null = a temporary folder removed afterwards.
    save_dir: str | None = None

    def validate(self) -> None:
        super().validate()
        _one_of(self, "per_token", ("none",))
        _int_at_least(self, "proj_dim", 1)
        _int_at_least(self, "num_checkpoints", 1)
        _int_at_least(self, "batch_size", 1)
        _one_of(self, "model_output", ("auto", "margin", "loss"))
        _nonneg_float(self, "lambda_reg")


@dataclass
class GradSimConfig(MethodConfig):
    """Gradient similarity: cosine (or dot product) of per-sample loss gradients."""

    name: str = "gradsim"
    #: "cosine" (GradSim / Grad-Cos) or "dot" (Grad-Dot).
    similarity: str = "cosine"
    #: Random Gaussian projection dimension; 0 = exact gradients (no projection).
    proj_dim: int = 0
    #: Samples whose gradients are materialised at once (memory ~ chunk_size × n_params floats).
    chunk_size: int = 32
    #: Cache (projected) training gradients after fit when they take at most this many MB.
    max_cache_mb: float = 512.0
    #: Projection seed.
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        _one_of(self, "per_token", ("none",))
        _one_of(self, "similarity", ("cosine", "dot"))
        _int_at_least(self, "proj_dim", 0)
        _int_at_least(self, "chunk_size", 1)
        _nonneg_float(self, "max_cache_mb")


@dataclass
class ExactIFConfig(MethodConfig):
    """Exact damped influence ``∇φᵀ (H + λI)⁻¹ ∇ℓ_i`` for models small enough to form H."""

    name: str = "exact_if"
    #: "hessian" (exact Hessian of the mean training loss) or "gauss_newton" (its GGN).
    curvature: str = "hessian"
    #: Damping λ (> 0 keeps the solve well posed).
    damping: float = 1e-3
    #: Refuse models with more trainable parameters than this (H has max_params² entries).
    max_params: int = 5000
    #: Batch size for accumulating the curvature and gradients.
    batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        _one_of(self, "per_token", ("none",))
        _one_of(self, "curvature", ("hessian", "gauss_newton"))
        _nonneg_float(self, "damping")
        _int_at_least(self, "max_params", 1)
        _int_at_least(self, "batch_size", 1)


#: Method name → settings dataclass.
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "bif": BIFMethodConfig,
    "ekfac": EKFACConfig,
    "trak": TRAKConfig,
    "gradsim": GradSimConfig,
    "exact_if": ExactIFConfig,
}


def method_config_from_mapping(mapping: Any) -> MethodConfig:
    """Build the validated settings dataclass from a dict or OmegaConf node with a ``name`` key.

    Unknown keys are refused by name (a typo must not be silently ignored).
    """
    if isinstance(mapping, MethodConfig):
        base = METHOD_CONFIGS.get(mapping.name)
        if base is not None and type(mapping) is not base and issubclass(type(mapping), base):
            # a Hydra schema variant (e.g. BIF with an interpolated sampler): the plain dataclass
            fields = {f.name: getattr(mapping, f.name) for f in dataclasses.fields(base)}
            mapping = base(**fields)
        mapping.validate()
        return mapping
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(mapping, DictConfig):
            mapping = OmegaConf.to_container(mapping, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    items = dict(mapping)
    name = items.get("name")
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown attribution method {name!r}; known: {sorted(METHOD_CONFIGS)}")
    cls = METHOD_CONFIGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
    if (
        cls is BIFMethodConfig
        and items.get("sampler") is not None
        and not isinstance(items["sampler"], SGLDConfig)
    ):
        items["sampler"] = SGLDConfig.from_mapping(items["sampler"])
    return cls(**items)


def method_schemas() -> list[tuple[str, str, type]]:
    """(group, option, schema) of every method, for :func:`bifrepro.config.register_configs`."""
    return [("method", name, _HYDRA_SCHEMAS.get(name, cls)) for name, cls in METHOD_CONFIGS.items()]


def register_method_configs() -> None:
    """Store every method's schema in Hydra's ConfigStore as ``method/<name>_schema``.

    Kept for callers that compose method configs alone; experiments call
    :func:`bifrepro.config.register_configs`, which stores these with every other schema.
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, name, schema in method_schemas():
        cs.store(group=group, name=f"{name}_schema", node=schema)


@dataclass
class _BIFMethodHydraSchema(BIFMethodConfig):
    """BIF settings as composed by Hydra: ``sampler`` is the top-level ``sampler`` node.

    One set of sampler settings serves every experiment (``sampler=sgld|rmsprop_sgld|rmsprop_frozen_sgld|auto``,
    ``sampler.step_size=...``); a second copy under the method could silently disagree with it.
    Composed on its own (no top-level ``sampler``), the method gets the SGLD defaults.
    :func:`method_config_from_mapping` turns it into a plain :class:`BIFMethodConfig`.
    """

    sampler: Any = "${oc.select:sampler,null}"


_HYDRA_SCHEMAS: dict[str, type] = {"bif": _BIFMethodHydraSchema}
