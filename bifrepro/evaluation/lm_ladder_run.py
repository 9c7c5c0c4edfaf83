"""One member of the language-scale ladder, end to end: train or load, sample, rank, compare.

:func:`run_ladder_member` does for one model size what the language-scale experiment repeats per
size: train (or load) the member, measure its held-out perplexity and transfer probe, choose the
observed training sequences, calibrate the sampler once, sample per-token traces for every
sampler seed (resumable stores in the cache), rank every query token's cross-form links per seed,
measure the seeds' agreement, pool the seeds for the link resolution, and, when asked, score the
same query tokens with EK-FAC per training token on the same observed sequences. The experiment
keeps only the orchestration across sizes, the tables and the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bifrepro.attribution.configs import EKFACConfig, GradSimConfig
from bifrepro.attribution.token_bif import TokenBIF, query_token_columns, sample_token_traces
from bifrepro.evaluation.lm_ladder import (
    LadderCorpus,
    heldout_perplexity,
    ladder_member,
    probe_accuracy,
)
from bifrepro.evaluation.lm_scaling import LMSize
from bifrepro.evaluation.token_links import QueryToken, baseline_scores, training_links
from bifrepro.evaluation.token_scale import (
    covering_observed,
    link_resolution,
    per_query_rows,
    scale_query_tokens,
    seed_agreement,
    seed_ranking,
)
from bifrepro.models.lm import LMTrainConfig
from bifrepro.sampling import CalibrationConfig, SGLDConfig
from bifrepro.training.lm_setup import LanguageSetup, calibrate_sampler, traces_store

__all__ = ["MemberResult", "member_label", "run_ladder_member"]

log = logging.getLogger(__name__)


def member_label(info: dict[str, Any]) -> str:
    """``"<size> (<parameters>M)"``: the name of a member in every table and figure."""
    return f"{info['size']} ({info['num_parameters'] / 1e6:.2f}M)"


@dataclass
class MemberResult:
    """What the tables and figures need of one member."""

    info: dict[str, Any]
    label: str
    #: per query token × sampler seed (BIF) and per query token (EK-FAC): ``per_query_rows``.
    rows: list[dict[str, Any]]
    #: one row per pair of sampler seeds (``seed_agreement``).
    agreement: list[dict[str, Any]]
    #: per query token, from the pooled draws (``link_resolution``), with its concept and size.
    links: list[dict[str, Any]]
    sampler: SGLDConfig
    #: every seed's chains together, for the example figures.
    pooled: TokenBIF
    observed: Any
    query_tokens: list[QueryToken]
    #: EK-FAC's token scores ``[q, n, T]`` when it ran.
    ekfac_scores: torch.Tensor | None = field(default=None, repr=False)


def _train_config(exp: Any) -> LMTrainConfig:
    return LMTrainConfig(
        steps=exp.train_steps,
        batch_size=exp.train_batch_size,
        lr=exp.train_lr,
        warmup_steps=min(50, exp.train_steps // 5),
        checkpoint_every=max(1, exp.train_steps // 2),
    )


def run_ladder_member(
    exp: Any,
    sampler: SGLDConfig,
    calibration: CalibrationConfig | None,
    seed: int,
    corpus: LadderCorpus,
    size: LMSize,
    cache: Path,
    ekfac: EKFACConfig | None = None,
) -> MemberResult:
    """Train/load one size, sample every sampler seed, rank, and (``ekfac``) score with EK-FAC.

    ``exp`` is the experiment's settings (``LanguageScaleConfig``: training, observed sequences,
    sampler seeds, estimator, ks, device, progress); ``calibration`` enabled calibrates the
    sampler once per size at ``sampler.seed`` and every seed uses its step; ``seed`` picks the
    random part of the observed sequences.
    """
    model, info = ladder_member(corpus, size, _train_config(exp), cache, exp.device, exp.progress)
    info |= heldout_perplexity(model, corpus.heldout) | probe_accuracy(model, corpus.tokenizer)
    label = member_label(info)
    log.info(
        "%s: held-out perplexity %.2f, count probe (choice) trained forms %.2f / held-out "
        "form %.2f",
        label,
        info["heldout_perplexity"],
        info["probe_seen_choice"],
        info["probe_heldout_choice"],
    )
    concepts = [q.text.spans[0][2] for q in corpus.query_info]
    idx = covering_observed(
        corpus.train, corpus.tokenizer, concepts, exp.num_observed, seed, exp.cover_per_form
    )
    obs = corpus.train.subset(idx)
    setup = LanguageSetup(model, corpus.tokenizer, corpus.train, idx, obs, corpus.queries, info)
    if calibration is not None and calibration.enabled:
        sampler, report = calibrate_sampler(setup, model, sampler, calibration, exp.progress)
        info["calibration"] = report.summary()
    qts = scale_query_tokens(corpus.queries, corpus.query_info, corpus.tokenizer)
    links = training_links(obs, corpus.tokenizer)
    pairs = [(q.seq, q.pos) for q in qts]
    ks = tuple(sorted(set(exp.ks)))
    rows: list[dict[str, Any]] = []
    scores: dict[int, torch.Tensor] = {}
    q_full, train_tr, health = [], [], []
    t0, cached = time.perf_counter(), 0
    for s in exp.sampler_seeds:
        sc = dataclasses.replace(sampler, seed=int(s))
        traces_dir, sc = traces_store(setup, sc, cache, [])
        cached += int((traces_dir / "manifest.json").is_file())  # a store from an earlier run
        tr = sample_token_traces(
            model,
            obs.dataset(),
            corpus.queries.dataset(),
            sc,
            sgld_data=corpus.train.dataset(),
            out_dir=traces_dir,
            progress=exp.progress,
        )
        health.append(bool(tr.diagnostics.is_healthy))
        scores[int(s)] = TokenBIF.from_traces(tr, normalize=exp.normalize).scores(
            pairs, list(range(len(obs)))
        )
        ranked = [seed_ranking(scores[int(s)], links, qts, ks, f) for f in ("other", "any")]
        rows += per_query_rows(ranked[0], qts, label, int(s), any_form=ranked[1])
        q_full.append(torch.as_tensor(np.asarray(tr["query"])))
        train_tr.append(torch.as_tensor(np.asarray(tr["train"])))
    # seconds to sample the traces, or to load those of `cached` seeds from the cache
    info["traces_seconds"], info["traces_cached_seeds"] = time.perf_counter() - t0, cached
    info["chains_healthy"] = float(all(health))
    valid = torch.from_numpy(links.base_valid)
    agree = seed_agreement(scores, valid, label, sampler.num_chains * sampler.num_draws)
    pooled_q, pooled_t = torch.cat(q_full), torch.cat(train_tr)  # every seed's chains together
    res = link_resolution(query_token_columns(pooled_q, pairs), pooled_t, links, qts, exp.normalize)
    for r, q in zip(res, qts, strict=True):
        r |= {"size": label, "concept": q.concept, "surface": q.surface, "example": q.example or ""}
    ekfac_scores = None
    if ekfac is not None:
        t1 = time.perf_counter()
        base, timing = baseline_scores(
            model, obs, corpus.queries, qts, ["ekfac"], ekfac, GradSimConfig()
        )
        ekfac_scores = base["ekfac"]
        info["ekfac_seconds"] = time.perf_counter() - t1
        info |= {k.replace("/", "_"): v for k, v in timing.items()}
        ranked = [seed_ranking(ekfac_scores, links, qts, ks, f) for f in ("other", "any")]
        rows += per_query_rows(ranked[0], qts, label, -1, any_form=ranked[1], method="ekfac")
        log.info("%s: EK-FAC per token in %.0f s", label, info["ekfac_seconds"])
    return MemberResult(
        info=info,
        label=label,
        rows=rows,
        agreement=agree,
        links=res,
        sampler=sampler,
        pooled=TokenBIF(pooled_q, pooled_t, normalize=exp.normalize),
        observed=obs,
        query_tokens=qts,
        ekfac_scores=ekfac_scores,
    )
