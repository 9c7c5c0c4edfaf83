"""Chains in one batch (``chain_batching``): same randomness, same law, same bookkeeping as one by one."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

import bifrepro.sampling.sampler as sampler_module
from bifrepro.sampling import (
    ChainDriftWarning,
    SamplerDivergedError,
    SGLDConfig,
    TraceStoreMismatchError,
)
from bifrepro.sampling import sample_loss_traces as _sample
from bifrepro.sampling.batched import ChainBatchingError, fill_noise
from bifrepro.sampling.sgld import sgld_noise
from bifrepro.sgld_config import _NON_SEMANTIC_FIELDS
from bifrepro.traces import LossTraces
from tests.sampling._models import (
    DictDataset,
    dict_mse_loss,
    gaussian_regression,
    mse_loss,
    regression_problem,
)

FAST = dict(
    step_size=1e-3,
    nbeta=50.0,
    localization=100.0,
    num_chains=3,
    num_draws=20,
    burn_in=5,
    thinning=2,
    batch_size=16,
)


def sample(*args, **kwargs) -> LossTraces:
    kwargs.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        return _sample(*args, **kwargs)


def _linear_problem(n: int = 40, d: int = 3, seed: int = 0):
    """Float64 linear regression, where the local posterior is Gaussian and known exactly."""
    x, y, _, model = gaussian_regression(n, d, seed)
    return x, y, model


def _discrete_sigma(x: torch.Tensor, nbeta: float, gamma: float, eps: float) -> torch.Tensor:
    """Stationary covariance of full-batch unadjusted Langevin: (A(I - εA/4))⁻¹, A = nβ/n XᵀX + γI."""
    n, d = x.shape
    eye = torch.eye(d, dtype=torch.float64)
    a = nbeta / n * x.T @ x + gamma * eye
    return torch.linalg.inv(a @ (eye - eps * a / 4))


def test_noise_is_each_chains_own_sequential_stream():
    shapes = [torch.empty(3, 2), torch.empty(5)]
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    stacked = [torch.empty(3, *p.shape) for p in shapes]
    fill_noise(stacked, gens)
    for c, seed in enumerate((1, 2, 3)):
        own = sgld_noise(shapes, torch.Generator().manual_seed(seed))
        for buf, ref in zip(stacked, own, strict=True):
            assert torch.equal(buf[c], ref)


def test_batched_chains_follow_the_sequential_chains_random_streams():
    """Same minibatch indices and noise per chain: on a loss linear in w, traces agree to rounding.

    With l_i(w) = wᵀx_i the gradient of a minibatch is its mean x_i, independent of w, so a chain's
    weights are w* minus the summed minibatch means plus the summed noise: equal traces mean equal
    random streams (a shared or reordered generator would change them by O(√ε)).
    """
    x, _, model = _linear_problem()
    ds = TensorDataset(x)

    def linear_loss(m, batch):
        return m(batch[0]).squeeze(-1)

    cfg = SGLDConfig(**{**FAST, "localization": 0.0, "nbeta": 1.0, "divergence_factor": 1e6})
    off = sample(model, linear_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
    on = sample(model, linear_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"))
    torch.testing.assert_close(on["train"], off["train"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(on.diagnostics.distance, off.diagnostics.distance)
    assert not torch.allclose(on["train"][0], on["train"][1])


def test_short_runs_match_sequential_to_rounding_with_minibatches_and_rmsprop():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    for precond in ("none", "rmsprop", "rmsprop_frozen"):
        cfg = SGLDConfig(**FAST, preconditioner=precond)
        off = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
        on = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"))
        torch.testing.assert_close(on["train"], off["train"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(on.diagnostics.sgld_loss, off.diagnostics.sgld_loss)


def test_batched_covariance_matches_exact_gaussian_posterior():
    """The BIF (loss covariance) of batched chains against the exact Σ_ε answer."""
    x, y, model = _linear_problem()
    n, d = x.shape
    nbeta, gamma, eps = 100.0, 20.0, 2e-3
    cfg = SGLDConfig(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=4,
        num_draws=1500,
        burn_in=100,
        thinning=4,
        batch_size=n,
        seed=1,
        chain_batching="on",
    )
    ds = TensorDataset(x, y)
    traces = sample(model, mse_loss, ds, {"train": ds}, cfg)
    flat = traces.stacked("train").double()
    estimate = torch.cov(flat.T)
    sigma = _discrete_sigma(x, nbeta, gamma, eps)
    w_star = model.weight.detach()[0]
    r = y - x @ w_star
    s = x @ sigma @ x.T
    exact = r[:, None] * r[None, :] * s + 0.5 * s**2
    rel_err = torch.linalg.norm(estimate - exact) / torch.linalg.norm(exact)
    assert rel_err < 0.15, f"relative Frobenius error vs exact Σ_ε: {rel_err:.3f}"
    mean_sq = float((traces.diagnostics.distance**2).mean())
    assert abs(mean_sq / float(torch.trace(sigma)) - 1) < 0.1


def test_batched_and_sequential_minibatch_chains_sample_the_same_law():
    """With minibatches (per-chain batches stacked), E‖δ‖² agrees with the sequential sampler's."""
    x, y, model = _linear_problem(seed=3)
    cfg = SGLDConfig(
        step_size=2e-3,
        nbeta=100.0,
        localization=20.0,
        num_chains=4,
        num_draws=800,
        burn_in=100,
        thinning=4,
        batch_size=10,
    )
    ds = TensorDataset(x, y)
    msd = {}
    for mode in ("off", "on"):
        traces = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching=mode))
        msd[mode] = float((traces.diagnostics.distance**2).mean())
    assert abs(msd["on"] / msd["off"] - 1) < 0.1, msd


