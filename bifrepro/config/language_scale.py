"""Schema of ``experiments/language_scale.py``: token links across a ladder of embedded LM sizes.

:func:`bifrepro.config.register_configs` stores :data:`SCHEMAS` (``experiment_schema/
language_scale_schema``, extended by ``conf/experiment/language_scale.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bifrepro.validation import finite_numbers

__all__ = ["LanguageScaleConfig", "SCHEMAS"]


@dataclass
class LanguageScaleConfig:
    """Settings of ``experiments/language_scale.py`` (corpus, size ladder, sampler seeds)."""

    #: Experiment name: results go to results_dir/<name>/, MLflow experiment of the same name.
    name: str = "language_scale"
    #: Generated training sentences (one form each, one per sequence).
    num_documents: int = 4000
    #: Seed of the corpus generator (the held-out perplexity set uses seed + 1000).
    corpus_seed: int = 0
    #: Held-out generated sentences for the perplexity.
    num_heldout: int = 400
    #: Byte-level BPE vocabulary of the tokenizer trained on the corpus.
    vocab_size: int = 1024
    #: Tokens per sequence (one sentence each, padded).
    seq_len: int = 24
    #: The size ladder, smallest first: width, blocks and heads of each member (parallel lists).
    hidden_sizes: list[int] = field(default_factory=lambda: [48, 96, 128, 256])
    num_layers: list[int] = field(default_factory=lambda: [2, 2, 2, 6])
    num_heads: list[int] = field(default_factory=lambda: [4, 4, 4, 8])
    #: MLP width / model width.
    mlp_ratio: int = 4
    #: AdamW steps, batch size and peak learning rate of every member (cached once trained).
    train_steps: int = 600
    train_batch_size: int = 32
    train_lr: float = 3e-3
    #: Training sequences whose per-token losses are observed on every draw (SGLD uses all).
    num_observed: int = 120
    #: Observed sequences per surface form of every query concept (so every query has
    #: cross-form candidates); the rest of num_observed is drawn at random.
    cover_per_form: int = 2
    #: Sampler seeds (chains, noise, batches); scores per seed, agreement between seeds.
    sampler_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: k of precision@k.
    ks: list[int] = field(default_factory=lambda: [1, 10])
    #: BIF estimator: "correlation" (Pearson) or "covariance" (+Cov).
    normalize: str = "correlation"
    #: Methods of the benchmark: "bif" and optionally "ekfac" (per training token, on the same
    #: observed sequences; settings from the top-level ``methods.ekfac`` node).
    methods: list[str] = field(default_factory=lambda: ["bif", "ekfac"])
    #: Bootstrap resamples of the confidence intervals over queries.
    num_bootstrap: int = 1000
    #: Training sequences shown per size in each poster figure.
    rows_per_example: int = 2
    #: Cache of tokenizer, models and traces (null: results_dir/cache/language_scale).
    cache_dir: str | None = None
    #: Output folder (null: results_dir/<name>).
    output_dir: str | None = None
    #: Torch device.
    device: str = "cpu"
    #: Progress bars (null: only on a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        finite_numbers(self)

        def bad(name: str, why: str) -> None:
            raise ValueError(
                f"LanguageScaleConfig.{name}={getattr(self, name)!r} is invalid: {why}"
            )

        for name, low in (
            ("num_documents", 20),
            ("num_heldout", 1),
            ("vocab_size", 300),
            ("seq_len", 8),
            ("mlp_ratio", 1),
            ("train_steps", 1),
            ("train_batch_size", 1),
            ("num_observed", 2),
            ("num_bootstrap", 10),
            ("cover_per_form", 1),
            ("rows_per_example", 1),
            ("corpus_seed", 0),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"must be an integer >= {low}")
        if not self.hidden_sizes or not (
            len(self.hidden_sizes) == len(self.num_layers) == len(self.num_heads)
        ):
            bad("hidden_sizes", "hidden_sizes, num_layers and num_heads: same non-zero length")
        for d, h, layers in zip(self.hidden_sizes, self.num_heads, self.num_layers, strict=True):
            if d < 1 or h < 1 or layers < 1 or d % h:
                bad(
                    "num_heads", f"each member needs d, heads, layers >= 1 and heads | d ({d}, {h})"
                )
        if not self.train_lr > 0:
            bad("train_lr", "must be > 0")
        if len(set(self.sampler_seeds)) < 2 or min(self.sampler_seeds) < 0:
            bad("sampler_seeds", "must hold at least 2 distinct seeds >= 0 (agreement needs 2)")
        if not self.ks or min(self.ks) < 1:
            bad("ks", "must be a non-empty list of integers >= 1")
        if "bif" not in self.methods or set(self.methods) - {"bif", "ekfac"}:
            bad("methods", "must include 'bif' and only name 'bif' and 'ekfac'")
        if self.normalize not in ("correlation", "covariance"):
            bad("normalize", "must be 'correlation' or 'covariance'")


#: (group, option name, schema) stored in the ConfigStore as ``<group>/<name>_schema``.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("experiment_schema", "language_scale", LanguageScaleConfig),
)
