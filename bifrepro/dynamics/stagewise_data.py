"""The fixed data of a stagewise LM run: what every checkpoint is trained on, sampled on and scored on.

:func:`build_stagewise_data` packs a text corpus into sequences and adds the synthetic
repeated-token sequences (:mod:`bifrepro.dynamics.repeated_tokens`) that make in-context copying
pay off: the training batches get fresh ones, the SGLD data a fixed draw in the same share. It
also picks the observed training sequences and the queries (half of them repeating their first
half), classifies their tokens (:mod:`bifrepro.data.token_classes`) and draws the induction probe.
Everything is seeded, so every checkpoint job of a sweep rebuilds the very same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bifrepro.data.text import TextCorpus, pack_documents
from bifrepro.data.token_classes import IGNORE, TOKEN_CLASSES, TokenClassifier
from bifrepro.dynamics.repeated_tokens import (
    RandomRepeats,
    frequent_token_ids,
    repeat_halves,
    repeated_random_tokens,
)

__all__ = ["DataSettings", "StagewiseData", "build_stagewise_data"]

log = logging.getLogger(__name__)


class DataSettings(Protocol):
    """The settings :func:`build_stagewise_data` reads (e.g. a ``StagewiseLMConfig``)."""

    seq_len: int
    repeat_fraction: float
    query_repeat_fraction: float
    num_observed: int
    num_observed_synthetic: int
    num_query: int
    induction_sequences: int
    induction_half_len: int
    induction_vocab: int
    token_priority: list[str]
    # optional: ``repeat_start_step`` (curriculum start of the synthetic repeats; default 0)


@dataclass
class StagewiseData:
    """Sequences, token classes and the induction probe shared by every checkpoint."""

    tokenizer: Any
    classifier: TokenClassifier
    corpus_ids: torch.Tensor  # [N_c, T] packed corpus: the LM's training data ...
    corpus_mask: torch.Tensor
    augment: RandomRepeats  # ... with fresh synthetic [BOS] r r sequences mixed into each batch
    train_ids: torch.Tensor  # [N, T] SGLD data: corpus + a fixed draw of synthetic sequences
    train_mask: torch.Tensor
    synthetic: torch.Tensor  # [N] bool: synthetic rows of train_ids
    observed_index: np.ndarray
    query_ids: torch.Tensor  # [Q, T]
    query_mask: torch.Tensor
    query_classes: torch.Tensor  # [Q, T]
    observed_classes: torch.Tensor  # [n, T]
    probe_ids: torch.Tensor  # induction probe
    probe_mask: torch.Tensor
    #: Tokenizer and packed corpus (with the augmentation settings): keys the trained model.
    data_key: str

    @property
    def observed_ids(self) -> torch.Tensor:
        return self.train_ids[torch.as_tensor(self.observed_index)]

    @property
    def observed_mask(self) -> torch.Tensor:
        return self.train_mask[torch.as_tensor(self.observed_index)]

    def sgld_dataset(self) -> TensorDataset:
        """What SGLD samples on: every training sequence."""
        return TensorDataset(self.train_ids, self.train_mask)

    def observed_dataset(self) -> TensorDataset:
        return TensorDataset(self.observed_ids, self.observed_mask)

    def query_dataset(self) -> TensorDataset:
        return TensorDataset(self.query_ids, self.query_mask)


def _observed_index(n_corpus: int, n_synth: int, s: DataSettings, seed: int) -> np.ndarray:
    """Sorted rows of the observed training sequences: corpus ones, then synthetic ones."""
    rng = np.random.default_rng(seed)
    n_obs = min(s.num_observed, n_corpus)
    n_obs_synth = min(s.num_observed_synthetic, n_synth)
    picked = np.concatenate(
        [
            rng.choice(n_corpus, n_obs, replace=False),
            n_corpus + rng.choice(n_synth, n_obs_synth, replace=False),
        ]
    )
    return np.sort(picked).astype(np.int64)


def build_stagewise_data(
    corpus: TextCorpus, tokenizer: Any, tokenizer_key: str, settings: DataSettings, seed: int
) -> StagewiseData:
    """Training, SGLD, observed and query sequences, their token classes and the induction probe.

    ``tokenizer_key`` names the tokenizer (its folder) in :attr:`StagewiseData.data_key`.
    """
    s, tok = settings, tokenizer
    if tok.pad_token_id is None or tok.bos_token_id is None:
        raise ValueError("the tokenizer needs a BOS and a pad token")
    corpus_seqs = pack_documents(corpus.train, tok, s.seq_len)
    specials = list(getattr(tok, "all_special_ids", []))
    candidates = frequent_token_ids(
        corpus_seqs.input_ids, corpus_seqs.attention_mask, s.induction_vocab, exclude=specials
    )
    # curriculum: repeats only from this training step (settings without it: from step 0)
    start = int(getattr(s, "repeat_start_step", 0))
    augment = RandomRepeats(
        candidates, s.repeat_fraction, tok.bos_token_id, tok.pad_token_id, seed=seed,
        start_step=start,
    )  # fmt: skip
    # SGLD data: the corpus plus a fixed draw of the synthetic sequences, in the training share
    n_corpus = len(corpus_seqs)
    f = s.repeat_fraction
    n_synth = round(f / (1 - f) * n_corpus)
    synth_ids, synth_mask = augment.sample(
        n_synth, s.seq_len, torch.Generator().manual_seed(seed + 1)
    )
    train_ids = torch.cat([corpus_seqs.input_ids, synth_ids])
    train_mask = torch.cat([corpus_seqs.attention_mask, synth_mask])
    synthetic = torch.cat(
        [torch.zeros(n_corpus, dtype=torch.bool), torch.ones(n_synth, dtype=torch.bool)]
    )
    queries = pack_documents(corpus.queries, tok, s.seq_len)
    q_ids, q_mask, _ = repeat_halves(
        queries.input_ids, queries.attention_mask, s.query_repeat_fraction, seed + 2,
        tok.pad_token_id,
    )  # fmt: skip
    if len(q_ids) < s.num_query:
        log.warning(
            "only %d query sequences (experiment.num_query=%d): raise data.num_queries for more",
            len(q_ids), s.num_query,
        )  # fmt: skip
    q_ids, q_mask = q_ids[: s.num_query], q_mask[: s.num_query]
    observed = _observed_index(n_corpus, n_synth, s, seed)
    obs_idx = torch.as_tensor(observed)
    classifier = TokenClassifier.from_tokenizer(tok, priority=tuple(s.token_priority))
    obs_classes = classifier.classify(train_ids[obs_idx], train_mask[obs_idx])
    # synthetic sequences are random tokens: only their induction completions carry a class
    synth_rows = synthetic[obs_idx]
    induction = TOKEN_CLASSES.index("induction")
    obs_classes[synth_rows] = torch.where(obs_classes[synth_rows] == induction, induction, IGNORE)
    probe_ids, probe_mask = repeated_random_tokens(
        candidates, s.induction_sequences, s.induction_half_len, tok.bos_token_id, seed + 3
    )
    h = hashlib.sha256()
    for t in (corpus_seqs.input_ids, corpus_seqs.attention_mask):
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps(augment.settings(), sort_keys=True).encode())
    return StagewiseData(
        tokenizer=tok,
        classifier=classifier,
        corpus_ids=corpus_seqs.input_ids,
        corpus_mask=corpus_seqs.attention_mask,
        augment=augment,
        train_ids=train_ids,
        train_mask=train_mask,
        synthetic=synthetic,
        observed_index=observed,
        query_ids=q_ids,
        query_mask=q_mask,
        query_classes=classifier.classify(q_ids, q_mask),
        observed_classes=obs_classes,
        probe_ids=probe_ids,
        probe_mask=probe_mask,
        data_key=f"{Path(tokenizer_key).name}-{h.hexdigest()[:16]}",
    )
