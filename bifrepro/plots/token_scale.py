"""Figures of the language-scale experiment: the poster's examples per model size, and the
cross-form benchmark against size.

:func:`scale_panel` shows one query token at one size: the training sequences holding its
best-scoring tokens and, when it is not among them, the sequence of its best cross-form link
(e.g. the "five" a "5" should find); :func:`example_figure` stacks one panel per size under a
title that states the outcome. :func:`plot_category_scaling` draws cross-form P@1 per category
against the number of parameters, with intervals over queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.data.text import TokenizedSequences
from bifrepro.evaluation.token_links import QueryToken
from bifrepro.plots.style import house_style, legend_below
from bifrepro.plots.token_examples import decode_tokens
from bifrepro.plots.tokens import TokenPanel, TokenRow, plot_token_panels

__all__ = ["scale_panel", "outcome_text", "example_figure", "plot_category_scaling"]


def outcome_text(row: Mapping[str, Any]) -> str:
    """``"reproduced (rank 1, resolved)"`` / ``"not reproduced (rank 37, not resolved ...)"``."""
    if row["outcome"] == "no link":
        return "no cross-form candidate"
    noise = "resolved" if row["resolved"] else "not resolved beyond noise"
    return f"{row['outcome']} (cross-form rank {int(row['rank'])}, {noise})"


def scale_panel(
    tb: TokenBIF,
    tokenizer: Any,
    observed: TokenizedSequences,
    queries: TokenizedSequences,
    q: QueryToken,
    best_link: int,
    n_rows: int,
    title: str,
) -> TokenPanel:
    """Query ``q`` and the observed sequences of its top tokens, plus the best link's sequence
    (``best_link``: flat index ``seq·T + pos`` of the best cross-form link, or -1)."""
    valid = observed.attention_mask.bool().clone()
    valid[:, 0] = False
    top = tb.topk([(q.seq, q.pos)], k=10 * n_rows, valid=valid)
    t = observed.seq_len
    picks: list[tuple[int, int, str]] = []
    shown: set[str] = set()  # identical duplicate sentences are shown once
    for sq, ps in zip(top.seq[0].tolist(), top.pos[0].tolist(), strict=True):
        if sq >= 0 and observed.texts[sq] not in shown and len(picks) < n_rows:
            picks.append((sq, ps, f"#{len(picks) + 1} by score"))
            shown.add(observed.texts[sq])
    if best_link >= 0 and best_link // t not in [p[0] for p in picks]:
        picks.append((best_link // t, best_link % t, "best cross-form link"))
    seqs = [p[0] for p in picks]
    scores = tb.scores([(q.seq, q.pos)], seqs)[0] if seqs else torch.empty(0, t)
    rows = []
    for r, (sq, ps, why) in enumerate(picks):
        toks = decode_tokens(tokenizer, observed.input_ids[sq], observed.attention_mask[sq])
        rows.append(
            TokenRow(
                f"{why}: token {toks[ps].strip()!r}, score {float(scores[r, ps]):+.3f}",
                toks,
                scores[r, : len(toks)].numpy(),
            )
        )
    qtoks = decode_tokens(tokenizer, queries.input_ids[q.seq], queries.attention_mask[q.seq])
    return TokenPanel(title, qtoks, q.pos, rows)


def example_figure(
    description: str,
    panels: Sequence[TokenPanel],
    outcomes: Sequence[tuple[str, bool, bool]],
    note: str,
    score_label: str,
) -> Figure:
    """One example at every size; ``outcomes`` = (size, reproduced, resolved) per panel, which
    the title sums up."""
    good = [s for s, rep, res in outcomes if rep and res]
    weak = [s for s, rep, res in outcomes if rep and not res]
    if good:
        head = f"REPRODUCED (resolved) at {', '.join(good)}"
    elif weak:
        head = f"reproduced only within noise at {', '.join(weak)}"
    else:
        head = "NOT reproduced at any size"
    return plot_token_panels(panels, f"{description}: {head}\n{note}", score_label=score_label)


#: Display names of the methods of the language-scale benchmark.
METHOD_NAMES = {"bif": "BIF", "ekfac": "EK-FAC"}


def plot_category_scaling(
    table: pd.DataFrame,
    params: Mapping[str, int],
    title: str,
    reference: pd.DataFrame | None = None,
) -> Figure:
    """Cross-form P@1 per category against parameters (log x), intervals over queries;
    ``reference``: another method's "all" rows (EK-FAC per token), drawn dashed."""
    cats = [c for c in table["category"].unique() if c != "all"] + ["all"]
    with house_style():
        fig = Figure(figsize=(8.5, 4.8))
        ax = fig.add_subplot(1, 1, 1)
        for j, cat in enumerate(cats):
            sub = table[table["category"] == cat]
            x = np.array([params[s] for s in sub["size"]], dtype=float) * (1 + 0.015 * (j - 4))
            y = sub["precision_at_1"].to_numpy(dtype=float)
            lo = y - sub["precision_at_1_q_low"].to_numpy(dtype=float)
            hi = sub["precision_at_1_q_high"].to_numpy(dtype=float) - y
            style = {"color": "black", "linewidth": 2.5} if cat == "all" else {}
            ax.errorbar(
                x,
                y,
                yerr=[np.nan_to_num(lo), np.nan_to_num(hi)],
                marker="o",
                capsize=3,
                label=cat,
                **style,
            )
        if reference is not None and len(reference):
            name = str(reference["method"].iloc[0])
            x = np.array([params[s] for s in reference["size"]], dtype=float)
            y = reference["precision_at_1"].to_numpy(dtype=float)
            lo = y - reference["precision_at_1_q_low"].to_numpy(dtype=float)
            hi = reference["precision_at_1_q_high"].to_numpy(dtype=float) - y
            ax.errorbar(
                x * 1.08,
                y,
                yerr=[np.nan_to_num(lo), np.nan_to_num(hi)],
                marker="s",
                ls="--",
                color="tab:cyan",
                linewidth=2.0,
                capsize=3,
                label=f"all, {METHOD_NAMES.get(name, name)} per token",
            )
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("cross-form P@1 (per token)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=9)
        legend_below(ax, gap_in=0.45, fontsize=7, ncol=5, frameon=False)  # never over the bars
    return fig
