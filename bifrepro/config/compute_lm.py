"""Schema of ``experiments/compute_lm.py``: BIF vs EK-FAC cost across a family of causal LMs.

The ``compute_lm`` node holds the family and the work timed at every size; the ``experiment``
node only names the run. :func:`bifrepro.config.register_configs` stores both (``SCHEMAS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bifrepro.config import ConfigError, ValidatedConfig
from bifrepro.evaluation.lm_scaling import LMSize, family
from bifrepro.models.lm import CausalLMConfig
from bifrepro.validation import bad as _bad

__all__ = ["ComputeLMExperiment", "ComputeLMConfig", "SCHEMAS", "checked_compute_lm_config"]


@dataclass
class ComputeLMExperiment:
    """The ``experiment`` node of ``experiment=compute_lm``."""

    #: Results go to results_dir/compute/ (the family's set in compute/<name>/); MLflow experiment.
    name: str = "compute_lm"


@dataclass
class ComputeLMConfig:
    """Family, work and timing plan of the LM compute comparison (node ``compute_lm``)."""

    #: Widths of the family's members (parallel to num_layers and num_heads).
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 192, 256])
    #: Transformer blocks per member.
    num_layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6])
    #: Attention heads per member (each must divide its width).
    num_heads: list[int] = field(default_factory=lambda: [2, 4, 4, 6, 8])
    #: MLP width as a multiple of the model width (Pythia: 4).
    mlp_ratio: int = 4
    #: Optimiser steps and batch size of each member's brief training (cached per member).
    train_steps: int = 150
    train_batch_size: int = 16
    #: Tokens per sequence T, training sequences n and query sequences q, the same at every size.
    seq_len: int = 32
    num_train: int = 48
    num_query: int = 16
    #: Query counts of the q sweep (per-token scores on shared factors; BIF draws and scores).
    q_grid: list[int] = field(default_factory=lambda: [10, 100, 1000])
    #: Training sequences of the q sweep (its first ones; EK-FAC's per-token scores cost
    #: q·n·T·P, so the sweep uses fewer than num_train to fit the time budget).
    q_num_train: int = 16
    #: Indices into the family of the members the q sweep runs at.
    q_sizes: list[int] = field(default_factory=lambda: [0, 1])
    #: Draws per chain of the BIF per-draw runs of the q sweep.
    q_draws: int = 3
    #: BIF pilot that is actually run at every size: chains, burn-in steps, draws per chain.
    pilot_chains: int = 2
    pilot_burn_in: int = 10
    pilot_draws: int = 8
    #: Draws per chain of the timed BIF run; null: what the pilot's standard errors say reaches
    #: target_resolved (draws_for_resolved), clipped to [min_draws, max_draws].
    draws: int | None = None
    #: Share of each query's top-k training sequences resolved beyond Monte Carlo noise.
    target_resolved: float = 0.5
    resolved_k: int = 10
    min_draws: int = 50
    max_draws: int = 2000
    #: "cpu", "cuda" or "auto" (CUDA when available); every row is labelled with it.
    device: str = "cpu"
    #: Torch intra-op threads while timing (null: torch's default).
    torch_threads: int | None = 1
    #: Models and tokenizer cache (null: results_dir/cache/compute_lm).
    cache_dir: str | None = None
    #: null: results_dir/compute (the results go to its lm_family/ folder, replaced as one set;
    #: nothing is written next to the compute experiment's own set, which it replaces whole).
    output_dir: str | None = None
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        n = len(self.hidden_sizes)
        if n < 1 or len(self.num_layers) != n or len(self.num_heads) != n:
            _bad(self, "num_layers", "hidden_sizes, num_layers, num_heads: same length >= 1")
        for d, h in zip(self.hidden_sizes, self.num_heads, strict=True):
            if d < 1 or h < 1 or d % h:
                _bad(self, "num_heads", f"each must divide its hidden size (got {h} for {d})")
        if any(x < 1 for x in self.num_layers):
            _bad(self, "num_layers", "must be >= 1")
        for name in ("mlp_ratio", "train_steps", "train_batch_size", "num_query", "q_draws"):
            if getattr(self, name) < 1:
                _bad(self, name, "must be >= 1")
        for name in ("pilot_chains", "pilot_draws", "seq_len", "resolved_k"):
            if getattr(self, name) < 2:
                _bad(self, name, "must be >= 2")
        if self.pilot_burn_in < 1:
            _bad(self, "pilot_burn_in", "must be >= 1 (the burn-in cost is measured from it)")
        if not 2 <= self.q_num_train <= self.num_train:
            _bad(self, "q_num_train", f"must be in [2, num_train={self.num_train}]")
        if self.num_train <= self.resolved_k:
            _bad(self, "num_train", f"must exceed resolved_k={self.resolved_k}")
        if any(q < 1 for q in self.q_grid) or len(set(self.q_grid)) != len(self.q_grid):
            _bad(self, "q_grid", "must be distinct integers >= 1 (empty: no q sweep)")
        if any(not 0 <= i < n for i in self.q_sizes):
            _bad(self, "q_sizes", f"must be indices into the family (0..{n - 1})")
        if self.draws is not None and self.draws < 2:
            _bad(self, "draws", "must be >= 2 or null")
        if not 0 < self.target_resolved <= 1:
            _bad(self, "target_resolved", "must be in (0, 1]")
        if not 2 <= self.min_draws <= self.max_draws:
            _bad(self, "max_draws", "need 2 <= min_draws <= max_draws")
        if self.torch_threads is not None and self.torch_threads < 1:
            _bad(self, "torch_threads", "must be >= 1 or null")

    def family(self) -> list[LMSize]:
        """The members, smallest first as listed."""
        return family(self.hidden_sizes, self.num_layers, self.num_heads, self.mlp_ratio)


#: (group, option name, schema), stored by :func:`bifrepro.config.register_configs`.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("compute_lm_schema", "compute_lm", ComputeLMConfig),
    ("experiment_schema", "compute_lm", ComputeLMExperiment),
)


def checked_compute_lm_config(vc: ValidatedConfig) -> ComputeLMConfig:
    """The ``compute_lm`` node, after the cross-group checks: a causal LM model and a fixed
    sampler (the pilot rule sizes the draws; calibration is not part of what is timed)."""
    comp = vc.compute_lm
    if not isinstance(comp, ComputeLMConfig):
        raise ConfigError("compute_lm: expected the compute_lm schema (experiment=compute_lm)")
    if not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("compute_lm: needs a causal LM (model=small_lm or model=pythia)")
    if vc.calibration.enabled:
        raise ConfigError(
            "calibration=auto: experiment=compute_lm times a fixed sampler; pass the step size "
            "(sampler.step_size=...)"
        )
    if comp.seq_len > vc.model.max_position_embeddings and vc.model.is_embedded:
        raise ConfigError(
            f"compute_lm.seq_len={comp.seq_len} exceeds model.max_position_embeddings="
            f"{vc.model.max_position_embeddings}"
        )
    return comp
