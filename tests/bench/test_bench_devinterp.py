"""The devinterp comparison's timing summary over repeated, paired runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "bench_devinterp.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_devinterp", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timing_summary_takes_medians_and_keeps_every_pair_ratio() -> None:
    t = _bench().timing_summary([20.0, 30.0, 22.0], [40.0, 33.0, 44.0])
    assert t["bifrepro_seconds"] == 22.0 and t["devinterp_seconds"] == 40.0
    assert t["speedup"] == pytest.approx(40.0 / 22.0)
    assert t["speedup_runs"] == pytest.approx([2.0, 1.1, 2.0])
    assert t["speedup_min"] == pytest.approx(1.1) and t["speedup_max"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="paired"):
        _bench().timing_summary([1.0], [1.0, 2.0])


def test_repeats_are_a_command_line_option() -> None:
    args, rest = _bench()._parse(["--repeats", "3", "experiment.name=x"])
    assert args.repeats == 3 and rest == ["experiment.name=x"]


def test_bifrepro_uses_the_experiments_chain_processes_by_default() -> None:
    args, _ = _bench()._parse([])
    assert args.chain_processes == 0  # conf/sampler/sgld.yaml's default: one per torch thread
    args, _ = _bench()._parse(["--chain-processes", "1"])
    assert args.chain_processes == 1
