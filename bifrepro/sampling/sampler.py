"""``sample_loss_traces``: SGLD chains around w*, recording every observed item's loss per draw.

Cost model: per kept draw, ``thinning`` SGLD steps (forward + backward on one minibatch) plus one
no-grad forward pass over every observed item (under ``torch.inference_mode``, in bfloat16 with
``observable_dtype="bfloat16"``, see :func:`~bifrepro.sampling.chain_common.observable_forward`). Chains run one after another, or (``chain_batching``,
see :mod:`bifrepro.sampling.batched`) all together as one vmapped computation. Observed data are collated once and kept on the
model's device; losses are written straight into the preallocated (or memory-mapped) traces.

Batch norm and dropout: the sampled network is the deployed one. The working copy stays in
``eval()`` mode for the SGLD gradient and for the recorded losses, so batch norm uses the running
statistics of w* (which are not sampled) and dropout is off; the posterior is over the trainable
parameters only (``requires_grad=True``), buffers stay at their w* values.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.chain_diagnostics import ChainDiagnostics
from bifrepro.data.batches import EvalBatches, MinibatchStream, batch_size_of
from bifrepro.fingerprint import callable_fingerprint, dataset_fingerprint, model_fingerprint
from bifrepro.sampling.batched import BatchedChains, ChainBatchingError
from bifrepro.sampling.chain_common import chain_seed as _chain_seed
from bifrepro.sampling.chain_common import check_divergence as _check_divergence
from bifrepro.sampling.chain_common import check_loss_shape, observable_forward
from bifrepro.sampling.chain_processes import resolve_chain_processes, sample_in_processes
from bifrepro.sampling.diagnostics import SamplerDivergedError
from bifrepro.sampling.parameters import sampled_parameters
from bifrepro.sampling.sgld import SGLDState, adapts_preconditioner, sgld_update
from bifrepro.sgld_config import SGLDConfig
from bifrepro.traces import LossTraces, TraceStore, _mean_over_items

__all__ = ["sample_loss_traces", "LossFn"]

log = logging.getLogger(__name__)

#: ``loss_fn(model, batch) -> Tensor[B]`` (per item) or ``Tensor[B, T]`` (per token).
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
Observable = Dataset | tuple[Dataset, LossFn]


def _evaluate_into(
    model: torch.nn.Module,
    fn: LossFn,
    batches: EvalBatches,
    out: torch.Tensor,
    name: str,
    observable_dtype: str = "float32",
) -> None:
    """Write every item's loss into ``out`` (``[n(, T)]``), batch by batch, without autograd.

    ``observable_dtype="bfloat16"`` runs the forwards under autocast; ``out`` keeps its dtype.
    """
    start = 0
    with observable_forward(out.device, observable_dtype):
        for batch in batches:
            losses = fn(model, batch)
            b = batch_size_of(batch)
            check_loss_shape(losses, b, tuple(out.shape[1:]), name)
            out[start : start + b].copy_(losses.detach())
            start += b


def _initial_losses(
    model: torch.nn.Module, fn: LossFn, batches: EvalBatches, name: str
) -> torch.Tensor:
    """Losses at w*; also fixes each observable's trace shape."""
    rows = []
    with torch.inference_mode():
        for batch in batches:
            losses = fn(model, batch)
            if not isinstance(losses, torch.Tensor) or losses.dim() not in (1, 2):
                raise ValueError(
                    f"loss_fn must return a tensor [B] or [B, T] of per-item/per-token losses; got "
                    f"{type(losses).__name__} {getattr(losses, 'shape', '')} for observable {name!r}"
                )
            if losses.shape[0] != batch_size_of(batch):
                raise ValueError(
                    f"loss_fn returned {losses.shape[0]} losses for a batch of "
                    f"{batch_size_of(batch)} items of observable {name!r}: it must not reduce over the batch"
                )
            rows.append(losses.detach().float().cpu())
    try:
        return torch.cat(rows)
    except RuntimeError as err:
        raise ValueError(
            f"per-token losses of observable {name!r} have different lengths across batches; "
            "pad sequences to one fixed length"
        ) from err


