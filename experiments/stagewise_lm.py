"""Stagewise influence in a language model: per-token BIF across training checkpoints (Lee et al.,
*Influence Dynamics and Stagewise Data Attribution*, language-model claim).

Claim under test: token-level influence changes over training, and the changes line up with
developmental stages such as the formation of induction heads. Pipeline (same corpus, tokenizer,
models and per-token BIF as ``experiments/language.py``):

1. **train** — the embedded causal LM is trained with ``save_pretrained`` snapshots on a
   log-spaced grid of steps (resumable); a Pythia-style run instead names its checkpoints as
   Hugging Face ``revision``s (``step1000`` …) or as sub-folders of a local run, all loaded through
   ``from_pretrained``.
2. **checkpoint** (one independent job per checkpoint) — at the checkpoint ``w*_t``: the induction
   score (repeated random tokens), the loss at ``w*_t``, SGLD localised at ``w*_t`` recording
   per-token losses of fixed query and training sequences (on disk, resumable), the class x class
   per-token BIF (delimiters, word parts, induction-completing tokens, numbers, other), the LLC
   from the same draws and a panel of token-pair scores. One result file per checkpoint.
3. **merge** — reads every checkpoint's file, detects the stage transitions (induction score, loss
   curve), compares class-level influence before and after the induction transition, picks token
   pairs whose influence changes sign, and writes figures, tables, ``metrics.json`` and MLflow.

Chain health: every checkpoint records the basic diagnostics (trend, R-hat) and every rule of
:mod:`bifrepro.sampling.health` (``health/*``; thresholds ``calibration.thresholds``); a checkpoint
is healthy only if both pass, and unhealthy ones are drawn hollow.

``calibration=auto``: the SGLD step size is calibrated once, at the last checkpoint, and used at
every checkpoint. The first job that needs it (the training job, or the first checkpoint job)
computes it into ``<work_dir>/calibration/cal-<key>/`` (``sampler.json`` + the report's files);
later jobs read it (jobs started together each compute it: the same, seeded, result, written
atomically). Checkpoint results are keyed by the sampler actually used
(``checkpoints/`` for the configured one, ``checkpoints-<fingerprint>/`` otherwise); the merge
reports the calibration (``calibration/*`` metrics, ``calibration/`` files, figure notes).

``experiment.mode=all`` (the default, ``make reproduce-stagewise``) does the three in one process.
Scale-out: ``mode=train``, then ``-m experiment.mode=checkpoint 'experiment.checkpoint_index=range(0,N)'``
(locally with ``hydra/launcher=local_parallel`` or on SLURM with ``hydra/launcher=slurm``), then
``mode=merge``. Checkpoint jobs share ``experiment.work_dir`` (a folder keyed by every setting that
changes their numbers), so the merge finds them; a finished checkpoint is never recomputed unless
``experiment.overwrite=true``.

Outputs (``results/stagewise_lm/``): ``fig1_stages.png``, ``fig2_class_influence.png``,
``fig3_token_pairs.png``, ``fig4_class_matrices.png``, ``checkpoints.csv``,
``class_influence.csv``, ``class_changes.csv``, ``token_pairs.csv``, ``training_loss.csv``,
``metrics.json``; the same to MLflow.

Run: ``python -m experiments.stagewise_lm experiment=stagewise_lm [key=value ...]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bifrepro.attribution import bif_scores
from bifrepro.attribution.token_bif import sample_token_traces, sequence_loss
from bifrepro.config import ConfigError, validate_config
from bifrepro.data.text import TextCorpusConfig, build_corpus, pack_documents
from bifrepro.data.token_classes import DEFAULT_PRIORITY, IGNORE, TOKEN_CLASSES, TokenClassifier
from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer
from bifrepro.dynamics import log_spaced_steps, peak_step
from bifrepro.dynamics.lm_stages import (
    ClassInfluence,
    RandomRepeats,
    class_influence,
    detect_transition,
    estimate_llc,
    fastest_drop_steps,
    frequent_token_ids,
    induction_score,
    repeated_random_tokens,
    sign_flips,
)
from bifrepro.io import (
    atomic_save_figure,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
)
from bifrepro.models.lm import CausalLMConfig, embedded_causal_lm, load_causal_lm, snapshot_dir
from bifrepro.plots.stagewise import (
    plot_class_influence,
    plot_class_matrices,
    plot_stages,
    plot_token_pairs,
)
from bifrepro.plots.style import health_note
from bifrepro.sampling import SamplerDivergedError, SGLDConfig
from bifrepro.sampling.calibration import CalibrationConfig, CalibrationReport, resolve_sampler
from bifrepro.sampling.health import HealthThresholds, assess_traces
from bifrepro.traces import LossTraces
from bifrepro.tracking import RunTracker, start_run
from experiments import CONF_DIR, output_dir
from experiments.language import register_language_configs

__all__ = ["StagewiseLMConfig", "run", "main", "FIGURES", "TABLES"]

log = logging.getLogger(__name__)

_MODES = ("all", "train", "checkpoint", "merge")
FIGURES = (
    "fig1_stages.png",
    "fig2_class_influence.png",
    "fig3_token_pairs.png",
    "fig4_class_matrices.png",
)
TABLES = (
    "checkpoints.csv",
    "class_influence.csv",
    "class_changes.csv",
    "token_pairs.csv",
    "training_loss.csv",
    "metrics.json",
)
#: Settings that do not change a checkpoint's numbers (left out of the work-folder key).
_NON_SEMANTIC = (
    "name", "mode", "checkpoint", "checkpoint_index", "checkpoints", "num_checkpoints",
    "first_checkpoint", "num_pairs", "flip_threshold", "allow_missing", "overwrite", "work_dir",
    "cache_dir", "output_dir", "device", "num_threads", "progress",
)  # fmt: skip


@dataclass
class StagewiseLMConfig:
    """Settings of ``experiments/stagewise_lm.py``."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "stagewise_lm"
    #: "all" (train, every checkpoint, merge), "train", "checkpoint" (one job) or "merge".
    mode: str = "all"
    #: mode=checkpoint: the checkpoint label (e.g. step100, a Pythia revision) ...
    checkpoint: str | None = None
    #: ... or its position in the checkpoint list (for sweeps: checkpoint_index=range(0,N)).
    checkpoint_index: int | None = None
    #: Checkpoint labels: Hugging Face revisions (step1000, ...) or, with checkpoint_subfolders,
    #: sub-folders of model.name_or_path. null: log-spaced steps of the embedded training.
    checkpoints: list[str] | None = None
    #: Embedded model: number of log-spaced checkpoints and the first one's step.
    num_checkpoints: int = 10
    first_checkpoint: int = 10
    #: Checkpoint labels are sub-folders of model.name_or_path (a local training run) instead of
    #: revisions of a Hugging Face model.
    checkpoint_subfolders: bool = False
    #: Tokens per sequence.
    seq_len: int = 48
    #: Share of training sequences replaced, in every batch, by fresh synthetic ``[BOS] r r``
    #: sequences of random frequent tokens, so copying from context pays off (0: the language
    #: corpus alone). SGLD data gets a fixed draw of them in the same share.
    repeat_fraction: float = 0.25
    #: Share of query sequences (held-out text) whose first half is repeated as their second half.
    query_repeat_fraction: float = 0.5
    #: Training sequences whose per-token losses are recorded on every draw (SGLD uses all):
    #: corpus sequences and synthetic repeated-token sequences.
    num_observed: int = 48
    num_observed_synthetic: int = 8
    #: Query sequences (held-out text, packed like the training data).
    num_query: int = 24
    #: BIF estimator of the figures: "correlation" or "covariance" (both are stored).
    normalize: str = "correlation"
    #: Contiguous blocks of draws per chain behind the class-level standard errors.
    se_blocks_per_chain: int = 5
    #: Induction probe: sequences, length of the repeated half, and the number of most frequent
    #: training tokens the random tokens are drawn from.
    induction_sequences: int = 64
    induction_half_len: int = 16
    induction_vocab: int = 400
    #: Smallest rise of the induction score (nats) that counts as a transition.
    induction_min_rise: float = 0.3
    #: Token-class tie order (a permutation of delimiter, word_part, induction, number, other).
    token_priority: list[str] = field(default_factory=lambda: list(DEFAULT_PRIORITY))
    #: Token-pair panel stored per checkpoint: every token of the first pair_query_seqs queries
    #: against every token of the first pair_train_seqs observed training sequences.
    pair_query_seqs: int = 4
    pair_train_seqs: int = 8
    #: Token pairs shown in the figure (strongest sign changes).
    num_pairs: int = 4
    #: A curve "changes sign" if both its max and -min exceed this fraction of max |curve|.
    flip_threshold: float = 0.2
    #: Merge even if some checkpoints have no result yet (they are listed in a warning).
    allow_missing: bool = False
    #: Recompute checkpoints whose result file exists.
    overwrite: bool = False
    #: Shared folder of the checkpoint jobs (null: results_dir/cache/stagewise_lm/<settings key>).
    work_dir: str | None = None
    #: Tokenizer and model cache (null: results_dir/cache/stagewise_lm).
    cache_dir: str | None = None
    #: Figures and tables (null: results_dir/<name>, or the Hydra job folder in a multirun).
    output_dir: str | None = None
    #: Torch device.
    device: str = "cpu"
    #: Torch CPU threads (null: torch's default). Tiny models on a shared machine run fastest
    #: with 1: thread synchronisation dominates their small matrix products.
    num_threads: int | None = None
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"StagewiseLMConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        if self.mode not in _MODES:
            bad("mode", f"must be one of {list(_MODES)}")
        if self.checkpoint is not None and self.checkpoint_index is not None:
            bad("checkpoint_index", "set experiment.checkpoint or experiment.checkpoint_index")
        if self.checkpoint_index is not None and self.checkpoint_index < 0:
            bad("checkpoint_index", "must be >= 0")
        if self.checkpoints is not None and (
            not self.checkpoints or len(set(map(str, self.checkpoints))) != len(self.checkpoints)
        ):
            bad("checkpoints", "must be a non-empty list of distinct labels")
        for name, low in (
            ("num_checkpoints", 2), ("first_checkpoint", 1), ("seq_len", 8),
            ("num_observed", 2), ("num_observed_synthetic", 0), ("num_query", 1), ("induction_sequences", 1),
            ("induction_half_len", 2), ("induction_vocab", 2), ("pair_query_seqs", 1),
            ("pair_train_seqs", 1), ("num_pairs", 1), ("se_blocks_per_chain", 1),
        ):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"must be an integer >= {low}")
        if not 0.0 <= self.repeat_fraction < 1.0:
            bad("repeat_fraction", "must be in [0, 1)")
        if not 0.0 <= self.query_repeat_fraction <= 1.0:
            bad("query_repeat_fraction", "must be in [0, 1]")
        if self.normalize not in ("correlation", "covariance"):
            bad("normalize", "must be 'correlation' or 'covariance'")
        if self.induction_vocab < self.induction_half_len:
            bad("induction_vocab", f"must be >= induction_half_len={self.induction_half_len}")
        if not 0.0 <= self.flip_threshold < 1.0:
            bad("flip_threshold", "must be in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            bad("num_threads", "must be >= 1 or null")
        if sorted(self.token_priority) != sorted(TOKEN_CLASSES):
            bad("token_priority", f"must order exactly {list(TOKEN_CLASSES)}")


_REGISTERED = False


def register_stagewise_configs() -> None:
    """Store this experiment's schema (and the language groups it uses) in Hydra's ConfigStore."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    register_language_configs()
    ConfigStore.instance().store(
        group="experiment_schema", name="stagewise_lm_schema", node=StagewiseLMConfig
    )
    _REGISTERED = True


register_stagewise_configs()


# -- data, checkpoints, model ------------------------------------------------------------------


@dataclass
class _Setup:
    """Everything a job needs besides the weights: data, classes, probe, checkpoints, folders."""

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
    labels: list[str]
    steps: list[int]
    work_dir: Path
    cache_dir: Path
    data_key: str
    #: Fingerprint of the configured sampler (its checkpoints live in work_dir/checkpoints).
    sampler_key: str = ""

    @property
    def observed_ids(self) -> torch.Tensor:
        return self.train_ids[torch.as_tensor(self.observed_index)]

    @property
    def observed_mask(self) -> torch.Tensor:
        return self.train_mask[torch.as_tensor(self.observed_index)]


def repeat_halves(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    fraction: float,
    seed: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies where a ``fraction`` of the sequences repeat their first half as their second half.

    A sequence ``[BOS] x_1 … x_{T-1}`` becomes ``[BOS] x_1 … x_k x_1 … x_k`` (``k = (T-1)//2``,
    padded after), so its second half can only be predicted well by copying from context. Only
    sequences with at least ``k`` real tokens after BOS are eligible. Returns the new ids, mask and
    a ``[N]`` bool flag of the repeated sequences.
    """
    ids, mask = input_ids.clone(), attention_mask.clone()
    n, t = ids.shape
    k = (t - 1) // 2
    flags = torch.zeros(n, dtype=torch.bool)
    eligible = torch.nonzero(mask.sum(1) >= 1 + k).flatten()
    want = min(len(eligible), int(round(fraction * n)))
    if want == 0:
        return ids, mask, flags
    g = torch.Generator().manual_seed(int(seed))
    chosen = eligible[torch.randperm(len(eligible), generator=g)[:want]]
    for i in chosen.tolist():
        ids[i, 1 + k : 1 + 2 * k] = ids[i, 1 : 1 + k]
        ids[i, 1 + 2 * k :] = pad_id
        mask[i, : 1 + 2 * k] = 1
        mask[i, 1 + 2 * k :] = 0
        flags[i] = True
    return ids, mask, flags


def checkpoint_step(label: str) -> int:
    """Training step of a checkpoint label: its last integer (``step1000`` -> 1000)."""
    found = re.findall(r"\d+", str(label))
    if not found:
        raise ConfigError(
            f"experiment.checkpoints: cannot read a training step from the label {label!r} "
            "(use labels such as step1000)"
        )
    return int(found[-1])


def _checkpoint_grid(
    exp: StagewiseLMConfig, model_cfg: CausalLMConfig
) -> tuple[list[str], list[int]]:
    if exp.checkpoints is not None:
        labels = [str(c) for c in exp.checkpoints]
        steps = [checkpoint_step(c) for c in labels]
        if model_cfg.is_embedded and any(s < 0 or s > model_cfg.train.steps for s in steps):
            raise ConfigError(
                f"experiment.checkpoints={labels} is invalid: the embedded model trains for "
                f"{model_cfg.train.steps} steps"
            )
    elif model_cfg.is_embedded:
        if exp.first_checkpoint > model_cfg.train.steps:
            raise ConfigError(
                f"experiment.first_checkpoint={exp.first_checkpoint} is invalid: the model "
                f"trains for {model_cfg.train.steps} steps"
            )
        steps = log_spaced_steps(model_cfg.train.steps, exp.num_checkpoints, exp.first_checkpoint)
        labels = [f"step{s}" for s in steps]
    else:
        raise ConfigError(
            "experiment.checkpoints is required for a model that is not trained here "
            "(e.g. Pythia revisions [step1000, step2000, ...]; see conf/experiment/stagewise_lm_pythia.yaml)"
        )
    order = np.argsort(steps, kind="stable")
    return [labels[i] for i in order], [steps[i] for i in order]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _settings_key(vc: Any, exp: StagewiseLMConfig, sampler: SGLDConfig) -> str:
    semantic = {k: v for k, v in dataclasses.asdict(exp).items() if k not in _NON_SEMANTIC}
    return _hash(
        {
            "data": dataclasses.asdict(vc.data),
            "model": json.loads(json.dumps(dataclasses.asdict(vc.model), default=str)),
            "sampler": sampler.fingerprint(),
            "experiment": semantic,
            "seed": vc.seed,
        }
    )


def _tokenizer(corpus_texts: list[str], model_cfg: CausalLMConfig, exp: StagewiseLMConfig,
               cache_dir: Path) -> tuple[Any, str]:  # fmt: skip
    if model_cfg.is_embedded:
        tok, path = load_or_train_tokenizer(corpus_texts, cache_dir, model_cfg.vocab_size)
        return tok, path.name
    root = Path(str(model_cfg.name_or_path)).expanduser()
    if exp.checkpoint_subfolders and not (root / "tokenizer.json").exists():
        first = _checkpoint_grid(exp, model_cfg)[0][0]
        return load_tokenizer(root / first), f"{root}/{first}"
    return load_tokenizer(str(model_cfg.name_or_path)), str(model_cfg.name_or_path)


def _prepare(vc: Any, exp: StagewiseLMConfig, sampler: SGLDConfig) -> _Setup:
    data_cfg: TextCorpusConfig = vc.data
    model_cfg: CausalLMConfig = vc.model
    labels, steps = _checkpoint_grid(exp, model_cfg)
    cache_dir = (
        Path(exp.cache_dir).expanduser().resolve()
        if exp.cache_dir
        else vc.results_dir / "cache" / "stagewise_lm"
    )
    work_dir = (
        Path(exp.work_dir).expanduser().resolve()
        if exp.work_dir
        else cache_dir / f"run-{_settings_key(vc, exp, sampler)}"
    )
    corpus = build_corpus(data_cfg)
    texts = corpus.all_texts() + [e.text.text for e in corpus.examples]
    tok, tok_key = _tokenizer(texts, model_cfg, exp, cache_dir)
    if tok.pad_token_id is None or tok.bos_token_id is None:
        raise ConfigError("the tokenizer needs a BOS and a pad token")
    corpus_seqs = pack_documents(corpus.train, tok, exp.seq_len)
    specials = list(getattr(tok, "all_special_ids", []))
    candidates = frequent_token_ids(
        corpus_seqs.input_ids, corpus_seqs.attention_mask, exp.induction_vocab, exclude=specials
    )
    augment = RandomRepeats(
        candidates, exp.repeat_fraction, tok.bos_token_id, tok.pad_token_id, seed=vc.seed
    )
    # SGLD data: the corpus plus a fixed draw of the synthetic sequences, in the training share
    n_corpus = len(corpus_seqs)
    f = exp.repeat_fraction
    n_synth = round(f / (1 - f) * n_corpus)
    synth_ids, synth_mask = augment.sample(
        n_synth, exp.seq_len, torch.Generator().manual_seed(vc.seed + 1)
    )
    train_ids = torch.cat([corpus_seqs.input_ids, synth_ids])
    train_mask = torch.cat([corpus_seqs.attention_mask, synth_mask])
    synthetic = torch.cat(
        [torch.zeros(n_corpus, dtype=torch.bool), torch.ones(n_synth, dtype=torch.bool)]
    )
    queries = pack_documents(corpus.queries, tok, exp.seq_len)
    q_ids, q_mask, _ = repeat_halves(
        queries.input_ids, queries.attention_mask, exp.query_repeat_fraction, vc.seed + 2,
        tok.pad_token_id,
    )  # fmt: skip
    if len(q_ids) < exp.num_query:
        log.warning(
            "only %d query sequences (experiment.num_query=%d): raise data.num_queries for more",
            len(q_ids), exp.num_query,
        )  # fmt: skip
    q_ids, q_mask = q_ids[: exp.num_query], q_mask[: exp.num_query]
    rng = np.random.default_rng(vc.seed)
    n_obs = min(exp.num_observed, n_corpus)
    n_obs_synth = min(exp.num_observed_synthetic, n_synth)
    observed = np.sort(
        np.concatenate(
            [
                rng.choice(n_corpus, n_obs, replace=False),
                n_corpus + rng.choice(n_synth, n_obs_synth, replace=False),
            ]
        )
    ).astype(np.int64)
    obs_idx = torch.as_tensor(observed)
    classifier = TokenClassifier.from_tokenizer(tok, priority=tuple(exp.token_priority))
    obs_classes = classifier.classify(train_ids[obs_idx], train_mask[obs_idx])
    # synthetic sequences are random tokens: only their induction completions carry a class
    synth_rows = synthetic[obs_idx]
    induction = TOKEN_CLASSES.index("induction")
    obs_classes[synth_rows] = torch.where(obs_classes[synth_rows] == induction, induction, IGNORE)
    probe_ids, probe_mask = repeated_random_tokens(
        candidates, exp.induction_sequences, exp.induction_half_len, tok.bos_token_id,
        vc.seed + 3,
    )  # fmt: skip
    h = hashlib.sha256()
    for t in (corpus_seqs.input_ids, corpus_seqs.attention_mask):
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps(augment.settings(), sort_keys=True).encode())
    data_key = f"{Path(tok_key).name}-{h.hexdigest()[:16]}"
    return _Setup(
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
        labels=labels,
        steps=steps,
        work_dir=work_dir,
        cache_dir=cache_dir,
        data_key=data_key,
        sampler_key=sampler.fingerprint(),
    )


