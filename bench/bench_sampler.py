"""Sampler overhead benchmark: is a BIF draw as cheap as the work it must do?

Per kept draw the sampler must do one SGLD step (forward + backward on a minibatch + update) and
one no-grad forward pass over every observed item. This script measures, in one run and on the
same machine, the time per draw of ``sample_loss_traces`` and of a bare hand-written loop doing just
that work, and prints their ratio (target <= 1.10), draws/s and items/s, for a small CNN and a small
transformer (per-token losses). Fixed set-up costs are removed by timing two run lengths and
differencing. Ratios, not absolute times, are the result: the machine is noisy.

It then compares chains in one batch (``chain_batching="on"``: C chains as one vmapped computation)
with chains one after another (``"off"``), for the small CNN, the small transformer and a ~10M
parameter MLP: chain-draws/s of each, their ratio, and the peak extra memory of a run (peak RSS in a
fresh process on CPU, polled, ``torch.cuda.max_memory_allocated`` on CUDA) against C x the sequential run's.

On CPU (``--only processes``) it compares chains split between one-thread worker processes
(``chain_processes=0``) with one process running them in turn on every thread, for the small CNN
and the small transformer: chain-draws/s of each and their ratio.

Finally (``--only options``) it prints three speed ratios of sampler options, measured in the same
run: SGHMC vs SGLD (effective samples per second along the flattest posterior direction of a
linear-Gaussian problem, same step size), bfloat16 vs float32 observable forwards (small CNN), and
``torch.inference_mode`` vs ``torch.no_grad`` for those forwards.

    python bench/bench_sampler.py [--draws 30] [--repeats 3] [--chains 4] [--device cpu|cuda]
        [--only overhead|batched|processes|options]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bifrepro.sampling import (
    ChainDriftWarning,
    SGLDConfig,
    effective_sample_size,
    sample_loss_traces,
)
from bifrepro.sampling.chain_common import observable_forward


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


def wide_mlp() -> torch.nn.Module:
    """About 10M parameters: 784 -> 2048 -> 2048 -> 2048 -> 10."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    )


BASE_CFG = dict(step_size=1e-6, nbeta=100.0, localization=100.0, burn_in=0)