def _normalise_observables(
    observables: Mapping[str, Observable], loss_fn: LossFn
) -> dict[str, tuple[Dataset, LossFn]]:
    if not observables:
        raise ValueError("observables is empty: name at least one dataset whose losses to record")
    out = {}
    for name, obs in observables.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"observable names must be identifiers, got {name!r}")
        if isinstance(obs, tuple):
            if len(obs) != 2 or not callable(obs[1]):
                raise ValueError(
                    f"observable {name!r} must be a dataset or a (dataset, loss_fn) pair"
                )
            out[name] = (obs[0], obs[1])
        else:
            out[name] = (obs, loss_fn)
    return out


def store_identity(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    observables: Mapping[str, tuple[Dataset, LossFn]],
    collate_fn: Callable[[list[Any]], Any] | None = None,
    batched: bool = False,
) -> dict[str, Any]:
    """What a trace store's numbers depend on besides the SGLD settings (JSON-able digests).

    Vmapped chains (``batched``) round differently from sequential ones, so they are recorded
    (``"chain_batching": "vmap"``); sequential stores carry no such key, like stores written
    before the option existed.
    """
    identity = {
        "model": model_fingerprint(model),
        "train_data": dataset_fingerprint(train_data, collate_fn),
        "loss_fn": callable_fingerprint(loss_fn),
        "observables": {
            name: {"data": dataset_fingerprint(ds, collate_fn), "loss_fn": callable_fingerprint(fn)}
            for name, (ds, fn) in observables.items()
        },
    }
    if batched:
        identity["chain_batching"] = "vmap"
    return identity


