"""Schemas of ``experiments/language.py``: the experiment settings, the text corpus and the causal LM.

:func:`bifrepro.config.register_configs` stores each entry of :data:`SCHEMAS` as
``<group>/<name>_schema`` (``conf/experiment/language.yaml``, ``conf/data/text.yaml`` and
``conf/model/small_lm.yaml`` extend them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bifrepro.data.text import TextCorpusConfig
from bifrepro.models.lm import CausalLMConfig

__all__ = ["LanguageConfig", "LANGUAGE_METHODS", "SCHEMAS"]

#: Methods of the token-link benchmark (BIF is always one of them).
LANGUAGE_METHODS = ("bif", "ekfac", "gradsim")


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
    #: Methods in the ground-truth benchmark (bif, ekfac, gradsim). Their settings: the
    #: top-level ``methods`` node (conf/method/<name>.yaml; EK-FAC's per_token is forced to
    #: "train", GradSim scores sequences), as in every experiment.
    methods: list[str] = field(default_factory=lambda: list(LANGUAGE_METHODS))
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
    #: Only sample this job's chains (sampler.num_chains from sampler.first_chain) into the
    #: trace cache and stop: no scores, figures or tables, MLflow gets a "chain job" record. A
    #: later normal run of all chains merges the jobs' stores instead of sampling
    #: (docs/chain_jobs.md). Needs calibration off (calibrate once, then set sampler.step_size).
    chain_job: bool = False
    #: Split the chains into this many equal groups and report the benchmark per group and the
    #: groups' agreement (``bif_chain_groups.csv``, ``chain_group_agreement.csv``): each group has
    #: its own random streams, so G groups stand for G sampler seeds. The headline pools all.
    chain_groups: int = 1

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
        unknown = sorted(set(self.methods) - set(LANGUAGE_METHODS))
        if unknown or "bif" not in self.methods:
            bad("methods", f"must include 'bif' and only name {list(LANGUAGE_METHODS)}")
        if not isinstance(self.chain_job, bool):
            bad("chain_job", "must be true or false")
        if not isinstance(self.chain_groups, int) or self.chain_groups < 1:
            bad("chain_groups", "must be an integer >= 1")
        if self.rows_per_example < 1 or self.html_rows < 1:
            bad("rows_per_example" if self.rows_per_example < 1 else "html_rows", "must be >= 1")


#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("data", "text", TextCorpusConfig),
    ("model", "causal_lm", CausalLMConfig),
    ("experiment_schema", "language", LanguageConfig),
)
