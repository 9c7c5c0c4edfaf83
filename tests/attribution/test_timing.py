"""Wall time and peak memory per phase."""

from __future__ import annotations

import math
import time

import torch

from bifrepro.attribution.timing import (
    AttributionTimings,
    PhaseTiming,
    measure_phase,
    torch_threads,
)


def test_measure_phase_sees_time_and_a_transient_allocation() -> None:
    with measure_phase() as record:
        big = torch.ones(200 * 2**20 // 4)  # 200 MB, touched, then freed inside the phase
        big.add_(1.0)
        time.sleep(0.05)
        del big
    assert record.seconds >= 0.05
    assert record.peak_rss_mb >= 150, record.peak_rss_mb
    assert record.peak_rss_total_mb >= record.peak_rss_mb
    assert record.calls == 1
    if not torch.cuda.is_available():
        assert math.isnan(record.peak_cuda_mb)


def test_memory_freed_by_an_earlier_phase_is_not_silently_reused() -> None:
    """Heap memory freed before a phase goes back to the OS, so the phase's own need shows."""

    def work(mb: int) -> float:
        x = torch.ones(mb * 2**20 // 4)
        return float((x * 2).sum())  # x and x * 2: 2 * mb resident at the peak

    for mb in (50, 20):  # leave freed memory with the allocator
        work(mb)
    peaks = []
    for mb in (5, 10, 20):
        with measure_phase() as record:
            work(mb)
        peaks.append(record.peak_rss_mb)
    # ~10, 20, 40 MB; without returning freed pages the heap's leftovers hide half of it
    assert peaks[1] >= 17 and peaks[2] >= 32, peaks


def test_a_phase_that_allocates_nothing_reports_little() -> None:
    with measure_phase() as record:
        sum(range(1000))
    assert record.peak_rss_mb < 50


def test_accumulation_and_metrics() -> None:
    timings = AttributionTimings()
    timings.score.add(PhaseTiming(seconds=1.0, peak_rss_mb=10.0, calls=1))
    timings.score.add(PhaseTiming(seconds=2.0, peak_rss_mb=5.0, calls=1))
    assert timings.score.seconds == 3.0 and timings.score.peak_rss_mb == 10.0
    assert timings.score.calls == 2
    metrics = timings.to_metrics("m/")
    assert metrics["m/score_seconds"] == 3.0 and metrics["m/total_seconds"] == 3.0
    assert "m/score_peak_cuda_mb" not in metrics  # NaN (no GPU use) is left out
    assert "score 3.00 s" in timings.summary()


def test_torch_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    try:
        with torch_threads(1):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before  # restored on an exception too