def _training_manifest(s: _Setup) -> Path:
    return s.work_dir / "training.json"


def _train(s: _Setup, model_cfg: CausalLMConfig, exp: StagewiseLMConfig) -> dict[str, Any]:
    """Train the embedded model with a snapshot at every checkpoint step (resumable, cached)."""
    cfg = dataclasses.replace(
        model_cfg,
        train=dataclasses.replace(
            model_cfg.train, save_steps=sorted(set(model_cfg.train.save_steps) | set(s.steps))
        ),
    )
    _, final, summary = embedded_causal_lm(
        cfg, s.tokenizer, s.corpus_ids, s.corpus_mask, s.cache_dir, s.data_key, exp.device,
        exp.progress, batch_transform=s.augment,
    )  # fmt: skip
    run_dir = final.parent / "training"
    state = torch.load(run_dir / "train_state.pt", weights_only=False, map_location="cpu")
    missing = [lab for lab, st in zip(s.labels, s.steps, strict=True)
               if not (snapshot_dir(run_dir, st) / "config.json").exists()]  # fmt: skip
    if missing:
        raise RuntimeError(f"training finished but snapshots {missing} are missing in {run_dir}")
    manifest = {
        "model_dir": str(final),
        "snapshots": {
            lab: str(snapshot_dir(run_dir, st)) for lab, st in zip(s.labels, s.steps, strict=True)
        },
        "loss_curve": [float(x) for x in state["losses"]],
        "train_seconds": float(summary["train_seconds"]),
        "num_parameters": int(summary["num_parameters"]),
        "final_loss": float(summary["final_loss"]),
    }
    atomic_write_json(manifest, _training_manifest(s))
    return manifest


