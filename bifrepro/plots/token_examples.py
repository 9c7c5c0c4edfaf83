"""The poster's language examples as token panels: PNG figures and one HTML page.

For each poster example (:data:`bifrepro.data.text.POSTER_EXAMPLES`) :func:`example_panels` picks
the observed training sequences holding the query token's best-scoring tokens (per-token BIF) and
colours every token of them by its score; :func:`poster_figures` draws them as the PNGs of
:data:`FIGURES` and :func:`poster_page` as one HTML page (:mod:`bifrepro.plots.tokens`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
from matplotlib.figure import Figure

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.data.text import POSTER_EXAMPLES, TokenizedSequences
from bifrepro.evaluation.token_links import QueryToken
from bifrepro.plots.tokens import TokenPanel, TokenRow, plot_token_panels, token_panels_html

__all__ = ["FIGURES", "decode_tokens", "example_panels", "poster_figures", "poster_page"]

log = logging.getLogger(__name__)

#: figure file -> poster examples shown in it (panels)
FIGURES: dict[str, tuple[str, ...]] = {
    "fig_numbers.png": ("numbers", "numbers_five"),
    "fig_elle.png": ("elle",),
    "fig_repondu.png": ("repondu",),
    "fig_countries.png": ("countries",),
    "fig_bank.png": ("bank_finance", "bank_river"),
    "fig_if_then.png": ("if_then",),
}


def decode_tokens(tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text piece of every real (unmasked) token of one sequence."""
    n = int(mask.sum())
    return [tokenizer.decode([int(i)]) for i in ids[:n].tolist()]


def example_panels(
    tb: TokenBIF,
    tokenizer: Any,
    observed: TokenizedSequences,
    observed_index: Any,
    queries: TokenizedSequences,
    qts: list[QueryToken],
    n_rows: int,
    normalize: str = "correlation",
    outcomes: Mapping[str, str] | None = None,
) -> dict[str, TokenPanel]:
    """Per poster example: query (focus token) and the training sequences of its top tokens.

    ``outcomes`` (example -> e.g. "NOT reproduced: ... rank 63",
    :func:`bifrepro.evaluation.token_links.example_outcomes`) goes into the panel's header, so a
    figure says whether it shows the link or its failure. ``observed_index`` maps an observed sequence to its training-set index (shown in the row
    labels, with the score of BIF's estimator ``normalize``). Identical duplicate sequences are
    shown once; an example without a labelled query token is skipped.
    """
    est = "corr" if normalize == "correlation" else "cov"
    panels = {}
    base = observed.attention_mask.bool().clone()
    base[:, 0] = False
    for ex in POSTER_EXAMPLES:
        q = next((q for q in qts if q.example == ex.name), None)
        if q is None:
            log.warning("poster example %r has no labelled query token; skipped", ex.name)
            continue
        top = tb.topk([(q.seq, q.pos)], k=max(50, 10 * n_rows), valid=base)
        seqs: list[int] = []
        best: dict[int, tuple[int, float]] = {}
        shown: set[str] = set()
        for sq, ps, v in zip(
            top.seq[0].tolist(), top.pos[0].tolist(), top.values[0].tolist(), strict=True
        ):
            if sq < 0:
                break
            text = observed.texts[sq]
            if sq not in best and text not in shown:  # identical duplicates add nothing
                best[sq] = (ps, v)
                seqs.append(sq)
                shown.add(text)
            if len(seqs) == n_rows:
                break
        scores = tb.scores([(q.seq, q.pos)], seqs)[0] if seqs else torch.empty(0, 0)
        rows = []
        for r, sq in enumerate(seqs):
            toks = decode_tokens(tokenizer, observed.input_ids[sq], observed.attention_mask[sq])
            ps, v = best[sq]
            rows.append(
                TokenRow(
                    f"#{r + 1}  training sequence {int(observed_index[sq])}: top token "
                    f"{toks[ps].strip()!r}, {est} {v:+.3f}",
                    toks,
                    scores[r, : len(toks)].numpy(),
                )
            )
        qids, qmask = queries.input_ids[q.seq], queries.attention_mask[q.seq]
        outcome = f" — {outcomes[ex.name]}" if outcomes and ex.name in outcomes else ""
        panels[ex.name] = TokenPanel(
            f"{ex.description}{outcome}   (query token {q.surface!r})",
            decode_tokens(tokenizer, qids, qmask),
            q.pos,
            rows,
        )
    return panels


def _score_label(normalize: str) -> str:
    return f"{normalize} with the query token"


def poster_figures(
    panels: Mapping[str, TokenPanel],
    note: str,
    model_name: str,
    rows_per_example: int,
    normalize: str = "correlation",
) -> dict[str, Figure]:
    """One figure per entry of :data:`FIGURES` that has panels, ``rows_per_example`` rows each;
    ``note`` (the estimator and the chains) and ``model_name`` go into the title."""
    title = (
        f"Token-level {note}\nmodel: {model_name}; "
        "training sequences holding the query token's best-scoring tokens"
    )
    figures = {}
    for fname, names in FIGURES.items():
        ps = [
            dataclasses.replace(panels[n], rows=panels[n].rows[:rows_per_example])
            for n in names
            if n in panels
        ]
        if ps:
            figures[fname] = plot_token_panels(ps, title, score_label=_score_label(normalize))
    return figures


def poster_page(
    panels: Mapping[str, TokenPanel], intro: str, normalize: str = "correlation"
) -> str:
    """The HTML page of every poster example, one section per figure of :data:`FIGURES`."""
    return token_panels_html(
        [
            (f"{fname}: {', '.join(names)}", [panels[n] for n in names if n in panels])
            for fname, names in FIGURES.items()
        ],
        "Token-level BIF: poster examples",
        intro=intro,
        score_label=_score_label(normalize),
    )
