"""Class x class per-token BIF equals the mean of the dense token scores."""

from __future__ import annotations

import math

import pytest
import torch

from bifrepro.attribution import bif_scores
from bifrepro.dynamics.class_influence import class_influence


def _planted(c: int = 3, d: int = 400, seed: int = 0):
    """Query/train per-token traces with a shared signal: train class 1 follows it (helpful),
    class 2 opposes it (harmful), class 0 is independent noise."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(c, d, 1, 1, generator=g)
    q = signal + torch.randn(c, d, 2, 5, generator=g)
    t = torch.randn(c, d, 3, 5, generator=g)
    q_cls = torch.tensor([[-1, 0, 0, 0, 0], [-1, 0, 0, 1, -1]])
    t_cls = torch.tensor([[-1, 1, 1, 2, 2], [-1, 0, 0, 1, 2], [-1, 2, 1, 0, 0]])
    t = t + torch.where(t_cls == 1, 1.0, 0.0) * signal - torch.where(t_cls == 2, 1.0, 0.0) * signal
    t[:, :, :, 0] = 0.0  # position 0: constant trace
    return q, t, q_cls, t_cls


@pytest.mark.parametrize("normalize", ["correlation", "covariance"])
def test_class_influence_equals_the_mean_of_token_scores(normalize: str) -> None:
    q, t, q_cls, t_cls = _planted()
    k = 4  # class 3 has no tokens
    ci = class_influence(q, t, q_cls, t_cls, k, normalize=normalize, block_size=4)
    dense = bif_scores(q, t, normalize=normalize).double()  # [2, 5, 3, 5]
    for a in range(k):
        for b in range(k):
            sel = dense[q_cls == a][:, t_cls == b]
            if sel.numel() == 0:
                assert math.isnan(ci.mean[a, b])
            else:
                assert float(ci.mean[a, b]) == pytest.approx(float(sel.mean()), rel=1e-4, abs=1e-6)
    assert ci.query_counts.tolist() == [6, 1, 0, 0] and ci.train_counts.tolist() == [4, 4, 4, 0]
    # the planted signs: train class 1 helps query class 0, class 2 hurts it, class 0 ~ nothing
    assert ci.mean[0, 1] > 0 and ci.mean[0, 2] < 0 and abs(ci.mean[0, 0]) < 0.5 * ci.mean[0, 1]
    assert ci.per_block.shape == (3, k, k)
    assert torch.all(ci.std_error[:2, :3] > 0)
    # per-chain estimates agree with scoring each chain alone
    one = bif_scores(q[1:2], t[1:2], normalize=normalize).double()
    assert float(ci.per_block[1, 0, 1]) == pytest.approx(
        float(one[q_cls == 0][:, t_cls == 1].mean()), rel=1e-4
    )
    # blocks of draws: 4 per chain -> 12 estimates; block 5 = chain 1, draws 100..199
    cb = class_influence(q, t, q_cls, t_cls, k, normalize=normalize, blocks_per_chain=4)
    assert cb.per_block.shape == (12, k, k)
    assert torch.allclose(cb.mean, ci.mean, equal_nan=True)
    blk = bif_scores(q[1:2, 100:200], t[1:2, 100:200], normalize=normalize).double()
    assert float(cb.per_block[5, 0, 2]) == pytest.approx(
        float(blk[q_cls == 0][:, t_cls == 2].mean()), rel=1e-4
    )
    with pytest.raises(ValueError, match="blocks_per_chain"):
        class_influence(q, t, q_cls, t_cls, k, blocks_per_chain=300)


def test_class_influence_checks_shapes() -> None:
    q, t, q_cls, t_cls = _planted()
    with pytest.raises(ValueError, match="shaped"):
        class_influence(q, t, q_cls[:1], t_cls, 3)
    with pytest.raises(ValueError, match="same"):
        class_influence(q[:, :10], t, q_cls, t_cls, 3)
    with pytest.raises(ValueError, match="normalize"):
        class_influence(q, t, q_cls, t_cls, 3, normalize="rank")


def test_partial_correlation_removes_a_shared_loss_rise() -> None:
    """A per-draw rise z that moves every token's loss correlates every class with every class;
    partialling z out leaves only the planted class signal (known answer: class 0 ~ 0)."""
    g = torch.Generator().manual_seed(3)
    c, d = 3, 2000
    z = torch.randn(c, d, generator=g)  # the posterior's loss rise, shared by all tokens
    signal = torch.randn(c, d, 1, 1, generator=g)
    q = 2.0 * z[..., None, None] + signal + torch.randn(c, d, 2, 4, generator=g)
    t = 2.0 * z[..., None, None] + torch.randn(c, d, 3, 4, generator=g)
    t_cls = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0]])
    t = t + torch.where(t_cls == 1, 1.0, 0.0) * signal
    q_cls = torch.zeros(2, 4, dtype=torch.long)
    plain = class_influence(q, t, q_cls, t_cls, 2, normalize="correlation")
    partial = class_influence(q, t, q_cls, t_cls, 2, normalize="partial", control=z)
    assert float(plain.mean[0, 0]) > 0.3  # confounded: noise tokens look helpful
    assert abs(float(partial.mean[0, 0])) < 0.05  # ... and are not, given z
    assert float(partial.mean[0, 1]) > 0.1  # the planted signal survives

    # the same as the dense partial correlation: residuals on z, then Pearson
    def resid(x: torch.Tensor) -> torch.Tensor:
        xs, zs = x.reshape(c * d, -1).double(), z.reshape(c * d).double()
        xs, zs = xs - xs.mean(0), zs - zs.mean()
        return (xs - zs[:, None] * (zs @ xs / (zs @ zs))[None]).reshape(x.shape)

    dense = bif_scores(resid(q), resid(t), normalize="correlation").double()
    sel = dense[q_cls == 0][:, t_cls == 1]
    assert float(partial.mean[0, 1]) == pytest.approx(float(sel.mean()), rel=1e-4)
    with pytest.raises(ValueError, match="control"):
        class_influence(q, t, q_cls, t_cls, 2, normalize="partial")
    with pytest.raises(ValueError, match="control"):
        class_influence(q, t, q_cls, t_cls, 2, normalize="correlation", control=z)
