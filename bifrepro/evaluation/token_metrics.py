"""Ranking metrics for token attribution against known links: precision@k and reciprocal rank.

For a query token with a known concept (e.g. ``num:3``), every training token is a *candidate*
and the *relevant* ones express the same concept (``3``, ``three``, ``trois``). A method ranks the
candidates by score; we report

* ``precision@k`` — the fraction of relevant tokens among the top k (chance level: the relevant
  fraction of the candidates, reported alongside);
* ``reciprocal rank`` — ``1 / rank`` of the best-ranked relevant token, where rank is one plus the
  number of non-relevant candidates scoring *strictly* higher (ties favour the method); its mean
  over queries is the MRR.

Which candidates and which links (:class:`TokenLinks`):

* ``scope="all"`` — every real training token except position 0 and tokens marked ambiguous;
  ``scope="category"`` — only tokens of the query's category (other numbers for a number, the
  other sense of "bank" for "bank"): does the method pick the *right* member?
* ``form="any"`` — any surface form counts; ``form="other"`` — tokens with the query's own surface
  form are removed from the candidates, so only translations/synonyms can score
  (``3`` → ``three``/``trois``, ``elle`` → ``she``).
* Categories in :data:`bifrepro.data.text.CATEGORY_LEVEL` (countries, cities, names) link at the
  category level (any country is relevant to a country).

Both a dense version (:func:`ranking_metrics`, for methods that return full score matrices) and a
two-pass blockwise one (:class:`BlockwiseRanking`, for per-token BIF whose full matrix is never
built) are given; they agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bifrepro.data.text import AMBIGUOUS, CATEGORY_LEVEL, concept_category

__all__ = [
    "RankingResult",
    "ranking_metrics",
    "BlockwiseRanking",
    "TokenLinks",
    "SCOPES",
    "FORMS",
]

SCOPES = ("all", "category")
FORMS = ("any", "other")


@dataclass
class RankingResult:
    """Per-query ranking metrics (NaN where a query has no relevant candidate)."""

    ks: tuple[int, ...]
    precision: dict[int, np.ndarray]
    reciprocal_rank: np.ndarray
    first_rank: np.ndarray
    n_relevant: np.ndarray
    n_candidates: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def chance(self) -> np.ndarray:
        """Expected precision of a random ranking: relevant / candidates per query."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.n_relevant / self.n_candidates
        return np.where(self.n_relevant > 0, out, np.nan)

    def summary(self, select: np.ndarray | None = None) -> dict[str, float]:
        """Means over (the selected) queries that have at least one relevant candidate."""
        sel = np.ones(len(self.reciprocal_rank), bool) if select is None else np.asarray(select)
        sel = sel & (self.n_relevant > 0)

        def mean(x: np.ndarray) -> float:
            return float(np.mean(x[sel])) if sel.any() else math.nan

        out = {f"precision_at_{k}": mean(self.precision[k]) for k in self.ks}
        out["mrr"] = mean(self.reciprocal_rank)
        out["chance_precision"] = mean(self.chance)
        out["median_first_rank"] = float(np.median(self.first_rank[sel])) if sel.any() else math.nan
        out["num_queries"] = float(sel.sum())
        return out


