"""One checkpoint of a stagewise LM run: everything measured at ``w*_t``, in one result file.

At a checkpoint (:func:`run_checkpoint`): the induction score, SGLD localised at ``w*_t``
recording per-token losses of the query and observed training sequences (on disk, resumable),
the class x class per-token BIF (both estimators, with block standard errors), a panel of
token-pair scores, the LLC from the same draws, the losses at ``w*_t`` and the chain health
(basic diagnostics AND every rule of :mod:`bifrepro.sampling.health`). The result file is keyed
by the sampler actually used, and a finished checkpoint is never recomputed unless asked.
A sampler that diverges raises: a diverged chain fails the job.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bifrepro.attribution import bif_scores
from bifrepro.attribution.token_bif import sample_token_traces
from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.class_influence import ClassInfluence, class_influence
from bifrepro.dynamics.induction import induction_score
from bifrepro.dynamics.llc import estimate_llc
from bifrepro.dynamics.lm_checkpoints import LMCheckpoints
from bifrepro.dynamics.stagewise_data import StagewiseData
from bifrepro.io import atomic_torch_save
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.health import HealthThresholds, assess_traces, check_precision
from bifrepro.sampling.parameters import count_sampled_parameters
from bifrepro.traces import LossTraces

__all__ = ["result_path", "load_result", "run_checkpoint", "checkpoint_metrics"]

log = logging.getLogger(__name__)


def result_path(work_dir: Path, label: str, sampler: SGLDConfig, configured: SGLDConfig) -> Path:
    """Result file of a checkpoint, keyed by the sampler actually used: the ``configured``
    sampler's in ``checkpoints/``, any other (a calibrated step size) in
    ``checkpoints-<its fingerprint>/``, so traces of different samplers never mix."""
    fp = sampler.fingerprint()
    root = "checkpoints" if fp == configured.fingerprint() else f"checkpoints-{fp}"
    return work_dir / root / label / "result.pt"


def load_result(path: Path) -> dict[str, Any]:
    """A finished checkpoint's result; one whose sampler diverged (an older run) is refused."""
    result = torch.load(path, weights_only=False)
    if result.get("diverged"):
        raise RuntimeError(
            f"checkpoint {result['label']}: SGLD diverged ({result.get('summary')}); rerun it "
            "with experiment.overwrite=true and a smaller sampler.step_size"
        )
    return result


def _add_health(
    result: dict[str, Any],
    traces: LossTraces,
    thresholds: HealthThresholds | None,
    evidence: Mapping[str, Any] | None = None,
) -> None:
    """Every chain-health rule (:func:`assess_traces`) next to the basic diagnostics.

    ``healthy`` = the diagnostics' verdict (trend, R-hat) AND every health rule (trend, R-hat,
    ESS, distance, loss rise, trend share).
    """
    diag = traces.diagnostics
    # d: traces.num_params; evidence: the calibration's curvature and step-halving check
    health = assess_traces(traces, thresholds=thresholds, **(evidence or {}))
    result.update(
        healthy=bool(diag.is_healthy and health.is_healthy),
        diagnostics_healthy=bool(diag.is_healthy),
        health_healthy=bool(health.is_healthy),
        health=health.to_metrics("health/"),
        health_summary=health.summary(),
        health_failed=[c.name for c in health.failed],
        num_params=int(traces.num_params),  # type: ignore[arg-type]
    )


def _add_token_precision(
    result: dict[str, Any],
    query: torch.Tensor,
    train: torch.Tensor,
    thresholds: HealthThresholds | None,
) -> None:
    """The precision rule at token level, recorded but not part of the verdict.

    The stagewise analysis reads class-level averages, whose own standard errors it reports; the
    share of each query token's top-k training tokens resolved beyond noise says how far the
    token-pair panels can be read (``check_precision``)."""
    check, stats = check_precision(query, train, thresholds)
    result["token_precision"] = {**stats, "passed": bool(check.passed), "detail": check.detail}


