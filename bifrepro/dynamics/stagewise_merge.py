"""The merge of a stagewise LM run: stages, class-level influence changes, tables and metrics.

:func:`merge_checkpoints` reads the per-checkpoint results (:mod:`~bifrepro.dynamics.lm_checkpoint_job`)
in step order and

1. detects the stages: the induction transition (the rise of the induction score) and the
   fastest drops of the training loss (of the query loss when there is no training curve);
2. compares class x class influence before and after the induction transition (change, its
   z-score from the block standard errors, sign flips, peaks) and against an equally long
   window just before it;
3. picks token pairs whose influence changes sign (:mod:`~bifrepro.dynamics.token_pairs`);
4. assembles the tables of ``results/`` and the metrics.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.metrics import peak_step
from bifrepro.dynamics.stagewise_data import StagewiseData
from bifrepro.dynamics.token_pairs import TokenPairPanel, token_pair_panel
from bifrepro.dynamics.transitions import (
    Transition,
    detect_transition,
    fastest_drop_steps,
    sign_flips,
)

__all__ = ["StagewiseMerge", "merge_checkpoints"]

_ESTIMATORS = ("correlation", "covariance")
#: Also merged when every checkpoint has it (results from before it was computed do not).
_OPTIONAL_ESTIMATORS = ("partial",)


@dataclass
class StagewiseMerge:
    """Everything the figures, tables and metrics of a merged run are made of."""

    labels: list[str]
    steps: list[int]
    #: Per checkpoint: induction score and the losses on the first and second copy.
    induction: np.ndarray
    first_copy_loss: np.ndarray
    second_copy_loss: np.ndarray
    llc: np.ndarray
    llc_se: np.ndarray
    query_loss: np.ndarray
    healthy: np.ndarray
    #: ``[T, K, K]`` class x class influence of the chosen estimator, and its standard error.
    class_mean: np.ndarray
    class_se: np.ndarray
    transition: Transition
    #: Stage marks drawn on every figure (name -> step).
    marks: dict[str, float]
    #: The training loss curve (None: none recorded) and its steps.
    loss_curve: list[float] | None
    loss_steps: np.ndarray | None
    #: Checkpoint indices just before / after the induction transition (None: not detected).
    before: int | None
    after: int | None
    pairs: TokenPairPanel
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: For ``metrics.json``: the transition, loss drops, before/after steps, token counts.
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def matrix_index(self) -> list[int]:
        """Checkpoints of the class-matrix figure: first, before, midpoint, after, last."""
        mid = _nearest_index(self.steps, self.transition.midpoint, "after")
        keep = (0, self.before, mid, self.after, len(self.steps) - 1)
        return sorted({i for i in keep if i is not None})


def _nearest_index(steps: list[int], target: float, side: str) -> int | None:
    if not math.isfinite(target):
        return None
    if side == "before":
        idx = [i for i, s in enumerate(steps) if s <= target]
        return idx[-1] if idx else None
    idx = [i for i, s in enumerate(steps) if s >= target]
    return idx[0] if idx else None


def _class_changes(m: StagewiseMerge, flips: np.ndarray) -> pd.DataFrame:
    """One row per (query class, training class): range, sign flip, peak, change across induction."""
    names, steps, m_est, se_est = list(TOKEN_CLASSES), m.steps, m.class_mean, m.class_se
    peaks = peak_step(np.nan_to_num(m_est), steps, kind="abs")
    before, after, mid, nan = m.before, m.after, m.transition.midpoint, math.nan
    rows = []
    for a in range(len(names)):
        for b in range(len(names)):
            curve = m_est[:, a, b]
            finite = curve[np.isfinite(curve)]
            row: dict[str, Any] = {
                "query_class": names[a], "train_class": names[b], "first": float(curve[0]),
                "last": float(curve[-1]), "min": float(finite.min()) if finite.size else nan,
                "max": float(finite.max()) if finite.size else nan,
                "sign_flip": bool(flips[a, b]), "peak_step": int(peaks[a, b]),
            }  # fmt: skip
            if before is not None and after is not None:
                vb, va = m_est[before, a, b], m_est[after, a, b]
                sb, sa = se_est[before, a, b], se_est[after, a, b]
                row.update(
                    before_step=steps[before], after_step=steps[after], before=float(vb),
                    after=float(va), change=float(va - vb),
                    change_z=float((va - vb) / math.sqrt(sa**2 + sb**2))
                    if np.isfinite(sa) and np.isfinite(sb) and sa**2 + sb**2 > 0 else nan,
                    log10_peak_over_midpoint=math.log10(peaks[a, b] / mid)
                    if mid > 0 and peaks[a, b] > 0 else nan,
                )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def _class_metrics(m: StagewiseMerge, changes: pd.DataFrame, flips: np.ndarray, est: str) -> None:
    """Per class pair: sign flip, last value, change across induction; and their summaries."""
    metrics, steps, m_est, before, after = m.metrics, m.steps, m.class_mean, m.before, m.after
    for row in changes.itertuples():
        key = f"class_{est}/{row.query_class}_to_{row.train_class}"
        metrics[f"{key}/sign_flip"] = float(row.sign_flip)
        metrics[f"{key}/last"] = row.last
        if "change" in changes.columns:
            metrics[f"{key}/change_across_induction"] = float(row.change)
            metrics[f"{key}/change_z"] = float(row.change_z)
    metrics["class_sign_flip_fraction"] = float(flips.mean())
    # is the change across the induction transition larger than across an equally long (in log
    # steps) window just before it? Mean |change| over the K x K class pairs.
    if before is not None and after is not None and after > before:
        span = steps[after] / max(steps[before], 1)
        ctrl = int(np.argmin(np.abs(np.log(np.maximum(steps, 1)) - math.log(steps[before] / span))))
        d_trans = np.abs(m_est[after] - m_est[before])
        metrics["class_change/mean_abs_across_induction"] = float(np.nanmean(d_trans))
        if ctrl < before:
            d_ctrl = np.abs(m_est[before] - m_est[ctrl])
            metrics["class_change/control_from_step"] = float(steps[ctrl])
            metrics["class_change/mean_abs_control_window"] = float(np.nanmean(d_ctrl))
            metrics["class_change/ratio_induction_over_control"] = float(
                np.nanmean(d_trans) / np.nanmean(d_ctrl)
            )
    if "change_z" in changes.columns:
        z = np.abs(changes["change_z"].to_numpy(dtype=float))
        metrics["class_pairs_changed_2se_fraction"] = float(np.nanmean(z > 2))


def _checkpoint_table(m: StagewiseMerge, results: list[dict[str, Any]]) -> pd.DataFrame:
    nan = math.nan

    def health(key: str) -> list[float]:
        return [r.get("health", {}).get(f"health/{key}", nan) for r in results]

    return pd.DataFrame({
        "label": m.labels, "step": m.steps, "induction_score": m.induction,
        "loss_first_copy": m.first_copy_loss, "loss_second_copy": m.second_copy_loss,
        "loss_train_observed": [r["loss_train"] for r in results], "loss_query": m.query_loss,
        "llc": m.llc, "llc_std_error": m.llc_se, "chains_healthy": m.healthy,
        "diagnostics_healthy": [r.get("diagnostics_healthy", r.get("healthy", False)) for r in results],
        "health_rules_healthy": [r.get("health_healthy", nan) for r in results],
        "health_failed": [";".join(r.get("health_failed", [])) for r in results],
        "rhat": [r.get("chain", {}).get("chain/rhat", nan) for r in results],
        "ess_projected": health("ess_projected"), "distance_ratio": health("distance_ratio"),
        "trend_share": health("trend_share"),
        "token_topk_resolved": [r.get("token_precision", {}).get("resolved_share", nan) for r in results],
        "token_draws_for_target": [
            r.get("token_precision", {}).get("draws_for_target", nan) for r in results
        ],
        "step_size": [r.get("sampler", {}).get("step_size", nan) for r in results],
        "seconds": [r["seconds"] for r in results],
        "chain_summary": [r.get("summary", "") for r in results],
        "health_summary": [r.get("health_summary", "") for r in results],
    })  # fmt: skip


def _class_table(steps: list[int], mean: dict, se: dict) -> pd.DataFrame:
    names = list(TOKEN_CLASSES)
    return pd.DataFrame([
        {"step": st, "query_class": qa, "train_class": tb}
        | {k: v for e in mean for k, v in ((e, mean[e][i, a, b]), (f"{e}_se", se[e][i, a, b]))}
        for i, st in enumerate(steps) for a, qa in enumerate(names) for b, tb in enumerate(names)
    ])  # fmt: skip


def estimator_changes(
    mean: dict[str, np.ndarray], se: dict[str, np.ndarray], before: int, after: int
) -> pd.DataFrame:
    """Per class pair and estimator: the change across the induction window, its z (block
    standard errors) and whether it exceeds 2 s.e.; ``survives_<e>`` says whether a change that
    the correlation calls significant is significant with the same sign under estimator ``e``
    (e.g. the partial correlation, which removes the per-draw loss rise)."""
    names = list(TOKEN_CLASSES)
    rows = []
    for a, qa in enumerate(names):
        for b, tb in enumerate(names):
            row: dict[str, Any] = {"query_class": qa, "train_class": tb}
            for e in mean:
                change = float(mean[e][after, a, b] - mean[e][before, a, b])
                s = math.hypot(float(se[e][after, a, b]), float(se[e][before, a, b]))
                z = change / s if s > 0 and math.isfinite(s) else math.nan
                row |= {f"{e}_change": change, f"{e}_z": z, f"{e}_significant": abs(z) > 2}
            rows.append(row)
    out = pd.DataFrame(rows)
    for e in (e for e in mean if e != "correlation"):
        same_sign = np.sign(out[f"{e}_z"]) == np.sign(out["correlation_z"])
        out[f"survives_{e}"] = out["correlation_significant"] & out[f"{e}_significant"] & same_sign
    return out


def merge_checkpoints(
    results: list[dict[str, Any]],
    data: StagewiseData,
    training: dict[str, Any] | None,
    settings: Any,
) -> StagewiseMerge:
    """Stage detection, class-level changes, token pairs; metrics and tables.

    ``results`` in step order; ``training``: the training manifest (its loss curve), if any;
    ``settings`` supplies ``normalize``, ``induction_min_rise``, ``flip_threshold`` and
    ``num_pairs`` (e.g. a ``StagewiseLMConfig``).
    """
    est, steps = settings.normalize, [int(r["step"]) for r in results]
    ests = [*_ESTIMATORS, *(e for e in _OPTIONAL_ESTIMATORS if all(f"class_{e}" in r for r in results))]  # fmt: skip
    mean = {e: np.stack([r[f"class_{e}"]["mean"].double().numpy() for r in results]) for e in ests}  # fmt: skip
    se = {e: np.stack([r[f"class_{e}"]["std_error"].double().numpy() for r in results]) for e in ests}  # fmt: skip
    ind = np.array([r["induction"]["score"] for r in results])
    q_loss = np.array([r["loss_query"] for r in results])

    # 1. stages: induction transition and the fastest drops of the loss curve
    trans = detect_transition(steps, ind, settings.induction_min_rise)
    curve = training["loss_curve"] if training else None
    if curve:
        loss_steps = np.arange(1, len(curve) + 1)
        drops = fastest_drop_steps(loss_steps, curve, num=2)
    else:
        loss_steps = None
        drops = fastest_drop_steps(steps, q_loss, num=2, points_per_decade=3)
    before = after = None
    if trans.detected:
        before = _nearest_index(steps, trans.onset, "before") or 0
        after = _nearest_index(steps, trans.end, "after")
        after = len(steps) - 1 if after is None else after
    window = None if before is None else (steps[before], steps[after])  # type: ignore[index]
    m = StagewiseMerge(
        labels=[r["label"] for r in results], steps=steps, induction=ind,
        first_copy_loss=np.array([r["induction"]["first_loss"] for r in results]),
        second_copy_loss=np.array([r["induction"]["second_loss"] for r in results]),
        llc=np.array([r["llc"]["mean"] for r in results]),
        llc_se=np.array([r["llc"]["std_error"] for r in results]), query_loss=q_loss,
        healthy=np.array([bool(r.get("healthy", False)) for r in results]),
        class_mean=mean[est], class_se=se[est], transition=trans,
        marks={"induction (50%)": trans.midpoint} | {f"loss drop {i + 1}": d for i, d in enumerate(drops)},
        loss_curve=curve, loss_steps=loss_steps, before=before, after=after,
        pairs=token_pair_panel(results, data, est, settings.num_pairs, settings.flip_threshold, window),
    )  # fmt: skip
    m.metrics.update(trans.to_metrics("induction_transition/"))
    m.metrics.update({
        "induction/score_first": float(ind[0]), "induction/score_last": float(ind[-1]),
        "induction/score_max": float(np.nanmax(ind)),
    })  # fmt: skip
    for i, d in enumerate(drops):
        m.metrics[f"loss_drop_step/{i + 1}"] = d
    m.metrics["chains_healthy_fraction"] = float(m.healthy.mean())
    m.metrics["num_checkpoints"] = float(len(results))
    m.metrics["llc_last"] = float(m.llc[-1])

    # 2. class x class: before / after the induction transition, sign flips, peaks
    flips = sign_flips(m.class_mean, settings.flip_threshold)
    changes = _class_changes(m, flips)
    _class_metrics(m, changes, flips, est)
    # 3. token pairs whose influence changes sign
    m.metrics["token_pairs_sign_flip_fraction"] = m.pairs.sign_flip_fraction

    # 4. tables
    if curve:
        idx = sorted({int(round(x)) for x in np.geomspace(1, len(curve), 300)})
        train_loss = pd.DataFrame({"step": idx, "loss": [curve[i - 1] for i in idx]})
    else:
        train_loss = pd.DataFrame({"step": steps, "loss": q_loss})
    m.tables = {
        "checkpoints.csv": _checkpoint_table(m, results),
        "class_influence.csv": _class_table(steps, mean, se),
        "class_changes.csv": changes,
        "token_pairs.csv": pd.DataFrame(m.pairs.rows),
        "training_loss.csv": train_loss,
    }
    if before is not None and after is not None:
        by_est = estimator_changes(mean, se, before, after)
        m.tables["class_changes_by_estimator.csv"] = by_est
        for e in mean:
            m.metrics[f"class_change/{e}/changed_2se_fraction"] = float(
                by_est[f"{e}_significant"].mean()
            )
        for e in (e for e in mean if e != "correlation"):
            m.metrics[f"class_change/survive_{e}_count"] = float(by_est[f"survives_{e}"].sum())
        m.metrics["class_change/correlation_significant_count"] = float(by_est["correlation_significant"].sum())  # fmt: skip
    counts = results[0][f"class_{est}"]
    names = list(TOKEN_CLASSES)
    m.summary = {
        "transition": dataclasses.asdict(trans) | {"width_decades": trans.width_decades},
        "loss_drop_steps": drops,
        "before_after": None if before is None else [steps[before], steps[after]],  # type: ignore[index]
        "token_counts": {
            "query": dict(zip(names, counts["query_counts"].tolist(), strict=True)),
            "train": dict(zip(names, counts["train_counts"].tolist(), strict=True)),
        },
        "checkpoints": dict(zip(m.labels, steps, strict=True)),
    }
    return m
