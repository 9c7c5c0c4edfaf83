"""The shared set-up of the language experiments: corpus → tokenizer → packed sequences → model.

:func:`setup_causal_lm` builds the embedded corpus (:mod:`bifrepro.data.text`), gets its
tokenizer (the byte-level BPE trained here and cached, or a Hugging Face model's) and packs the
training documents; it then gets the causal LM: the embedded model trained once and cached
(:func:`bifrepro.training.lm.embedded_causal_lm`), or any Hugging Face checkpoint
(:func:`bifrepro.models.lm.load_causal_lm`). :func:`setup_language` adds what the token-level
experiment attributes: the query sentences (poster examples first) and the observed training
sequences; :func:`traces_key` names the cache of its per-token traces, :func:`traces_store`
finds that store (merging the stores of chain jobs first, see :mod:`bifrepro.sampling.chain_jobs`)
and :func:`calibrate_sampler` calibrates SGLD where those traces are sampled. Parallel jobs
sharing one cache build it one at a time (a file lock), so the embedded model is trained once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bifrepro.attribution.token_bif import sequence_loss
from bifrepro.data.text import (
    TextCorpus,
    TextCorpusConfig,
    TokenizedSequences,
    build_corpus,
    pack_documents,
)
from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer, texts_fingerprint
from bifrepro.models.lm import CausalLMConfig, load_causal_lm
from bifrepro.sampling import CalibrationConfig, CalibrationReport, SGLDConfig, resolve_sampler
from bifrepro.sampling.chain_jobs import merge_chain_jobs
from bifrepro.training.lm import BatchTransform, embedded_causal_lm

__all__ = [
    "CausalLMSetup",
    "LanguageSetup",
    "corpus_texts",
    "sequences_fingerprint",
    "choose_observed",
    "max_positions",
    "setup_causal_lm",
    "setup_language",
    "traces_key",
    "traces_store",
    "calibrate_sampler",
]


@dataclass
class CausalLMSetup:
    """A corpus, its tokenizer, the packed training sequences and the causal LM."""

    corpus: TextCorpus
    model: torch.nn.Module
    tokenizer: Any
    train: TokenizedSequences
    #: concept -> id of every labelled concept seen so far (extended by later packing)
    concept_index: dict[str, int]
    #: model_path, display_name, num_parameters; for the embedded model also its training summary
    model_info: dict[str, Any]


@dataclass
class LanguageSetup:
    """The model, tokenizer and tokenised data of one configuration."""

    model: torch.nn.Module
    tokenizer: Any
    train: TokenizedSequences  # every training sequence (SGLD data)
    observed_index: np.ndarray
    observed: TokenizedSequences
    queries: TokenizedSequences  # one query sentence per sequence; poster examples first
    model_info: dict[str, Any]


def corpus_texts(corpus: TextCorpus) -> list[str]:
    """Every text the embedded tokenizer is trained on: the corpus and the poster examples."""
    return corpus.all_texts() + [e.text.text for e in corpus.examples]


def sequences_fingerprint(*tensors: torch.Tensor) -> str:
    """A short hash of the tensors' bytes (cache keys of models and traces)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def choose_observed(
    seqs: TokenizedSequences, n: int, template_fraction: float, seed: int
) -> np.ndarray:
    """Observed training sequences: ``template_fraction`` with labelled tokens, the rest without."""
    labelled = (seqs.concepts >= 0).any(1).numpy()
    rng = np.random.default_rng(seed)
    lab, other = np.flatnonzero(labelled), np.flatnonzero(~labelled)
    n = min(n, len(seqs))
    n_lab = min(len(lab), int(round(n * template_fraction)))
    n_other = min(len(other), n - n_lab)
    n_lab = min(len(lab), n - n_other)
    idx = np.concatenate(
        [rng.choice(lab, n_lab, replace=False), rng.choice(other, n_other, replace=False)]
    )
    return np.sort(idx)


