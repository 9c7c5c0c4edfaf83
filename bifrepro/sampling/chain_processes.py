"""Chains split between forked worker processes on one machine (``SGLDConfig.chain_processes``).

Each worker samples a contiguous range of chains (``first_chain``/``num_chains``, the chain-job
mechanism of ``docs/chain_jobs.md``) into its own trace store with ``cores / processes`` torch
threads, and the stores are merged into the run's. Chains own their random streams, so the merged
traces are bit-identical to one process running every chain in turn. The point is speed: the
embedded models are small, and one-thread processes side by side do more work per second than
one process on several threads (``make bench`` prints the ratio).

Workers are forked (Linux): the model, the datasets and the loss functions are inherited, never
pickled, so closures and lambdas work. CUDA models and platforms without ``fork`` run in this
process (logged). Each worker's store resumes like any store; a failed worker's error is raised
here after the others finished, and a rerun resumes the unfinished ranges.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bifrepro.sgld_config import SGLDConfig
from bifrepro.traces import LossTraces, TraceStore, merge_trace_stores

__all__ = ["chain_ranges", "resolve_chain_processes", "sample_in_processes"]

log = logging.getLogger(__name__)


def resolve_chain_processes(config: SGLDConfig, device: torch.device) -> tuple[int, str]:
    """Processes to use (1 = in this process) and why, for logging."""
    wanted = config.chain_processes or torch.get_num_threads()
    wanted = min(wanted, config.num_chains)
    if wanted <= 1:
        return 1, "one process"
    if device.type != "cpu":
        return 1, f"the model is on {device.type}: chain processes are CPU only"
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1, "this platform cannot fork worker processes"
    if multiprocessing.current_process().daemon:
        return 1, "this is a daemonic worker process, which may not start processes"
    return wanted, f"{wanted} processes"


def chain_ranges(num_chains: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous ``(first, count)`` chain ranges, as equal as possible, larger ones first."""
    base, extra = divmod(num_chains, processes)
    ranges, first = [], 0
    for i in range(processes):
        count = base + (1 if i < extra else 0)
        ranges.append((first, count))
        first += count
    return ranges


def _job_dir(root: Path, first: int, count: int) -> Path:
    return root.with_name(f"{root.name}.chains-{first}-{first + count - 1}")


def _worker(
    sample: Callable[..., LossTraces],
    args: tuple[Any, ...],
    config: SGLDConfig,
    job_dir: Path,
    threads: int,
    errors: Any,
) -> None:
    """Body of one forked worker: sample its chains into its store; report an error, if any."""
    torch.set_num_threads(threads)
    try:
        sample(*args, config=config, out_dir=job_dir, progress=False)
    except BaseException as err:  # noqa: BLE001 (sent to the parent, which re-raises it)
        try:
            errors.put((job_dir.name, err, traceback.format_exc()))
        except Exception:  # noqa: BLE001 (an unpicklable error: send its text)
            errors.put((job_dir.name, RuntimeError(repr(err)), traceback.format_exc()))
        os._exit(1)
    os._exit(0)


def _draws_done(job_dirs: list[Path]) -> int:
    total = 0
    for job in job_dirs:
        try:  # for the progress bar only: a manifest being replaced counts as nothing yet
            manifest = TraceStore(job).read_manifest() if job.exists() else None
            total += sum(manifest["completed"]) if manifest else 0
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return total


def sample_in_processes(
    sample: Callable[..., LossTraces],
    args: tuple[Any, ...],
    config: SGLDConfig,
    processes: int,
    out_dir: str | os.PathLike[str] | None,
    progress: bool | None,
) -> LossTraces:
    """``sample(*args, config=..., out_dir=..., progress=...)`` for each chain range in a forked
    worker, then the workers' stores merged into ``out_dir`` (a temporary folder when ``None``,
    whose traces are then copied into memory)."""
    t_start = time.perf_counter()
    temp = None if out_dir is not None else Path(tempfile.mkdtemp(prefix="bifrepro-chains-"))
    root = Path(out_dir) if out_dir is not None else temp / "traces"
    root.parent.mkdir(parents=True, exist_ok=True)
    threads = max(1, torch.get_num_threads() // processes)
    ranges = chain_ranges(config.num_chains, processes)
    job_dirs = [_job_dir(root, config.first_chain + a, n) for a, n in ranges]
    log.info(
        "sampling %d chains in %d processes of %d torch thread(s): chains %s",
        config.num_chains, processes, threads,
        ", ".join(f"{config.first_chain + a}..{config.first_chain + a + n - 1}" for a, n in ranges),
    )  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    errors = ctx.SimpleQueue()
    workers = []
    try:
        for (first, count), job in zip(ranges, job_dirs, strict=True):
            job_config = config.replace(
                num_chains=count, first_chain=config.first_chain + first, chain_processes=1
            )
            proc = ctx.Process(
                target=_worker, args=(sample, args, job_config, job, threads, errors), daemon=True
            )
            proc.start()
            workers.append(proc)
        total, failures = config.num_chains * config.num_draws, []
        hidden = progress is False or (progress is None and not sys.stderr.isatty())
        with tqdm(total=total, desc="BIF draws", unit="draw", disable=hidden) as bar:
            while any(p.is_alive() for p in workers):
                time.sleep(0.2)
                while not errors.empty():  # read while they run: a full pipe blocks a worker
                    failures.append(errors.get())
                bar.n = _draws_done(job_dirs)
                bar.refresh()
        for proc in workers:
            proc.join()
        while not errors.empty():
            failures.append(errors.get())
        if failures or any(p.exitcode != 0 for p in workers):
            name, err, text = failures[0] if failures else ("?", None, "")
            log.error("chain worker %s failed:\n%s", name, text)
            if err is not None:
                raise err
            codes = [p.exitcode for p in workers]
            raise RuntimeError(f"a chain worker process died (exit codes {codes})")
        traces = merge_trace_stores(job_dirs, root)
        seconds = time.perf_counter() - t_start
        store = TraceStore(root)
        manifest = store.read_manifest() or {}
        manifest["sampling_seconds"] = seconds
        store.write_manifest(manifest)
        traces.sampling_seconds = seconds
        for job in job_dirs:  # merged: the workers' stores are copies now
            shutil.rmtree(job, ignore_errors=True)
        if temp is not None:
            traces = LossTraces(
                {n: traces[n].clone() for n in traces},
                traces.diagnostics,
                traces.config,
                {n: t.clone() for n, t in traces.init_losses.items()},
                num_params=traces.num_params,
                sampling_seconds=seconds,
            )
        log.info("BIF sampling done: %s", traces.diagnostics.summary())
        traces.diagnostics.warn_if_drifting()
        return traces
    finally:
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
