"""Wall time and peak memory of an attribution method, split into its fit and score phases.

What is measured, honestly:

* ``seconds``: wall-clock time (``time.perf_counter``) of the phase, with CUDA synchronised at
  both ends when a GPU is in use.
* ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` over the phase minus the allocation at its
  start, i.e. the extra tensor memory the phase needed on the current CUDA device (``nan`` when
  CUDA is not initialised). It counts tensors only, not the allocator's cache.
* ``peak_rss_mb``: the largest increase of the process's resident set size (RSS) above its value
  at the start of the phase, sampled by a background thread every ``interval_s`` (5 ms) from
  ``/proc/self/statm`` (``psutil`` elsewhere). ``tracemalloc`` would miss torch's CPU tensors,
  which is why RSS is used. Before the phase, garbage is collected and (glibc) ``malloc_trim``
  returns the allocator's free pages to the OS, so that memory freed by an earlier phase is not
  silently reused (without it a 40 MB phase after a 50 MB one measured +14 MB instead of +40).
  Caveats: spikes shorter than the sampling interval can be missed; other threads of the same
  process (e.g. a concurrent data loader) are included; memory the allocator keeps cached
  (not glibc's, e.g. a custom allocator's) and reuses is not counted. It is a fair, comparable number for methods run one after
  another in the same process, not an exact allocation profile.
* ``peak_rss_total_mb``: the process's high-water RSS (``resource.getrusage``) at the end of the
  phase, for context.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "PhaseTiming",
    "AttributionTimings",
    "measure_phase",
    "current_rss_bytes",
    "torch_threads",
]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MB = 1024.0**2


def current_rss_bytes() -> int:
    """Resident set size of this process in bytes (``/proc`` on Linux, ``psutil`` elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


@dataclass
class PhaseTiming:
    """Cost of one phase (``fit`` or ``score``) of an attribution method."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = math.nan
    peak_rss_total_mb: float = 0.0
    calls: int = 0

    def add(self, other: PhaseTiming) -> None:
        """Accumulate a further call of the same phase (times add up, peaks take the max)."""
        self.seconds += other.seconds
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)
        if not math.isnan(other.peak_cuda_mb):
            self.peak_cuda_mb = (
                other.peak_cuda_mb
                if math.isnan(self.peak_cuda_mb)
                else max(self.peak_cuda_mb, other.peak_cuda_mb)
            )
        self.peak_rss_total_mb = max(self.peak_rss_total_mb, other.peak_rss_total_mb)
        self.calls += other.calls


@dataclass
class AttributionTimings:
    """Fit and score phase costs of one attributor (``score`` accumulates over calls)."""

    fit: PhaseTiming = field(default_factory=PhaseTiming)
    score: PhaseTiming = field(default_factory=PhaseTiming)

    @property
    def total_seconds(self) -> float:
        return self.fit.seconds + self.score.seconds

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix}{phase}_{quantity}`` floats for MLflow (NaNs are dropped)."""
        out: dict[str, float] = {}
        for phase in ("fit", "score"):
            for key, value in asdict(getattr(self, phase)).items():
                if key == "calls" or (isinstance(value, float) and math.isnan(value)):
                    continue
                out[f"{prefix}{phase}_{key}"] = float(value)
        out[f"{prefix}total_seconds"] = float(self.total_seconds)
        return out

    def summary(self) -> str:
        """One line, e.g. ``fit 1.20 s (+35 MB RSS) | score 0.40 s (+12 MB RSS)``."""
        parts = []
        for phase in ("fit", "score"):
            t: PhaseTiming = getattr(self, phase)
            mem = f"+{t.peak_rss_mb:.0f} MB RSS"
            if not math.isnan(t.peak_cuda_mb):
                mem += f", +{t.peak_cuda_mb:.0f} MB CUDA"
            parts.append(f"{phase} {t.seconds:.2f} s ({mem})")
        return " | ".join(parts)


class _RSSSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True, name="bifrepro-rss-sampler")
        self.interval_s = interval_s
        self.peak = current_rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, current_rss_bytes())
        return self.peak


def _release_free_memory() -> None:
    """Collect garbage and return the C allocator's free pages to the OS (glibc only)."""
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


@contextlib.contextmanager
def measure_phase(interval_s: float = 0.005) -> Iterator[PhaseTiming]:
    """Measure the wall time and peak memory of the ``with`` block into the yielded record.

    The record is filled in when the block exits (also on an exception).
    """
    record = PhaseTiming(calls=1)
    use_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_start = 0
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_start = torch.cuda.memory_allocated()
    _release_free_memory()
    rss_start = current_rss_bytes()
    sampler = _RSSSampler(interval_s)
    sampler.start()
    t0 = time.perf_counter()
    try:
        yield record
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            if use_cuda:
                record.peak_cuda_mb = (torch.cuda.max_memory_allocated() - cuda_start) / _MB
            else:  # CUDA first used inside the phase: everything allocated belongs to it
                record.peak_cuda_mb = torch.cuda.max_memory_allocated() / _MB
        record.seconds = time.perf_counter() - t0
        peak = sampler.stop()
        record.peak_rss_mb = max(0.0, (peak - rss_start) / _MB)
        record.peak_rss_total_mb = _maxrss_bytes() / _MB


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore.

    Timings depend on the thread count (and say so: ``cpu (1 thread)``); 1 is the safe choice on
    a shared machine, where small ops with 2+ OpenMP threads slow down ~20x under contention.
    """
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