def batched_case(name: str, device: str):
    """(model, loss_fn, train, observed, cfg) of one batched-vs-sequential case, on ``device``."""
    torch.manual_seed(0)
    if name == "lm":
        ids = torch.randint(0, 512, (288, 64), device=device)
        train, query = TensorDataset(ids[:256]), TensorDataset(ids[256:])
        cfg = SGLDConfig(**BASE_CFG, batch_size=16, eval_batch_size=64)
        return small_transformer().to(device), lm_token_loss, train, [train, query], cfg
    n = 2120 if name == "cnn" else 560
    x = torch.randn(n, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    train, query = TensorDataset(x[: n - 120], y[: n - 120]), TensorDataset(x[-120:], y[-120:])
    cfg = SGLDConfig(**BASE_CFG, batch_size=64, eval_batch_size=256)
    model = small_cnn() if name == "cnn" else wide_mlp()
    return model.to(device), cnn_loss, train, [train, query], cfg


def _sample(model, loss_fn, train, observed, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        warnings.simplefilter("ignore", UserWarning)  # vmap batching-rule fallbacks (speed only)
        return sample_loss_traces(
            model,
            loss_fn,
            train,
            {f"o{i}": ds for i, ds in enumerate(observed)},
            cfg,
            progress=False,
        )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_draw_seconds(
    case, mode: str, chains: int, draws: int, device: str, processes: int = 1
) -> float:
    """Seconds per draw index (all ``chains`` chains), set-up removed by differencing two lengths."""
    model, loss_fn, train, observed, cfg = case
    cfg = cfg.replace(num_chains=chains, chain_batching=mode, chain_processes=processes)

    def timed(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        _sample(model, loss_fn, train, observed, cfg.replace(num_draws=n))
        _sync(device)
        return time.perf_counter() - start

    short, long = max(2, draws // 4), draws
    timed(short)  # warm-up
    return max(timed(long) - timed(short), 1e-9) / (long - short)


def peak_extra_bytes(name: str, mode: str, chains: int, draws: int, device: str) -> int:
    """Peak memory a sampling run adds: CUDA allocator peak, or peak RSS of a fresh process."""
    if device == "cuda":
        case = batched_case(name, device)
        model, loss_fn, train, observed, cfg = case
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _sample(
            model,
            loss_fn,
            train,
            observed,
            cfg.replace(num_chains=chains, chain_batching=mode, num_draws=draws),
        )
        return torch.cuda.max_memory_allocated() - base
    # Large blocks straight from (and back to) the OS, so RSS follows live memory.
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    args = [sys.executable, __file__, "--memory-child", name, mode, str(chains), str(draws)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["extra"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(name: str, mode: str, chains: int, draws: int) -> None:
    """Peak RSS above the pre-run RSS of one sampling run, polled every millisecond.

    A one-draw run of the same mode first takes the one-time costs (libraries' lazy set-up).
    """
    model, loss_fn, train, observed, cfg = batched_case(name, "cpu")
    _sample(
        model,
        loss_fn,
        train,
        observed,
        cfg.replace(num_chains=chains, chain_batching=mode, num_draws=1),
    )
    base = _rss_bytes()
    peak = [base]
    running = threading.Event()
    running.set()

    def poll() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    _sample(
        model,
        loss_fn,
        train,
        observed,
        cfg.replace(num_chains=chains, chain_batching=mode, num_draws=draws),
    )
    running.clear()
    thread.join()
    print(json.dumps({"extra": max(peak[0], _rss_bytes()) - base}))


def bench_batched(name: str, chains: int, draws: int, repeats: int, device: str) -> float:
    case = batched_case(name, device)
    model, _, _, observed, cfg = case
    ratios, seq, bat = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        s = per_draw_seconds(case, "off", chains, draws, device)
        b = per_draw_seconds(case, "on", chains, draws, device)
        seq.append(s)
        bat.append(b)
        ratios.append(s / b)
    s, b, r = statistics.median(seq), statistics.median(bat), statistics.median(ratios)
    params = sum(p.numel() for p in model.parameters())
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    n_items = sum(len(ds) for ds in observed)
    traces_mb = (
        chains
        * draws
        * 4
        * sum(math.prod(_sample_shape(case)[i]) for i in range(len(observed)))
        / 2**20
    )
    mem_draws = max(2, draws // 4)
    mem_seq = peak_extra_bytes(name, "off", chains, mem_draws, device) / 2**20
    mem_bat = peak_extra_bytes(name, "on", chains, mem_draws, device) / 2**20
    print(
        f"{name:<5} params={params:>10,d} C={chains}  sequential {chains / s:7.2f} chain-draws/s  "
        f"batched {chains / b:7.2f} chain-draws/s  ratio {r:5.2f}x "
        f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})  {n_items} items/draw"
    )
    traces_run = traces_mb * mem_draws / draws
    bound = chains * max(mem_seq - traces_run, 0.0) + traces_run
    print(
        f"      peak extra memory: batched {mem_bat:8.1f} MiB, sequential {mem_seq:8.1f} MiB; "
        f"bound C x (sequential - traces) + traces = {bound:8.1f} MiB: "
        f"{'OK' if mem_bat <= bound else 'ABOVE'} (one model {model_mb:.1f} MiB, "
        f"traces {traces_run:.2f} MiB)"
    )
    return r


def bench_processes(name: str, chains: int, draws: int, repeats: int) -> float:
    """Chains split between one-thread worker processes (``chain_processes=0``: one per torch
    thread) vs one process running them in turn on every thread: chain-draws/s and the ratio."""
    case = batched_case(name, "cpu")
    procs = min(torch.get_num_threads(), chains)
    if procs < 2:
        print(f"{name:<5} skipped: {torch.get_num_threads()} torch thread(s), nothing to split")
        return math.nan
    ratios, one, split = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        s = per_draw_seconds(case, "off", chains, draws, "cpu", processes=1)
        p = per_draw_seconds(case, "off", chains, draws, "cpu", processes=0)
        one.append(s)
        split.append(p)
        ratios.append(s / p)
    s, p, r = statistics.median(one), statistics.median(split), statistics.median(ratios)
    print(
        f"{name:<5} C={chains}  one process x {torch.get_num_threads()} threads "
        f"{chains / s:7.2f} chain-draws/s  {procs} processes x "
        f"{max(1, torch.get_num_threads() // procs)} thread(s) {chains / p:7.2f} chain-draws/s  "
        f"ratio {r:5.2f}x (runs: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    return r


def _sample_shape(case) -> list[tuple[int, ...]]:
    """Per-item trace shape of each observable: ``(n,)`` or ``(n, T)``."""
    model, loss_fn, _, observed, _ = case
    shapes = []
    with torch.no_grad():
        for ds in observed:
            first = loss_fn(model, ds[:1])
            shapes.append((len(ds), *first.shape[1:]))
    return shapes


def overhead_benchmark(args: argparse.Namespace) -> float:
    torch.manual_seed(0)
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
    return worst


def _slow_direction_ess_per_second(config: SGLDConfig, device: str) -> tuple[float, float]:
    """ESS/s and ESS/draw, along the flattest posterior direction, of linear-Gaussian chains.

    Linear regression (d = 20, condition number of XᵀX ~ 100, float64, full batch) sampled by
    ``sample_loss_traces``; the recorded observable is each chain's weight projected on the
    flattest eigenvector of the posterior precision (a one-item "loss" that reads the weights).
    """
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 20
    scales = torch.logspace(0, 1, d, dtype=torch.float64)  # column scales 1..10: cond ~ 100
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales
    y = x @ torch.randn(d, generator=gen, dtype=torch.float64) + torch.randn(
        n, generator=gen, dtype=torch.float64
    )
    w_star = torch.linalg.lstsq(x, y[:, None]).solution.squeeze(1)
    model = torch.nn.Linear(d, 1, bias=False).double().to(device)
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    precision = config.nbeta / n * x.T @ x + config.localization * torch.eye(d, dtype=torch.float64)
    slow = torch.linalg.eigh(precision).eigenvectors[:, 0].to(device)
    # ε at a "calibrated" curvature ε·λ_max = 0.5
    eps = 0.5 / float(torch.linalg.eigvalsh(precision)[-1])
    config = config.replace(step_size=eps, batch_size=n)
    train = TensorDataset(x.to(device), y.to(device))
    probe = TensorDataset(torch.zeros(1, 1, device=device, dtype=torch.float64))

    def mse(model, batch):
        xb, yb = batch
        return 0.5 * (yb - model(xb).squeeze(-1)) ** 2

    def projection(model, batch):
        (z,) = batch
        return (model.weight.squeeze(0) @ slow).expand(len(z)) + z.squeeze(-1)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChainDriftWarning)
        traces = sample_loss_traces(
            model, mse, train, {"slow": (probe, projection)}, config, progress=False
        )
    seconds = time.perf_counter() - start
    ess = float(effective_sample_size(traces["slow"][..., 0].double()))
    return ess / seconds, ess / (config.num_chains * config.num_draws)


def _observable_seconds(model, loss_fn, observed, batch_size: int, ctx, repeats: int) -> float:
    """Median seconds of one forward pass over ``observed`` in context ``ctx()``."""
    batches = list(DataLoader(observed, batch_size=batch_size))
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with ctx():
            for b in batches:
                loss_fn(model, b).float().sum().item()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def options_benchmark(args: argparse.Namespace) -> None:
    """Speed ratios of sampler options (> 1: the first is faster)."""
    draws = max(200, 20 * args.draws)
    base = SGLDConfig(
        nbeta=200.0, localization=1.0, num_chains=4, num_draws=draws, burn_in=100, seed=0
    )
    sgld = _slow_direction_ess_per_second(base, args.device)
    hmc = _slow_direction_ess_per_second(
        base.replace(integrator="sghmc", friction=0.1), args.device
    )
    print(
        f"SGHMC (friction 0.1) vs SGLD, linear-Gaussian slowest direction: ESS/s ratio "
        f"{hmc[0] / sgld[0]:5.2f}x (ESS/draw SGHMC {hmc[1]:.3f}, SGLD {sgld[1]:.3f}; "
        f"{4 * draws} draws each)"
    )
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = small_cnn().to(device).eval()
    observed = TensorDataset(
        torch.randn(2048, 1, 28, 28, device=device), torch.randint(0, 10, (2048,), device=device)
    )
    reps = max(3, args.repeats)
    fp32 = _observable_seconds(
        model, cnn_loss, observed, 256, lambda: observable_forward(device), reps
    )
    bf16 = _observable_seconds(
        model, cnn_loss, observed, 256, lambda: observable_forward(device, "bfloat16"), reps
    )
    no_grad = _observable_seconds(model, cnn_loss, observed, 256, torch.no_grad, reps)
    print(
        f"bf16 vs fp32 observable forwards (small CNN, 2048 items): time ratio fp32/bf16 "
        f"{fp32 / bf16:5.2f}x ({fp32 * 1e3:.0f} ms vs {bf16 * 1e3:.0f} ms)"
    )
    print(
        f"inference_mode vs no_grad observable forwards: time ratio no_grad/inference_mode "
        f"{no_grad / fp32:5.2f}x ({no_grad * 1e3:.0f} ms vs {fp32 * 1e3:.0f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--only", choices=("overhead", "batched", "processes", "options"), default=None
    )
    parser.add_argument("--memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, mode, chains, draws = args.memory_child
        _memory_child(name, mode, int(chains), int(draws))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.only in (None, "overhead"):
        print("-- sampler overhead vs a bare loop (one chain; target ratio <= 1.10)")
        overhead_benchmark(args)
    if args.only in (None, "batched"):
        print(
            f"-- chains in one batch vs one after another ({args.chains} chains; ratio > 1: faster)"
        )
        bench_batched("cnn", args.chains, args.draws, args.repeats, args.device)
        bench_batched("lm", args.chains, max(8, args.draws // 2), args.repeats, args.device)
        bench_batched("mlp10m", args.chains, max(4, args.draws // 6), 1, args.device)
    if args.only in (None, "processes") and args.device == "cpu":
        print(
            f"-- chains in worker processes vs one process ({args.chains} chains; "
            "sampler.chain_processes=0 vs 1; ratio > 1: processes faster)"
        )
        bench_processes("cnn", args.chains, args.draws, args.repeats)
        bench_processes("lm", args.chains, max(8, args.draws // 2), args.repeats)
    if args.only in (None, "options"):
        print("-- sampler options (ratio > 1: the option is faster)")
        options_benchmark(args)


if __name__ == "__main__":
    main()