def setup_causal_lm(
    data_cfg: TextCorpusConfig,
    model_cfg: CausalLMConfig,
    seq_len: int,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    batch_transform: BatchTransform | None = None,
) -> CausalLMSetup:
    """Corpus, tokenizer, training sequences (``[N, seq_len]``, documents packed) and the model.

    The embedded model is trained on the packed training sequences once per architecture,
    training settings, tokenizer and data, and cached under ``cache_dir`` (with the tokenizer);
    the tokenizer returned is the one saved beside the model. ``batch_transform`` rewrites its
    training batches (see :data:`bifrepro.models.lm.BatchTransform`).
    """
    with _cache_lock(cache_dir):  # parallel jobs: the first builds the cache, the others load it
        return _setup_causal_lm(
            data_cfg, model_cfg, seq_len, cache_dir, device, progress, batch_transform
        )


@contextlib.contextmanager
def _cache_lock(cache_dir: str | Path) -> Iterator[None]:
    """An exclusive inter-process lock (``flock``) on ``cache_dir/.setup.lock``; none on
    platforms without ``fcntl``. Released when the block ends or the process dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cache_dir) / ".setup.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _setup_causal_lm(
    data_cfg: TextCorpusConfig,
    model_cfg: CausalLMConfig,
    seq_len: int,
    cache_dir: str | Path,
    device: str | torch.device,
    progress: bool | None,
    batch_transform: BatchTransform | None,
) -> CausalLMSetup:
    corpus = build_corpus(data_cfg)
    device = torch.device(device)
    info: dict[str, Any] = {}
    concept_index: dict[str, int] = {}
    if model_cfg.is_embedded:
        tok, tok_path = load_or_train_tokenizer(
            corpus_texts(corpus), cache_dir, model_cfg.vocab_size
        )
        train = pack_documents(corpus.train, tok, seq_len, concept_index)
        data_key = f"{tok_path.name}-{sequences_fingerprint(train.input_ids, train.attention_mask)}"
        t0 = time.perf_counter()
        model, path, summary = embedded_causal_lm(
            model_cfg, tok, train.input_ids, train.attention_mask, cache_dir, data_key, device,
            progress, batch_transform,
        )  # fmt: skip
        tok = load_tokenizer(path)  # the tokenizer as saved beside the model: the real path
        info.update(
            model_path=str(path),
            display_name=f"{model_cfg.name} ({model_cfg.arch}, {model_cfg.num_layers} layers, "
            f"d={model_cfg.hidden_size})",
            lm_train_seconds=float(summary["train_seconds"]),
            lm_load_seconds=time.perf_counter() - t0,
            lm_final_loss=float(summary["final_loss"]),
            lm_first_loss=float(summary["first_loss"]),
            num_parameters=int(summary["num_parameters"]),
            lm_loss_curve=summary["loss_curve"],
        )
    else:
        model = load_causal_lm(
            model_cfg.name_or_path,  # type: ignore[arg-type]
            revision=model_cfg.revision,
            dtype=model_cfg.dtype,
            device=device,
            local_files_only=model_cfg.local_files_only,
        )
        tok = load_tokenizer(model_cfg.name_or_path, revision=model_cfg.revision)  # type: ignore[arg-type]
        train = pack_documents(corpus.train, tok, seq_len, concept_index)
        info.update(
            model_path=str(model_cfg.name_or_path),
            display_name=str(model_cfg.name_or_path)
            + (f"@{model_cfg.revision}" if model_cfg.revision else ""),
            num_parameters=sum(p.numel() for p in model.parameters()),
        )
    return CausalLMSetup(corpus, model, tok, train, concept_index, info)


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest sequence the model takes (``max_position_embeddings``), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


def setup_language(
    data_cfg: TextCorpusConfig,
    model_cfg: CausalLMConfig,
    seq_len: int,
    num_observed: int,
    template_fraction: float,
    cache_dir: str | Path,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> LanguageSetup:
    """:func:`setup_causal_lm` plus the query sentences and the observed training sequences.

    Queries are the poster examples, then the corpus's held-out query sentences, one per
    sequence; every sequence shares one complete concept-id table. ``num_observed`` training
    sequences are chosen by :func:`choose_observed` (seeded by ``seed``). Callers check
    ``seq_len`` against :func:`max_positions` of the model.
    """
    lm = setup_causal_lm(data_cfg, model_cfg, seq_len, cache_dir, device, progress)
    query_docs = [e.text for e in lm.corpus.examples] + lm.corpus.queries
    queries = pack_documents(query_docs, lm.tokenizer, seq_len, lm.concept_index, pack=False)
    train = lm.train
    train.concept_names = queries.concept_names  # one shared, complete id -> concept table
    idx = choose_observed(train, num_observed, template_fraction, seed)
    return LanguageSetup(
        lm.model, lm.tokenizer, train, idx, train.subset(idx), queries, lm.model_info
    )


def traces_key(s: LanguageSetup, sampler_fingerprint: str, frozen: list[str]) -> str:
    """Cache key of the per-token traces: model, sampler, frozen parameters, the training,
    observed and query sequences, and the first weights (a retrained model gets new traces)."""
    return _traces_keys(s, frozen)(sampler_fingerprint)


def _traces_keys(s: LanguageSetup, frozen: list[str]) -> Callable[[str], str]:
    """``sampler_fingerprint -> traces_key(s, sampler_fingerprint, frozen)``, hashing the data
    and weights once."""
    data = sequences_fingerprint(s.train.input_ids, s.observed.input_ids, s.queries.input_ids)
    weights = sequences_fingerprint(*[p.detach().cpu() for p in list(s.model.parameters())[:2]])

    def key(sampler_fingerprint: str) -> str:
        return texts_fingerprint(
            [s.model_info["model_path"], sampler_fingerprint, *sorted(frozen)],
            data=data,
            weights=weights,
        )

    return key


def traces_store(
    s: LanguageSetup,
    sampler: SGLDConfig,
    cache_dir: str | os.PathLike[str],
    frozen: list[str],
    chain_job: bool = False,
) -> tuple[Path, SGLDConfig]:
    """The folder of the per-token traces of ``sampler`` in the cache, and the sampler to use.

    The folder is ``cache_dir/traces-<traces_key>``. Unless this run is itself a chain job
    (``experiment.chain_job``), complete stores of chain jobs of the same settings that together
    hold its chains are first merged into that folder, so the run loads them instead of sampling
    (:func:`~bifrepro.sampling.chain_jobs.merge_chain_jobs`, which also says why the returned
    sampler's ``chain_batching`` may differ).
    """
    key = _traces_keys(s, frozen)

    def store_dir(config: SGLDConfig) -> Path:
        return Path(cache_dir) / f"traces-{key(config.fingerprint())}"

    out = store_dir(sampler)
    if not chain_job:
        sampler = merge_chain_jobs(out, sampler, store_dir)
    return out, sampler


def calibrate_sampler(
    s: LanguageSetup,
    sampled: torch.nn.Module,
    sampler: SGLDConfig,
    calibration: CalibrationConfig,
    progress: bool | None = None,
) -> tuple[SGLDConfig, CalibrationReport]:
    """The calibrated sampler (``sampler=auto`` / ``calibration=auto``) and the evidence.

    Pilot chains run where the real run samples: at ``w*`` of ``sampled`` (frozen parameters stay
    fixed), on the mean sequence loss over every training sequence (:func:`sequence_loss`, the
    loss of :func:`~bifrepro.attribution.token_bif.sample_token_traces`). The pilots observe
    per-sequence losses (mean over the predicted tokens) of a seeded subset of training sequences
    and of the queries: the health rules judge items, and a sequence's mean is what its per-token
    traces average to.
    """
    sampler, report = resolve_sampler(
        sampler, dataclasses.replace(calibration, enabled=True), sampled, sequence_loss,
        s.train.dataset(), query_data=s.queries.dataset(), query_loss_fn=sequence_loss,
        n_query=len(s.queries), n_observed=len(s.observed) + len(s.queries), progress=progress,
    )  # fmt: skip
    assert report is not None
    return sampler, report
