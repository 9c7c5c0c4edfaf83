"""Per-token BIF: blockwise scores equal the dense computation; top-k, masks, sequence scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifrepro.attribution.bif import bif_scores
from bifrepro.attribution.token_bif import (
    TokenBIF,
    query_token_columns,
    sample_token_traces,
    token_losses,
)
from bifrepro.models.small import tiny_causal_lm
from bifrepro.sampling import SGLDConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by thread synchronisation on a busy machine: one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _traces(seed: int = 0, c: int = 2, d: int = 40, n: int = 9, t: int = 6, nq: int = 3):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(c, d, 1, 1, generator=g)
    train = torch.randn(c, d, n, t, generator=g) + 0.5 * shared
    query = torch.randn(c, d, nq, t, generator=g)
    query[:, :, 0, 2] = train[:, :, 4, 3] + 0.1 * torch.randn(c, d, generator=g)  # a planted link
    train[:, :, :, 0] = 0.0  # position 0 never has a loss
    train[:, :, 7, 4:] = 0.0  # padding
    return query, train


def _dense(
    query: torch.Tensor, train: torch.Tensor, pairs, normalize="correlation"
) -> torch.Tensor:
    """Reference: every query token against every training token with numpy, no blocking."""
    q = query.reshape(-1, *query.shape[2:]).double().numpy()
    x = train.reshape(-1, *train.shape[2:]).double().numpy()
    cols = np.stack([q[:, s, p] for s, p in pairs], axis=1)  # [S, q]
    flat = x.reshape(x.shape[0], -1)
    qc, xc = cols - cols.mean(0), flat - flat.mean(0)
    if normalize == "covariance":
        out = qc.T @ xc / (len(qc) - 1)
    else:
        qn, xn = np.linalg.norm(qc, axis=0), np.linalg.norm(xc, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (qc.T @ xc) / np.outer(qn, xn)
        out = np.nan_to_num(out)
    return torch.from_numpy(out).reshape(len(pairs), *train.shape[2:])


@pytest.mark.parametrize("normalize", ["correlation", "covariance"])
@pytest.mark.parametrize("block_size", [1, 4, None])
def test_blocks_equal_the_dense_matrix(normalize: str, block_size: int | None) -> None:
    query, train = _traces()
    pairs = [(0, 2), (1, 5), (2, 1)]
    tb = TokenBIF(query, train, normalize=normalize, block_size=block_size)
    ref = _dense(query, train, pairs, normalize)
    torch.testing.assert_close(tb.scores(pairs).double(), ref, rtol=1e-4, atol=1e-5)
    got = torch.cat([s for _, _, s in tb.iter_blocks(pairs)], dim=1)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        tb.scores(pairs, [8, 2]).double(), ref[:, [8, 2]], rtol=1e-4, atol=1e-5
    )
    # the library's dense per-token layout agrees: [nq, T, n, T]
    full = bif_scores(query, train, normalize=normalize)
    torch.testing.assert_close(full[0, 2], tb.scores([(0, 2)])[0], rtol=1e-4, atol=1e-5)


def test_topk_finds_the_planted_link_and_skips_padding() -> None:
    query, train = _traces()
    tb = TokenBIF(query, train, block_size=2)
    top = tb.topk([(0, 2), (1, 1)], k=5)
    assert (top.seq[0, 0].item(), top.pos[0, 0].item()) == (4, 3)
    assert top.values[0, 0] > 0.9
    ref = _dense(query, train, [(0, 2), (1, 1)])
    ref[:, :, 0] = -torch.inf
    ref[:, 7, 4:] = -torch.inf
    best = torch.topk(ref.reshape(2, -1), 5, dim=1)
    torch.testing.assert_close(top.values.double(), best.values, rtol=1e-4, atol=1e-5)
    assert ((top.seq * train.shape[3] + top.pos) == best.indices).all()
    # padding / position 0 never appear, and a validity mask removes more candidates
    assert not ((top.pos == 0).any() or ((top.seq == 7) & (top.pos >= 4)).any())
    valid = torch.ones(train.shape[2:], dtype=torch.bool)
    valid[4] = False
    top2 = tb.topk([(0, 2)], k=3, valid=valid)
    assert not (top2.seq == 4).any()
    # asking for more than there are candidates pads with -inf / -1
    few = TokenBIF(query, train[:, :, :1], block_size=1).topk([(0, 2)], k=10)
    assert (few.seq[0, 5:] == -1).all() and torch.isinf(few.values[0, 5:]).all()


def test_sequence_scores() -> None:
    query, train = _traces()
    tb = TokenBIF(query, train, block_size=3)
    pairs = [(0, 2)]
    seq_sum = tb.sequence_scores(pairs, reduce="sum")
    ref = bif_scores(query_token_columns(query, pairs), train.sum(-1))
    torch.testing.assert_close(seq_sum, ref, rtol=1e-5, atol=1e-6)
    seq_max = tb.sequence_scores(pairs, reduce="max")
    torch.testing.assert_close(seq_max, tb.scores(pairs).amax(-1), rtol=1e-5, atol=1e-6)
    assert seq_max[0].argmax() == 4


def test_input_checks() -> None:
    query, train = _traces()
    with pytest.raises(ValueError, match="same draws"):
        TokenBIF(query[:, :10], train)
    with pytest.raises(ValueError, match=r"\[C, D, n, T\]"):
        TokenBIF(query[..., 0], train)
    with pytest.raises(IndexError):
        TokenBIF(query, train).scores([(5, 0)])
    with pytest.raises(ValueError, match="normalize"):
        TokenBIF(query, train, normalize="spearman")


def test_sampled_traces_on_a_tiny_lm_on_disk(tmp_path) -> None:
    """End to end on a tiny Llama: per-token traces on disk, zeros at padding, resumable."""
    model = tiny_causal_lm(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 30, (10, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 5:] = 0
    ids[3, 5:] = 0
    train = torch.utils.data.TensorDataset(ids, mask)
    query = torch.utils.data.TensorDataset(ids[:2].clone(), mask[:2].clone())
    cfg = SGLDConfig(step_size=1e-3, nbeta=10.0, localization=100.0, num_chains=2, num_draws=12,
                     burn_in=2, batch_size=4, seed=0)  # fmt: skip
    traces = sample_token_traces(model, train, query, cfg, out_dir=tmp_path / "tr", progress=False)
    assert traces["train"].shape == (2, 12, 10, 8) and traces["query"].shape == (2, 12, 2, 8)
    assert (traces["train"][:, :, :, 0] == 0).all() and (traces["train"][:, :, 3, 5:] == 0).all()
    assert traces["train"][:, :, 0, 1:].std() > 0
    # query 0 is training sequence 0: identical traces, correlation 1 with itself
    tb = TokenBIF.from_traces(traces)
    top = tb.topk([(0, 4)], k=1)
    assert (top.seq.item(), top.pos.item()) == (0, 4) and top.values.item() == pytest.approx(
        1.0, abs=1e-4
    )
    # the loss function: raw per-token NLL, zero at position 0 and padding
    with torch.no_grad():
        losses = token_losses(model, [ids[:4], mask[:4]])
    assert losses.shape == (4, 8) and (losses[:, 0] == 0).all() and (losses[3, 5:] == 0).all()
    assert (losses[:, 1:5] > 0).all()
    again = sample_token_traces(model, train, query, cfg, out_dir=tmp_path / "tr", progress=False)
    torch.testing.assert_close(again["train"], traces["train"])
