"""Schema of the compute experiment's grids (the ``compute`` node of ``experiment=compute``; its
``experiment`` node is the LDS task of :mod:`bifrepro.config.lds`) and its config checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bifrepro.config import ConfigError, ValidatedConfig
from bifrepro.config.lds import EmbeddedImagesConfig, check_method_settings
from bifrepro.data.images import ImageData, load_embedded_images
from bifrepro.evaluation.cost_grids import COST_LABELS
from bifrepro.models.vision import SmallCNNConfig
from bifrepro.validation import bad as _bad

__all__ = ["ComputeConfig", "SCHEMAS", "checked_compute_config", "grid_data"]


@dataclass
class ComputeConfig:
    """Settings of the compute grids (node ``compute``; the LDS task is the ``experiment`` node)."""

    #: Training items n of the n-grid (queries fixed at q_base).
    n_grid: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])
    #: Queries q of the q-grid (training items fixed at n_base). With as many entries as n_grid,
    #: the pairs (n_grid[i], q_grid[i]) also form a diagonal grid along which n·q grows.
    q_grid: list[int] = field(default_factory=lambda: [10, 30, 100, 200])
    #: SmallCNN widths of the model-size grid (at n_base, q_base).
    width_grid: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    #: BIF draws per chain of the draws grid (at n_base, q_base).
    draws_grid: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    #: Fixed sizes of the other grids.
    n_base: int = 1000
    q_base: int = 50
    #: Methods timed.
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac", "trak", "gradsim"])
    #: BIF draws per chain in the n, q and width grids (null: the LDS sampler's num_draws).
    grid_draws: int | None = 25
    #: Epochs of the (cost-only) models trained for the grids.
    grid_epochs: int = 1
    #: Also measure time-to-equal-LDS on the LDS task (reuses its caches).
    time_to_equal_lds: bool = True
    #: Method BIF is compared with for the crossover and time-to-equal-LDS.
    reference: str = "ekfac"
    #: Device of the grids: "cpu", "cuda" or "auto" (CUDA when available).
    device: str = "cpu"
    #: null: results_dir/<experiment.name> (single run) or the Hydra job folder (multirun).
    output_dir: str | None = None
    #: Torch intra-op threads while timing (null: torch's default); timings are labelled with it.
    torch_threads: int | None = 1
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.torch_threads is not None and self.torch_threads < 1:
            _bad(self, "torch_threads", "must be >= 1 or null")
        for name in ("n_grid", "q_grid", "width_grid", "draws_grid"):
            v = getattr(self, name)
            if any(not isinstance(x, int) or x < 2 for x in v) or len(set(v)) != len(v):
                _bad(self, name, "must be distinct integers >= 2 (an empty list skips the grid)")
        for name in ("n_base", "q_base", "grid_epochs"):
            if getattr(self, name) < 1:
                _bad(self, name, "must be >= 1")
        unknown = [m for m in self.methods if m not in COST_LABELS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            _bad(self, "methods", f"must name methods of {list(COST_LABELS)}, once each")
        if self.grid_draws is not None and self.grid_draws < 2:
            _bad(self, "grid_draws", "must be >= 2 or null")
        if self.reference not in COST_LABELS or self.reference == "bif":
            _bad(self, "reference", "must be ekfac, trak or gradsim")


#: (group, option name, schema), stored by :func:`bifrepro.config.register_configs`.
SCHEMAS: tuple[tuple[str, str, type], ...] = (("compute_schema", "compute", ComputeConfig),)


def checked_compute_config(vc: ValidatedConfig) -> ComputeConfig:
    """The ``compute`` node of a validated config, after the checks the grids need: a fixed
    sampler, model=small_cnn on embedded data, settings for every timed method."""
    comp = vc.compute
    if not isinstance(comp, ComputeConfig):
        raise ConfigError("compute: expected the compute schema (experiment=compute)")
    if vc.calibration.enabled:
        raise ConfigError(
            "sampler=auto / calibration=auto: experiment=compute times a fixed sampler; calibrate "
            "with `experiment=lds sampler=auto` and pass the chosen step (sampler.step_size=...)"
        )
    if not isinstance(vc.model, SmallCNNConfig) or not isinstance(vc.data, EmbeddedImagesConfig):
        raise ConfigError(
            "compute: the grids need model=small_cnn and an embedded dataset (data=mnist5k)"
        )
    reference = [comp.reference] if comp.time_to_equal_lds else []
    check_method_settings(["bif", *comp.methods, *reference], vc.methods)
    return comp


def grid_data(comp: ComputeConfig, data: EmbeddedImagesConfig) -> ImageData:
    """The embedded dataset split with enough training and held-out images for every grid."""
    n_max = max([comp.n_base, *comp.n_grid])
    q_max = max([comp.q_base, *comp.q_grid])
    d = load_embedded_images(
        data.name, math.ceil(q_max / 10), math.ceil(n_max / 10), seed=data.split_seed
    )
    if len(d.train) < n_max or len(d.test) < q_max:
        raise ConfigError(
            f"compute: {data.name} has too few images for n={n_max} and q={q_max} "
            f"({len(d.train)} training, {len(d.test)} held out)"
        )
    return d
