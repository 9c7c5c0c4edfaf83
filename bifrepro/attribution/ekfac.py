"""EK-FAC (and K-FAC / diagonal / identity) influence through ``kronfluence``, behind our interface.

kronfluence's score is ``g_φᵀ (G + λI)⁻¹ g_i`` with ``G`` the (EK-FAC approximated) Fisher of the
training loss, ``g_φ`` the gradient of the query measurement and ``g_i`` that of training item
``i``'s loss, laid out ``[n_query, n_train]``. Since our measurement is loss-like, a positive score
means upweighting ``i`` lowers the query measurement: it is already positive = helpful, so this
adapter keeps kronfluence's sign and layout.

Phases: ``fit`` = ``fit_all_factors`` (activation / gradient covariances, their eigenbases, the
eigenvalue correction); ``score`` = ``compute_pairwise_scores``.

Notes on what is and is not the library default:

* Fisher: kronfluence's default, the *true* Fisher (``use_empirical_fisher=False``): while fitting,
  training targets are drawn from the model's predictive distribution
  (:meth:`AttributionTask.sampled_train_loss`, seeded by ``seed``). Tasks that cannot sample fall
  back to the empirical Fisher, with a log line. ``use_empirical_fisher=true`` uses the labels.
* Damping: ``null`` uses kronfluence's heuristic ``0.1 × mean eigenvalue`` (its
  ``ScoreArguments`` default is ``1e-8``, too small for small models).
* Layers: kronfluence only tracks ``nn.Linear`` and ``nn.Conv2d``; parameters of other layers
  (embeddings, norms, GPT-2's ``Conv1D``) get no influence. A model with no such layer is refused.
* Per token (``per_token="train"``): ``[n_query, n_train, T]``, one score per training token,
  summing to the sequence score. kronfluence indexes tokens by input position; they are shifted
  by one so index ``s`` is the predicted token ``s``, like the per-token losses of
  :class:`CausalLMTask` (position 0 scores 0).
* kronfluence wraps the model's layers in place, so it gets a deep copy; factors and scores are
  written to ``output_dir`` (a temporary folder removed with the attributor by default).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from bifrepro.attribution.base import (
    AttributionTask,
    Attributor,
    CausalLMTask,
    iterate_batches,
    model_device,
)
from bifrepro.attribution.configs import EKFACConfig

__all__ = ["EKFACAttributor", "supported_modules"]

log = logging.getLogger(__name__)


def supported_modules(model: nn.Module) -> list[str]:
    """Names of the layers kronfluence can track (``nn.Linear`` / ``nn.Conv2d`` leaves)."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) in (nn.Linear, nn.Conv2d) and any(p.requires_grad for p in m.parameters())
    ]