def sample_loss_traces(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    observables: Mapping[str, Observable],
    config: SGLDConfig,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> LossTraces:
    """Run SGLD chains around the model's current weights w* and record losses on every draw.

    Args:
        model: trained network; its parameters are w*. It is deep-copied, never modified.
        loss_fn: ``loss_fn(model, batch)`` → per-item ``[B]`` or per-token ``[B, T]`` losses. The
            SGLD step uses the mean over the minibatch.
        train_data: dataset SGLD minibatches are drawn from (its loss defines the posterior).
        observables: ``{name: dataset}`` or ``{name: (dataset, loss_fn)}`` whose every item is
            evaluated on every kept draw (e.g. ``{"train": train_data, "query": query_data}``).
        config: sampler settings.
        out_dir: if given, traces are memory-mapped files in this folder, written draw by draw;
            re-running the same call resumes an interrupted run, or loads a finished one. A
            different configuration, model, loss function, training or observed data pointed at
            the same folder is refused with :class:`~bifrepro.traces.TraceStoreMismatchError`;
            a damaged store raises :class:`~bifrepro.traces.TraceStoreError`.
        progress: tqdm bar per chain; ``None`` shows it only on a terminal.
        collate_fn: collate function for the datasets (default: torch's ``default_collate``).

    Returns:
        :class:`LossTraces`; ``traces[name]`` is ``[num_chains, num_draws, n(, T)]``.

    Raises:
        SamplerDivergedError: a loss became non-finite or exceeded
            ``divergence_factor·(1 + |loss at w*|)``.
    """
    config.validate()
    processes = _chain_processes(model, config, out_dir)
    if processes > 1:
        sample = functools.partial(sample_loss_traces, collate_fn=collate_fn)
        args = (model, loss_fn, train_data, observables)
        return sample_in_processes(sample, args, config, processes, out_dir, progress)
    t_start = time.perf_counter()
    obs = _normalise_observables(observables, loss_fn)
    work = copy.deepcopy(model)
    work.eval()
    params = sampled_parameters(work)
    num_params = sum(p.numel() for p in params)
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True) to sample")
    device = params[0].device
    with observable_forward(device, config.observable_dtype):
        pass  # an unsupported device for bfloat16 observables fails here, before any sampling
    w_star = [p.detach().clone() for p in params]

    eval_sets = {
        name: EvalBatches(ds, config.eval_batch_size, device, config.cache_data, collate_fn)
        for name, (ds, _) in obs.items()
    }
    init_rows = {
        name: _initial_losses(work, fn, eval_sets[name], name) for name, (_, fn) in obs.items()
    }
    init_mean = {name: float(row.double().mean()) for name, row in init_rows.items()}
    for name, value in init_mean.items():
        if not np.isfinite(value):
            raise ValueError(f"the loss of observable {name!r} at w* is not finite ({value})")
    limits = {n: config.divergence_factor * (1.0 + abs(v)) for n, v in init_mean.items()}
    trace_dtype = getattr(torch, config.trace_dtype)
    c_total, d_total = config.num_chains, config.num_draws

    batched = _batched_chains(
        work, params, w_star, loss_fn, train_data, obs, eval_sets, config, collate_fn
    )
    store: TraceStore | None = None
    completed = [0] * c_total
    if out_dir is not None:
        store = TraceStore(Path(out_dir))
        identity = store_identity(
            work, loss_fn, train_data, obs, collate_fn, batched=batched is not None
        )
        manifest = store.open(config, init_rows, identity, num_params)
        completed = list(manifest["completed"])
        if manifest["status"] == "complete":
            log.info("traces in %s are complete; loading them", out_dir)
            return store.to_traces(manifest)
        manifest["status"] = "running"
        manifest["error"] = None
        store.write_manifest(manifest)
        memmaps = {n: store.trace_array(n) for n in obs}
        memmaps.update(
            sgld_loss=store.diag_array("sgld_loss"), distance=store.diag_array("distance")
        )
        arrays = {n: torch.from_numpy(memmaps[n]) for n in obs}
        sgld_loss = torch.from_numpy(memmaps["sgld_loss"])
        distance = torch.from_numpy(memmaps["distance"])
    else:
        arrays = {
            n: torch.empty((c_total, d_total, *row.shape), dtype=trace_dtype)
            for n, row in init_rows.items()
        }
        sgld_loss = torch.empty((c_total, d_total), dtype=torch.float64)
        distance = torch.empty((c_total, d_total), dtype=torch.float64)

    # Evaluate on-device into a float32 buffer, then copy into the (CPU / memory-mapped) trace.
    scratch = {
        n: torch.empty(row.shape, dtype=torch.float32, device=device)
        for n, row in init_rows.items()
    }

    with logging_redirect_tqdm():
        try:
            if batched is not None:
                chains, base_stream = batched
                chains.run(
                    w_star,
                    base_stream,
                    eval_sets,
                    arrays,
                    sgld_loss,
                    distance,
                    limits,
                    completed,
                    store,
                    progress,
                )
            else:
                _run_chains_one_by_one(
                    _Chains(
                        work,
                        params,
                        w_star,
                        loss_fn,
                        train_data,
                        obs,
                        eval_sets,
                        config,
                        arrays,
                        scratch,
                        sgld_loss,
                        distance,
                        limits,
                        completed,
                        store,
                        progress,
                        collate_fn,
                        device,
                    )
                )
        except SamplerDivergedError as err:
            if store is not None:
                manifest = store.read_manifest() or {}
                manifest.update(status="diverged", error=str(err))
                store.write_manifest(manifest)
            raise

    if store is not None:
        for mm in memmaps.values():
            mm.flush()
        manifest = store.read_manifest() or {}
        store.check_complete(manifest)  # every draw recorded and finite, before saying so
        manifest["status"] = "complete"
        # what producing the draws cost, for runs that later load them from this store
        manifest["sampling_seconds"] = time.perf_counter() - t_start
        store.write_manifest(manifest)
        traces = store.to_traces(manifest, verify=False)
    else:
        diagnostics = ChainDiagnostics(
            sgld_loss=sgld_loss,
            distance=distance,
            observed_loss={n: _mean_over_items(t) for n, t in arrays.items()},
            init_loss=init_mean,
        )
        traces = LossTraces(arrays, diagnostics, config, init_rows, num_params=num_params,
                            sampling_seconds=time.perf_counter() - t_start)  # fmt: skip
    log.info("BIF sampling done: %s", traces.diagnostics.summary())
    traces.diagnostics.warn_if_drifting()
    return traces