def test_same_seed_identical_and_chain_c_independent_of_other_chains():
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST, chain_batching="on")
    a = sample(model, mse_loss, ds, {"train": ds}, cfg)["train"]
    b = sample(model, mse_loss, ds, {"train": ds}, cfg)["train"]
    other_seed = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(seed=1))["train"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, other_seed)
    for c in range(1, a.shape[0]):
        assert not torch.allclose(a[0], a[c])
    two = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(num_chains=2))["train"]
    torch.testing.assert_close(two, a[:2], rtol=1e-5, atol=1e-6)


def test_divergence_names_the_chain_that_diverged():
    """Set the limit just under a record set by a chain other than 0; that chain is named."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    # Nearly flat posterior (tiny nβ, no localization): a random walk whose loss keeps growing.
    cfg = SGLDConfig(
        **{**FAST, "nbeta": 1e-3, "localization": 0.0, "step_size": 1e-2},
        divergence_factor=1e6,
        chain_batching="on",
    )
    free = sample(model, mse_loss, ds, {"train": ds}, cfg)
    means = free.diagnostics.observed_loss["train"]  # [C, D]
    init = free.diagnostics.init_loss["train"]
    best = -float("inf")
    target = None
    for d in range(1, means.shape[1]):
        for c in range(means.shape[0]):
            value = float(means[c, d])
            if value > best and c > 0 and d > 2 and target is None and value > 1.2 * best:
                target = (c, d, (value + best) / 2)
            best = max(best, value)
    assert target is not None, "no record set by a chain other than 0; change the problem"
    chain, draw, limit = target
    with pytest.raises(SamplerDivergedError, match=rf"chain {chain} at draw {draw}\b"):
        sample(
            model,
            mse_loss,
            ds,
            {"train": ds},
            cfg.replace(divergence_factor=limit / (1 + abs(init))),
        )


class _ItemModel(torch.nn.Module):
    """Data-dependent Python control flow (``.item()``): cannot be vmapped."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out if out.sum().item() < 1e9 else out * 0


@pytest.fixture
def auto_batches_on_cpu(monkeypatch):
    """Let ``chain_batching="auto"`` try vmap on the CPU (as it does on CUDA)."""
    monkeypatch.setattr(sampler_module, "_auto_declines", lambda config, device: None)


def test_unvmappable_model_falls_back_with_a_log_line_and_matches_sequential(
    caplog, auto_batches_on_cpu
):
    x, y, linear = regression_problem()
    model = _ItemModel(linear)
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST)
    with caplog.at_level(logging.INFO, logger="bifrepro.sampling"):
        auto = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="auto"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("chain batching off" in m and "cannot be vmapped" in m for m in messages), messages
    off = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
    assert torch.equal(auto["train"], off["train"])
    with pytest.raises(ChainBatchingError, match="cannot be vmapped"):
        sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"))


