"""Token-level BIF on a Hugging Face causal language model (Kreer et al., poster's language panel).

BIF records per-token losses on every posterior draw, so it attributes at token granularity for
free. This experiment

1. builds the embedded corpus (:mod:`bifrepro.data.text`: generated English/French template text
   with known token links, mixed with natural English news text) and a byte-level BPE tokenizer;
2. gets a causal LM: the embedded Llama/GPT-NeoX model trained here and cached
   (``save_pretrained`` → ``from_pretrained``), or any Hugging Face model (``model.name_or_path``);
3. samples SGLD around it, recording per-token losses of the observed training sequences and of
   the queries on disk (:func:`bifrepro.attribution.token_bif.sample_token_traces`);
4. draws the poster's examples (numbers, elle → she, répondu → answered, countries, bank senses,
   if → then) as PNGs and one HTML page;
5. scores token attribution against the generator's ground truth: precision@k and MRR of linked
   training tokens for BIF and EK-FAC per token (kronfluence), and per training *sequence* for
   BIF, EK-FAC and GradSim (GradSim has no per-token variant here).

Outputs (``results/language/``): ``fig_<example>.png``, ``language_tokens.html``,
``benchmark.csv`` (every method × level × scope × form × category), ``benchmark_summary.csv``,
``per_query.csv``, ``metrics.json``; the same to MLflow. The comparison with devinterp's ``bif()``
is ``bench/bench_devinterp.py`` (``make reproduce-language`` runs both).

Run: ``python -m experiments.language experiment=language [key=value ...]``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import TensorDataset
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution.base import CausalLMTask
from bifrepro.attribution.configs import EKFACConfig, GradSimConfig
from bifrepro.attribution.token_bif import TokenBIF, sample_token_traces, sequence_loss
from bifrepro.config import ConfigError, register_configs, validate_config
from bifrepro.data.text import (
    CATEGORY_LEVEL,
    POSTER_EXAMPLES,
    TextCorpusConfig,
    TokenizedSequences,
    build_corpus,
    concept_category,
    pack_documents,
)
from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer, texts_fingerprint
from bifrepro.evaluation.token_metrics import (
    FORMS,
    SCOPES,
    BlockwiseRanking,
    RankingResult,
    TokenLinks,
)
from bifrepro.io import atomic_save_figure, atomic_write_csv, atomic_write_json, atomic_write_text
from bifrepro.models.lm import CausalLMConfig, embedded_causal_lm, load_causal_lm
from bifrepro.plots.tokens import TokenPanel, TokenRow, plot_token_panels, token_panels_html
from bifrepro.sampling import CalibrationConfig, CalibrationReport, SGLDConfig, resolve_sampler
from bifrepro.sampling.health import assess_traces
from bifrepro.tracking import start_run
from experiments import CONF_DIR, output_dir

__all__ = [
    "LanguageConfig",
    "LanguageSetup",
    "setup_language",
    "calibrate_sampler",
    "run",
    "main",
    "FIGURES",
]

log = logging.getLogger(__name__)

_METHODS = ("bif", "ekfac", "gradsim")
#: figure file -> poster examples shown in it (panels)
FIGURES: dict[str, tuple[str, ...]] = {
    "fig_numbers.png": ("numbers", "numbers_five"),
    "fig_elle.png": ("elle",),
    "fig_repondu.png": ("repondu",),
    "fig_countries.png": ("countries",),
    "fig_bank.png": ("bank_finance", "bank_river"),
    "fig_if_then.png": ("if_then",),
}


@dataclass
class LanguageConfig:
    """Settings of ``experiments/language.py``."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "language"
    #: Tokens per sequence (training and query sequences are padded to it).
    seq_len: int = 48
    #: Training sequences whose per-token losses are observed (SGLD uses all of them).
    num_observed: int = 320
    #: Share of observed sequences drawn from those with labelled template text.
    template_fraction: float = 0.8
    #: BIF estimator: "correlation" (Pearson; ranks best) or "covariance" (+Cov).
    normalize: str = "correlation"
    #: Remove each chain's linear trend per token before scoring.
    detrend: bool = False
    #: Parameters kept fixed at w* while sampling (name substrings, e.g. [embed_tokens, lm_head]):
    #: the posterior is then over the rest only (like devinterp's param_masks).
    frozen: list[str] = field(default_factory=list)
    #: k of precision@k.
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    #: Methods in the ground-truth benchmark (bif, ekfac, gradsim).
    methods: list[str] = field(default_factory=lambda: list(_METHODS))
    #: kronfluence settings (per_token is forced to "train").
    ekfac: EKFACConfig = field(default_factory=EKFACConfig)
    #: GradSim settings (sequence level).
    gradsim: GradSimConfig = field(default_factory=GradSimConfig)
    #: Training sequences shown per example in the PNGs / in the HTML page.
    rows_per_example: int = 3
    html_rows: int = 6
    #: Training sequences per block of the per-token BIF (null: ~256 MB of centred traces).
    block_size: int | None = None
    #: Cache for tokenizer, model and traces (null: results_dir/cache/language).
    cache_dir: str | None = None
    #: Output folder (null: results_dir/<name>).
    output_dir: str | None = None
    #: Torch device.
    device: str = "cpu"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"LanguageConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        if not isinstance(self.seq_len, int) or self.seq_len < 4:
            bad("seq_len", "must be an integer >= 4")
        if not isinstance(self.num_observed, int) or self.num_observed < 2:
            bad("num_observed", "must be an integer >= 2")
        if not 0.0 <= self.template_fraction <= 1.0:
            bad("template_fraction", "must be in [0, 1]")
        if self.normalize not in ("correlation", "covariance"):
            bad("normalize", "must be 'correlation' or 'covariance'")
        if not self.ks or min(self.ks) < 1:
            bad("ks", "must be a non-empty list of integers >= 1")
        unknown = sorted(set(self.methods) - set(_METHODS))
        if unknown or "bif" not in self.methods:
            bad("methods", f"must include 'bif' and only name {list(_METHODS)}")
        if isinstance(self.ekfac, dict):
            self.ekfac = EKFACConfig(**self.ekfac)
        if isinstance(self.gradsim, dict):
            self.gradsim = GradSimConfig(**self.gradsim)
        if self.rows_per_example < 1 or self.html_rows < 1:
            bad("rows_per_example" if self.rows_per_example < 1 else "html_rows", "must be >= 1")


