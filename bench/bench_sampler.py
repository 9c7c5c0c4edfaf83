"""Sampler overhead benchmark: is a BIF draw as cheap as the work it must do?

Per kept draw the sampler must do one SGLD step (forward + backward on a minibatch + update) and
one no-grad forward pass over every observed item. This script measures, in one run and on the
same machine, the time per draw of ``sample_loss_traces`` and of a bare hand-written loop doing just
that work, and prints their ratio (target <= 1.10), draws/s and items/s, for a small CNN and a small
transformer (per-token losses). Fixed set-up costs are removed by timing two run lengths and
differencing. Ratios, not absolute times, are the result: the machine is noisy.

    python bench/bench_sampler.py [--draws 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bifrepro.sampling import ChainDriftWarning, SGLDConfig, sample_loss_traces


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def cnn_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def small_transformer(vocab: int = 512) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def lm_token_loss(model, batch):
    (ids,) = batch
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def bare_loop(model, loss_fn, train, observed, cfg: SGLDConfig, draws: int) -> float:
    """The irreducible work of ``draws`` draws, written as plainly as possible."""
    params = [p for p in model.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    minibatches = list(loader)
    eval_batches = [list(DataLoader(ds, batch_size=cfg.eval_batch_size)) for ds in observed]
    model.eval()
    start = time.perf_counter()
    for k in range(-1, draws):  # k = -1: warm-up, not timed
        if k == 0:
            start = time.perf_counter()
        loss = loss_fn(model, minibatches[k % len(minibatches)]).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, p0 in zip(params, grads, w_star, strict=True):
                p.add_(cfg.nbeta * g + cfg.localization * (p - p0), alpha=-cfg.step_size / 2)
                p.add_(torch.randn_like(p), alpha=math.sqrt(cfg.step_size))
        with torch.inference_mode():
            for batches in eval_batches:
                for b in batches:
                    loss_fn(model, b)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        for p, p0 in zip(params, w_star, strict=True):
            p.copy_(p0)
    return elapsed / draws


def sampler_per_draw(model, loss_fn, train, observed, cfg: SGLDConfig, draws: int) -> float:
    def timed(n: int) -> float:
        c = cfg.replace(num_draws=n)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChainDriftWarning)
            sample_loss_traces(
                model,
                loss_fn,
                train,
                {f"o{i}": ds for i, ds in enumerate(observed)},
                c,
                progress=False,
            )
        return time.perf_counter() - start

    short, long = max(3, draws // 5), draws
    return (timed(long) - timed(short)) / (long - short)


def bench_case(name, model, loss_fn, train, observed, cfg, draws, repeats):
    n_items = sum(len(ds) for ds in observed)
    ratios, per_draw, bare = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        b = bare_loop(model, loss_fn, train, observed, cfg, draws)
        s = sampler_per_draw(model, loss_fn, train, observed, cfg, draws)
        bare.append(b)
        per_draw.append(s)
        ratios.append(s / b)
    s, b, r = statistics.median(per_draw), statistics.median(bare), statistics.median(ratios)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name:<12} params={params:>8,d} observed={n_items:>5d}  per-draw {s * 1e3:7.1f} ms  "
        f"bare {b * 1e3:7.1f} ms  ratio {r:5.3f} (runs: {', '.join(f'{x:.3f}' for x in ratios)})  "
        f"{1 / s:6.2f} draws/s  {n_items / s:9.0f} items/s"
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; target ratio <= 1.10")

    x = torch.randn(2120, 1, 28, 28)
    y = torch.randint(0, 10, (2120,))
    train, query = TensorDataset(x[:2000], y[:2000]), TensorDataset(x[2000:], y[2000:])
    cfg = SGLDConfig(
        step_size=1e-6,
        nbeta=100.0,
        localization=100.0,
        num_chains=1,
        burn_in=0,
        batch_size=64,
        eval_batch_size=256,
    )
    r1 = bench_case(
        "small CNN", small_cnn(), cnn_loss, train, [train, query], cfg, args.draws, args.repeats
    )

    ids = torch.randint(0, 512, (288, 64))
    train, query = TensorDataset(ids[:256]), TensorDataset(ids[256:])
    cfg = cfg.replace(batch_size=16, eval_batch_size=64)
    r2 = bench_case(
        "transformer",
        small_transformer(),
        lm_token_loss,
        train,
        [train, query],
        cfg,
        max(10, args.draws // 2),
        args.repeats,
    )
    worst = max(r1, r2)
    print(f"worst ratio {worst:.3f}: {'OK' if worst <= 1.10 else 'ABOVE TARGET'} (target <= 1.10)")


if __name__ == "__main__":
    main()
