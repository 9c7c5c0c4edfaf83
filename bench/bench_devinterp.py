"""bifrepro's token-level BIF vs devinterp's ``bif()`` on the same model, data, hyperparameters, draws.

Both sides sample SGLD (RMSProp-preconditioned or plain, the same ε, nβ, γ, batch size, chains,
burn-in and draws) around the embedded language model of ``experiment=language`` and return the
full token-wise correlation matrix ``[n, n, T-1, T-1]`` between every pair of observed sequences —
devinterp's ``correlation_method="token"`` output. Each side runs in its own fresh process, so the
wall time and the peak resident memory of one do not leak into the other. Measured per side:

* ``seconds`` — wall time of the call (sampling + scores; model loading excluded); with
  ``--repeats N`` the median of N runs per side in alternating order, and the ratio of each pair;
* ``peak_rss_mb`` — peak increase of the process's resident memory during the call
  (:func:`bifrepro.attribution.timing.measure_phase`), and ``maxrss_mb`` — its high-water mark;
  with chain processes, ``workers_maxrss_mb`` — the largest worker's high-water mark (each
  worker is a fork sharing the parent's pages). The memory rows and ratio come from the
  one-process arm when there is one, since a parent's memory leaves out its workers'.

bifrepro runs with ``--chain-processes`` (default 0, the experiments' default: chains split
between one-thread worker processes, one per torch thread; devinterp 2.0 has no such option and
runs its chains in turn on every thread). When that gives more than one process, a bifrepro arm
in one process (``chain_processes=1``) is timed in the same repeats: the ratio with the library
overhead alone.

Agreement: the Pearson and Spearman correlations between the two score matrices (finite entries,
position 0 excluded). The two differ only by Monte Carlo noise (different random streams) and by
devinterp's convention (+correlation, same as bifrepro's positive = helpful; devinterp returns NaN
for constant traces, where bifrepro returns 0), so the reference is a second bifrepro run with
another seed: ``agreement(bifrepro, devinterp)`` should match ``agreement(bifrepro, bifrepro')``.

devinterp runs with its defaults for everything not shared (e.g. its initial-loss diagnostic over
``num_init_loss_batches=32`` batches per chain, ``bif_batch_size=32``); its zarr store goes to a
local temporary folder. bifrepro evaluates the observed sequences in batches of
``--eval-batch-size`` (default 96), devinterp in its SGLD batch size (it has no separate knob).
Both sides run with the same number of torch threads.

Run: ``python bench/bench_devinterp.py [--chains 4 --draws 100 ...] [hydra overrides ...]``
(``make reproduce-language`` runs it after the experiment). Writes
``results/language/devinterp_comparison.{csv,json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_devinterp")


def _parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--burn-in", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=32, help="tokens per observed sequence")
    p.add_argument("--num-observed", type=int, default=96, help="observed sequences (n)")
    p.add_argument("--num-sgld", type=int, default=512, help="sequences SGLD draws batches from")
    p.add_argument("--batch-size", type=int, default=16, help="SGLD batch size (both sides)")
    p.add_argument("--eval-batch-size", type=int, default=96, help="bifrepro's evaluation batch")
    p.add_argument(
        "--observable-dtype", choices=["float32", "bfloat16"], default="float32",
        help="bifrepro's observable forward precision (SGLDConfig.observable_dtype)",
    )  # fmt: skip
    p.add_argument(
        "--chain-processes", type=int, default=0,
        help="bifrepro's SGLDConfig.chain_processes (0: one one-thread process per torch thread, "
        "the experiments' default; devinterp 2.0 has no such option). When it resolves to more "
        "than one process, a bifrepro arm in one process is timed in the same repeats",
    )  # fmt: skip
    p.add_argument(
        "--no-bf16-arm", action="store_true",
        help="skip the extra bifrepro run with bfloat16 observables (same seed as the first run)",
    )  # fmt: skip
    p.add_argument(
        "--repeats", type=int, default=1,
        help="timed runs per side, alternating which side goes first (wall times: median; the "
        "ratio of every repeat is printed)",
    )  # fmt: skip
    p.add_argument(
        "--experiment", default="language",
        help="the language experiment config whose model and data are benchmarked (language_quick: "
        "the quick profile's, whose cached model it reuses)",
    )  # fmt: skip
    p.add_argument("--out", type=str, default=None, help="output folder (default results/language)")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--child", choices=["bifrepro", "devinterp"], help=argparse.SUPPRESS)
    p.add_argument("--spec", type=str, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", type=str, help=argparse.SUPPRESS)
    return p.parse_known_args(argv)


# -- children: one method each, in a fresh process ------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    from bifrepro.attribution.timing import measure_phase
    from bifrepro.models.lm import load_causal_lm
    from bifrepro.sampling import SGLDConfig
    from bifrepro.sampling.chain_processes import resolve_chain_processes

    spec = torch.load(args.spec, weights_only=False)
    model = load_causal_lm(spec["model_path"])
    sgld_ids, obs_ids = spec["sgld_ids"], spec["obs_ids"]
    s = spec["sampler"]
    with measure_phase() as rec:
        if args.child == "bifrepro":
            scores, order = _run_bifrepro(model, sgld_ids, obs_ids, s, args)
        else:
            scores, order = _run_devinterp(model, sgld_ids, obs_ids, s, args)
    torch.save(
        {
            "scores": scores,
            "order": order,
            "seconds": rec.seconds,
            "peak_rss_mb": rec.peak_rss_mb,
            "maxrss_mb": rec.peak_rss_total_mb,
            "threads": torch.get_num_threads(),
            # high-water mark of the largest chain worker process (0: none ran)
            "workers_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "processes": resolve_chain_processes(
                SGLDConfig(num_chains=args.chains, chain_processes=args.chain_processes),
                torch.device("cpu"),
            )[0]
            if args.child == "bifrepro"
            else 1,
        },
        args.result,
    )


def _run_bifrepro(model, sgld_ids, obs_ids, s: dict, args) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    from bifrepro.attribution.bif import bif_scores
    from bifrepro.attribution.token_bif import sequence_loss, token_losses
    from bifrepro.sampling import SGLDConfig, sample_loss_traces

    cfg = SGLDConfig(
        step_size=s["step_size"], nbeta=s["nbeta"], localization=s["localization"],
        num_chains=args.chains, num_draws=args.draws, burn_in=args.burn_in, thinning=1,
        batch_size=args.batch_size, preconditioner=s["preconditioner"],
        rmsprop_alpha=s["rmsprop_alpha"], rmsprop_eps=s["rmsprop_eps"], seed=args.seed,
        eval_batch_size=args.eval_batch_size, observable_dtype=args.observable_dtype,
        chain_processes=args.chain_processes,
    )  # fmt: skip
    obs = torch.utils.data.TensorDataset(obs_ids)
    traces = sample_loss_traces(
        model, sequence_loss, torch.utils.data.TensorDataset(sgld_ids),
        {"obs": (obs, token_losses)}, cfg, progress=False,
    )  # fmt: skip
    tr = traces["obs"][..., 1:]  # drop position 0 (predicts nothing), like devinterp
    full = bif_scores(tr, tr, normalize="correlation")  # [n, T-1, n, T-1]
    return full.permute(0, 2, 1, 3).contiguous(), torch.arange(len(obs_ids))


def _run_devinterp(model, sgld_ids, obs_ids, s: dict, args) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    import datasets
    from devinterp.slt.bif import bif

    n = len(obs_ids)
    if n % args.batch_size:
        raise ValueError("--num-observed must be a multiple of --batch-size for devinterp")
    sgld_ds = datasets.Dataset.from_dict({"input_ids": sgld_ids.tolist()}).with_format("torch")
    obs_ds = datasets.Dataset.from_dict({"input_ids": obs_ids.tolist()}).with_format("torch")
    if s["preconditioner"] not in ("none", "rmsprop"):
        raise ValueError(f"devinterp has no {s['preconditioner']!r} preconditioner to compare with")
    method = "rmsprop_sgld" if s["preconditioner"] == "rmsprop" else "sgmcmc_sgld"
    extra = (
        {"rmsprop_eps": s["rmsprop_eps"], "rmsprop_alpha": s["rmsprop_alpha"]}
        if method == "rmsprop_sgld"
        else {}
    )
    with tempfile.TemporaryDirectory(prefix="devinterp-") as tmp:
        out = bif(
            model,
            sgld_ds,
            {"obs": (obs_ds, n // args.batch_size)},
            lr=s["step_size"],
            n_beta=s["nbeta"],
            localization=s["localization"],
            num_chains=args.chains,
            num_draws=args.draws,
            num_burnin_steps=args.burn_in,
            num_steps_bw_draws=1,
            batch_size=args.batch_size,
            sampling_method=method,
            correlation_method="token",
            compute_covariance=False,
            bif_device="cpu",
            device="cpu",
            output_path=str(Path(tmp) / "samples.zarr"),
            **extra,
        )
        scores = torch.from_numpy(np.asarray(out["influences"].values))  # [n, n, T-1, T-1]
        ids = torch.as_tensor(np.asarray(out["input_ids"].values))
    # devinterp observes the sequences in a seeded shuffled order: map rows back to ours
    lookup = {tuple(r.tolist()): i for i, r in enumerate(obs_ids)}
    order = torch.tensor([lookup[tuple(r.tolist())] for r in ids])
    return scores, order


# -- parent ------------------------------------------------------------------------------------------


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Pearson / Spearman of two ``[n, n, T, T]`` matrices over finite entries, self-pairs excluded."""
    from scipy.stats import spearmanr

    n, t = a.shape[0], a.shape[2]
    self_pair = torch.eye(n, dtype=torch.bool)[:, :, None, None] & torch.eye(t, dtype=torch.bool)
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    ok = torch.isfinite(x) & torch.isfinite(y) & ~self_pair.reshape(-1)
    x, y = x[ok], y[ok]
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:200_000]
    spearman = float(spearmanr(x[idx].numpy(), y[idx].numpy()).statistic)
    return {"pearson": pearson, "spearman": spearman, "entries": float(len(x))}


