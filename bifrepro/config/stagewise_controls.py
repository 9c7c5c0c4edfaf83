"""Settings of the stagewise controls experiment (``experiments/stagewise_controls.py``).

:class:`StagewiseControlsConfig` extends the stagewise LM settings (data, observed and query
sequences, induction probe, token classes) with the controls of issue #19: two curriculum arms,
training and sampler seeds, a checkpoint grid shared by both arms and the class-reweighting
intervention. :func:`validate_controls` checks a composed config across groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from bifrepro.config import ConfigError, ValidatedConfig, validate_config
from bifrepro.config.stagewise_lm import StagewiseLMConfig
from bifrepro.data.text import TextCorpusConfig
from bifrepro.data.token_classes import TOKEN_CLASSES
from bifrepro.models.lm import CausalLMConfig
from bifrepro.sampling.calibration import CalibrationConfig
from bifrepro.validation import bad, int_at_least

__all__ = ["StagewiseControlsConfig", "SCHEMAS", "validate_controls", "ARMS"]

#: The two curriculum arms: repeated-token sequences from step 0, or from ``late_start_step``.
ARMS = ("early", "late")


def _distinct_ints(cfg: object, name: str, low: int, min_len: int) -> None:
    v = getattr(cfg, name)
    if (
        len(v) < min_len
        or len(set(v)) != len(v)
        or any(not isinstance(x, int) or isinstance(x, bool) or x < low for x in v)
    ):
        bad(cfg, name, f"must be >= {min_len} distinct integers >= {low}")


@dataclass
class StagewiseControlsConfig(StagewiseLMConfig):
    """Settings of ``experiments/stagewise_controls.py`` (the inherited ones as in stagewise_lm;
    the checkpoint-job and sweep settings of stagewise_lm are not used here)."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "stagewise_controls"
    #: Training step from which the late arm's batches get repeated-token sequences (before it:
    #: corpus only). The early arm has them from step 0.
    late_start_step: int = 1000
    #: Training seeds (initialisation and batch order), the same in both arms (paired).
    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: SGLD seeds per checkpoint; class matrices are averaged over them.
    sampler_seeds: list[int] = field(default_factory=lambda: [0, 1])
    #: Steps of the BIF checkpoints, the same for both arms (so where the largest change lands
    #: is not decided by where checkpoints were put).
    bif_steps: list[int] = field(default_factory=lambda: [400, 800, 1200, 1600, 2000])
    #: Spacing of the snapshots whose induction score locates each run's transition.
    scan_every: int = 100
    #: Intervention: arm, checkpoint it starts from (one of bif_steps: its BIF is the prediction),
    #: window length in steps, and the loss weight of the reweighted class (3 = upweighted,
    #: 0 = removed).
    intervention_arm: str = "early"
    intervention_step: int = 400
    intervention_window: int = 200
    intervention_factor: float = 3.0
    #: Classes reweighted one at a time.
    intervention_classes: list[str] = field(default_factory=lambda: list(TOKEN_CLASSES))
    #: Induction score (nats) whose first crossing marks a run's transition (copying established).
    induction_level: float = 0.15
    #: Coverage of the intervals over seeds.
    confidence: float = 0.95
    #: Processes training runs and checkpoints in parallel (1: in this process).
    workers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "all":
            bad(self, "mode", "stagewise_controls runs everything in one process: use 'all'")
        int_at_least(self, "late_start_step", 1)
        int_at_least(self, "scan_every", 1)
        int_at_least(self, "intervention_window", 1)
        int_at_least(self, "workers", 1)
        _distinct_ints(self, "train_seeds", 0, 1)
        _distinct_ints(self, "sampler_seeds", 0, 1)
        _distinct_ints(self, "bif_steps", 1, 2)
        if self.bif_steps != sorted(self.bif_steps):
            bad(self, "bif_steps", "must be increasing")
        if self.intervention_arm not in ARMS:
            bad(self, "intervention_arm", f"must be one of {list(ARMS)}")
        if self.intervention_step not in self.bif_steps:
            bad(self, "intervention_step", f"must be one of bif_steps={self.bif_steps}")
        if not (0 <= self.intervention_factor < float("inf")) or self.intervention_factor == 1:
            bad(self, "intervention_factor", "must be finite, >= 0 and != 1")
        if not self.intervention_classes or not set(self.intervention_classes) <= set(
            TOKEN_CLASSES
        ):
            bad(self, "intervention_classes", f"must be a non-empty subset of {TOKEN_CLASSES}")
        if not self.induction_level > 0:
            bad(self, "induction_level", "must be > 0")
        if not 0.5 <= self.confidence < 1:
            bad(self, "confidence", "must be in [0.5, 1)")


#: (group, option name, schema), stored by :func:`bifrepro.config.register_configs`.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("experiment_schema", "stagewise_controls", StagewiseControlsConfig),
)


def validate_controls(cfg: DictConfig) -> ValidatedConfig:
    """Every group of a composed ``experiment=stagewise_controls`` config, checked across groups."""
    groups = ("data", "model", "sampler", "tracking", "experiment", "calibration")
    vc = validate_config(cfg, groups=groups)
    exp = vc.experiment
    if not isinstance(exp, StagewiseControlsConfig):
        raise ConfigError("experiment: expected the stagewise_controls schema")
    if not isinstance(vc.data, TextCorpusConfig) or not isinstance(vc.model, CausalLMConfig):
        raise ConfigError("data / model: expected data=text and model=small_lm")
    if not vc.model.is_embedded:
        raise ConfigError("model: stagewise_controls trains its models: use the embedded model")
    if not isinstance(vc.calibration, CalibrationConfig) or vc.calibration.enabled:
        raise ConfigError("calibration: stagewise_controls uses the configured sampler (default)")
    steps = vc.model.train.steps
    if exp.bif_steps[-1] > steps or exp.late_start_step >= steps:
        raise ConfigError(
            f"experiment.bif_steps={exp.bif_steps} / late_start_step={exp.late_start_step} are "
            f"invalid: the model trains for model.train.steps={steps} steps"
        )
    return vc