@contextlib.contextmanager
def _quiet_kronfluence() -> Iterator[None]:
    """Silence kronfluence 1.0.1's deprecation noise (``torch.cuda.amp.GradScaler``), nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*GradScaler.*", category=FutureWarning)
        yield


def _kronfluence_task(task: AttributionTask, sample_seed: int, device: torch.device) -> Any:
    """A ``kronfluence.task.Task`` that sums our per-item losses / measurements over the batch."""
    from kronfluence.task import Task

    class _Task(Task):
        def __init__(self) -> None:
            self.generator = torch.Generator(device=device).manual_seed(sample_seed)

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False):
            if sample:
                return task.sampled_train_loss(model, batch, generator=self.generator).sum()
            return task.train_loss(model, batch).sum()

        def compute_measurement(self, batch: Any, model: nn.Module):
            return task.measurement(model, batch).sum()

        def get_attention_mask(self, batch: Any):
            if isinstance(task, CausalLMTask):
                return task.unpack(batch)[1]
            return None

    return _Task()


class EKFACAttributor(Attributor):
    """kronfluence influence (EK-FAC by default), positive = helpful."""

    name = "ekfac"
    per_token_modes = ("none", "train")

    def __init__(self, config: EKFACConfig | None = None) -> None:
        super().__init__(config if config is not None else EKFACConfig())
        self.config: EKFACConfig
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._calls = 0

    def _fit(self) -> None:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        cfg, task = self.config, self.task
        assert self.model is not None and task is not None and self.train_data is not None
        tracked = supported_modules(self.model)
        if not tracked:
            raise ValueError(
                f"ekfac: {type(self.model).__name__} has no trainable nn.Linear or nn.Conv2d layer, "
                "the only layers kronfluence supports (Hugging Face GPT-2, for one, uses Conv1D: "
                "use a Llama- or GPT-NeoX-style model). Use bif, gradsim or trak for this model."
            )
        n_tracked = sum(
            p.numel() for n, m in self.model.named_modules() if n in tracked for p in m.parameters()
        )
        n_total = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if n_tracked < n_total:
            log.info(
                "ekfac: kronfluence tracks %d Linear/Conv2d layers = %.1f%% of the trainable "
                "parameters; the rest (embeddings, norms, other layers) get no influence",
                len(tracked),
                100.0 * n_tracked / n_total,
            )
        device = model_device(self.model)
        work = copy.deepcopy(self.model).eval()
        use_empirical = cfg.use_empirical_fisher
        if not use_empirical:
            try:  # can the task draw targets from the model (true Fisher)?
                probe = next(iter(iterate_batches(self.train_data, 1, device)))
                with torch.no_grad():
                    gen = torch.Generator(device=device).manual_seed(0)
                    task.sampled_train_loss(work, probe, generator=gen)
            except NotImplementedError:
                log.info("ekfac: %s cannot sample targets; using the empirical Fisher", task)
                use_empirical = True
        self.use_empirical_fisher = use_empirical
        if cfg.output_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bifrepro-kronfluence-")
            out = Path(self._tmp.name)
        else:
            out = Path(cfg.output_dir).expanduser().resolve()
        ktask = _kronfluence_task(task, cfg.seed, device)
        # kronfluence's Analyzer sets the *root* logger's level; keep the caller's logging intact.
        root_level = logging.getLogger().level
        self.analyzer = Analyzer(
            analysis_name="bifrepro",
            model=prepare_model(work, ktask),
            task=ktask,
            cpu=device.type == "cpu",
            log_level=logging.WARNING,
            disable_tqdm=not sys.stderr.isatty(),
            output_dir=str(out),
        )
        logging.getLogger().setLevel(root_level)
        self._loader_kwargs = DataLoaderKwargs(num_workers=0)
        self.analyzer.set_dataloader_kwargs(self._loader_kwargs)
        max_ex = cfg.max_fit_examples
        factor_args = FactorArguments(
            strategy=cfg.strategy,
            use_empirical_fisher=use_empirical,
            covariance_max_examples=max_ex,
            lambda_max_examples=max_ex,
        )
        with _quiet_kronfluence():
            self.analyzer.fit_all_factors(
                factors_name=cfg.strategy,
                dataset=self.train_data,
                per_device_batch_size=cfg.train_batch_size,
                factor_args=factor_args,
                overwrite_output_dir=True,
            )

    def _score(self, query_data: Dataset) -> torch.Tensor:
        from kronfluence.arguments import ScoreArguments

        cfg = self.config
        per_token = cfg.per_token == "train"
        score_args = ScoreArguments(
            damping_factor=cfg.damping,
            compute_per_token_scores=per_token,
            query_gradient_low_rank=cfg.query_gradient_low_rank,
        )
        name = f"scores{self._calls}"
        self._calls += 1
        with _quiet_kronfluence():
            self.analyzer.compute_pairwise_scores(
                scores_name=name,
                factors_name=cfg.strategy,
                query_dataset=query_data,
                train_dataset=self.train_data,
                per_device_query_batch_size=cfg.query_batch_size,
                per_device_train_batch_size=cfg.train_batch_size,
                score_args=score_args,
                overwrite_output_dir=True,
            )
        scores = self.analyzer.load_pairwise_scores(scores_name=name)["all_modules"]
        scores = scores.to(torch.float32)
        if per_token:
            if scores.dim() != 3:
                raise RuntimeError(
                    f"ekfac: kronfluence returned per-token scores of shape {tuple(scores.shape)}; "
                    "per-token scores need a sequence model (activations [B, T, d])"
                )
            # input position t predicts token t+1: shift so index s is the predicted token s
            scores = torch.nn.functional.pad(scores[..., :-1], (1, 0))
        return scores