def _check(
    scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    if scores.dim() != 2 or relevant.shape != scores.shape:
        raise ValueError(
            f"scores and relevant must both be [q, N]; got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    if valid is None:
        return torch.ones_like(relevant, dtype=torch.bool)
    if valid.shape != scores.shape:
        raise ValueError(f"valid must be [q, N] like scores, got {tuple(valid.shape)}")
    return valid.bool()


def ranking_metrics(
    scores: torch.Tensor,
    relevant: torch.Tensor,
    valid: torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> RankingResult:
    """Precision@k and reciprocal rank of ``scores [q, N]`` against ``relevant [q, N]``.

    ``valid [q, N]``: candidates (default: all). Non-finite scores count as the lowest.
    """
    acc = BlockwiseRanking(scores.shape[0], ks)
    acc.update(scores, relevant, valid)
    acc.count(scores, relevant, valid)
    return acc.result()


class BlockwiseRanking:
    """Exact precision@k / reciprocal rank over candidates that arrive in column blocks.

    Pass 1 (:meth:`update`, every block once) keeps the running top-k and the best relevant
    score per query; pass 2 (:meth:`count`, the same blocks again) counts the non-relevant
    candidates above that best relevant score. Memory: ``q × (k + block)``.
    """

    def __init__(self, n_queries: int, ks: tuple[int, ...] = (1, 5, 10)) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(sorted({int(k) for k in ks}))
        self.kmax = max(self.ks)
        self.top_v = torch.full((n_queries, 0), -torch.inf, dtype=torch.float64)
        self.top_rel = torch.zeros((n_queries, 0), dtype=torch.bool)
        self.best_rel = torch.full((n_queries,), -torch.inf, dtype=torch.float64)
        self.n_rel = torch.zeros(n_queries, dtype=torch.long)
        self.n_cand = torch.zeros(n_queries, dtype=torch.long)
        self.above = torch.zeros(n_queries, dtype=torch.long)
        self._counted = False

    def update(
        self, scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Pass 1 on one block of candidates (``[q, m]`` each)."""
        valid = _check(scores, relevant, valid)
        s = torch.nan_to_num(scores.double(), nan=-math.inf).masked_fill(~valid, -math.inf)
        rel = relevant.bool() & valid
        self.n_rel += rel.sum(1)
        self.n_cand += valid.sum(1)
        self.best_rel = torch.maximum(self.best_rel, s.masked_fill(~rel, -math.inf).amax(1))
        v = torch.cat([self.top_v, s], dim=1)
        r = torch.cat([self.top_rel, rel], dim=1)
        k = min(self.kmax, v.shape[1])
        self.top_v, pick = torch.topk(v, k, dim=1)
        self.top_rel = torch.gather(r, 1, pick)

    def count(
        self, scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Pass 2 on the same block: non-relevant candidates above the best relevant score."""
        valid = _check(scores, relevant, valid)
        s = torch.nan_to_num(scores.double(), nan=-math.inf)
        other = valid & ~relevant.bool()
        self.above += (other & (s > self.best_rel[:, None])).sum(1)
        self._counted = True

    def result(self) -> RankingResult:
        if not self._counted:
            raise RuntimeError("call count() on every block (pass 2) before result()")
        has = self.n_rel > 0
        precision = {}
        for k in self.ks:
            hits = (self.top_rel[:, :k] & torch.isfinite(self.top_v[:, :k])).sum(1).double()
            denom = torch.clamp(torch.minimum(self.n_cand, torch.tensor(k)), min=1).double()
            precision[k] = torch.where(has, hits / denom, torch.nan).numpy()
        rank = (self.above + 1).double()
        rr = torch.where(has, 1.0 / rank, torch.nan).numpy()
        return RankingResult(
            ks=self.ks,
            precision=precision,
            reciprocal_rank=rr,
            first_rank=torch.where(has, rank, torch.nan).numpy(),
            n_relevant=self.n_rel.numpy().astype(float),
            n_candidates=self.n_cand.numpy().astype(float),
        )


class TokenLinks:
    """Ground-truth links between query tokens and the training tokens ``[n, T]``.

    Built once from the training tokens' concept ids and normalised surface forms; :meth:`masks`
    then gives ``(relevant, valid)`` for one query token with integer comparisons only (cheap
    enough to call per query and per block of training sequences).

    Args:
        concepts: ``[n, T]`` concept ids (see :class:`bifrepro.data.text.TokenizedSequences`).
        surfaces: ``[n, T]`` normalised surface forms (strings, e.g. ``"three"``).
        concept_names: concept id → string.
        base_valid: ``[n, T]`` candidate tokens before scope/form (real tokens, position > 0).
    """

    def __init__(
        self,
        concepts: torch.Tensor,
        surfaces: np.ndarray,
        concept_names: list[str],
        base_valid: torch.Tensor,
    ) -> None:
        if tuple(concepts.shape) != tuple(surfaces.shape) or concepts.shape != base_valid.shape:
            raise ValueError(
                "concepts, surfaces and base_valid must all be [n, T]; got "
                f"{tuple(concepts.shape)}, {tuple(surfaces.shape)}, {tuple(base_valid.shape)}"
            )
        self.concept_names = list(concept_names)
        self.categories = sorted({concept_category(c) for c in concept_names})
        cat_of = np.array(
            [self.categories.index(concept_category(c)) for c in concept_names] + [-1, -1]
        )
        self.conc = concepts.numpy().astype(np.int64)
        self.cat = cat_of[self.conc]  # ids -1 / -2 index the two trailing -1 entries
        self.surface_vocab, inverse = np.unique(
            np.asarray(surfaces, dtype=str), return_inverse=True
        )
        self.surf = inverse.reshape(self.conc.shape)
        self.base_valid = base_valid.numpy().astype(bool) & (self.conc != AMBIGUOUS)

    def _surface_id(self, surface: str) -> int:
        i = int(np.searchsorted(self.surface_vocab, surface))
        return i if i < len(self.surface_vocab) and self.surface_vocab[i] == surface else -1

    def masks(
        self,
        query_concept: str,
        query_surface: str,
        scope: str = "all",
        form: str = "any",
        rows: slice | np.ndarray = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(relevant, valid)`` bool masks over the training tokens ``[rows, T]``.

        ``scope="category"`` for a category-level concept (every candidate would be relevant) gives
        empty masks, i.e. the query does not count for that combination.
        """
        if scope not in SCOPES or form not in FORMS:
            raise ValueError(f"scope must be in {SCOPES}, form in {FORMS}; got {scope!r}, {form!r}")
        cat_name = concept_category(query_concept)
        conc, cat, valid = self.conc[rows], self.cat[rows], self.base_valid[rows].copy()
        cat_id = self.categories.index(cat_name) if cat_name in self.categories else -2
        if cat_name in CATEGORY_LEVEL:
            if scope == "category":
                empty = torch.zeros(conc.shape, dtype=torch.bool)
                return empty, empty.clone()
            relevant = cat == cat_id
        else:
            cid = (
                self.concept_names.index(query_concept)
                if query_concept in self.concept_names
                else -3
            )
            relevant = conc == cid
        if scope == "category":
            valid &= cat == cat_id
        if form == "other":
            valid &= self.surf[rows] != self._surface_id(query_surface)
        return torch.from_numpy(relevant & valid), torch.from_numpy(valid)