def _load_checkpoint(
    s: _Setup, model_cfg: CausalLMConfig, exp: StagewiseLMConfig, label: str
) -> torch.nn.Module:
    if model_cfg.is_embedded:
        path = _training_manifest(s)
        if not path.exists():
            raise RuntimeError(
                f"no trained snapshots in {s.work_dir}: run `python -m experiments.stagewise_lm "
                "experiment=stagewise_lm experiment.mode=train` (same settings) before the "
                "checkpoint jobs"
            )
        snaps = json.loads(path.read_text())["snapshots"]
        if label not in snaps:
            raise RuntimeError(f"checkpoint {label!r} was not snapshotted (have {sorted(snaps)})")
        return load_causal_lm(snaps[label], dtype=model_cfg.dtype, device=exp.device)
    if exp.checkpoint_subfolders:
        return load_causal_lm(
            Path(str(model_cfg.name_or_path)).expanduser() / label,
            dtype=model_cfg.dtype,
            device=exp.device,
        )
    return load_causal_lm(
        str(model_cfg.name_or_path),
        revision=label,
        dtype=model_cfg.dtype,
        device=exp.device,
        local_files_only=model_cfg.local_files_only,
    )


# -- SGLD calibration (calibration=auto) -----------------------------------------------------------

_CALIBRATED_SAMPLER = "sampler.json"
_CALIBRATION_REPORT = "report.pt"


