"""Chains as separate jobs: find the chain-job stores that hold a run's chains, and merge them.

A run of ``num_chains=N`` can be spread over jobs of ``num_chains=k, first_chain=j`` (e.g. a Hydra
multirun over ``sampler.first_chain``; docs/chain_jobs.md). Each job writes its own complete trace
store beside the others (the folder name depends on the job's sampler settings). Before the full
run samples, :func:`merge_chain_jobs` looks for complete stores of the same run whose chain ranges
together cover its chains exactly and merges them into the run's own store
(:func:`bifrepro.traces.merge_trace_stores`), so the run loads them instead of sampling.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bifrepro.sgld_config import SGLDConfig
from bifrepro.traces import TraceStore, merge_trace_stores

__all__ = ["StoreDir", "chain_job_stores", "merge_chain_jobs", "record_chain_job"]

log = logging.getLogger(__name__)

#: Where the run of a given sampler configuration keeps its trace store (a cache key, e.g.
#: ``cache/traces-<hash of model, data and config.fingerprint()>``).
StoreDir = Callable[[SGLDConfig], Path]


def _same_run(config: SGLDConfig) -> str:
    """Fingerprint of the run's settings with the chain range set aside."""
    return config.replace(num_chains=1, first_chain=0).fingerprint()


def _candidates(
    out_dir: Path, config: SGLDConfig, store_dir: StoreDir
) -> dict[int, list[tuple[int, Path]]]:
    """Complete stores beside ``out_dir`` holding chains of ``config``'s run within its range,
    by first chain: ``{first_chain: [(num_chains, folder), ...]}``."""
    lo, hi = config.first_chain, config.first_chain + config.num_chains
    wanted = _same_run(config)
    found: dict[int, list[tuple[int, Path]]] = {}
    for manifest_path in sorted(out_dir.parent.glob("*/manifest.json")):
        root = manifest_path.parent
        if root == out_dir or root.name.startswith("."):
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
            job = SGLDConfig(**manifest["config"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not a readable store: not ours to judge here
        if manifest.get("status") != "complete" or _same_run(job) != wanted:
            continue
        if not lo <= job.first_chain or job.first_chain + job.num_chains > hi:
            continue
        # the folder name also encodes the model, data and other inputs of the store's run
        expected = store_dir(config.replace(num_chains=job.num_chains, first_chain=job.first_chain))
        if Path(expected).resolve() != root.resolve():
            continue
        found.setdefault(job.first_chain, []).append((job.num_chains, root))
    return found


def _cover(found: dict[int, list[tuple[int, Path]]], start: int, stop: int) -> list[Path] | None:
    """Stores whose ranges tile ``start..stop-1`` exactly (fewest, largest first), or None."""
    dead: set[int] = set()  # chain indices from which no tiling exists

    def tile(at: int) -> list[Path] | None:
        if at == stop:
            return []
        if at in dead:
            return None
        for n, root in sorted(found.get(at, []), key=lambda x: (-x[0], str(x[1]))):
            rest = tile(at + n)
            if rest is not None:
                return [root, *rest]
        dead.add(at)
        return None

    return tile(start)


def chain_job_stores(
    out_dir: str | os.PathLike[str], config: SGLDConfig, store_dir: StoreDir
) -> list[Path] | None:
    """Complete chain-job stores beside ``out_dir`` that together hold exactly the chains of the
    run ``config`` describes (``first_chain .. first_chain + num_chains - 1``), or None.

    A store counts when it is complete, its settings equal ``config`` apart from ``num_chains``
    and ``first_chain``, its chains lie within the run's range, and it sits where ``store_dir``
    puts that chain range (so it was sampled from the same model and data).
    """
    out = Path(out_dir)
    found = _candidates(out, config, store_dir)
    cover = _cover(found, config.first_chain, config.first_chain + config.num_chains)
    if cover is None and found:
        ranges = sorted((j, j + n - 1) for j, stores in found.items() for n, _ in stores)
        log.info(
            "chain-job stores of this run hold chains %s, not all of %d..%d: sampling them all",
            ", ".join(f"{a}..{b}" for a, b in ranges),
            config.first_chain,
            config.first_chain + config.num_chains - 1,
        )
    return cover


def merge_chain_jobs(
    out_dir: str | os.PathLike[str], config: SGLDConfig, store_dir: StoreDir
) -> SGLDConfig:
    """Merge the chain-job stores of ``config``'s run into ``out_dir`` when they cover its chains.

    Call it before sampling ``config`` into ``out_dir``. Nothing happens when ``out_dir``
    already holds a store (complete: it is loaded; interrupted: it resumes) or when the chain
    jobs do not cover every chain. Returns the configuration to sample with: after a merge,
    ``chain_batching`` names the mode the jobs ran in ("off": one chain after another, "on":
    vmapped), since a store is only reopened with the mode it was written with.
    """
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        return config
    stores = chain_job_stores(out, config, store_dir)
    if stores is None:
        return config
    merge_trace_stores(stores, out)
    log.info(
        "merged chains %d..%d from %d chain-job stores (%s) into %s instead of sampling",
        config.first_chain,
        config.first_chain + config.num_chains - 1,
        len(stores),
        ", ".join(s.name for s in stores),
        out,
    )
    manifest = TraceStore(out).read_manifest() or {}
    vmapped = (manifest.get("identity") or {}).get("chain_batching") == "vmap"
    mode = "on" if vmapped else "off"
    return config if config.chain_batching == mode else config.replace(chain_batching=mode)


def record_chain_job(
    tracker: Any, config: SGLDConfig, traces_dir: str, metrics: dict[str, float]
) -> dict[str, float]:
    """The MLflow record of a chain job, which writes no results: tags ``chain_job``, ``chains``
    (first..last) and ``traces_dir``, and the finite ``metrics`` (timing, chain diagnostics).

    ``tracker`` has ``set_tags`` and ``log_metrics`` (:class:`bifrepro.tracking.RunTracker`).
    Returns ``metrics``.
    """
    last = config.first_chain + config.num_chains - 1
    tracker.set_tags(
        {"chain_job": "true", "chains": f"{config.first_chain}..{last}", "traces_dir": traces_dir}
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    log.info("chain job done: chains %d..%d sampled into %s", config.first_chain, last, traces_dir)
    return metrics