def _chain_processes(
    model: torch.nn.Module, config: SGLDConfig, out_dir: str | os.PathLike[str] | None
) -> int:
    """Worker processes for this run (``config.chain_processes``), 1 to sample here: also when
    ``out_dir`` already holds a store, which is loaded or resumed as it was written."""
    if config.chain_processes == 1:
        return 1
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    processes, why = resolve_chain_processes(config, device)
    if processes > 1 and out_dir is not None and (Path(out_dir) / "manifest.json").exists():
        processes, why = 1, f"{out_dir} holds a store: loaded or resumed in this process"
    if processes == 1:
        log.info("chains in this process (chain_processes=%d): %s", config.chain_processes, why)
    return processes


def _batched_chains(
    work: torch.nn.Module,
    params: list[torch.Tensor],
    w_star: list[torch.Tensor],
    loss_fn: LossFn,
    train_data: Dataset,
    obs: dict[str, tuple[Dataset, LossFn]],
    eval_sets: dict[str, EvalBatches],
    config: SGLDConfig,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> tuple[BatchedChains, MinibatchStream] | None:
    """The vmapped chains and a shared minibatch stream, or ``None`` to run chains one by one.

    ``"auto"`` falls back (with one log line saying why) for a single chain or a model that
    cannot be vmapped; ``"on"`` raises :class:`ChainBatchingError` for the latter.
    """
    mode = config.chain_batching
    if mode == "off":
        return None
    device = params[0].device
    if mode == "auto":
        why_not = _auto_declines(config, device)
        if why_not is not None:
            log.info("chain batching off (chain_batching='auto'): %s", why_not)
            return None
    chains = BatchedChains(work, params, loss_fn, obs, config, device)
    probe_gen = torch.Generator().manual_seed(0)  # not a chain stream: probing uses no chain RNG
    base = MinibatchStream(
        train_data, config.batch_size, device, probe_gen, config.cache_data, collate_fn
    )
    reason = chains.probe(w_star, base.next(), eval_sets)
    if reason is None:
        log.info("chain batching on: %d chains as one vmapped computation", config.num_chains)
        return chains, base
    if mode == "on":
        raise ChainBatchingError(
            f"chain_batching='on' but the chains cannot be vmapped: {reason}. "
            "Use chain_batching='auto' or 'off' to run chains one after another."
        )
    log.info(
        "chain batching off: the model cannot be vmapped (%s); running chains one by one", reason
    )
    return None


def _auto_declines(config: SGLDConfig, device: torch.device) -> str | None:
    """Why ``chain_batching="auto"`` runs chains one by one before trying vmap, or ``None``."""
    if config.num_chains == 1:
        return "a single chain"
    if device.type == "cpu":
        return (
            "the model is on the CPU, where vmapped chains measured slower than one after another "
            "(bench/bench_sampler.py); chain_batching='on' forces them"
        )
    return None


@dataclass
class _Chains:
    """Everything the sequential chains share (one object instead of 18 arguments)."""

    work: torch.nn.Module
    params: list[torch.Tensor]
    w_star: list[torch.Tensor]
    loss_fn: LossFn
    train_data: Dataset
    obs: dict[str, tuple[Dataset, LossFn]]
    eval_sets: dict[str, EvalBatches]
    config: SGLDConfig
    arrays: dict[str, torch.Tensor]
    scratch: dict[str, torch.Tensor]
    sgld_loss: torch.Tensor
    distance: torch.Tensor
    limits: dict[str, float]
    completed: list[int]
    store: TraceStore | None
    progress: bool | None
    collate_fn: Callable[[list[Any]], Any] | None
    device: torch.device


def _run_chains_one_by_one(run: _Chains) -> None:
    """The sequential path: each unfinished chain in turn (``chain_batching`` off or declined)."""
    for chain in range(run.config.num_chains):
        if run.completed[chain] >= run.config.num_draws:
            continue
        _run_chain(chain, run)


def _run_chain(chain: int, run: _Chains) -> None:
    """Run (or resume) one chain, writing each kept draw and committing it before the next."""
    work, params, w_star, config, device = run.work, run.params, run.w_star, run.config, run.device
    noise_gen = torch.Generator(device=device).manual_seed(
        _chain_seed(config.seed, config.first_chain + chain, 0)
    )
    batch_gen = torch.Generator().manual_seed(
        _chain_seed(config.seed, config.first_chain + chain, 1)
    )
    stream = MinibatchStream(
        run.train_data, config.batch_size, device, batch_gen, config.cache_data, run.collate_fn
    )
    state = SGLDState.init(params, config)
    start_step = 0
    with torch.no_grad():
        for p, p0 in zip(params, w_star, strict=True):
            p.copy_(p0)
    ckpt = run.store.load_checkpoint(chain) if run.store is not None else None
    if ckpt is not None and ckpt["draw"] <= run.completed[chain]:
        with torch.no_grad():
            for p, saved in zip(params, ckpt["params"], strict=True):
                p.copy_(saved)
        state.square_avg = [v.to(device) for v in ckpt["square_avg"]]
        if config.has_momentum:
            state.momentum = [v.to(device) for v in ckpt["momentum"]]
        noise_gen.set_state(ckpt["noise_rng"])
        stream.load_state_dict(ckpt["stream"])
        start_step = ckpt["step"]
    done = run.completed[chain]
    total = config.total_steps
    window_loss = torch.zeros((), dtype=torch.float64, device=device)
    window_steps = 0
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=f"SGLD chain {chain + 1}/{config.num_chains}",
        disable=None if run.progress is None else not run.progress,
        leave=False,
        unit="step",
    )
    try:
        for step in range(start_step + 1, total + 1):
            batch = stream.next()
            with torch.enable_grad():
                loss = run.loss_fn(work, batch).mean()
            grads = torch.autograd.grad(loss, params)
            adapt = adapts_preconditioner(config, step)
            sgld_update(params, list(grads), w_star, state, config, noise_gen, adapt=adapt)
            window_loss += loss.detach().double()
            window_steps += 1
            bar.update(1)
            if step <= config.burn_in or (step - config.burn_in) % config.thinning:
                continue
            draw = (step - config.burn_in) // config.thinning - 1
            mean_step_loss = float(window_loss) / window_steps
            window_loss.zero_()
            window_steps = 0
            if draw < done:  # replaying steps of draws already on disk after a resume
                continue
            _check_divergence(
                mean_step_loss, float("inf"), config, chain, draw, "SGLD minibatch loss"
            )
            for name, (_, fn) in run.obs.items():
                _evaluate_into(
                    work, fn, run.eval_sets[name], run.scratch[name], name, config.observable_dtype
                )
                mean = float(run.scratch[name].double().mean())
                _check_divergence(
                    mean, run.limits[name], config, chain, draw, f"mean loss of {name!r}"
                )
                run.arrays[name][chain, draw].copy_(run.scratch[name])
            with torch.no_grad():
                diffs = torch._foreach_sub(params, w_star)
                dist = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs))))
            run.sgld_loss[chain, draw] = mean_step_loss
            run.distance[chain, draw] = dist
            done = draw + 1
            run.completed[chain] = done
            if run.store is not None:
                _commit(run.store, chain, done, step, params, state, noise_gen, stream, config)
    finally:
        bar.close()