class _HiddenWeight(torch.nn.Module):
    """Reads its weight through a Python list: fine in place, invisible to functional_call."""

    def __init__(self, inner: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = inner.weight
        self.hidden = [self.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.hidden[0].T


def test_a_loss_that_ignores_swapped_in_weights_is_not_batched(caplog, auto_batches_on_cpu):
    x, y, linear = regression_problem()
    model = _HiddenWeight(linear)
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST, chain_batching="auto")
    with caplog.at_level(logging.INFO, logger="bifrepro.sampling"):
        auto = sample(model, mse_loss, ds, {"train": ds}, cfg)
    assert any("differ from the model's own" in r.getMessage() for r in caplog.records)
    off = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
    assert torch.equal(auto["train"], off["train"])
    reference = sample(linear, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
    torch.testing.assert_close(off["train"], reference["train"])  # sequential is right


def test_auto_runs_sequentially_on_cpu_and_batched_where_it_pays(caplog, monkeypatch):
    """On the CPU (measured slower batched) "auto" is exactly "off"; on CUDA it is "on"."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST, chain_batching="auto")
    runs = {
        m: sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching=m))
        for m in ("off", "on")
    }
    with caplog.at_level(logging.INFO, logger="bifrepro.sampling"):
        auto_cpu = sample(model, mse_loss, ds, {"train": ds}, cfg)
    assert any("on the CPU" in r.getMessage() for r in caplog.records)
    assert torch.equal(auto_cpu["train"], runs["off"]["train"])
    monkeypatch.setattr(sampler_module, "_auto_declines", lambda config, device: None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bifrepro.sampling"):
        auto_accel = sample(model, mse_loss, ds, {"train": ds}, cfg)
    assert any("chain batching on" in r.getMessage() for r in caplog.records)
    assert torch.equal(auto_accel["train"], runs["on"]["train"])
    # per-chain RNG streams: one chain alone is chain 0 of three (same execution path: vmapped
    # and sequential chains agree only to rounding)
    one = sample(
        model, mse_loss, ds, {"train": ds}, cfg.replace(num_chains=1, chain_batching="off")
    )
    assert torch.equal(one["train"][0], runs["off"]["train"][0])


def test_batch_norm_in_eval_mode_is_batched():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = x.sum(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )
    model.train()
    model(x)  # running statistics away from their defaults
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST)
    off = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"))
    on = sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"))
    torch.testing.assert_close(on["train"], off["train"], rtol=1e-4, atol=1e-5)


def test_per_token_losses_and_collate_fn():
    """Per-token observables [B, T] and a custom collate function (dict batches)."""
    x, y, model = regression_problem()
    dd = DictDataset(x, y)

    def collate(items):
        return {
            "x": torch.stack([i["x"] for i in items]),
            "y": torch.stack([i["y"] for i in items]),
        }

    def per_token(m, batch):
        base = dict_mse_loss(m, batch)
        return torch.stack([base, 2 * base, torch.zeros_like(base)], dim=1)

    cfg = SGLDConfig(**FAST, eval_batch_size=7)
    runs = {}
    for mode in ("off", "on"):
        runs[mode] = sample(
            model,
            dict_mse_loss,
            dd,
            {"train": dd, "tokens": (dd, per_token)},
            cfg.replace(chain_batching=mode),
            collate_fn=collate,
        )
    assert runs["on"]["tokens"].shape == (3, 20, 40, 3)
    torch.testing.assert_close(runs["on"]["tokens"][..., 1], 2 * runs["on"]["train"])
    torch.testing.assert_close(runs["on"]["tokens"], runs["off"]["tokens"], rtol=1e-4, atol=1e-5)


def test_batched_resume_with_disagreeing_checkpoints_replays_exactly(tmp_path):
    """If one chain's checkpoint is missing, every chain replays from w*: same traces."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST, checkpoint_every=4, chain_batching="on")
    reference = sample(model, mse_loss, ds, {"train": ds}, cfg)
    calls = {"n": 0, "fail_at": 40}

    def flaky(m, batch):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return mse_loss(m, batch)

    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        sample(model, flaky, ds, {"train": ds}, cfg, out_dir=out)
    (out / "chains" / "chain1.pt").unlink()
    calls["fail_at"] = -1
    resumed = sample(model, flaky, ds, {"train": ds}, cfg, out_dir=out)
    assert torch.equal(resumed["train"], reference["train"])


def test_a_store_is_resumed_only_with_the_mode_it_was_written_with(tmp_path):
    """Vmapped and sequential chains round differently: the mode used is in the store identity."""
    x, y, model = regression_problem()
    ds = TensorDataset(x, y)
    cfg = SGLDConfig(**FAST)
    on, off = tmp_path / "on", tmp_path / "off"
    sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"), out_dir=on)
    with pytest.raises(TraceStoreMismatchError, match="chain_batching"):
        sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"), out_dir=on)
    first = sample(
        model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="off"), out_dir=off
    )
    # "auto" on the CPU runs sequentially: the same numbers, so the same store.
    again = sample(
        model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="auto"), out_dir=off
    )
    assert torch.equal(first["train"], again["train"])
    with pytest.raises(TraceStoreMismatchError, match="chain_batching"):
        sample(model, mse_loss, ds, {"train": ds}, cfg.replace(chain_batching="on"), out_dir=off)


def test_the_default_runs_chains_one_after_another():
    assert SGLDConfig().chain_batching == "off"  # vmapped chains measured slower on CPU


def test_chain_batching_is_validated_and_leaves_the_fingerprint_alone():
    """Configs keep the fingerprint they had before the option existed (the store identity
    records the mode actually used instead)."""
    cfg = SGLDConfig()
    fields = {k: v for k, v in cfg.to_dict().items() if k not in _NON_SEMANTIC_FIELDS}
    assert "chain_batching" not in fields
    assert cfg.replace(chain_batching="on").fingerprint() == cfg.fingerprint()
    with pytest.raises(ValueError, match="chain_batching"):
        SGLDConfig(chain_batching="yes")