_REGISTERED = False


def register_language_configs() -> None:
    """Store the schemas of this experiment's config groups in Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    register_configs()
    cs = ConfigStore.instance()
    cs.store(group="data", name="text_schema", node=TextCorpusConfig)
    cs.store(group="model", name="causal_lm_schema", node=CausalLMConfig)
    cs.store(group="experiment_schema", name="language_schema", node=LanguageConfig)
    _REGISTERED = True


register_language_configs()


# -- data and model -------------------------------------------------------------------------------


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


def _seq_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _choose_observed(
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


def _setup(
    data_cfg: TextCorpusConfig,
    model_cfg: CausalLMConfig,
    exp: LanguageConfig,
    cache_dir: Path,
    seed: int,
) -> LanguageSetup:
    corpus = build_corpus(data_cfg)
    device = torch.device(exp.device)
    info: dict[str, Any] = {}
    concept_index: dict[str, int] = {}
    if model_cfg.is_embedded:
        texts = corpus.all_texts() + [e.text.text for e in corpus.examples]
        tok, tok_path = load_or_train_tokenizer(texts, cache_dir, model_cfg.vocab_size)
        train = pack_documents(corpus.train, tok, exp.seq_len, concept_index)
        data_key = f"{tok_path.name}-{_seq_fingerprint(train.input_ids, train.attention_mask)}"
        t0 = time.perf_counter()
        model, path, summary = embedded_causal_lm(
            model_cfg, tok, train.input_ids, train.attention_mask, cache_dir, data_key, device,
            exp.progress,
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
        train = pack_documents(corpus.train, tok, exp.seq_len, concept_index)
        info.update(
            model_path=str(model_cfg.name_or_path),
            display_name=str(model_cfg.name_or_path)
            + (f"@{model_cfg.revision}" if model_cfg.revision else ""),
            num_parameters=sum(p.numel() for p in model.parameters()),
        )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and exp.seq_len > max_pos:
        raise ConfigError(
            f"experiment.seq_len={exp.seq_len} is invalid: the model takes at most {max_pos} tokens"
        )
    query_docs = [e.text for e in corpus.examples] + corpus.queries
    queries = pack_documents(query_docs, tok, exp.seq_len, concept_index, pack=False)
    train.concept_names = queries.concept_names  # one shared, complete id -> concept table
    idx = _choose_observed(train, exp.num_observed, exp.template_fraction, seed)
    return LanguageSetup(model, tok, train, idx, train.subset(idx), queries, info)


def _validated(cfg: DictConfig) -> Any:
    register_language_configs()
    groups = ("data", "model", "sampler", "tracking", "experiment", "calibration")
    vc = validate_config(cfg, groups=groups)
    if not isinstance(vc.experiment, LanguageConfig):
        raise ConfigError("experiment: expected the language schema (experiment=language)")
    if not isinstance(vc.data, TextCorpusConfig) or not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("data / model: expected data=text and model=small_lm (or pythia)")
    if vc.experiment.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"experiment.device={vc.experiment.device!r} is invalid: CUDA is not available"
        )
    return vc


def _cache_dir(exp: LanguageConfig, results_dir: Path) -> Path:
    if exp.cache_dir:
        return Path(exp.cache_dir).expanduser().resolve()
    return results_dir / "cache" / "language"


def setup_language(cfg: DictConfig) -> LanguageSetup:
    """Corpus, tokenizer and model of a composed ``experiment=language`` config (cached).

    Also used by ``bench/bench_devinterp.py`` so the benchmark runs on the very same model.
    """
    vc = _validated(cfg)
    return _setup(
        vc.data, vc.model, vc.experiment, _cache_dir(vc.experiment, vc.results_dir), vc.seed
    )


def _surfaces(tokenizer: Any, ids: torch.Tensor) -> np.ndarray:
    """Normalised surface form (stripped, lower case) of every token in ``ids``."""
    vocab = sorted(set(ids.unique().tolist()))
    table = {i: tokenizer.decode([i]).strip().lower() for i in vocab}
    flat = np.array([table[i] for i in ids.reshape(-1).tolist()], dtype=object)
    return flat.reshape(tuple(ids.shape)).astype(str)


@dataclass
class _QueryToken:
    seq: int
    pos: int
    concept: str
    surface: str
    example: str | None
    #: the concept (category for countries, cities, names) occurs earlier in the query, e.g. the
    #: "3" of "Marie a trois pommes. Marie has 3 apples.": its prediction can use the link
    cued: bool = False


def _query_tokens(s: LanguageSetup) -> list[_QueryToken]:
    """Every labelled query token (the benchmark's queries); poster examples are flagged."""
    q = s.queries
    surf = _surfaces(s.tokenizer, q.input_ids)
    out = []
    for i in range(len(q)):
        example = POSTER_EXAMPLES[i].name if i < len(POSTER_EXAMPLES) else None
        earlier: set[str] = set()
        for pos, word in enumerate(surf[i].tolist()):
            cid = int(q.concepts[i, pos])
            concept = q.concept_names[cid] if cid >= 0 else None
            key = _link_key(concept) if concept else None
            if example is not None:
                # poster examples label only their focus word: cue = its translation earlier on
                cued = POSTER_EXAMPLES[i].text.text.count(".") > 1
            else:
                cued = key in earlier
            if concept is not None and pos > 0:
                if example is None or concept == POSTER_EXAMPLES[i].focus_concept:
                    out.append(_QueryToken(i, pos, concept, str(word), example, cued))
            if key is not None:
                earlier.add(key)
    return out


def _link_key(concept: str) -> str:
    cat = concept_category(concept)
    return cat if cat in CATEGORY_LEVEL else concept


# -- benchmark -----------------------------------------------------------------------------------


def _links(s: LanguageSetup) -> TokenLinks:
    obs = s.observed
    base = obs.attention_mask.bool().clone()
    base[:, 0] = False
    return TokenLinks(obs.concepts, _surfaces(s.tokenizer, obs.input_ids), obs.concept_names, base)


def _stack_masks(
    links: TokenLinks, qts: list[_QueryToken], scope: str, form: str, rows: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    rel, val = zip(
        *(links.masks(q.concept, q.surface, scope, form, rows) for q in qts), strict=True
    )
    return torch.stack(rel).flatten(1), torch.stack(val).flatten(1)


def _bif_token_ranking(
    tb: TokenBIF, links: TokenLinks, qts: list[_QueryToken], ks: tuple[int, ...]
) -> dict[tuple[str, str], RankingResult]:
    """Exact precision@k / MRR over all training tokens, two passes over blocks (never the full matrix)."""
    pairs = [(q.seq, q.pos) for q in qts]
    combos = [(sc, fo) for sc in SCOPES for fo in FORMS]
    acc = {c: BlockwiseRanking(len(qts), ks) for c in combos}
    for phase in ("update", "count"):
        for start, stop, block in tb.iter_blocks(pairs):
            flat = block.reshape(len(qts), -1)
            for c in combos:
                rel, val = _stack_masks(links, qts, *c, slice(start, stop))
                getattr(acc[c], phase)(flat, rel, val)
    return {c: a.result() for c, a in acc.items()}


def _dense_ranking(
    scores: torch.Tensor,
    links: TokenLinks,
    qts: list[_QueryToken],
    ks: tuple[int, ...],
    level: str,
) -> dict[tuple[str, str], RankingResult]:
    """Rankings of dense scores ``[q, n, T]`` (token level) or ``[q, n]`` (sequence level)."""
    from bifrepro.evaluation.token_metrics import ranking_metrics

    out = {}
    for sc in SCOPES:
        for fo in FORMS:
            rel, val = _stack_masks(links, qts, sc, fo, slice(None))
            if level == "sequence":
                n = scores.shape[1]
                rel, val = rel.view(len(qts), n, -1).any(-1), val.view(len(qts), n, -1).any(-1)
                out[(sc, fo)] = ranking_metrics(scores, rel, val, ks)
            else:
                out[(sc, fo)] = ranking_metrics(scores.reshape(len(qts), -1), rel, val, ks)
    return out


def _query_token_dataset(s: LanguageSetup, qts: list[_QueryToken]) -> TensorDataset:
    """One item per query token: its sentence with labels kept only at that token."""
    ids = s.queries.input_ids[[q.seq for q in qts]]
    mask = s.queries.attention_mask[[q.seq for q in qts]]
    labels = torch.full_like(ids, -100)
    for r, q in enumerate(qts):
        labels[r, q.pos] = ids[r, q.pos]
    return TensorDataset(ids, mask, labels)


def _run_baselines(
    s: LanguageSetup, exp: LanguageConfig, qts: list[_QueryToken]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """EK-FAC per training token and GradSim per training sequence, for every query token."""
    from bifrepro.attribution.ekfac import EKFACAttributor
    from bifrepro.attribution.gradsim import GradSimAttributor

    task = CausalLMTask(reduction="sum")  # per-token losses are raw NLLs, as BIF observes
    queries = _query_token_dataset(s, qts)
    train = s.observed.dataset()
    scores: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    if "ekfac" in exp.methods:
        cfg = dataclasses.replace(exp.ekfac, per_token="train")
        att = EKFACAttributor(cfg).fit(s.model, task, train)
        scores["ekfac"] = att.score(queries)  # [q, n, T]
        metrics.update(att.timings.to_metrics("timing/ekfac/"))
    if "gradsim" in exp.methods:
        att = GradSimAttributor(exp.gradsim).fit(s.model, task, train)
        scores["gradsim"] = att.score(queries)  # [q, n]
        metrics.update(att.timings.to_metrics("timing/gradsim/"))
    return scores, metrics


def _tables(
    results: dict[tuple[str, str], dict[tuple[str, str], RankingResult]],
    qts: list[_QueryToken],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long benchmark table (every category) and per-query reciprocal ranks."""
    cats = np.array([concept_category(q.concept) for q in qts])
    cued = np.array([q.cued for q in qts])
    subsets = {"all": np.ones(len(qts), bool), "cued": cued, "uncued": ~cued}
    rows, per_query = [], {}
    for (method, level), combos in results.items():
        for (scope, form), res in combos.items():
            for subset, in_subset in subsets.items():
                for cat in ["all", *sorted(set(cats))]:
                    sel = in_subset & (True if cat == "all" else cats == cat)
                    summ = res.summary(sel)
                    if summ["num_queries"] == 0:
                        continue
                    key = {"method": method, "level": level, "scope": scope, "form": form}
                    rows.append(key | {"subset": subset, "category": cat} | summ)
            per_query[f"rr_{method}_{level}_{scope}_{form}"] = res.reciprocal_rank
    table = pd.DataFrame(rows)
    pq = pd.DataFrame(
        {
            "query_seq": [q.seq for q in qts],
            "position": [q.pos for q in qts],
            "concept": [q.concept for q in qts],
            "surface": [q.surface for q in qts],
            "example": [q.example or "" for q in qts],
            "cued": [q.cued for q in qts],
        }
        | per_query
    )
    return table, pq


# -- figures ---------------------------------------------------------------------------------------


def _decode_tokens(tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    n = int(mask.sum())
    return [tokenizer.decode([int(i)]) for i in ids[:n].tolist()]


def _example_panels(
    s: LanguageSetup, tb: TokenBIF, qts: list[_QueryToken], n_rows: int, est: str
) -> dict[str, TokenPanel]:
    """Per poster example: query (focus token) and the training sequences of its top tokens."""
    panels = {}
    base = s.observed.attention_mask.bool().clone()
    base[:, 0] = False
    for ex in POSTER_EXAMPLES:
        q = next((q for q in qts if q.example == ex.name), None)
        if q is None:
            log.warning("poster example %r has no labelled query token; skipped", ex.name)
            continue
        top = tb.topk([(q.seq, q.pos)], k=max(50, 10 * n_rows), valid=base)
        seqs: list[int] = []
        best: dict[int, tuple[int, float]] = {}
        shown: set[str] = set()
        for sq, ps, v in zip(
            top.seq[0].tolist(), top.pos[0].tolist(), top.values[0].tolist(), strict=True
        ):
            if sq < 0:
                break
            text = s.observed.texts[sq]
            if sq not in best and text not in shown:  # identical duplicates add nothing
                best[sq] = (ps, v)
                seqs.append(sq)
                shown.add(text)
            if len(seqs) == n_rows:
                break
        scores = tb.scores([(q.seq, q.pos)], seqs)[0] if seqs else torch.empty(0, 0)
        rows = []
        for r, sq in enumerate(seqs):
            ids, mask = s.observed.input_ids[sq], s.observed.attention_mask[sq]
            toks = _decode_tokens(s.tokenizer, ids, mask)
            ps, v = best[sq]
            rows.append(
                TokenRow(
                    f"#{r + 1}  training sequence {int(s.observed_index[sq])}: top token "
                    f"{toks[ps].strip()!r}, {est} {v:+.3f}",
                    toks,
                    scores[r, : len(toks)].numpy(),
                )
            )
        qids, qmask = s.queries.input_ids[q.seq], s.queries.attention_mask[q.seq]
        panels[ex.name] = TokenPanel(
            f"{ex.description}   (query token {q.surface!r})",
            _decode_tokens(s.tokenizer, qids, qmask),
            q.pos,
            rows,
        )
    return panels


# -- run ---------------------------------------------------------------------------------------------


def _with_frozen(model: torch.nn.Module, frozen: list[str]) -> torch.nn.Module:
    """The model itself, or a copy whose parameters matching ``frozen`` do not require grad."""
    if not frozen:
        return model
    work = copy.deepcopy(model)
    names = [n for n, p in work.named_parameters() if any(f in n for f in frozen)]
    if not names:
        raise ConfigError(f"experiment.frozen={frozen} matches no parameter of the model")
    for n, p in work.named_parameters():
        if n in names:
            p.requires_grad_(False)
    log.info("sampling with %d parameter tensors frozen at w*: %s", len(names), names)
    return work


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
    loss of :func:`sample_token_traces`). The pilots observe per-sequence losses (mean over the
    predicted tokens) of a seeded subset of training sequences and of the queries: the health rules
    judge items, and a sequence's mean is what its per-token traces average to.
    """
    sampler, report = resolve_sampler(
        sampler,
        dataclasses.replace(calibration, enabled=True),
        sampled,
        sequence_loss,
        s.train.dataset(),
        query_data=s.queries.dataset(),
        query_loss_fn=sequence_loss,
        n_query=len(s.queries),
        n_observed=len(s.observed) + len(s.queries),  # sequences scored per draw (cost)
        progress=progress,
    )
    assert report is not None
    return sampler, report


def _output_dir(exp: LanguageConfig, results_dir: Path) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(exp.output_dir, results_dir, exp.name)


def _relative(path: str, results_dir: Path) -> str:
    """``path`` relative to ``results_dir`` when it lies inside (committed files hold no local paths)."""
    try:
        return str(Path(path).resolve().relative_to(results_dir.resolve()))
    except ValueError:
        return str(path)


def _significant(df: pd.DataFrame, digits: int = 5) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [float(f"{x:.{digits}g}") if np.isfinite(x) else x for x in out[col]]
    return out


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the language experiment described by ``cfg``; returns the summary metrics."""
    t_start = time.perf_counter()
    vc = _validated(cfg)
    exp: LanguageConfig = vc.experiment
    sampler: SGLDConfig = vc.sampler
    out_dir = _output_dir(exp, vc.results_dir)
    cache_dir = _cache_dir(exp, vc.results_dir)
    ks = tuple(sorted({int(k) for k in exp.ks}))
    torch.manual_seed(vc.seed)
    metrics: dict[str, float] = {}
    with logging_redirect_tqdm(), start_run(cfg, tags={"device": exp.device}) as tracker:
        s = _setup(vc.data, vc.model, exp, cache_dir, vc.seed)
        obs, qs = s.observed, s.queries
        log.info(
            "corpus: %d training sequences (%d observed) x %d tokens, %d query sentences; model %s",
            len(s.train), len(obs), exp.seq_len, len(qs), s.model_info["model_path"],
        )  # fmt: skip

        sampled = _with_frozen(s.model, exp.frozen)
        num_sampled = sum(p.numel() for p in sampled.parameters() if p.requires_grad)
        calibration_summary = None
        if vc.calibration.enabled:  # sampler=auto / calibration=auto
            sampler, report = calibrate_sampler(s, sampled, sampler, vc.calibration, exp.progress)
            metrics.update(report.record(tracker, out_dir / "calibration"))
            calibration_summary = report.summary()

        # 1. per-token loss traces on disk (resumable)
        key = texts_fingerprint(
            [s.model_info["model_path"], sampler.fingerprint(), *sorted(exp.frozen)],
            data=_seq_fingerprint(s.train.input_ids, obs.input_ids, qs.input_ids),
            weights=_seq_fingerprint(*[p.detach().cpu() for p in list(s.model.parameters())[:2]]),
        )
        traces_dir = cache_dir / f"traces-{key}"
        t0 = time.perf_counter()
        traces = sample_token_traces(
            sampled, obs.dataset(), qs.dataset(), sampler, sgld_data=s.train.dataset(),
            out_dir=traces_dir, progress=exp.progress,
        )  # fmt: skip
        metrics["timing/bif/sampling_seconds"] = time.perf_counter() - t0
        diag = traces.diagnostics
        metrics.update(diag.to_metrics("chain/"))
        # every rule of bifrepro.sampling.health (trend, R-hat, ESS, distance, loss, trend share)
        thresholds = vc.calibration.thresholds
        health = assess_traces(traces, num_params=num_sampled, thresholds=thresholds)
        metrics.update(health.to_metrics("health/"))
        healthy = bool(diag.is_healthy) and health.is_healthy
        if not healthy:
            log.warning("BIF chains are not healthy: %s | %s", diag.summary(), health.summary())
        tb = TokenBIF.from_traces(
            traces, normalize=exp.normalize, block_size=exp.block_size, detrend=exp.detrend
        )
        draws = sampler.num_chains * sampler.num_draws
        note = (
            f"BIF ({exp.normalize}, {draws} draws = {sampler.num_chains} chains x "
            f"{sampler.num_draws}; {'chains healthy' if healthy else 'chains NOT healthy'})"
        )

        # 2. ground-truth benchmark
        qts = _query_tokens(s)
        links = _links(s)
        t0 = time.perf_counter()
        results: dict[tuple[str, str], dict[tuple[str, str], RankingResult]] = {}
        results[("bif", "token")] = _bif_token_ranking(tb, links, qts, ks)
        pairs = [(q.seq, q.pos) for q in qts]
        results[("bif", "sequence")] = _dense_ranking(
            tb.sequence_scores(pairs), links, qts, ks, "sequence"
        )
        metrics["timing/bif/benchmark_seconds"] = time.perf_counter() - t0
        base_scores, timing = _run_baselines(s, exp, qts)
        metrics.update(timing)
        if "ekfac" in base_scores:
            results[("ekfac", "token")] = _dense_ranking(
                base_scores["ekfac"], links, qts, ks, "token"
            )
            results[("ekfac", "sequence")] = _dense_ranking(
                base_scores["ekfac"].sum(-1), links, qts, ks, "sequence"
            )
        if "gradsim" in base_scores:
            results[("gradsim", "sequence")] = _dense_ranking(
                base_scores["gradsim"], links, qts, ks, "sequence"
            )
        table, per_query = _tables(results, qts)
        overall = table[table.category == "all"].reset_index(drop=True)
        for r in overall.itertuples():
            sub = "" if r.subset == "all" else f"{r.subset}/"
            prefix = f"{r.level}/{r.method}/{sub}{r.scope}_{r.form}/"
            for k in ks:
                metrics[prefix + f"precision_at_{k}"] = float(getattr(r, f"precision_at_{k}"))
            metrics[prefix + "mrr"] = float(r.mrr)
            metrics[prefix + "chance_precision"] = float(r.chance_precision)

        # 3. figures and HTML
        est = "corr" if exp.normalize == "correlation" else "cov"
        panels = _example_panels(s, tb, qts, max(exp.rows_per_example, exp.html_rows), est)
        figures = {}
        for fname, names in FIGURES.items():
            ps = [
                dataclasses.replace(panels[n], rows=panels[n].rows[: exp.rows_per_example])
                for n in names
                if n in panels
            ]
            if ps:
                figures[fname] = plot_token_panels(
                    ps,
                    f"Token-level {note}\nmodel: {s.model_info['display_name']}; "
                    "training sequences holding the query token's best-scoring tokens",
                    score_label=f"{exp.normalize} with the query token",
                )
        page = token_panels_html(
            [
                (f"{fname}: {', '.join(names)}", [panels[n] for n in names if n in panels])
                for fname, names in FIGURES.items()
            ],
            "Token-level BIF: poster examples",
            intro=f"{note}. Model {s.model_info['display_name']}. SGLD ε={sampler.step_size:g}, "
            f"nβ={sampler.nbeta:g}, γ={sampler.localization:g}, preconditioner "
            f"{sampler.preconditioner}. {diag.summary()}. {health.summary()}",
            score_label=f"{exp.normalize} with the query token",
        )

        metrics["num_query_tokens"] = float(len(qts))
        metrics["num_observed_sequences"] = float(len(obs))
        metrics["num_observed_tokens"] = float(obs.attention_mask.sum())
        metrics["chains_healthy"] = float(healthy)
        metrics["num_sampled_parameters"] = float(num_sampled)
        metrics["sampler/step_size"] = float(sampler.step_size)
        metrics["sampler/nbeta"] = float(sampler.nbeta)
        metrics["sampler/localization"] = float(sampler.localization)
        for k in ("lm_train_seconds", "lm_final_loss", "lm_first_loss", "num_parameters"):
            if k in s.model_info:
                metrics[k] = float(s.model_info[k])
        metrics["wall_seconds"] = time.perf_counter() - t_start

        out_dir.mkdir(parents=True, exist_ok=True)
        for fname, fig in figures.items():
            atomic_save_figure(fig, out_dir / fname)
            tracker.log_figure(fig, f"figures/{fname}")
            fig.clear()
        atomic_write_text(out_dir / "language_tokens.html", page)
        tables = {
            "benchmark.csv": table,
            "benchmark_summary.csv": overall,
            "per_query.csv": per_query,
        }
        for name, df in tables.items():
            atomic_write_csv(_significant(df), out_dir / name)
        summary = {
            "metrics": metrics,
            "chain_summary": diag.summary(),
            "health_summary": health.summary(),
            "calibration_summary": calibration_summary,
            "note": note,
            "model": {
                k: _relative(v, vc.results_dir) if k == "model_path" else v
                for k, v in s.model_info.items()
                if k != "lm_loss_curve"
            },
            "lm_loss_curve": s.model_info.get("lm_loss_curve"),
            "traces_dir": _relative(str(traces_dir), vc.results_dir),
            "config": {
                "sampler": sampler.to_dict(),
                "experiment": json.loads(json.dumps(dataclasses.asdict(exp), default=str)),
                "data": dataclasses.asdict(vc.data),
                "model": json.loads(json.dumps(dataclasses.asdict(vc.model), default=str)),
                "seed": vc.seed,
            },
        }
        atomic_write_json(summary, out_dir / "metrics.json")
        tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        tracker.set_tags(
            {
                "chains_healthy": healthy,
                "bif_estimator": exp.normalize,
                "sampler_calibrated": calibration_summary is not None,
            }
        )
        for name in (*tables, "metrics.json", "language_tokens.html"):
            tracker.log_artifact(out_dir / name, "tables")
    log.info(
        "language done in %.1fs: token P@%d (all, other form) BIF %.3f, EK-FAC %.3f -> %s",
        metrics["wall_seconds"],
        ks[-1],
        metrics.get(f"token/bif/all_other/precision_at_{ks[-1]}", math.nan),
        metrics.get(f"token/ekfac/all_other/precision_at_{ks[-1]}", math.nan),
        out_dir,
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns BIF's token-level MRR (cross-form links) for sweepers."""
    return run(cfg)["token/bif/all_other/mrr"]


if __name__ == "__main__":
    main()