def _token_weights(mask: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` weights making ``L_n`` the mean over sequences of their mean token loss."""
    valid = mask.bool().clone()
    valid[:, 0] = False
    w = valid.double()
    return w / w.sum(1, keepdim=True).clamp_min(1)


def _class_dict(ci: ClassInfluence) -> dict[str, Any]:
    return {
        "mean": ci.mean.float(),
        "std_error": ci.std_error.float(),
        "query_counts": ci.query_counts,
        "train_counts": ci.train_counts,
    }


def draw_mean_loss(train: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[C, D]`` mean token loss of the observed training sequences on each draw: the posterior's
    loss rise, partialled out of the class influence (``class_partial``)."""
    return (train.double() * _token_weights(mask)).sum(-1).mean(-1)


def _add_class_influence(
    result: dict[str, Any], q: torch.Tensor, t: torch.Tensor, data: StagewiseData, settings: Any
) -> None:
    """Class x class influence: correlation, covariance and the partial correlation given the
    per-draw mean loss (:func:`draw_mean_loss`), with block standard errors."""
    blocks = min(settings.se_blocks_per_chain, max(q.shape[1] // 2, 1))
    control = draw_mean_loss(t, data.observed_mask)
    for est in ("correlation", "covariance", "partial"):
        ci = class_influence(
            q, t, data.query_classes, data.observed_classes, len(TOKEN_CLASSES), normalize=est,
            blocks_per_chain=blocks, control=control if est == "partial" else None,
        )  # fmt: skip
        result[f"class_{est}"] = _class_dict(ci)


def _mean_token_loss(losses: torch.Tensor, mask: torch.Tensor) -> float:
    return float((losses.double() * _token_weights(mask)).sum(1).mean())


def _reuse(
    path: Path,
    checkpoints: LMCheckpoints,
    sampler: SGLDConfig,
    thresholds: HealthThresholds | None,
    data: StagewiseData | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """The saved result; one from before the health rules (or the partial correlation) gets them
    from its traces, unsampled."""
    result = load_result(path)
    if "class_partial" not in result and data is not None:
        log.info(
            "checkpoint %s: adding the partial class influence from its traces", result["label"]
        )
        traces = LossTraces.load(path.parent / "traces")
        _add_class_influence(result, traces["query"], traces["train"], data, settings)
        atomic_torch_save(result, path)
    if "token_precision" not in result:
        traces = LossTraces.load(path.parent / "traces")
        _add_token_precision(result, traces["query"], traces["train"], thresholds)
        atomic_torch_save(result, path)
    if "health" not in result:
        label = result["label"]
        log.info("checkpoint %s: adding the chain-health rules from its traces", label)
        traces = LossTraces.load(path.parent / "traces")
        if traces.num_params is None:  # traces from before they recorded it
            traces.num_params = count_sampled_parameters(checkpoints.load(label))
        _add_health(result, traces, thresholds)
        result.setdefault("sampler", sampler.to_dict())  # the path is keyed by it
        atomic_torch_save(result, path)
    return result


def run_checkpoint(
    checkpoints: LMCheckpoints,
    data: StagewiseData,
    sampler: SGLDConfig,
    label: str,
    path: Path,
    settings: Any,
    thresholds: HealthThresholds | None = None,
    overwrite: bool = False,
    evidence: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything measured at checkpoint ``label``, saved to (or read back from) ``path``.

    ``sampler`` is the one actually used (calibrated or as configured). ``settings`` supplies
    ``induction_half_len``, ``se_blocks_per_chain``, ``pair_query_seqs`` and ``pair_train_seqs``
    (e.g. a ``StagewiseLMConfig``). ``evidence``: what a calibration at this checkpoint
    measured for the health check (:meth:`SharedCalibration.evidence_for`).
    """
    if path.exists() and not overwrite:
        log.info("checkpoint %s: result exists (%s); reusing it", label, path)
        return _reuse(path, checkpoints, sampler, thresholds, data, settings)
    t0 = time.perf_counter()
    step = checkpoints.step(label)
    model = checkpoints.load(label)
    ind = induction_score(model, data.probe_ids, data.probe_mask, settings.induction_half_len)
    traces = sample_token_traces(
        model, data.observed_dataset(), data.query_dataset(), sampler,
        sgld_data=data.sgld_dataset(), out_dir=path.parent / "traces", progress=checkpoints.progress,
    )  # fmt: skip
    q, t = traces["query"], traces["train"]
    result: dict[str, Any] = {
        "label": label,
        "step": step,
        "induction": dataclasses.asdict(ind),
        "diverged": False,
        "sampler": sampler.to_dict(),
    }
    _add_class_influence(result, q, t, data, settings)
    pq, pt = min(settings.pair_query_seqs, q.shape[2]), min(settings.pair_train_seqs, t.shape[2])
    result["pairs"] = {
        est: bif_scores(q[:, :, :pq], t[:, :, :pt], normalize=est).half()
        for est in ("correlation", "covariance")
    }
    init = traces.init_losses
    llc = estimate_llc(t, init["train"], sampler.nbeta, _token_weights(data.observed_mask))
    result.update(
        llc=dataclasses.asdict(llc),
        loss_train=_mean_token_loss(init["train"], data.observed_mask),
        loss_query=_mean_token_loss(init["query"], data.query_mask),
        summary=traces.diagnostics.summary(),
        chain=traces.diagnostics.to_metrics("chain/"),
    )
    _add_health(result, traces, thresholds, evidence)
    _add_token_precision(result, q, t, thresholds)
    result["seconds"] = time.perf_counter() - t0
    atomic_torch_save(result, path)
    log.info(
        "checkpoint %s (step %d) in %.0fs: induction score %.3f, %s; %s",
        label, step, result["seconds"], ind.score, result["summary"], result["health_summary"],
    )  # fmt: skip
    return result


def checkpoint_metrics(r: dict[str, Any]) -> dict[str, float]:
    """The metrics of one checkpoint's result (logged at its training step)."""
    out = {
        "induction/score": r["induction"]["score"],
        "induction/first_loss": r["induction"]["first_loss"],
        "induction/second_loss": r["induction"]["second_loss"],
        "checkpoint_seconds": r["seconds"],
        "chains_healthy": float(r.get("healthy", False)),
        "llc": r["llc"]["mean"],
        "llc_std_error": r["llc"]["std_error"],
        "loss/train_observed": r["loss_train"],
        "loss/query": r["loss_query"],
    }
    if "sampler" in r:
        out["sampler/step_size"] = r["sampler"]["step_size"]
    out.update(r.get("health", {}))
    out.update(r["chain"])
    m = r["class_correlation"]["mean"]
    for a, qa in enumerate(TOKEN_CLASSES):
        for b, tb in enumerate(TOKEN_CLASSES):
            out[f"class_correlation/{qa}_to_{tb}"] = float(m[a, b])
    return {k: float(v) for k, v in out.items()}
