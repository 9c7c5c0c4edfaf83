"""The poster's language examples as panels, PNG figures and an HTML page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.attribution.token_bif import TokenBIF
from bifrepro.data.text import POSTER_EXAMPLES
from bifrepro.evaluation.token_links import query_tokens
from bifrepro.plots.token_examples import (
    FIGURES,
    decode_tokens,
    example_panels,
    poster_figures,
    poster_page,
)
from tests.data._text import packed_text


def _random_bif(seed: int):
    """Packed text, every other sequence observed, and a token BIF of random traces."""
    tok, seqs, qs = packed_text(num_queries=2)
    observed_index = np.arange(0, 2 * 10, 2)
    obs = seqs.subset(observed_index)
    gen = torch.Generator().manual_seed(seed)
    tb = TokenBIF(
        torch.randn(2, 5, len(qs), 32, generator=gen, dtype=torch.float64),
        torch.randn(2, 5, len(obs), 32, generator=gen, dtype=torch.float64),
    )
    return tb, tok, obs, observed_index, qs


@pytest.fixture(scope="module")
def panels_and_inputs():
    tb, tok, obs, observed_index, qs = _random_bif(0)
    qts = query_tokens(qs, tok)
    panels = example_panels(tb, tok, obs, observed_index, qs, qts, n_rows=2)
    return panels, tok, obs, qs


def test_example_panels_show_the_focus_token_and_top_training_sequences(panels_and_inputs):
    panels, tok, obs, qs = panels_and_inputs
    assert set(panels) <= {e.name for e in POSTER_EXAMPLES} and "numbers" in panels
    numbers = panels["numbers"]
    assert numbers.query_tokens[numbers.focus].strip() == "3"
    assert 1 <= len(numbers.rows) <= 2
    for row in numbers.rows:
        assert row.label.startswith("#") and " corr " in row.label
        assert len(row.tokens) == len(row.scores)
        seq = int(row.label.split("training sequence ")[1].split(":")[0])
        assert seq % 2 == 0  # the training-set index of an observed sequence
    texts = [" ".join(r.tokens) for r in numbers.rows]
    assert len(set(texts)) == len(texts)  # no duplicate sequence twice
    ids, mask = qs.input_ids[0], qs.attention_mask[0]
    assert len(decode_tokens(tok, ids, mask)) == int(mask.sum())


def test_poster_figures_and_page(panels_and_inputs) -> None:
    panels = panels_and_inputs[0]
    figures = poster_figures(panels, "BIF (note)", "tiny model", rows_per_example=1)
    assert set(figures) <= set(FIGURES) and "fig_numbers.png" in figures
    title = figures["fig_numbers.png"].get_suptitle()
    assert title.startswith("Token-level BIF (note)") and "model: tiny model" in title
    page = poster_page(panels, "intro text", normalize="covariance")
    assert "fig_numbers.png: numbers, numbers_five" in page and "intro text" in page
    assert "covariance with the query token" in page
    for fig in figures.values():
        fig.clear()


def test_example_panels_state_the_outcome_in_the_header() -> None:
    tb, tok, obs, observed_index, qs = _random_bif(1)
    outcomes = {"numbers": "NOT reproduced: first translation / other form at rank 63"}
    panels = example_panels(
        tb, tok, obs, observed_index, qs, query_tokens(qs, tok), n_rows=1, outcomes=outcomes
    )
    assert "NOT reproduced" in panels["numbers"].title and "rank 63" in panels["numbers"].title
    others = [p.title for name, p in panels.items() if name != "numbers"]
    assert all("reproduced" not in t for t in others)  # no outcome given: none claimed
