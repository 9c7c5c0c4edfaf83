"""All SGLD chains as one vectorised computation (``torch.func.vmap`` over stacked parameters).

The sequential sampler runs chain after chain; per kept draw each does one SGLD step and one
no-grad forward over every observed item. Here the C chains' sampled parameters are stacked
(``[C, *shape]``) and one vmapped ``functional_call`` does the SGLD gradients of all chains (each on
its own minibatch) and one vmapped forward evaluates the observables for all chains, so small and
medium models do C draws for much less than C times the cost.

Randomness is per chain and is exactly the sequential path's: chain c draws its minibatch indices
from its own generator (seed stream 1) and its Gaussian noise from its own generator (stream 0), in
the same order. The SGLD / SGHMC update is elementwise (the momentum is stacked like the weights),
so it is the same arithmetic; only the vmapped
forward/backward rounds differently (batched kernels), so traces are statistically equivalent to,
not bit-identical with, sequential ones (``chain_batching`` is part of the store fingerprint).

A model that cannot be vmapped (``.item()``, data-dependent control flow, random ops such as
dropout, batches holding strings) is detected by :meth:`BatchedChains.probe` on a throwaway
minibatch before any chain randomness is used; ``chain_batching="auto"`` then falls back to
sequential chains and logs why.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bifrepro.data.batches import EvalBatches, MinibatchStream, batch_size_of
from bifrepro.sampling.chain_common import (
    chain_seed,
    check_divergence,
    check_loss_shape,
    observable_forward,
)
from bifrepro.sampling.sgld import SGLDState, adapts_preconditioner, sgld_update_with_noise
from bifrepro.sgld_config import SGLDConfig
from bifrepro.traces import TraceStore

__all__ = ["BatchedChains", "ChainBatchingError", "chain_stream", "fill_noise"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
_PLAIN_LEAVES = (type(None), bool, int, float)


class ChainBatchingError(RuntimeError):
    """``chain_batching="on"`` but the model or its batches cannot be run as vmapped chains."""


class _LossModule(torch.nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the model's weights."""

    def __init__(self, model: torch.nn.Module, fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


@dataclass(frozen=True)
class _Slot:
    """Where the ``index``-th tensor of a flattened batch goes back."""

    index: int


def _flatten(batch: Any, tensors: list[torch.Tensor]) -> Any:
    """Replace every tensor of a (nested) batch by a :class:`_Slot`; collect them in ``tensors``."""
    if isinstance(batch, torch.Tensor):
        tensors.append(batch)
        return _Slot(len(tensors) - 1)
    if isinstance(batch, Mapping):
        return {k: _flatten(v, tensors) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_flatten(v, tensors) for v in batch)
    return batch


def _rebuild(template: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, Mapping):
        return {k: _rebuild(v, tensors) for k, v in template.items()}
    if isinstance(template, tuple | list):
        return type(template)(_rebuild(v, tensors) for v in template)
    return template


def _odd_leaf(template: Any) -> Any | None:
    """A non-tensor leaf that may differ between items (e.g. a string), or ``None``."""
    if isinstance(template, Mapping):
        template = list(template.values())
    if isinstance(template, tuple | list):
        for v in template:
            odd = _odd_leaf(v)
            if odd is not None:
                return odd
        return None
    if isinstance(template, (_Slot, *_PLAIN_LEAVES)):
        return None
    return template


def chain_stream(base: MinibatchStream, generator: torch.Generator) -> MinibatchStream:
    """A stream sharing ``base``'s collated data, drawing indices from ``generator`` from scratch.

    It yields exactly what a new ``MinibatchStream(..., generator)`` would, without collating the
    training set once per chain.
    """
    stream = copy.copy(base)
    stream.generator = generator
    stream.load_state_dict(
        {"perm": torch.empty(0, dtype=torch.long), "pos": 0, "rng": generator.get_state()}
    )
    return stream


def fill_noise(noise: list[torch.Tensor], generators: list[torch.Generator]) -> None:
    """Fill ``noise[i][c]`` with chain c's standard normal draws, in the sequential chain's order.

    Chain c's generator yields exactly what :func:`~bifrepro.sampling.sgld.sgld_noise` would draw
    for that chain alone (parameter after parameter).
    """
    for c, gen in enumerate(generators):
        for buf in noise:
            torch.randn(buf.shape[1:], generator=gen, out=buf[c])


def _probe_weights(w_star: list[torch.Tensor], chains: int) -> list[torch.Tensor]:
    """``[C, *shape]`` weights, chain k perturbed from w* by (k+1)/C · 10 % of each tensor's rms."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for w in w_star:
        scale = 0.1 * float(w.detach().float().pow(2).mean().sqrt()) + 1e-3
        step = torch.randn((chains, *w.shape), generator=gen).to(w.device, w.dtype) * scale
        frac = torch.arange(1, chains + 1, device=w.device, dtype=w.dtype) / chains
        out.append(w.unsqueeze(0) + step * frac.view(-1, *[1] * w.dim()))
    return out


class BatchedChains:
    """The ``num_chains`` chains of one sampler call, stepped and evaluated as one vmapped batch."""

    def __init__(
        self,
        work: torch.nn.Module,
        params: list[torch.Tensor],
        loss_fn: LossFn,
        obs: dict[str, tuple[Dataset, LossFn]],
        config: SGLDConfig,
        device: torch.device,
    ) -> None:
        self.work = work
        self.config = config
        self.device = device
        self.num_chains = config.num_chains
        by_id = {id(p): name for name, p in work.named_parameters()}
        self.names = [f"model.{by_id[id(p)]}" for p in params]
        self.train_module = _LossModule(work, loss_fn)
        self.obs_modules = {name: _LossModule(work, fn) for name, (_, fn) in obs.items()}

    # -- vmapped computations ---------------------------------------------------------------
    def grads_and_losses(
        self, stacked: list[torch.Tensor], batches: list[Any]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-chain gradients ``[C, *shape]`` of the mean minibatch loss, and the losses ``[C]``."""
        shared = all(b is batches[0] for b in batches)  # full batch: one tensor for every chain
        flat: list[list[torch.Tensor]] = []
        templates = []
        for b in batches[:1] if shared else batches:
            tensors: list[torch.Tensor] = []
            templates.append(_flatten(b, tensors))
            flat.append(tensors)
        template = templates[0]
        if any(t != template for t in templates[1:]):
            raise ChainBatchingError(
                "SGLD minibatches of different chains differ in non-tensor content; "
                "set chain_batching='off'"
            )
        if shared:
            inputs, in_dim = flat[0], None
        else:
            inputs = [torch.stack(ts) for ts in zip(*flat, strict=True)]
            in_dim = 0

        def mean_loss(p: dict[str, torch.Tensor], ts: list[torch.Tensor]):
            loss = functional_call(self.train_module, p, (_rebuild(template, ts),)).mean()
            return loss, loss

        g, loss = vmap(grad(mean_loss, has_aux=True), in_dims=(0, in_dim))(
            dict(zip(self.names, stacked, strict=True)), inputs
        )
        return [g[n] for n in self.names], loss.detach()

    def losses(
        self,
        name: str,
        stacked: list[torch.Tensor],
        batch: Any,
        observable_dtype: str | None = None,
    ) -> torch.Tensor:
        """Per-chain losses ``[C, B(, T)]`` of observable ``name`` on one evaluation batch.

        No autograd; in bfloat16 under autocast with ``observable_dtype="bfloat16"`` (default:
        the config's).
        """
        module = self.obs_modules[name]
        dtype = observable_dtype or self.config.observable_dtype
        with observable_forward(self.device, dtype):
            return vmap(lambda p: functional_call(module, p, (batch,)))(
                dict(zip(self.names, stacked, strict=True))
            )

    def evaluate_into(
        self, name: str, stacked: list[torch.Tensor], batches: EvalBatches, out: torch.Tensor
    ) -> None:
        """Write every chain's loss on every item into ``out`` (``[C, n(, T)]``)."""
        start = 0
        for batch in batches:
            losses = self.losses(name, stacked, batch)
            b = batch_size_of(batch)
            check_loss_shape(losses[0], b, tuple(out.shape[2:]), name)
            out[:, start : start + b].copy_(losses)
            start += b

    # -- can it be vmapped? -----------------------------------------------------------------
    def probe(
        self, w_star: list[torch.Tensor], train_batch: Any, eval_sets: dict[str, EvalBatches]
    ) -> str | None:
        """Why these chains cannot be vmapped, or ``None`` if they can.

        Runs one vmapped gradient on ``train_batch`` (copied for every chain) and one vmapped
        forward per observable at perturbed weights, and checks the losses against the model's
        own at those weights (so a loss that ignores the swapped-in weights is caught too).
        Uses no chain randomness; the working model is back at w* afterwards.
        """
        tensors: list[torch.Tensor] = []
        odd = _odd_leaf(_flatten(train_batch, tensors))
        if odd is not None:
            return f"SGLD minibatches hold a {type(odd).__name__} (only tensors can be vmapped)"
        c = self.num_chains
        stacked = _probe_weights(w_star, c)
        params = [p for p in self.work.parameters() if p.requires_grad]
        try:
            grads, loss = self.grads_and_losses(stacked, [train_batch] * c)
            if loss.shape != (c,) or any(
                g.shape != s.shape for g, s in zip(grads, stacked, strict=True)
            ):
                return "vmapped gradients have unexpected shapes"
            for name, batches in eval_sets.items():
                batch = next(iter(batches))
                # float32 whatever observable_dtype: this checks that the weights are used
                vmapped = self.losses(name, stacked, batch, "float32").float()
                for k in sorted({0, c - 1}):
                    with torch.no_grad():
                        for p, s in zip(params, stacked, strict=True):
                            p.copy_(s[k])
                    with torch.inference_mode():
                        own = self.obs_modules[name](batch).float()
                    # Loose enough for TF32 / batched-kernel rounding, far below what the
                    # 1-10 % weight perturbations change in a loss that uses the weights.
                    atol = 1e-3 * (1.0 + float(own.abs().mean()))
                    if vmapped.shape[1:] != own.shape or not torch.allclose(
                        vmapped[k], own, rtol=1e-2, atol=atol, equal_nan=True
                    ):
                        return (
                            f"vmapped losses of observable {name!r} differ from the model's own "
                            "(the loss does not use the weights passed through functional_call)"
                        )
        except ChainBatchingError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 -- any failure to vmap means: run sequentially
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        finally:
            with torch.no_grad():
                for p, w in zip(params, w_star, strict=True):
                    p.copy_(w)
        return None

    # -- the chains ---------------------------------------------------------------------------
    def run(
        self,
        w_star: list[torch.Tensor],
        base_stream: MinibatchStream,
        eval_sets: dict[str, EvalBatches],
        arrays: dict[str, torch.Tensor],
        sgld_loss: torch.Tensor,
        distance: torch.Tensor,
        limits: dict[str, float],
        completed: list[int],
        store: TraceStore | None,
        progress: bool | None,
    ) -> None:
        """Run (or resume) all chains together, committing each kept draw before the next."""
        config, c_total, device = self.config, self.num_chains, self.device
        noise_gens = [
            torch.Generator(device=device).manual_seed(
                chain_seed(config.seed, config.first_chain + c, 0)
            )
            for c in range(c_total)
        ]
        streams = [
            chain_stream(
                base_stream,
                torch.Generator().manual_seed(chain_seed(config.seed, config.first_chain + c, 1)),
            )
            for c in range(c_total)
        ]
        stacked = [w.detach().unsqueeze(0).repeat(c_total, *[1] * w.dim()) for w in w_star]
        w_wide = [w.unsqueeze(0).expand_as(s) for w, s in zip(w_star, stacked, strict=True)]
        state = SGLDState.init(stacked, config)
        start_step = self._resume(stacked, state, noise_gens, streams, completed, store)
        noise = [torch.empty_like(s) for s in stacked]
        scratch = {
            name: torch.empty(
                (c_total, *arrays[name].shape[2:]), dtype=torch.float32, device=device
            )
            for name in self.obs_modules
        }
        done = list(completed)
        window_loss = torch.zeros(c_total, dtype=torch.float64, device=device)
        window_steps = 0
        bar = tqdm(
            total=config.total_steps,
            initial=start_step,
            desc=f"SGLD chains 1-{c_total} (batched)",
            disable=None if progress is None else not progress,
            leave=False,
            unit="step",
        )
        try:
            for step in range(start_step + 1, config.total_steps + 1):
                grads, loss = self.grads_and_losses(stacked, [s.next() for s in streams])
                fill_noise(noise, noise_gens)
                adapt = adapts_preconditioner(config, step)
                sgld_update_with_noise(stacked, grads, w_wide, state, config, noise, adapt=adapt)
                window_loss += loss.double()
                window_steps += 1
                bar.update(1)
                if step <= config.burn_in or (step - config.burn_in) % config.thinning:
                    continue
                draw = (step - config.burn_in) // config.thinning - 1
                mean_step_loss = (window_loss / window_steps).tolist()
                window_loss.zero_()
                window_steps = 0
                writing = [c for c in range(c_total) if draw >= done[c]]
                if not writing:  # replaying steps of draws already on disk after a resume
                    continue
                for c in writing:
                    check_divergence(
                        mean_step_loss[c], float("inf"), config, c, draw, "SGLD minibatch loss"
                    )
                for name in self.obs_modules:
                    self.evaluate_into(name, stacked, eval_sets[name], scratch[name])
                    means = scratch[name].double().flatten(1).mean(1).tolist()
                    for c in writing:
                        check_divergence(
                            means[c], limits[name], config, c, draw, f"mean loss of {name!r}"
                        )
                    rows = scratch[name].cpu()
                    for c in writing:
                        arrays[name][c, draw].copy_(rows[c])
                with torch.no_grad():
                    diffs = torch._foreach_sub(stacked, w_wide)
                    norms = torch.stack(
                        [torch.linalg.vector_norm(d.flatten(1), dim=1) for d in diffs]
                    )
                    dist = torch.linalg.vector_norm(norms, dim=0).tolist()
                for c in writing:
                    sgld_loss[c, draw] = mean_step_loss[c]
                    distance[c, draw] = dist[c]
                    done[c] = draw + 1
                    completed[c] = done[c]
                if store is not None:
                    self._commit(store, writing, done, step, stacked, state, noise_gens, streams)
        finally:
            bar.close()

    def _resume(
        self,
        stacked: list[torch.Tensor],
        state: SGLDState,
        noise_gens: list[torch.Generator],
        streams: list[MinibatchStream],
        completed: list[int],
        store: TraceStore | None,
    ) -> int:
        """Load the chains' checkpoints if they are all at one step; return the step to go on from.

        Chains run in lockstep, so their checkpoints normally agree. If they do not (a kill while
        checkpoints were being written), every chain restarts at w* and replays its steps without
        re-evaluating recorded draws: slower, but the traces are the same.
        """
        if store is None or not any(completed):
            return 0
        ckpts = [store.load_checkpoint(c) for c in range(self.num_chains)]
        usable = all(
            ck is not None and ck["draw"] <= completed[c] and ck["step"] == ckpts[0]["step"]
            for c, ck in enumerate(ckpts)
        )
        if not usable:
            log.info("chain checkpoints are missing or disagree; replaying the chains from w*")
            return 0
        with torch.no_grad():
            for i, s in enumerate(stacked):
                for c, ck in enumerate(ckpts):
                    s[c].copy_(ck["params"][i])
                    if state.square_avg:
                        state.square_avg[i][c].copy_(ck["square_avg"][i])
                    if state.momentum:
                        state.momentum[i][c].copy_(ck["momentum"][i])
        for c, ck in enumerate(ckpts):
            noise_gens[c].set_state(ck["noise_rng"])
            streams[c].load_state_dict(ck["stream"])
        return int(ckpts[0]["step"])

    def _commit(
        self,
        store: TraceStore,
        writing: list[int],
        done: list[int],
        step: int,
        stacked: list[torch.Tensor],
        state: SGLDState,
        noise_gens: list[torch.Generator],
        streams: list[MinibatchStream],
    ) -> None:
        """Mark the draw complete for ``writing`` chains (one manifest write), then checkpoint.

        Checkpoints have the sequential sampler's per-chain format.
        """
        manifest = store.read_manifest() or {}
        for c in writing:
            manifest["completed"][c] = done[c]
        store.write_manifest(manifest)
        for c in writing:
            if done[c] % self.config.checkpoint_every == 0 and done[c] < self.config.num_draws:
                ckpt = {
                    "draw": done[c],
                    "step": step,
                    "params": [s[c].detach().cpu().clone() for s in stacked],
                    "square_avg": [v[c].detach().cpu().clone() for v in state.square_avg],
                    "noise_rng": noise_gens[c].get_state(),
                    "stream": streams[c].state_dict(),
                }
                if self.config.has_momentum:
                    ckpt["momentum"] = [v[c].detach().cpu().clone() for v in state.momentum]
                store.save_checkpoint(c, ckpt)
