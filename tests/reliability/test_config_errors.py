"""Item 9: a bad config value is one line naming the key, the value and what is allowed, with exit
status 2 and no traceback; an unknown key stays Hydra's short composition error."""

from __future__ import annotations

import subprocess

import pytest

from tests.reliability._subprocess import run

#: Keeps the toy run tiny should a bad value ever be accepted.
_TINY = [
    "tracking.enabled=false",
    "experiment.steps=50",
    "experiment.num_checkpoints=2",
    "experiment.first_checkpoint=10",
    "sampler.num_chains=2",
    "sampler.num_draws=5",
    "sampler.burn_in=0",
]


def _toy(tmp_path, override: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    return run(
        [
            "-m",
            "experiments.toy_hierarchy",
            *_TINY,
            f"results_dir={tmp_path / 'results'}",
            override,
        ],
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sampler.step_size=-1", ("sampler.step_size=-1", "> 0")),
        ("sampler.rmsprop_eps=inf", ("sampler.rmsprop_eps=inf", "finite")),
        ("experiment.lr=nan", ("experiment.lr=nan", "finite")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_range_error_is_one_line_and_exit_status_2(tmp_path, override: str, expected) -> None:  # noqa: ANN001
    result = _toy(tmp_path, override)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for part in expected:  # the key, the value and what is allowed
        assert part in lines[0]
    assert result.returncode == 2


def test_unknown_key_is_a_short_composition_error(tmp_path) -> None:
    result = _toy(tmp_path, "sampler.foo=1")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 8, result.stderr
    assert "sampler.foo" in result.stderr
