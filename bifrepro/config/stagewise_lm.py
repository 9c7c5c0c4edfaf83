"""Settings of the stagewise LM experiment (``experiments/stagewise_lm.py``) and their checks.

:class:`StagewiseLMConfig` is the ``experiment`` node; :func:`validate_stagewise` checks a composed
config across groups; :func:`checkpoint_grid` turns the settings into the checkpoint labels and
training steps; :func:`work_dir_key` names the shared folder of the checkpoint jobs by every
setting that changes their numbers.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from omegaconf import DictConfig

from bifrepro.config import ConfigError, ValidatedConfig, validate_config
from bifrepro.data.text import TextCorpusConfig
from bifrepro.data.token_classes import DEFAULT_PRIORITY, TOKEN_CLASSES
from bifrepro.dynamics.checkpoints import log_spaced_steps
from bifrepro.dynamics.lm_checkpoints import settings_hash
from bifrepro.models.lm import CausalLMConfig
from bifrepro.sampling import SGLDConfig
from bifrepro.sampling.calibration import CalibrationConfig
from bifrepro.validation import bad, finite_numbers, int_at_least, one_of

__all__ = [
    "StagewiseLMConfig",
    "SCHEMAS",
    "validate_stagewise",
    "checkpoint_step",
    "checkpoint_grid",
    "selected_label",
    "work_dir_key",
]

MODES = ("all", "train", "checkpoint", "merge")
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
        finite_numbers(self)
        one_of(self, "mode", MODES)
        if self.checkpoint is not None and self.checkpoint_index is not None:
            bad(
                self, "checkpoint_index", "set experiment.checkpoint or experiment.checkpoint_index"
            )
        if self.checkpoint_index is not None and self.checkpoint_index < 0:
            bad(self, "checkpoint_index", "must be >= 0")
        if self.checkpoints is not None and (
            not self.checkpoints or len(set(map(str, self.checkpoints))) != len(self.checkpoints)
        ):
            bad(self, "checkpoints", "must be a non-empty list of distinct labels")
        for name, low in (
            ("num_checkpoints", 2), ("first_checkpoint", 1), ("seq_len", 8), ("num_observed", 2),
            ("num_observed_synthetic", 0), ("num_query", 1), ("induction_sequences", 1),
            ("induction_half_len", 2), ("induction_vocab", 2), ("pair_query_seqs", 1),
            ("pair_train_seqs", 1), ("num_pairs", 1), ("se_blocks_per_chain", 1),
        ):  # fmt: skip
            int_at_least(self, name, low)
        if not 0.0 <= self.repeat_fraction < 1.0:
            bad(self, "repeat_fraction", "must be in [0, 1)")
        if not 0.0 <= self.query_repeat_fraction <= 1.0:
            bad(self, "query_repeat_fraction", "must be in [0, 1]")
        one_of(self, "normalize", ("correlation", "covariance"))
        if self.induction_vocab < self.induction_half_len:
            bad(self, "induction_vocab", f"must be >= induction_half_len={self.induction_half_len}")
        if not 0.0 <= self.flip_threshold < 1.0:
            bad(self, "flip_threshold", "must be in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            bad(self, "num_threads", "must be >= 1 or null")
        if sorted(self.token_priority) != sorted(TOKEN_CLASSES):
            bad(self, "token_priority", f"must order exactly {list(TOKEN_CLASSES)}")


#: (group, option name, schema), stored by :func:`bifrepro.config.register_configs`.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("experiment_schema", "stagewise_lm", StagewiseLMConfig),
)


def validate_stagewise(cfg: DictConfig) -> ValidatedConfig:
    """Every group of a composed ``experiment=stagewise_lm`` config, checked across groups."""
    groups = ("data", "model", "sampler", "tracking", "experiment", "calibration")
    vc = validate_config(cfg, groups=groups)
    if not isinstance(vc.experiment, StagewiseLMConfig):
        raise ConfigError("experiment: expected the stagewise_lm schema (experiment=stagewise_lm)")
    if not isinstance(vc.data, TextCorpusConfig) or not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("data / model: expected data=text and model=small_lm (or pythia)")
    if not isinstance(vc.calibration, CalibrationConfig):
        raise ConfigError("calibration: expected the calibration schema (calibration=default|auto)")
    exp: StagewiseLMConfig = vc.experiment
    one_job = exp.checkpoint is not None or exp.checkpoint_index is not None
    if exp.mode == "checkpoint" and not one_job:
        raise ConfigError(
            "experiment.mode=checkpoint needs experiment.checkpoint=<label> or "
            "experiment.checkpoint_index=<i>"
        )
    if exp.mode != "checkpoint" and one_job:
        raise ConfigError(
            f"experiment.checkpoint / checkpoint_index only apply to mode=checkpoint (mode={exp.mode})"
        )
    if exp.mode == "train" and not vc.model.is_embedded:
        raise ConfigError("experiment.mode=train only applies to the embedded model")
    return vc


def checkpoint_step(label: str) -> int:
    """Training step of a checkpoint label: its last integer (``step1000`` -> 1000)."""
    found = re.findall(r"\d+", str(label))
    if not found:
        raise ConfigError(
            f"experiment.checkpoints: cannot read a training step from the label {label!r} "
            "(use labels such as step1000)"
        )
    return int(found[-1])


def checkpoint_grid(
    exp: StagewiseLMConfig, model_cfg: CausalLMConfig
) -> tuple[list[str], list[int]]:
    """Checkpoint labels and their training steps, sorted by step."""
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
    order = sorted(range(len(steps)), key=lambda i: steps[i])  # stable: ties keep their order
    return [labels[i] for i in order], [steps[i] for i in order]


def selected_label(exp: StagewiseLMConfig, labels: list[str]) -> str:
    """The checkpoint of a ``mode=checkpoint`` job (``experiment.checkpoint`` or its index)."""
    if exp.checkpoint is not None:
        if exp.checkpoint not in labels:
            raise ConfigError(
                f"experiment.checkpoint={exp.checkpoint!r} is invalid: not one of {labels}"
            )
        return exp.checkpoint
    i = int(exp.checkpoint_index)  # type: ignore[arg-type]
    if i >= len(labels):
        raise ConfigError(
            f"experiment.checkpoint_index={i} is invalid: there are {len(labels)} checkpoints "
            f"{labels}"
        )
    return labels[i]


def work_dir_key(vc: ValidatedConfig, sampler: SGLDConfig) -> str:
    """Key of the checkpoint jobs' shared folder: every setting that changes their numbers."""
    exp = dataclasses.asdict(vc.experiment)
    return settings_hash(
        {
            "data": dataclasses.asdict(vc.data),
            "model": json.loads(json.dumps(dataclasses.asdict(vc.model), default=str)),
            "sampler": sampler.fingerprint(),
            "experiment": {k: v for k, v in exp.items() if k not in _NON_SEMANTIC},
            "seed": vc.seed,
        }
    )