def _commit(
    store: TraceStore,
    chain: int,
    done: int,
    step: int,
    params: list[torch.Tensor],
    state: SGLDState,
    noise_gen: torch.Generator,
    stream: MinibatchStream,
    config: SGLDConfig,
) -> None:
    """Mark ``done`` draws of ``chain`` complete; checkpoint the chain state periodically.

    The checkpoint holds everything the next step depends on: weights, RMSProp's ``V``, the SGHMC
    momentum (key ``"momentum"``, SGHMC only), the noise generator and the minibatch stream.
    The manifest is replaced atomically after the draw's rows are in the (shared) memory map, so
    a killed process loses at most the draw in flight. The checkpoint is written after the
    manifest, so it never runs ahead of the completed draws.
    """
    manifest = store.read_manifest() or {}
    manifest["completed"][chain] = done
    store.write_manifest(manifest)
    if done % config.checkpoint_every == 0 and done < config.num_draws:
        ckpt = {
            "draw": done,
            "step": step,
            "params": [p.detach().cpu().clone() for p in params],
            "square_avg": [v.detach().cpu().clone() for v in state.square_avg],
            "noise_rng": noise_gen.get_state(),
            "stream": stream.state_dict(),
        }
        if config.has_momentum:
            ckpt["momentum"] = [v.detach().cpu().clone() for v in state.momentum]
        store.save_checkpoint(chain, ckpt)
