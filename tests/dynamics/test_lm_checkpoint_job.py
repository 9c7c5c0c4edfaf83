"""One checkpoint job: result files keyed by the sampler, diverged chains fail, metrics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bifrepro.dynamics.lm_checkpoint_job as job
from bifrepro.sampling import SamplerDivergedError, SGLDConfig
from tests.dynamics._stagewise_fakes import fake_results


def test_result_path_is_keyed_by_the_sampler_used(tmp_path: Path) -> None:
    configured = SGLDConfig()
    assert job.result_path(tmp_path, "step4", configured, configured) == (
        tmp_path / "checkpoints" / "step4" / "result.pt"
    )
    other = configured.replace(step_size=configured.step_size / 2)
    path = job.result_path(tmp_path, "step4", other, configured)
    assert path.parent.parent.name == f"checkpoints-{other.fingerprint()}"


def test_a_diverged_result_is_refused(tmp_path: Path) -> None:
    good, bad = fake_results()[0], {"label": "step4", "diverged": True, "summary": "diverged"}
    torch.save(good, tmp_path / "good.pt")
    torch.save(bad, tmp_path / "bad.pt")
    assert job.load_result(tmp_path / "good.pt")["step"] == good["step"]
    with pytest.raises(RuntimeError, match="diverged"):
        job.load_result(tmp_path / "bad.pt")


def test_a_diverging_sampler_fails_the_job_and_writes_no_result(
    tmp_path: Path, monkeypatch
) -> None:
    def diverges(*args, **kwargs):
        raise SamplerDivergedError("simulated")

    monkeypatch.setattr(job, "sample_token_traces", diverges)
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(job, "induction_score", lambda *a, **kw: SimpleNamespace(score=0.0))
    checkpoints = SimpleNamespace(step=lambda label: 4, load=lambda label: model, progress=False)
    data = SimpleNamespace(
        probe_ids=None, probe_mask=None, observed_dataset=list, query_dataset=list,
        sgld_dataset=list,
    )  # fmt: skip
    path = tmp_path / "checkpoints" / "step4" / "result.pt"
    settings = SimpleNamespace(induction_half_len=4)
    with pytest.raises(SamplerDivergedError):
        job.run_checkpoint(checkpoints, data, SGLDConfig(), "step4", path, settings)
    assert not path.exists()


def test_checkpoint_metrics() -> None:
    m = job.checkpoint_metrics(fake_results()[1])
    assert m["induction/score"] == pytest.approx(0.1) and m["llc"] == 6.0
    assert m["sampler/step_size"] == 1e-4 and m["health/healthy"] == 1.0
    assert m["class_correlation/delimiter_to_delimiter"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in m.values())