@dataclass
class _Calibration:
    """The shared outcome of the calibration: the sampler every checkpoint uses, and its evidence."""

    sampler: SGLDConfig
    original: SGLDConfig
    folder: Path
    checkpoint: str
    summary: str
    metrics: dict[str, float]
    #: The full report (None if its pickle could not be read back; the files in folder remain).
    report: CalibrationReport | None = None

    @property
    def note(self) -> str:
        """Figure-note fragment naming the calibrated step size."""
        if not self.metrics.get("calibration/healthy", 0.0):
            return (
                f"ε={self.sampler.step_size:g} kept: the calibration at {self.checkpoint} "
                "found no healthy step"
            )
        if self.sampler.step_size == self.original.step_size:
            return f"ε={self.sampler.step_size:g} confirmed by calibration at {self.checkpoint}"
        return (
            f"ε={self.sampler.step_size:.3g} calibrated at {self.checkpoint} "
            f"(configured {self.original.step_size:g})"
        )

    def record(self, tracker: RunTracker, out_dir: Path) -> dict[str, float]:
        """Save the evidence to ``out_dir/calibration``, log it as artifacts; return the metrics."""
        if self.report is not None:
            return self.report.record(tracker, out_dir / "calibration")
        for src in sorted(self.folder.glob("calibration*")):  # the files report.save wrote
            dest = atomic_write_bytes(out_dir / "calibration" / src.name, src.read_bytes())
            tracker.log_artifact(dest, "calibration")
        return dict(self.metrics)


def _calibration_dir(s: _Setup, cal: CalibrationConfig, sampler: SGLDConfig) -> Path:
    """Folder of the run's calibration in the work dir, keyed by everything that changes it."""
    settings = {k: v for k, v in dataclasses.asdict(cal).items() if k != "enabled"}
    key = _hash({"calibration": settings, "sampler": sampler.fingerprint(), "at": s.labels[-1]})
    return s.work_dir / "calibration" / f"cal-{key}"


def _sgld_dataset(s: _Setup) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(s.train_ids, s.train_mask)


def _calibration(
    s: _Setup,
    model_cfg: CausalLMConfig,
    exp: StagewiseLMConfig,
    sampler: SGLDConfig,
    cal: CalibrationConfig,
    compute: bool = True,
) -> _Calibration | None:
    """The calibrated sampler (``calibration=auto``), computed once and shared by every job.

    The calibration runs at the last checkpoint (the trained model) on what the checkpoint runs
    use: SGLD on the mean sequence loss (mean over each sequence's valid tokens: per-item losses)
    of the SGLD data, pilots observing seeded subsets of the training and query sequences. Its
    result (``sampler.json``, written last) and evidence (``report.save`` files and the pickled
    report) go to a folder of the work dir keyed by the calibration settings; a job reads them
    from there or, if absent, computes them. The calibration is seeded, so jobs that race to
    compute it get the same result, and every file is written atomically. None when disabled.
    """
    if not cal.enabled:
        return None
    folder = _calibration_dir(s, cal, sampler)
    path = folder / _CALIBRATED_SAMPLER
    report: CalibrationReport | None = None
    if path.exists():
        saved = json.loads(path.read_text())
        log.info("SGLD calibration: reusing %s (%s)", folder, saved["summary"])
        try:
            report = torch.load(folder / _CALIBRATION_REPORT, weights_only=False)
        except Exception as err:  # noqa: BLE001 - written by another version of the classes
            log.warning(
                "cannot read the calibration report in %s (%s); using its files", folder, err
            )
        return _Calibration(
            sampler=SGLDConfig.from_mapping(saved["sampler"]), original=sampler, folder=folder,
            checkpoint=saved["checkpoint"], summary=saved["summary"],
            metrics={k: float(v) for k, v in saved["metrics"].items()}, report=report,
        )  # fmt: skip
    if not compute:
        raise RuntimeError(
            f"no SGLD calibration in {folder}: run the checkpoint jobs with the same settings "
            "(calibration=auto) first"
        )
    label = s.labels[-1]
    log.info("calibrating SGLD at the last checkpoint %s (used at every checkpoint)", label)
    model = _load_checkpoint(s, model_cfg, exp, label)
    used, report = resolve_sampler(
        sampler, cal, model, sequence_loss, _sgld_dataset(s),
        query_data=torch.utils.data.TensorDataset(s.query_ids, s.query_mask),
        query_loss_fn=sequence_loss, out_dir=folder, progress=exp.progress,
        n_observed=len(s.observed_ids) + len(s.query_ids),  # sequences scored per draw (cost)
    )  # fmt: skip
    assert report is not None
    atomic_torch_save(report, folder / _CALIBRATION_REPORT)
    metrics = report.to_metrics()
    saved = {
        "sampler": used.to_dict(),
        "original": sampler.to_dict(),
        "checkpoint": label,
        "summary": report.summary(),
        "metrics": metrics,
    }
    atomic_write_json(saved, path)  # last: its presence means the calibration is complete
    return _Calibration(used, sampler, folder, label, report.summary(), metrics, report)


# -- one checkpoint -----------------------------------------------------------------------------


def _result_path(s: _Setup, label: str, sampler: SGLDConfig) -> Path:
    """Result file of a checkpoint, keyed by the sampler actually used: the configured sampler's in
    ``checkpoints/``, any other (a calibrated step size) in ``checkpoints-<its fingerprint>/``, so
    traces of a calibrated and of a hand-picked sampler never mix."""
    fp = sampler.fingerprint()
    root = "checkpoints" if fp == s.sampler_key else f"checkpoints-{fp}"
    return s.work_dir / root / label / "result.pt"


def _num_params(model: torch.nn.Module) -> int:
    """Sampled parameters (those requiring grad): the ``d`` of the health rules."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _add_health(
    result: dict[str, Any],
    traces: LossTraces,
    num_params: int,
    thresholds: HealthThresholds | None,
) -> None:
    """Every chain-health rule (:func:`assess_traces`) next to the basic diagnostics.

    ``healthy`` = the diagnostics' verdict (trend, R-hat) AND every health rule (trend, R-hat,
    ESS, distance, loss rise, trend share).
    """
    diag = traces.diagnostics
    health = assess_traces(traces, num_params, thresholds=thresholds)
    result.update(
        healthy=bool(diag.is_healthy and health.is_healthy),
        diagnostics_healthy=bool(diag.is_healthy),
        health_healthy=bool(health.is_healthy),
        health=health.to_metrics("health/"),
        health_summary=health.summary(),
        health_failed=[c.name for c in health.failed],
        num_params=int(num_params),
    )


def _token_weights(mask: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` weights making ``L_n`` the mean over sequences of their mean token loss."""
    valid = mask.bool().clone()
    valid[:, 0] = False
    w = valid.double()
    return w / w.sum(1, keepdim=True).clamp_min(1)


def _class_dict(ci: ClassInfluence) -> dict[str, Any]:
    return {
        "mean": ci.mean.float(),
        "std_error": ci.std_error.float(),
        "query_counts": ci.query_counts,
        "train_counts": ci.train_counts,
    }


def _mean_token_loss(losses: torch.Tensor, mask: torch.Tensor) -> float:
    return float((losses.double() * _token_weights(mask)).sum(1).mean())