def timing_summary(ours: list[float], theirs: list[float]) -> dict[str, float | list[float]]:
    """Median wall time per side over paired repeats, the ratio of the medians and of each pair
    (devinterp ÷ bifrepro: > 1 means bifrepro is faster), and the spread of the pair ratios."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"need paired repeats, got {len(ours)} and {len(theirs)}")
    pairs = [t / o for o, t in zip(ours, theirs, strict=True)]
    return {
        "bifrepro_seconds": float(np.median(ours)),
        "devinterp_seconds": float(np.median(theirs)),
        "speedup": float(np.median(theirs) / np.median(ours)),
        "speedup_runs": pairs,
        "speedup_min": float(min(pairs)),
        "speedup_max": float(max(pairs)),
    }


def _in_our_order(res: dict) -> torch.Tensor:
    """Rows/columns of a child's ``[n, n, T, T]`` scores permuted into our sequence order."""
    order = res["order"]
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    return res["scores"][inv][:, inv]


def _launch(
    which: str,
    spec: Path,
    seed: int,
    args: argparse.Namespace,
    tmp: Path,
    dtype: str | None = None,
    processes: int | None = None,
) -> dict:
    dtype = dtype or args.observable_dtype
    processes = args.chain_processes if processes is None else processes
    result = tmp / f"{which}-{seed}-{dtype}-{processes}.pt"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", which, "--spec", str(spec),
        "--seed", str(seed), "--result", str(result), "--chains", str(args.chains),
        "--draws", str(args.draws), "--burn-in", str(args.burn_in),
        "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
        "--observable-dtype", dtype, "--chain-processes", str(processes),
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} child failed:\n{proc.stderr[-4000:]}")
    log.info("%s (seed %d, %s) done in %.1f s", which, seed, dtype, time.perf_counter() - t0)
    return torch.load(result, weights_only=False)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, overrides = _parse(argv)
    if args.child:
        _child(args)
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import pandas as pd
    from hydra import compose, initialize_config_dir

    from bifrepro.io import atomic_write_csv, atomic_write_json
    from experiments import CONF_DIR
    from experiments.language import setup_language

    try:
        import devinterp  # noqa: F401
    except ImportError:
        log.error("devinterp is not installed (pip install -e '.[bench]'); skipping the comparison")
        return {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={args.experiment}", *overrides])
    setup = setup_language(cfg)  # the cached embedded model (trained on first use)
    from omegaconf import OmegaConf

    s = OmegaConf.to_container(cfg.sampler, resolve=True)
    # unpadded fixed-length chunks of the training token stream (devinterp has no attention mask)
    stream = setup.train.input_ids[setup.train.attention_mask.bool()]
    need = (args.num_sgld) * args.seq_len
    if len(stream) < need:
        raise ValueError(f"only {len(stream)} training tokens; need {need}")
    chunks = stream[:need].view(args.num_sgld, args.seq_len).clone()
    obs = chunks[: args.num_observed].clone()
    out_dir = Path(args.out) if args.out else Path(cfg.results_dir) / "language"
    with tempfile.TemporaryDirectory(prefix="bench-devinterp-") as tmp_name:
        tmp = Path(tmp_name)
        spec = tmp / "spec.pt"
        torch.save(
            {"model_path": setup.model_info["model_path"], "sgld_ids": chunks, "obs_ids": obs,
             "sampler": s},
            spec,
        )  # fmt: skip
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        runs: dict[str, list[dict]] = {"bifrepro": [], "devinterp": [], "one_process": []}
        for r in range(args.repeats):  # alternate the order: drift in machine load cancels
            for which in ("bifrepro", "devinterp") if r % 2 == 0 else ("devinterp", "bifrepro"):
                runs[which].append(_launch(which, spec, 0, args, tmp))
            if runs["bifrepro"][0]["processes"] > 1:  # the same draws in one process
                runs["one_process"].append(_launch("bifrepro", spec, 0, args, tmp, processes=1))
        ours, theirs = runs["bifrepro"][0], runs["devinterp"][0]  # same seed: same scores
        timing = timing_summary(
            [x["seconds"] for x in runs["bifrepro"]], [x["seconds"] for x in runs["devinterp"]]
        )
        single = (
            timing_summary(
                [x["seconds"] for x in runs["one_process"]],
                [x["seconds"] for x in runs["devinterp"]],
            )
            if runs["one_process"]
            else None
        )
        # bfloat16 observables on the same draws (same seed: the SGLD steps stay float32), so
        # its agreement with `ours` isolates the rounding error from Monte Carlo noise
        half = None
        if not args.no_bf16_arm and args.observable_dtype != "bfloat16":
            half = _launch("bifrepro", spec, 0, args, tmp, dtype="bfloat16")
        ours2 = _launch("bifrepro", spec, 1, args, tmp)
    a, b, a2 = _in_our_order(ours), _in_our_order(theirs), _in_our_order(ours2)
    # memory of one process doing all the work (worker processes' memory is not in the parent's)
    mem = runs["one_process"][0] if single is not None else ours
    agree = _agreement(a, b)
    noise = _agreement(a, a2)
    metrics = {
        "bifrepro_seconds": timing["bifrepro_seconds"],
        "devinterp_seconds": timing["devinterp_seconds"],
        "speedup": timing["speedup"],
        "speedup_min": timing["speedup_min"],
        "speedup_max": timing["speedup_max"],
        "timing_repeats": float(args.repeats),
        "bifrepro_peak_rss_mb": mem["peak_rss_mb"],
        "devinterp_peak_rss_mb": theirs["peak_rss_mb"],
        "peak_memory_ratio": theirs["peak_rss_mb"] / max(mem["peak_rss_mb"], 1e-9),
        "bifrepro_maxrss_mb": mem["maxrss_mb"],
        "memory_from_one_process_arm": float(single is not None),
        "devinterp_maxrss_mb": theirs["maxrss_mb"],
        "agreement_pearson": agree["pearson"],
        "agreement_spearman": agree["spearman"],
        "seed_to_seed_pearson": noise["pearson"],
        "seed_to_seed_spearman": noise["spearman"],
        "devinterp_nan_fraction": float((~torch.isfinite(b)).double().mean()),
        "entries_compared": agree["entries"],
        "bifrepro_chain_processes": float(ours["processes"]),
        "bifrepro_workers_maxrss_mb": float(ours["workers_maxrss_mb"]),
        "torch_threads": float(ours["threads"]),
    }
    if single is not None:
        metrics.update(
            bifrepro_one_process_seconds=single["bifrepro_seconds"],
            speedup_one_process=single["speedup"],
            speedup_one_process_min=single["speedup_min"],
            speedup_one_process_max=single["speedup_max"],
            one_process_same_draws_max_abs_diff=float(
                (_in_our_order(ours) - _in_our_order(runs["one_process"][0]))
                .abs()
                .nan_to_num()
                .max()
            ),
        )
    if half is not None:
        same_draws = _agreement(a, _in_our_order(half))
        metrics.update(
            bifrepro_bf16_seconds=half["seconds"],
            speedup_bf16=metrics["devinterp_seconds"] / half["seconds"],
            bf16_vs_float32_same_draws_pearson=same_draws["pearson"],
            bf16_vs_float32_same_draws_spearman=same_draws["spearman"],
        )
    setting = {
        "chains": args.chains, "draws": args.draws, "burn_in": args.burn_in,
        "observed_sequences": args.num_observed, "seq_len": args.seq_len,
        "sgld_sequences": args.num_sgld, "batch_size": args.batch_size,
        "eval_batch_size_bifrepro": args.eval_batch_size, "step_size": s["step_size"],
        "nbeta": s["nbeta"], "localization": s["localization"],
        "preconditioner": s["preconditioner"], "model": setup.model_info["display_name"],
        "torch_threads": ours["threads"], "bifrepro_chain_processes": ours["processes"],
    }  # fmt: skip
    rows = [
        {"quantity": "wall seconds", "bifrepro": metrics["bifrepro_seconds"],
         "devinterp": metrics["devinterp_seconds"], "ratio_devinterp_over_bifrepro": metrics["speedup"]},
        {"quantity": "peak RSS increase (MB)", "bifrepro": mem["peak_rss_mb"],
         "devinterp": theirs["peak_rss_mb"], "ratio_devinterp_over_bifrepro": metrics["peak_memory_ratio"]},
        {"quantity": "process max RSS (MB)", "bifrepro": mem["maxrss_mb"],
         "devinterp": theirs["maxrss_mb"],
         "ratio_devinterp_over_bifrepro": theirs["maxrss_mb"] / mem["maxrss_mb"]},
        {"quantity": "Pearson vs bifrepro seed 0", "bifrepro": noise["pearson"],
         "devinterp": agree["pearson"], "ratio_devinterp_over_bifrepro": float("nan")},
        {"quantity": "Spearman vs bifrepro seed 0", "bifrepro": noise["spearman"],
         "devinterp": agree["spearman"], "ratio_devinterp_over_bifrepro": float("nan")},
    ]  # fmt: skip
    if single is not None:
        rows.append(
            {"quantity": "wall seconds, bifrepro in one process",
             "bifrepro": metrics["bifrepro_one_process_seconds"],
             "devinterp": metrics["devinterp_seconds"],
             "ratio_devinterp_over_bifrepro": metrics["speedup_one_process"]}
        )  # fmt: skip
    if half is not None:
        rows.append(
            {"quantity": "wall seconds, bifrepro with bfloat16 observables",
             "bifrepro": half["seconds"], "devinterp": metrics["devinterp_seconds"],
             "ratio_devinterp_over_bifrepro": metrics["speedup_bf16"]}
        )  # fmt: skip
        rows.append(
            {"quantity": "Pearson, bfloat16 vs float32 observables on the same draws",
             "bifrepro": metrics["bf16_vs_float32_same_draws_pearson"], "devinterp": float("nan"),
             "ratio_devinterp_over_bifrepro": float("nan")}
        )  # fmt: skip
    atomic_write_csv(pd.DataFrame(rows).round(4), out_dir / "devinterp_comparison.csv")
    atomic_write_json(
        {"metrics": metrics, "setting": setting}, out_dir / "devinterp_comparison.json"
    )
    if not args.no_mlflow and cfg.tracking.enabled:
        from bifrepro.tracking import start_run

        with start_run(cfg, run_name="bench_devinterp", tags={"bench": "devinterp"}) as tracker:
            tracker.log_metrics({f"devinterp/{k}": v for k, v in metrics.items()})
            tracker.log_params({f"bench.{k}": v for k, v in setting.items()})
            tracker.log_artifact(out_dir / "devinterp_comparison.csv", "tables")
    print(json.dumps({"setting": setting, "metrics": metrics}, indent=1))
    print(
        f"bifrepro vs devinterp: {metrics['speedup']:.2f}x faster (median of {args.repeats}; "
        f"per repeat {', '.join(f'{x:.2f}' for x in timing['speedup_runs'])}), peak memory "
        f"{metrics['peak_memory_ratio']:.2f}x lower; score agreement Pearson "
        f"{agree['pearson']:.3f} (bifrepro seed-to-seed {noise['pearson']:.3f})"
    )
    if single is not None:
        print(
            f"bifrepro in one process (chain_processes=1): {metrics['speedup_one_process']:.2f}x "
            f"faster than devinterp; {ours['processes']} processes of "
            f"{max(1, ours['threads'] // ours['processes'])} thread(s) vs devinterp on "
            f"{ours['threads']} thread(s)"
        )
    if half is not None:
        print(
            f"bifrepro with bfloat16 observables: {metrics['speedup_bf16']:.2f}x faster than "
            f"devinterp; same draws as float32: Pearson "
            f"{metrics['bf16_vs_float32_same_draws_pearson']:.3f}"
        )
    return metrics


if __name__ == "__main__":
    main()
