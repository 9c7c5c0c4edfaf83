"""Schemas of the toy-hierarchy experiment (``experiments/toy_hierarchy.py``): the tree dataset,
the deep linear network and the ``experiment`` node. Registered by
:func:`bifrepro.config.register_configs` from :data:`SCHEMAS`; re-exported by ``bifrepro.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bifrepro.validation import bad as _bad
from bifrepro.validation import int_at_least as _int_at_least
from bifrepro.validation import one_of as _one_of
from bifrepro.validation import positive as _positive

__all__ = [
    "HierarchyDataConfig",
    "DeepLinearModelConfig",
    "ToyHierarchyConfig",
    "ToyRobustnessConfig",
    "SCHEMAS",
]


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
class ToyRobustnessConfig(ToyHierarchyConfig):
    """Settings of ``experiments/toy_robustness.py``: the toy protocol repeated over sampler and
    initialisation seeds, to tell robust sign flips from Monte Carlo noise."""

    name: str = "toy_robustness"
    #: Sampler seeds per initialisation (>= 2 for intervals; the issue asks for >= 5).
    sampler_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    #: Initialisation (and training) seeds (the issue asks for >= 3).
    init_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: Level of the t-intervals over sampler seeds at the cross-fitted extremes.
    confidence: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("sampler_seeds", "init_seeds"):
            v = getattr(self, name)
            if len(v) != len(set(v)) or not v:
                _bad(self, name, "must be a non-empty list of distinct seeds")
        if len(self.sampler_seeds) < 2:
            _bad(self, "sampler_seeds", "needs >= 2 seeds for an interval over seeds")
        if not 0 < self.confidence < 1:
            _bad(self, "confidence", "must be in (0, 1)")


#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("data", "hierarchy", HierarchyDataConfig),
    ("model", "deep_linear", DeepLinearModelConfig),
    ("experiment_schema", "toy_hierarchy", ToyHierarchyConfig),
    ("experiment_schema", "toy_robustness", ToyRobustnessConfig),
)