def _checkpoint_job(
    s: _Setup,
    model_cfg: CausalLMConfig,
    exp: StagewiseLMConfig,
    sampler: SGLDConfig,
    label: str,
    thresholds: HealthThresholds | None = None,
) -> dict[str, Any]:
    """Everything measured at one checkpoint, saved to (or read back from) its result file.

    ``sampler`` is the one actually used (calibrated or as configured); it keys the result file.
    """
    path = _result_path(s, label, sampler)
    if path.exists() and not exp.overwrite:
        log.info("checkpoint %s: result exists (%s); reusing it", label, path)
        result = torch.load(path, weights_only=False)
        if "health" not in result and not result["diverged"]:
            # a result from before the health rules: judge its (complete) traces now
            log.info("checkpoint %s: adding the chain-health rules from its traces", label)
            model = _load_checkpoint(s, model_cfg, exp, label)
            _add_health(result, LossTraces.load(path.parent / "traces"), _num_params(model),
                        thresholds)  # fmt: skip
            result.setdefault("sampler", sampler.to_dict())  # the path is keyed by it
            atomic_torch_save(result, path)
        return result
    t0 = time.perf_counter()
    step = s.steps[s.labels.index(label)]
    model = _load_checkpoint(s, model_cfg, exp, label)
    ind = induction_score(model, s.probe_ids, s.probe_mask, exp.induction_half_len)
    result: dict[str, Any] = {
        "label": label,
        "step": step,
        "induction": dataclasses.asdict(ind),
        "diverged": False,
        "sampler": sampler.to_dict(),
    }
    obs = torch.utils.data.TensorDataset(s.observed_ids, s.observed_mask)
    qry = torch.utils.data.TensorDataset(s.query_ids, s.query_mask)
    sgld = _sgld_dataset(s)
    try:
        traces = sample_token_traces(
            model, obs, qry, sampler, sgld_data=sgld, out_dir=path.parent / "traces",
            progress=exp.progress,
        )  # fmt: skip
    except SamplerDivergedError as err:
        log.warning(
            "checkpoint %s: SGLD diverged (%s); no influence at this checkpoint", label, err
        )
        result.update(
            diverged=True, healthy=False, summary=f"diverged: {err}", chain={}, health={"health/healthy": 0.0},
            health_summary=f"diverged: {err}", health_failed=["diverged"],
        )  # fmt: skip
    else:
        q, t = traces["query"], traces["train"]
        k = len(TOKEN_CLASSES)
        for est in ("correlation", "covariance"):
            ci = class_influence(
                q, t, s.query_classes, s.observed_classes, k, normalize=est,
                blocks_per_chain=min(exp.se_blocks_per_chain, max(q.shape[1] // 2, 1)),
            )  # fmt: skip
            result[f"class_{est}"] = _class_dict(ci)
        pq, pt = min(exp.pair_query_seqs, q.shape[2]), min(exp.pair_train_seqs, t.shape[2])
        result["pairs"] = {
            est: bif_scores(q[:, :, :pq], t[:, :, :pt], normalize=est).half()
            for est in ("correlation", "covariance")
        }
        llc = estimate_llc(
            t, traces.init_losses["train"], sampler.nbeta, _token_weights(s.observed_mask)
        )
        diag = traces.diagnostics
        result.update(
            llc=dataclasses.asdict(llc),
            loss_train=_mean_token_loss(traces.init_losses["train"], s.observed_mask),
            loss_query=_mean_token_loss(traces.init_losses["query"], s.query_mask),
            summary=diag.summary(),
            chain=diag.to_metrics("chain/"),
        )
        _add_health(result, traces, _num_params(model), thresholds)
    result["seconds"] = time.perf_counter() - t0
    atomic_torch_save(result, path)
    log.info(
        "checkpoint %s (step %d) in %.0fs: induction score %.3f, %s; %s",
        label, step, result["seconds"], ind.score, result["summary"], result["health_summary"],
    )  # fmt: skip
    return result


def _checkpoint_metrics(r: dict[str, Any]) -> dict[str, float]:
    out = {
        "induction/score": r["induction"]["score"],
        "induction/first_loss": r["induction"]["first_loss"],
        "induction/second_loss": r["induction"]["second_loss"],
        "checkpoint_seconds": r["seconds"],
        "chains_healthy": float(r.get("healthy", False)),
    }
    if "sampler" in r:
        out["sampler/step_size"] = r["sampler"]["step_size"]
    out.update(r.get("health", {}))
    if not r["diverged"]:
        out.update(
            {
                "llc": r["llc"]["mean"],
                "llc_std_error": r["llc"]["std_error"],
                "loss/train_observed": r["loss_train"],
                "loss/query": r["loss_query"],
            }
        )
        out.update(r["chain"])
        m = r["class_correlation"]["mean"]
        for a, qa in enumerate(TOKEN_CLASSES):
            for b, tb in enumerate(TOKEN_CLASSES):
                out[f"class_correlation/{qa}_to_{tb}"] = float(m[a, b])
    return {k: float(v) for k, v in out.items()}


# -- merge ----------------------------------------------------------------------------------------


def _context(s_text: list[str], pos: int, width: int = 4) -> str:
    left = "".join(s_text[max(1, pos - width) : pos]).replace("\n", "⏎")
    return f"…{left}[{s_text[pos].replace(chr(10), '⏎')}]"


def _pick_pairs(
    curves: np.ndarray,
    q_cls: np.ndarray,
    t_cls: np.ndarray,
    num: int,
    threshold: float,
    window: tuple[int, int] | None = None,
) -> list[int]:
    """Indices (into flattened pairs) of the strongest sign changes, diverse in classes.

    With ``window = (i, j)`` (checkpoint indices around a transition) up to half of the pairs
    are taken among those whose sign differs between checkpoints ``i`` and ``j``.
    """
    c = np.nan_to_num(curves)
    valid = (q_cls[:, None] >= 0) & (t_cls[None, :] >= 0)
    strength = np.minimum(c.max(0), -c.min(0))
    flips = valid.ravel() & sign_flips(c, threshold)
    strength = np.where(flips, strength, -np.inf)
    nt = valid.shape[1]
    chosen: list[int] = []
    used_q: set[int] = set()
    used_cls: set[tuple[int, int]] = set()

    def take(candidates: np.ndarray, limit: int) -> None:
        order = candidates[np.argsort(-strength[candidates])]
        for strict in (True, False):
            for idx in order:
                if len(chosen) >= limit or not np.isfinite(strength[idx]):
                    return
                qi, ti = divmod(int(idx), nt)
                key = (int(q_cls[qi]), int(t_cls[ti]))
                if int(idx) in chosen or (strict and (qi in used_q or key in used_cls)):
                    continue
                chosen.append(int(idx))
                used_q.add(qi)
                used_cls.add(key)

    if window is not None and window[1] > window[0]:
        scale = np.abs(c).max(0)
        a, b = c[window[0]], c[window[1]]
        across = (np.sign(a) * np.sign(b) < 0) & (
            np.minimum(np.abs(a), np.abs(b)) > threshold * scale
        )
        take(np.flatnonzero(across & flips), max(1, num // 2))
    take(np.arange(c.shape[1]), num)
    return chosen


def _nearest_index(steps: list[int], target: float, side: str) -> int | None:
    if not math.isfinite(target):
        return None
    if side == "before":
        idx = [i for i, s in enumerate(steps) if s <= target]
        return idx[-1] if idx else None
    idx = [i for i, s in enumerate(steps) if s >= target]
    return idx[0] if idx else None


def _merge(
    s: _Setup,
    exp: StagewiseLMConfig,
    sampler: SGLDConfig,
    results: list[dict[str, Any]],
    training: dict[str, Any] | None,
    model_desc: str,
    calibration: _Calibration | None = None,
) -> tuple[dict[str, float], dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
    """Stage detection, class-level changes, token pairs; metrics, tables, figures, summary.

    ``sampler`` is the one the checkpoints used (calibrated with ``calibration``, if given).
    """
    steps = [int(r["step"]) for r in results]
    labels = [r["label"] for r in results]
    k = len(TOKEN_CLASSES)
    names = list(TOKEN_CLASSES)
    est = exp.normalize
    nan_kk = np.full((k, k), np.nan)

    def arr(r: dict[str, Any], key: str, what: str) -> np.ndarray:
        return nan_kk if r["diverged"] else r[key][what].double().numpy()

    mean = {e: np.stack([arr(r, f"class_{e}", "mean") for r in results]) for e in ("correlation", "covariance")}  # fmt: skip
    se = {e: np.stack([arr(r, f"class_{e}", "std_error") for r in results]) for e in ("correlation", "covariance")}  # fmt: skip
    healthy = np.array([bool(r.get("healthy", False)) for r in results])
    ind = np.array([r["induction"]["score"] for r in results])
    first = np.array([r["induction"]["first_loss"] for r in results])
    second = np.array([r["induction"]["second_loss"] for r in results])
    nan = math.nan
    llc = np.array([nan if r["diverged"] else r["llc"]["mean"] for r in results])
    llc_se = np.array([nan if r["diverged"] else r["llc"]["std_error"] for r in results])
    q_loss = np.array([nan if r["diverged"] else r["loss_query"] for r in results])
    tr_loss = np.array([nan if r["diverged"] else r["loss_train"] for r in results])

    # 1. stages: induction transition and the fastest drops of the loss curve
    trans = detect_transition(steps, ind, exp.induction_min_rise)
    curve = training["loss_curve"] if training else None
    if curve:
        loss_steps = np.arange(1, len(curve) + 1)
        drops = fastest_drop_steps(loss_steps, curve, num=2)
    else:
        loss_steps = None
        drops = fastest_drop_steps(steps, q_loss, num=2, points_per_decade=3)
    marks: dict[str, float] = {"induction (50%)": trans.midpoint}
    for i, d in enumerate(drops):
        marks[f"loss drop {i + 1}"] = d
    metrics: dict[str, float] = {}
    metrics.update(trans.to_metrics("induction_transition/"))
    metrics["induction/score_first"] = float(ind[0])
    metrics["induction/score_last"] = float(ind[-1])
    metrics["induction/score_max"] = float(np.nanmax(ind))
    for i, d in enumerate(drops):
        metrics[f"loss_drop_step/{i + 1}"] = d
    metrics["chains_healthy_fraction"] = float(healthy.mean())
    metrics["num_checkpoints"] = float(len(results))
    metrics["llc_last"] = float(llc[-1])

    # 2. class x class: before / after the induction transition, sign flips, peaks
    before = _nearest_index(steps, trans.onset, "before") if trans.detected else None
    after = _nearest_index(steps, trans.end, "after") if trans.detected else None
    if before is None and trans.detected:
        before = 0
    if after is None and trans.detected:
        after = len(steps) - 1
    m_est, se_est = mean[est], se[est]
    flips = sign_flips(m_est, exp.flip_threshold)
    peaks = peak_step(np.nan_to_num(m_est), steps, kind="abs")
    rows = []
    for a in range(k):
        for b in range(k):
            row: dict[str, Any] = {"query_class": names[a], "train_class": names[b]}
            curve_ab = m_est[:, a, b]
            finite = curve_ab[np.isfinite(curve_ab)]
            row["first"] = float(curve_ab[0])
            row["last"] = float(curve_ab[-1])
            row["min"] = float(finite.min()) if finite.size else nan
            row["max"] = float(finite.max()) if finite.size else nan
            row["sign_flip"] = bool(flips[a, b])
            row["peak_step"] = int(peaks[a, b])
            if before is not None and after is not None:
                vb, va = m_est[before, a, b], m_est[after, a, b]
                sb, sa = se_est[before, a, b], se_est[after, a, b]
                row.update(
                    before_step=steps[before], after_step=steps[after], before=float(vb),
                    after=float(va), change=float(va - vb),
                    change_z=float((va - vb) / math.sqrt(sa**2 + sb**2))
                    if np.isfinite(sa) and np.isfinite(sb) and sa**2 + sb**2 > 0 else nan,
                    log10_peak_over_midpoint=math.log10(peaks[a, b] / trans.midpoint)
                    if trans.midpoint > 0 and peaks[a, b] > 0 else nan,
                )  # fmt: skip
            rows.append(row)
    changes = pd.DataFrame(rows)
    for row in changes.itertuples():
        key = f"class_{est}/{row.query_class}_to_{row.train_class}"
        metrics[f"{key}/sign_flip"] = float(row.sign_flip)
        metrics[f"{key}/last"] = row.last
        if "change" in changes.columns:
            metrics[f"{key}/change_across_induction"] = float(row.change)
            metrics[f"{key}/change_z"] = float(row.change_z)
    metrics["class_sign_flip_fraction"] = float(flips.mean())
    # is the change across the induction transition larger than across an equally long (in log
    # steps) window just before it? Mean |change| over the K x K class pairs.
    if before is not None and after is not None and after > before:
        span = steps[after] / max(steps[before], 1)
        ctrl = int(np.argmin(np.abs(np.log(np.maximum(steps, 1)) - math.log(steps[before] / span))))
        d_trans = np.abs(m_est[after] - m_est[before])
        metrics["class_change/mean_abs_across_induction"] = float(np.nanmean(d_trans))
        if ctrl < before:
            d_ctrl = np.abs(m_est[before] - m_est[ctrl])
            metrics["class_change/control_from_step"] = float(steps[ctrl])
            metrics["class_change/mean_abs_control_window"] = float(np.nanmean(d_ctrl))
            metrics["class_change/ratio_induction_over_control"] = float(
                np.nanmean(d_trans) / np.nanmean(d_ctrl)
            )
    if "change_z" in changes.columns:
        z = np.abs(changes["change_z"].to_numpy(dtype=float))
        metrics["class_pairs_changed_2se_fraction"] = float(np.nanmean(z > 2))

    # 3. token pairs whose influence changes sign
    pair_list = [r for r in results if not r["diverged"]]
    pair_steps = [int(r["step"]) for r in pair_list]
    pair_rows: list[dict[str, Any]] = []
    pair_curves = np.zeros((len(pair_steps), 0))
    pair_titles: list[str] = []
    if pair_list:
        stack = np.stack([r["pairs"][est].float().numpy() for r in pair_list])  # [T', pq, T, pt, T]
        _, pq, tq, pt, tt = stack.shape
        flat = stack.reshape(len(pair_list), pq * tq * pt * tt)
        q_cls = s.query_classes[:pq].reshape(-1).numpy()
        t_cls = s.observed_classes[:pt].reshape(-1).numpy()
        window = None
        if before is not None and after is not None:
            kept = [int(r["step"]) for r in pair_list]
            if steps[before] in kept and steps[after] in kept:
                window = (kept.index(steps[before]), kept.index(steps[after]))
        chosen = _pick_pairs(flat, q_cls, t_cls, exp.num_pairs, exp.flip_threshold, window)
        tok = s.classifier
        q_text = [[tok.text(int(i)) for i in row] for row in s.query_ids[:pq].tolist()]
        t_text = [[tok.text(int(i)) for i in row] for row in s.observed_ids[:pt].tolist()]
        for idx in chosen:
            qi, ti = divmod(idx, pt * tt)
            qs, qp = divmod(qi, tq)
            ts, tp = divmod(ti, tt)
            curve_p = flat[:, idx]
            flip_at = _first_sign_change(pair_steps, curve_p)
            title = (
                f"query {_context(q_text[qs], qp)!s} ({names[q_cls[qi]]})  ←  train "
                f"{_context(t_text[ts], tp)!s} ({names[t_cls[ti]]})"
            )
            pair_titles.append(title)
            for st, v in zip(pair_steps, curve_p, strict=True):
                pair_rows.append({
                    "pair": len(pair_titles) - 1, "step": st, est: float(v),
                    "query_seq": qs, "query_pos": qp, "query_token": q_text[qs][qp],
                    "query_class": names[q_cls[qi]],
                    "train_seq": int(s.observed_index[ts]), "train_pos": tp,
                    "train_token": t_text[ts][tp], "train_class": names[t_cls[ti]],
                    "first_sign_change_step": flip_at,
                })  # fmt: skip
        pair_curves = flat[:, chosen] if chosen else pair_curves
        valid = ((q_cls[:, None] >= 0) & (t_cls[None, :] >= 0)).ravel()
        metrics["token_pairs_sign_flip_fraction"] = float(
            sign_flips(flat[:, valid], exp.flip_threshold).mean()
        )

    # 4. tables
    checkpoints = pd.DataFrame({
        "label": labels, "step": steps, "induction_score": ind, "loss_first_copy": first,
        "loss_second_copy": second, "loss_train_observed": tr_loss, "loss_query": q_loss,
        "llc": llc, "llc_std_error": llc_se, "chains_healthy": healthy,
        "diagnostics_healthy": [r.get("diagnostics_healthy", r.get("healthy", False)) for r in results],
        "health_rules_healthy": [r.get("health_healthy", nan) for r in results],
        "health_failed": [";".join(r.get("health_failed", [])) for r in results],
        "rhat": [r.get("chain", {}).get("chain/rhat", nan) for r in results],
        "ess_projected": [r.get("health", {}).get("health/ess_projected", nan) for r in results],
        "distance_ratio": [r.get("health", {}).get("health/distance_ratio", nan) for r in results],
        "trend_share": [r.get("health", {}).get("health/trend_share", nan) for r in results],
        "step_size": [r.get("sampler", {}).get("step_size", nan) for r in results],
        "seconds": [r["seconds"] for r in results],
        "chain_summary": [r.get("summary", "") for r in results],
        "health_summary": [r.get("health_summary", "") for r in results],
    })  # fmt: skip
    cls_rows = []
    for i, st in enumerate(steps):
        for a in range(k):
            for b in range(k):
                cls_rows.append({
                    "step": st, "query_class": names[a], "train_class": names[b],
                    "correlation": mean["correlation"][i, a, b],
                    "correlation_se": se["correlation"][i, a, b],
                    "covariance": mean["covariance"][i, a, b],
                    "covariance_se": se["covariance"][i, a, b],
                })  # fmt: skip
    counts = {}
    for r in results:
        if not r["diverged"]:
            cc = r[f"class_{est}"]
            counts = {
                "query": dict(zip(names, cc["query_counts"].tolist(), strict=True)),
                "train": dict(zip(names, cc["train_counts"].tolist(), strict=True)),
            }
            break
    if curve:
        idx = sorted({int(round(x)) for x in np.geomspace(1, len(curve), 300)})
        train_loss = pd.DataFrame({"step": idx, "loss": [curve[i - 1] for i in idx]})
    else:
        train_loss = pd.DataFrame({"step": steps, "loss": q_loss})
    tables = {
        "checkpoints.csv": checkpoints,
        "class_influence.csv": pd.DataFrame(cls_rows),
        "class_changes.csv": changes,
        "token_pairs.csv": pd.DataFrame(pair_rows),
        "training_loss.csv": train_loss,
    }

    # 5. figures
    draws = sampler.num_chains * sampler.num_draws
    note = health_note(int(healthy.sum()), len(healthy), draws, est)
    sampler_note = (
        f"SGLD ε={sampler.step_size:g}, nβ={sampler.nbeta:g}, γ={sampler.localization:g}, "
        f"{sampler.preconditioner}"
    )
    if calibration is not None:
        note = f"{note}; {calibration.note}"
        sampler_note = f"{sampler_note}; {calibration.note}"
    ylabel = "mean corr." if est == "correlation" else "mean +cov"
    figures = {
        "fig1_stages.png": plot_stages(
            loss_steps, curve, steps, ind, first, second, marks, eval_loss=q_loss, llc=llc,
            llc_se=llc_se,
            title=f"Stages of {model_desc}\nloss, induction probe, LLC ({sampler_note})",
        ),
        "fig2_class_influence.png": plot_class_influence(
            steps, m_est, se_est, names, marks, ind, healthy, ylabel=ylabel,
            title=f"Per-token influence aggregated by token class (+ = helpful)\n{note}; "
            f"{len(s.query_ids)} query x {len(s.observed_index)} training sequences",
        ),
        "fig3_token_pairs.png": plot_token_pairs(
            pair_steps, pair_curves, pair_titles or ["(no pair changes sign)"], marks,
            [r["induction"]["score"] for r in pair_list], healthy[[not r["diverged"] for r in results]],
            ylabel=ylabel.replace("mean ", ""),
            title=f"Token pairs whose influence changes sign over training\n{note}",
        )
        if pair_titles
        else None,
    }  # fmt: skip
    key_idx = sorted({i for i in (0, before, _nearest_index(steps, trans.midpoint, "after"), after, len(steps) - 1) if i is not None})  # fmt: skip
    plabels = []
    for i in key_idx:
        tag = ""
        if i == before:
            tag = " (before)"
        elif i == after:
            tag = " (after)"
        plabels.append(tag)
    figures["fig4_class_matrices.png"] = plot_class_matrices(
        [steps[i] for i in key_idx], m_est[key_idx], names,
        title=f"Class x class influence at key checkpoints (induction transition: onset "
        f"{trans.onset:.0f}, end {trans.end:.0f})\n{note}",
        panel_labels=plabels,
    )  # fmt: skip
    figures = {k_: v for k_, v in figures.items() if v is not None}
    summary = {
        "transition": dataclasses.asdict(trans) | {"width_decades": trans.width_decades},
        "loss_drop_steps": drops,
        "before_after": None if before is None else [steps[before], steps[after]],
        "token_counts": counts,
        "note": note,
        "sampler_note": sampler_note,
        "calibration": None
        if calibration is None
        else {
            "summary": calibration.summary,
            "checkpoint": calibration.checkpoint,
            "folder": str(calibration.folder),
            "step_size": calibration.sampler.step_size,
            "configured_step_size": calibration.original.step_size,
        },
        "checkpoints": dict(zip(labels, steps, strict=True)),
    }
    return metrics, tables, figures, summary


def _first_sign_change(steps: list[int], curve: np.ndarray) -> float:
    sgn = np.sign(np.nan_to_num(curve))
    for i in range(1, len(sgn)):
        if sgn[i] != 0 and sgn[i - 1] != 0 and sgn[i] != sgn[i - 1]:
            return float(steps[i])
    return math.nan


# -- run --------------------------------------------------------------------------------------------


def _validated(cfg: DictConfig) -> Any:
    register_stagewise_configs()
    groups = ("data", "model", "sampler", "tracking", "experiment", "calibration")
    vc = validate_config(cfg, groups=groups)
    if not isinstance(vc.experiment, StagewiseLMConfig):
        raise ConfigError("experiment: expected the stagewise_lm schema (experiment=stagewise_lm)")
    if not isinstance(vc.data, TextCorpusConfig) or not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("data / model: expected data=text and model=small_lm (or pythia)")
    exp: StagewiseLMConfig = vc.experiment
    if exp.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"experiment.device={exp.device!r} is invalid: CUDA is not available")
    if exp.mode == "checkpoint" and exp.checkpoint is None and exp.checkpoint_index is None:
        raise ConfigError(
            "experiment.mode=checkpoint needs experiment.checkpoint=<label> or "
            "experiment.checkpoint_index=<i>"
        )
    if exp.mode != "checkpoint" and (
        exp.checkpoint is not None or exp.checkpoint_index is not None
    ):
        raise ConfigError(
            f"experiment.checkpoint / checkpoint_index only apply to mode=checkpoint (mode={exp.mode})"
        )
    if exp.mode == "train" and not vc.model.is_embedded:
        raise ConfigError("experiment.mode=train only applies to the embedded model")
    if not isinstance(vc.calibration, CalibrationConfig):
        raise ConfigError("calibration: expected the calibration schema (calibration=default|auto)")
    return vc


def _output_dir(exp: StagewiseLMConfig, results_dir: Path) -> Path:
    """Explicit output_dir, else the Hydra job folder in a multirun, else under results_dir."""
    return output_dir(exp.output_dir, results_dir, exp.name)


def _selected_label(s: _Setup, exp: StagewiseLMConfig) -> str:
    if exp.checkpoint is not None:
        if exp.checkpoint not in s.labels:
            raise ConfigError(
                f"experiment.checkpoint={exp.checkpoint!r} is invalid: not one of {s.labels}"
            )
        return exp.checkpoint
    i = int(exp.checkpoint_index)  # type: ignore[arg-type]
    if i >= len(s.labels):
        raise ConfigError(
            f"experiment.checkpoint_index={i} is invalid: there are {len(s.labels)} checkpoints "
            f"{s.labels}"
        )
    return s.labels[i]


def _significant(df: pd.DataFrame, digits: int = 5) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [float(f"{x:.{digits}g}") if np.isfinite(x) else x for x in out[col]]
    return out


def _model_desc(model_cfg: CausalLMConfig) -> str:
    if model_cfg.is_embedded:
        return (
            f"{model_cfg.name} ({model_cfg.arch}, {model_cfg.num_layers} layers, "
            f"d={model_cfg.hidden_size})"
        )
    return str(model_cfg.name_or_path)


def _quiet_transformers(progress: bool | None) -> None:
    """Hugging Face's own load/save progress bars would flood logs once per checkpoint."""
    if progress is not True:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one mode of the stagewise LM experiment (see the module docstring); returns metrics."""
    t_start = time.perf_counter()
    vc = _validated(cfg)
    exp: StagewiseLMConfig = vc.experiment
    sampler: SGLDConfig = vc.sampler
    model_cfg: CausalLMConfig = vc.model
    cal_cfg: CalibrationConfig = vc.calibration
    thresholds = cal_cfg.thresholds
    _quiet_transformers(exp.progress)
    if exp.num_threads is not None:
        torch.set_num_threads(exp.num_threads)
    torch.manual_seed(vc.seed)
    tags = {
        "device": exp.device,
        "mode": exp.mode,
        "bif_estimator": exp.normalize,
        "sampler_calibrated": cal_cfg.enabled,
    }
    with logging_redirect_tqdm(), start_run(cfg, tags=tags) as tracker:
        s = _prepare(vc, exp, sampler)
        s.work_dir.mkdir(parents=True, exist_ok=True)
        tracker.set_tags({"work_dir": str(s.work_dir)})
        log.info(
            "stagewise_lm mode=%s: %d training sequences, %d observed, %d queries x %d tokens; "
            "checkpoints %s; work folder %s",
            exp.mode, len(s.train_ids), len(s.observed_index), len(s.query_ids), exp.seq_len,
            s.labels, s.work_dir,
        )  # fmt: skip
        metrics: dict[str, float] = {}
        training = None
        if exp.mode in ("all", "train") and model_cfg.is_embedded:
            training = _train(s, model_cfg, exp)
            metrics.update(
                lm_train_seconds=training["train_seconds"],
                lm_final_loss=training["final_loss"],
                num_parameters=float(training["num_parameters"]),
            )
        # calibration=auto: calibrated once (at the last checkpoint), shared by every job; the
        # training job computes it right away so that the checkpoint jobs only read it
        calibration = _calibration(s, model_cfg, exp, sampler, cal_cfg, compute=exp.mode != "merge")
        used = calibration.sampler if calibration is not None else sampler
        if calibration is not None:
            tracker.set_tags({"calibration": calibration.summary})
        if exp.mode == "train":
            if calibration is not None:
                metrics.update(calibration.metrics)
            tracker.log_metrics(metrics)
            tracker.log_metric_series(
                "train_loss", training["loss_curve"], range(1, len(training["loss_curve"]) + 1)
            )
            return metrics
        if exp.mode == "checkpoint":
            label = _selected_label(s, exp)
            r = _checkpoint_job(s, model_cfg, exp, used, label, thresholds)
            metrics = _checkpoint_metrics(r)
            tracker.log_metrics(metrics, step=int(r["step"]))
            tracker.set_tags({
                "checkpoint": label, "chains_healthy": r.get("healthy", False),
                "chain_health": r.get("health_summary", ""),
            })  # fmt: skip
            return metrics
        # all / merge
        labels = s.labels
        if exp.mode == "all":
            results = []
            disable = None if exp.progress is None else not exp.progress
            for label in tqdm(labels, desc="checkpoints", disable=disable):
                results.append(_checkpoint_job(s, model_cfg, exp, used, label, thresholds))
                tracker.log_metrics(_checkpoint_metrics(results[-1]), step=results[-1]["step"])
        else:
            missing = [lab for lab in labels if not _result_path(s, lab, used).exists()]
            if missing and (not exp.allow_missing or len(missing) == len(labels)):
                raise RuntimeError(
                    f"no results for checkpoints {missing} in {s.work_dir / 'checkpoints'}: run "
                    "them first (experiment.mode=checkpoint experiment.checkpoint=<label>), or "
                    "merge what exists with experiment.allow_missing=true"
                )
            if missing:
                log.warning("merging without checkpoints %s (not computed yet)", missing)
            results = [
                torch.load(_result_path(s, lab, used), weights_only=False)
                for lab in labels
                if lab not in missing
            ]
            if _training_manifest(s).exists():
                training = json.loads(_training_manifest(s).read_text())
        if len(results) < 2:
            raise RuntimeError("the merge needs at least 2 checkpoints")
        merged, tables, figures, summary = _merge(
            s, exp, used, results, training, _model_desc(model_cfg), calibration
        )
        metrics.update(merged)
        out_dir = _output_dir(exp, vc.results_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if calibration is not None:  # the evidence behind the step size every checkpoint used
            metrics.update(calibration.record(tracker, out_dir))
        metrics["wall_seconds"] = time.perf_counter() - t_start
        for name, fig in figures.items():
            atomic_save_figure(fig, out_dir / name)
            tracker.log_artifact(out_dir / name, "figures")  # the saved PNG: no second render
            fig.clear()
        for name, df in tables.items():
            atomic_write_csv(_significant(df), out_dir / name)
        summary.update(
            metrics=metrics,
            work_dir=str(s.work_dir),
            config={
                "sampler": sampler.to_dict(),
                "sampler_used": used.to_dict(),
                "calibration": json.loads(json.dumps(dataclasses.asdict(cal_cfg), default=str)),
                "experiment": json.loads(json.dumps(dataclasses.asdict(exp), default=str)),
                "data": dataclasses.asdict(vc.data),
                "model": json.loads(json.dumps(dataclasses.asdict(model_cfg), default=str)),
                "seed": vc.seed,
            },
        )
        atomic_write_json(summary, out_dir / "metrics.json")
        _log_merge(tracker, metrics, tables, out_dir)
    log.info(
        "stagewise_lm done in %.1fs: induction transition %s (midpoint step %.0f, rise %.2f "
        "nats); class pairs changing sign %.2f -> %s",
        metrics["wall_seconds"],
        "detected" if metrics["induction_transition/detected"] else "NOT detected",
        metrics["induction_transition/midpoint_step"], metrics["induction_transition/rise"],
        metrics["class_sign_flip_fraction"], out_dir,
    )  # fmt: skip
    return metrics


def _log_merge(
    tracker: RunTracker, metrics: dict[str, float], tables: dict[str, pd.DataFrame], out_dir: Path
) -> None:
    if not tracker.enabled:
        return
    tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    ck = tables["checkpoints.csv"]
    for col in ("induction_score", "llc", "loss_query", "chains_healthy"):
        tracker.log_metric_series(f"per_checkpoint/{col}", ck[col].astype(float), ck["step"])
    for name in (*tables, "metrics.json"):
        tracker.log_artifact(out_dir / name, "tables")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the induction score (checkpoint jobs) or the transition rise."""
    m = run(cfg)
    return float(m.get("induction_transition/rise", m.get("induction/score", math.nan)))


if __name__ == "__main__":
    main()
