"""SGLD settings: one validated dataclass, usable directly and as a Hydra structured config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from bifrepro.validation import finite_numbers

__all__ = ["SGLDConfig"]

_PRECONDITIONERS = ("none", "rmsprop", "rmsprop_frozen")
_TRACE_DTYPES = ("float32", "float16")
_CHAIN_BATCHING = ("off", "on", "auto")
_INTEGRATORS = ("sgld", "sghmc")
_OBSERVABLE_DTYPES = ("float32", "bfloat16")
# Fields that change how fast or where the sampler runs but not a single number it records.
# (chain_batching does change the rounding; the mode actually used is part of a trace store's
# identity instead, see bifrepro.sampling.sampler.store_identity, so "auto" run sequentially and
# "off" share stores.)
_NON_SEMANTIC_FIELDS = (
    "eval_batch_size", "cache_data", "checkpoint_every", "chain_batching", "chain_processes",
)  # fmt: skip


@dataclass
class SGLDConfig:
    """Settings of the local SGLD sampler around trained weights ``w*``.

    Update (devinterp convention), with ε = ``step_size``, nβ = ``nbeta``, γ = ``localization``::

        Δw = -(ε/2)·G·[nβ·∇L_batch(w) + γ·(w - w*)] + √G·N(0, ε)

    where ``G = 1`` for ``preconditioner="none"`` and, for ``"rmsprop"``,
    ``V ← αV + (1-α)·∇L_batch²`` (V₀ = 0), ``G = 1/(√V + rmsprop_eps)``. ``"rmsprop_frozen"``
    updates ``V`` the same way during the ``burn_in`` steps only and then keeps ``G`` fixed for
    every recorded draw: plain SGLD with a constant diagonal preconditioner, whose small-step
    limit is exactly the tempered posterior (adaptive RMSProp's ``G`` follows the chain, so the
    chain is not Markov with that posterior as its stationary law).
    ``integrator="sghmc"`` adds momentum (underdamped Langevin / SGHMC) in the same units, with
    α = ``friction`` and v₀ = 0::

        v ← (1-α)·v - (ε/2)·G·[nβ·∇L_batch(w) + γ·(w - w*)] + √G·N(0, α·ε);   w ← w + v

    which is the SGLD update above when α = 1.
    Each of ``num_chains`` chains starts at ``w*``, takes ``burn_in`` steps, then records a draw
    every ``thinning`` steps until it has ``num_draws`` draws.
    """

    #: SGLD step size ε (> 0).
    step_size: float = 1e-4
    #: Inverse temperature times the number of training samples, nβ (> 0).
    nbeta: float = 10.0
    #: Localization strength γ of the Gaussian prior centred at w* (>= 0).
    localization: float = 1000.0
    #: Number of independent chains, each started at w*.
    num_chains: int = 4
    #: Draws kept per chain (losses of every observed item are recorded on each).
    num_draws: int = 200
    #: SGLD steps discarded before the first kept draw.
    burn_in: int = 50
    #: SGLD steps between kept draws (1 = keep every step).
    thinning: int = 1
    #: SGLD minibatch size (clipped to the training-set size; >= size means full batch).
    batch_size: int = 64
    #: "none" (plain SGLD), "rmsprop" (RMSProp-preconditioned SGLD, adapted every step) or
    #: "rmsprop_frozen" (RMSProp's preconditioner estimated during burn-in, then fixed).
    preconditioner: str = "none"
    #: RMSProp decay α of the squared-gradient average.
    rmsprop_alpha: float = 0.99
    #: RMSProp stabiliser added to √V.
    rmsprop_eps: float = 0.1
    #: Master seed; chain c uses streams derived from (seed, first_chain + c).
    seed: int = 0
    #: Global index of this run's first chain: a run of ``num_chains=k, first_chain=j`` records
    #: exactly chains j..j+k-1 of one larger run with the same seed, so chains can run as
    #: separate jobs and be merged (:func:`bifrepro.traces.merge_trace_stores`).
    first_chain: int = 0
    #: Batch size of the no-grad loss evaluation of observed items (speed only).
    eval_batch_size: int = 256
    #: Keep collated data in memory on the model's device (speed only; turn off for huge pools).
    cache_data: bool = True
    #: Storage type of the recorded losses.
    trace_dtype: str = "float32"
    #: A draw whose mean observed loss exceeds divergence_factor·(1 + |loss at w*|) is a divergence.
    divergence_factor: float = 100.0
    #: With an out_dir, save the chain state every this many draws (resume replays the rest).
    checkpoint_every: int = 10
    #: How chains run: "off" = one after another; "on" = all chains as one vectorised (vmap)
    #: computation, an error if the model cannot be vmapped; "auto" = vmap when the model is on
    #: an accelerator (CUDA), allows it and num_chains > 1, else one after another, logged (on
    #: CPU vmapped chains measured slower). Each chain keeps its own random streams, but vmapped
    #: arithmetic rounds differently: traces are statistically equivalent to sequential ones, not
    #: bit-identical, and a trace store is resumed only with the mode it was written with.
    #: Default "off": on CPU vmapped chains measured 0.4-0.8x as fast (``make bench``); the CUDA
    #: path of "auto"/"on" is tested for correctness on CPU but its speed is not measured yet.
    chain_batching: str = "off"
    #: Worker processes the chains are split between (contiguous chain ranges, each process on
    #: cores/processes torch threads; forked, CPU only). Traces are bit-identical to one process
    #: running the chains one after another (each chain owns its random streams; the workers'
    #: stores are merged, see docs/chain_jobs.md). 1 = in this process; 0 = "auto": one
    #: process per torch thread this process may use (``torch.get_num_threads()``), at most one
    #: per chain. Small models sample more draws per second as one-thread processes side by
    #: side than as one process on several threads (``make bench``).
    chain_processes: int = 1
    #: "sgld" (overdamped Langevin, the update above) or "sghmc" (underdamped Langevin with
    #: momentum, see the class docstring). SGHMC takes the same step size ε and is as stable (a
    #: quadratic direction of curvature λ needs ε·λ < 8 - 4·friction, SGLD ε·λ < 4), but moves
    #: through flat directions up to ~1/friction times faster per step. Its minibatch-gradient
    #: noise weighs ~1/friction times more against the injected noise than SGLD's, so it heats the
    #: chain more with small batches. Works with preconditioner "none" or "rmsprop_frozen" (a
    #: constant mass matrix); adaptive "rmsprop" is refused.
    integrator: str = "sgld"
    #: SGHMC friction α in (0, 1]: the share of the momentum renewed per step (1 = SGLD). The
    #: default 0.1 damps critically a direction with ε·λ = α²/2 = 0.005, i.e. the slow
    #: directions of a calibrated run (whose stiffest direction has ε·λ ≈ 0.5, condition number
    #: ~100); stiffer directions oscillate (harmless for sampling), flatter ones still move ~1/α
    #: times faster than with SGLD. Ignored by "sgld".
    friction: float = 0.1
    #: Precision of the per-draw forward passes of observed items: "float32", or "bfloat16" via
    #: ``torch.autocast`` (CPU and CUDA; the recorded losses stay float32). The SGLD / SGHMC
    #: steps are untouched, so only the recorded losses change, by bf16 rounding (~0.4 %).
    observable_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value is out of range."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"SGLDConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        finite_numbers(self)

        def positive(name: str) -> None:
            v = getattr(self, name)
            if (
                not isinstance(v, int | float)
                or isinstance(v, bool)
                or not math.isfinite(v)
                or v <= 0
            ):
                bad(name, "must be a finite number > 0")

        for name in ("step_size", "nbeta", "divergence_factor"):
            positive(name)
        if not math.isfinite(self.localization) or self.localization < 0:
            bad("localization", "must be a finite number >= 0")
        for name in (
            "num_chains",
            "num_draws",
            "thinning",
            "batch_size",
            "eval_batch_size",
            "checkpoint_every",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be an integer >= 1")
        for name in ("burn_in", "first_chain"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be an integer >= 0")
        if self.preconditioner not in _PRECONDITIONERS:
            bad("preconditioner", f"must be one of {_PRECONDITIONERS}")
        if self.preconditioner == "rmsprop_frozen" and self.burn_in < 1:
            bad("preconditioner", "'rmsprop_frozen' estimates V during burn-in: needs burn_in >= 1")
        if not 0.0 <= self.rmsprop_alpha < 1.0:
            bad("rmsprop_alpha", "must be in [0, 1)")
        if not self.rmsprop_eps > 0:
            bad("rmsprop_eps", "must be > 0")
        if self.trace_dtype not in _TRACE_DTYPES:
            bad("trace_dtype", f"must be one of {_TRACE_DTYPES}")
        if self.chain_batching not in _CHAIN_BATCHING:
            bad("chain_batching", f"must be one of {_CHAIN_BATCHING}")
        if not isinstance(self.chain_processes, int) or self.chain_processes < 0:
            bad("chain_processes", "must be an integer >= 0 (0: one per torch thread)")
        if self.chain_processes != 1 and self.chain_batching == "on":
            bad("chain_processes", "vmapped chains (chain_batching='on') run in one process: use 1")
        if self.integrator not in _INTEGRATORS:
            bad("integrator", f"must be one of {_INTEGRATORS}")
        if (
            not isinstance(self.friction, int | float)
            or isinstance(self.friction, bool)
            or not 0.0 < self.friction <= 1.0
        ):
            bad("friction", "must be in (0, 1]")
        if self.integrator == "sghmc" and self.preconditioner == "rmsprop":
            bad(
                "preconditioner",
                "integrator='sghmc' needs a constant mass matrix: use 'none' or "
                "'rmsprop_frozen' (adaptive 'rmsprop' changes G along the chain)",
            )
        if self.observable_dtype not in _OBSERVABLE_DTYPES:
            bad("observable_dtype", f"must be one of {_OBSERVABLE_DTYPES}")

    @property
    def preconditioned(self) -> bool:
        """Whether the update uses RMSProp's diagonal preconditioner (adaptive or frozen)."""
        return self.preconditioner != "none"

    @property
    def has_momentum(self) -> bool:
        """Whether chains carry a momentum (``integrator="sghmc"``) to update and checkpoint."""
        return self.integrator == "sghmc"

    @property
    def total_steps(self) -> int:
        """SGLD steps per chain, burn-in included."""
        return self.burn_in + self.num_draws * self.thinning

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of every field that changes the recorded numbers (not speed-only fields)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NON_SEMANTIC_FIELDS}
        # Fields at their defaults are left out, so fingerprints of earlier stores stay unchanged.
        if d["first_chain"] == 0:
            del d["first_chain"]
        if d["integrator"] == "sgld":  # friction only matters to SGHMC
            del d["integrator"], d["friction"]
        if d["observable_dtype"] == "float32":
            del d["observable_dtype"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> SGLDConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Any) -> SGLDConfig:
        """Build from a dict or OmegaConf node, refusing unknown keys by name."""
        items = dict(mapping.items()) if hasattr(mapping, "items") else dict(mapping)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"unknown SGLDConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**items)
