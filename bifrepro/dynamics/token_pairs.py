"""Token pairs whose influence changes sign over training, picked from the per-checkpoint panels.

Every checkpoint stores the per-token BIF of the first few query sequences against the first few
observed training sequences (a small dense panel). :func:`token_pair_panel` stacks the panels
over checkpoints and picks the strongest sign changes, diverse in token classes, preferring
(up to half of them) pairs whose sign differs across the induction transition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.dynamics.stagewise_data import StagewiseData
from bifrepro.dynamics.transitions import sign_flips

__all__ = ["TokenPairPanel", "pick_pairs", "first_sign_change", "token_pair_panel"]


@dataclass
class TokenPairPanel:
    """The chosen pairs' curves over the checkpoints, their titles and table rows."""

    steps: list[int]
    #: ``[T, P]`` influence of the ``P`` chosen pairs at each checkpoint.
    curves: np.ndarray
    titles: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Share of all (classified) pairs of the panel whose influence changes sign.
    sign_flip_fraction: float = math.nan
    #: How many (classified) pairs the chosen ones were picked from (the strongest of many
    #: noisy curves look stronger than they are).
    num_candidates: int = 0
    #: ``[T]`` median standard error of one token-pair score per checkpoint (correlation
    #: estimator, from the token-level precision rule), or None where not recorded.
    noise_se: np.ndarray | None = None


def _context(s_text: list[str], pos: int, width: int = 4) -> str:
    left = "".join(s_text[max(1, pos - width) : pos]).replace("\n", "⏎")
    return f"…{left}[{s_text[pos].replace(chr(10), '⏎')}]"


def first_sign_change(steps: list[int], curve: np.ndarray) -> float:
    """The first step where ``curve`` has the opposite (non-zero) sign of the checkpoint before."""
    sgn = np.sign(np.nan_to_num(curve))
    for i in range(1, len(sgn)):
        if sgn[i] != 0 and sgn[i - 1] != 0 and sgn[i] != sgn[i - 1]:
            return float(steps[i])
    return math.nan


def pick_pairs(
    curves: np.ndarray,
    q_cls: np.ndarray,
    t_cls: np.ndarray,
    num: int,
    threshold: float,
    window: tuple[int, int] | None = None,
) -> list[int]:
    """Indices (into flattened pairs) of the strongest sign changes, diverse in classes.

    With ``window = (i, j)`` (checkpoint indices around a transition) up to half of the pairs
    are taken among those whose sign differs between checkpoints ``i`` and ``j``.
    """
    c = np.nan_to_num(curves)
    valid = (q_cls[:, None] >= 0) & (t_cls[None, :] >= 0)
    strength = np.minimum(c.max(0), -c.min(0))
    flips = valid.ravel() & sign_flips(c, threshold)
    strength = np.where(flips, strength, -np.inf)
    nt = valid.shape[1]
    chosen: list[int] = []
    used_q: set[int] = set()
    used_cls: set[tuple[int, int]] = set()

    def take(candidates: np.ndarray, limit: int) -> None:
        order = candidates[np.argsort(-strength[candidates])]
        for strict in (True, False):
            for idx in order:
                if len(chosen) >= limit or not np.isfinite(strength[idx]):
                    return
                qi, ti = divmod(int(idx), nt)
                key = (int(q_cls[qi]), int(t_cls[ti]))
                if int(idx) in chosen or (strict and (qi in used_q or key in used_cls)):
                    continue
                chosen.append(int(idx))
                used_q.add(qi)
                used_cls.add(key)

    if window is not None and window[1] > window[0]:
        scale = np.abs(c).max(0)
        a, b = c[window[0]], c[window[1]]
        across = (np.sign(a) * np.sign(b) < 0) & (
            np.minimum(np.abs(a), np.abs(b)) > threshold * scale
        )
        take(np.flatnonzero(across & flips), max(1, num // 2))
    take(np.arange(c.shape[1]), num)
    return chosen


def token_pair_panel(
    results: list[dict[str, Any]],
    data: StagewiseData,
    estimator: str,
    num: int,
    threshold: float,
    window_steps: tuple[int, int] | None = None,
) -> TokenPairPanel:
    """The ``num`` token pairs of the stored panels whose ``estimator`` curve changes sign most.

    ``window_steps``: the checkpoint steps just before and after the induction transition.
    """
    names = list(TOKEN_CLASSES)
    steps = [int(r["step"]) for r in results]
    stack = np.stack(
        [r["pairs"][estimator].float().numpy() for r in results]
    )  # [T, pq, Tq, pt, Tt]
    _, pq, tq, pt, tt = stack.shape
    flat = stack.reshape(len(results), pq * tq * pt * tt)
    q_cls = data.query_classes[:pq].reshape(-1).numpy()
    t_cls = data.observed_classes[:pt].reshape(-1).numpy()
    window = None
    if window_steps is not None and all(s in steps for s in window_steps):
        window = (steps.index(window_steps[0]), steps.index(window_steps[1]))
    chosen = pick_pairs(flat, q_cls, t_cls, num, threshold, window)
    text = data.classifier.text
    q_text = [[text(int(i)) for i in row] for row in data.query_ids[:pq].tolist()]
    t_text = [[text(int(i)) for i in row] for row in data.observed_ids[:pt].tolist()]
    panel = TokenPairPanel(steps, flat[:, chosen] if chosen else np.zeros((len(steps), 0)))
    for idx in chosen:
        qi, ti = divmod(idx, pt * tt)
        qs, qp = divmod(qi, tq)
        ts, tp = divmod(ti, tt)
        curve = flat[:, idx]
        flip_at = first_sign_change(steps, curve)
        panel.titles.append(
            f"query {_context(q_text[qs], qp)!s} ({names[q_cls[qi]]})  ←  train "
            f"{_context(t_text[ts], tp)!s} ({names[t_cls[ti]]})"
        )
        for st, v in zip(steps, curve, strict=True):
            panel.rows.append({
                "pair": len(panel.titles) - 1, "step": st, estimator: float(v),
                "query_seq": qs, "query_pos": qp, "query_token": q_text[qs][qp],
                "query_class": names[q_cls[qi]],
                "train_seq": int(data.observed_index[ts]), "train_pos": tp,
                "train_token": t_text[ts][tp], "train_class": names[t_cls[ti]],
                "first_sign_change_step": flip_at,
            })  # fmt: skip
    valid = ((q_cls[:, None] >= 0) & (t_cls[None, :] >= 0)).ravel()
    panel.sign_flip_fraction = float(sign_flips(flat[:, valid], threshold).mean())
    panel.num_candidates = int(valid.sum())
    se = [r.get("token_precision", {}).get("score_se_median", math.nan) for r in results]
    if estimator == "correlation" and np.isfinite(se).all():
        panel.noise_se = np.asarray(se, dtype=float)
    return panel
