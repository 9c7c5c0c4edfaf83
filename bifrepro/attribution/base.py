"""One interface for every attribution method: a task (what is measured) and an attributor.

The contract every method follows:

* An :class:`AttributionTask` says what the per-item training loss ``ℓ_i`` and the per-item query
  measurement ``φ`` are. The measurement is **loss-like** everywhere (lower is better): the query
  loss by default, ``-margin`` for the classification margin used by LDS. Keeping it loss-like
  means one sign convention holds for all methods.
* An :class:`Attributor` has two phases: :meth:`Attributor.fit` (prepare on the model and the
  training set: factors, features, caches) and :meth:`Attributor.score` (queries → scores). Both
  are timed (wall clock and peak memory, :mod:`bifrepro.attribution.timing`).
* Scores are ``torch.Tensor`` of shape ``[n_query, n_train]``, float32 on the CPU, with
  **positive = helpful**: upweighting training item ``i`` lowers the query measurement. Each
  adapter converts its library's layout and sign once, at its boundary.
* Per-token scores (``per_token`` setting, where a method supports it) add token axes right after
  the item axis they refine: ``"train"`` → ``[n_query, n_train, T]`` (each training token),
  ``"query"`` → ``[n_query, T, n_train]``, ``"both"`` → ``[n_query, T, n_train, T]``. Token ``s``
  is the *predicted* token: its loss is ``-log p(x_s | x_<s)``; position 0 predicts nothing and
  scores 0.
* Methods never modify the caller's model: they work on copies or functional calls.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bifrepro.attribution.timing import AttributionTimings, measure_phase
from bifrepro.data.batches import to_device

__all__ = [
    "AttributionTask",
    "ClassificationTask",
    "CausalLMTask",
    "Attributor",
    "PER_TOKEN_MODES",
    "iterate_batches",
    "model_device",
    "trainable_parameters",
    "functional_task_call",
    "eval_mode",
]

log = logging.getLogger(__name__)

#: Per-token layouts (see the module docstring).
PER_TOKEN_MODES = ("none", "train", "query", "both")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def iterate_batches(dataset: Dataset, batch_size: int, device: torch.device | None = None):
    """Yield the dataset in order, collated by torch's default collate, moved to ``device``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield batch if device is None else to_device(batch, device)


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: detached tensor}`` of the parameters that require gradients (the attributed ones)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (requires_grad=True)")
    return params


class _TaskModule(nn.Module):
    """Wraps ``fn(model, batch)`` as a module so ``torch.func.functional_call`` can swap weights."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


def functional_task_call(
    model: nn.Module,
    fn: Callable[[nn.Module, Any], torch.Tensor],
    params: dict[str, torch.Tensor],
    batch: Any,
) -> torch.Tensor:
    """``fn(model, batch)`` evaluated with ``params`` in place of the model's parameters.

    The model itself is untouched (``torch.func.functional_call``); buffers keep their values.
    """
    wrapper = _TaskModule(model, fn)
    return torch.func.functional_call(
        wrapper, {f"model.{k}": v for k, v in params.items()}, (batch,)
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (dropout off, batch-norm running stats) and restore it after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.train(training)


class AttributionTask(abc.ABC):
    """What an attribution measures: per-item training loss and per-item query measurement.

    ``batch`` is whatever torch's default ``DataLoader`` collate makes of the dataset's items
    (e.g. ``[x, y]`` for a ``TensorDataset``). Every function returns one value per item, never
    a batch reduction, and every value is loss-like (lower is better).
    """

    #: Whether the task defines per-token losses (``[B, T]``).
    supports_per_token: ClassVar[bool] = False

    @abc.abstractmethod
    def train_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Per-item training loss ``ℓ_i``: ``[B]``. This is the loss the model was trained on."""

    def measurement(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Per-item query measurement ``φ`` (loss-like, lower is better): ``[B]``.

        Defaults to the training loss.
        """
        return self.train_loss(model, batch)

    def train_loss_per_token(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Per-token training loss ``[B, T]`` whose sum over tokens is :meth:`train_loss`."""
        raise NotImplementedError(f"{type(self).__name__} has no per-token losses")

    def measurement_per_token(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Per-token measurement ``[B, T]`` whose sum over tokens is :meth:`measurement`."""
        raise NotImplementedError(f"{type(self).__name__} has no per-token measurement")

    def sampled_train_loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-item loss with targets drawn from the model's own predictive distribution ``[B]``.

        Its gradient covariance is the true Fisher (used by EK-FAC's default).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot sample targets from the model")

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Model output ``z`` with ``train_loss = loss_from_output(z, batch)`` (Gauss–Newton)."""
        raise NotImplementedError(f"{type(self).__name__} does not split loss into output + loss")

    def loss_from_output(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-item loss ``[B]`` from the model output of :meth:`output`."""
        raise NotImplementedError(f"{type(self).__name__} does not split loss into output + loss")

    def describe(self) -> dict[str, Any]:
        """Settings of the task, for logs and MLflow params."""
        return {"task": type(self).__name__}


class ClassificationTask(AttributionTask):
    """Multiclass classification with batches ``(x, y)``: cross-entropy loss.

    ``measurement="loss"`` measures the query's cross-entropy; ``"margin"`` measures
    ``-margin = -(logit_y - logsumexp_{k≠y} logit_k)`` (loss-like, as used by LDS).
    """

    def __init__(self, measurement: str = "loss") -> None:
        if measurement not in ("loss", "margin"):
            raise ValueError(f"measurement must be 'loss' or 'margin', got {measurement!r}")
        self.measurement_kind = measurement

    @staticmethod
    def _xy(batch: Any) -> tuple[Any, torch.Tensor]:
        if isinstance(batch, dict):
            return batch["x"], batch["y"]
        x, y = batch[0], batch[1]
        return x, y

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(self._xy(batch)[0])

    def loss_from_output(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.cross_entropy(output, self._xy(batch)[1], reduction="none")

    def train_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss_from_output(self.output(model, batch), batch)

    @staticmethod
    def margin_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``logit_y - logsumexp_{k≠y} logit_k`` per item."""
        correct = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
        return correct - others.logsumexp(dim=1)

    def measurement(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.measurement_kind == "loss":
            return self.train_loss(model, batch)
        logits = self.output(model, batch)
        return -self.margin_from_logits(logits, self._xy(batch)[1])

    def sampled_train_loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        logits = self.output(model, batch)
        with torch.no_grad():
            probs = torch.softmax(logits.detach().float(), dim=-1)
            y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return F.cross_entropy(logits, y, reduction="none")

    def describe(self) -> dict[str, Any]:
        return {"task": "classification", "measurement": self.measurement_kind}


class CausalLMTask(AttributionTask):
    """Next-token prediction with a Hugging Face causal LM (anything returning ``.logits``).

    Batches: a ``[B, T]`` tensor of token ids, a sequence ``(input_ids[, attention_mask])``, or a
    dict with ``input_ids`` and optional ``attention_mask`` / ``labels`` (``-100`` = ignored).
    Per-sequence loss: the mean (``reduction="mean"``, the Hugging Face convention) or sum of the
    token losses ``-log p(x_s | x_<s)`` over the sequence's predicted tokens. Per-token losses are
    ``[B, T]`` indexed by the predicted token ``s``; they are the token's share of the sequence
    loss (divided by the number of predicted tokens for ``"mean"``), so they sum to it. Position
    0 and padding score 0.
    """

    supports_per_token: ClassVar[bool] = True

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    @staticmethod
    def unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(input_ids, attention_mask or None, labels)`` of any supported batch layout."""
        if isinstance(batch, torch.Tensor):
            ids, mask, labels = batch, None, None
        elif isinstance(batch, dict):
            ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
        else:
            ids = batch[0]
            mask = batch[1] if len(batch) > 1 else None
            labels = batch[2] if len(batch) > 2 else None
        if labels is None:
            labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
        return ids, mask, labels

    def output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        ids, mask, _ = self.unpack(batch)
        out = model(input_ids=ids, attention_mask=mask)
        return out.logits if hasattr(out, "logits") else out

    def _token_nll(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[B, T]``: ``-log p(x_s | x_<s)`` at predicted position ``s`` (0 where ignored)."""
        # position s predicts token s+1; the last position predicts nothing (ignored). Scoring
        # the whole [B, T, V] tensor avoids copying the logits of positions < T-1 (half the
        # cost of the loss on a small LM); ignored targets score exactly 0.
        target = F.pad(labels[:, 1:], (0, 1), value=-100)
        nll = F.cross_entropy(
            logits.flatten(0, 1).float(), target.flatten(), reduction="none", ignore_index=-100
        ).view_as(target)
        return F.pad(nll[:, :-1], (1, 0))

    def _count(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels[:, 1:] != -100).sum(dim=1).clamp_min(1)

    def loss_from_output(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        return self._per_token_from_output(output, batch).sum(dim=1)

    def _per_token_from_output(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        labels = self.unpack(batch)[2]
        nll = self._token_nll(output, labels)
        if self.reduction == "mean":
            nll = nll / self._count(labels)[:, None]
        return nll

    def train_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss_from_output(self.output(model, batch), batch)

    def train_loss_per_token(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._per_token_from_output(self.output(model, batch), batch)

    def measurement_per_token(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.train_loss_per_token(model, batch)

    def sampled_train_loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        logits = self.output(model, batch)
        ids, mask, labels = self.unpack(batch)
        with torch.no_grad():
            probs = torch.softmax(logits[:, :-1].detach().float(), dim=-1)
            sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator)
            sampled = sampled.view(ids.shape[0], ids.shape[1] - 1)
            new_labels = labels.clone()
            keep = labels[:, 1:] != -100
            new_labels[:, 1:] = torch.where(keep, sampled, labels[:, 1:])
        nll = self._token_nll(logits, new_labels)
        if self.reduction == "mean":
            nll = nll / self._count(new_labels)[:, None]
        return nll.sum(dim=1)

    def describe(self) -> dict[str, Any]:
        return {"task": "causal_lm", "reduction": self.reduction}


class Attributor(abc.ABC):
    """Base of every attribution method: ``fit`` (prepare), then ``score`` (queries → scores).

    Subclasses implement :meth:`_fit` and :meth:`_score`; this class times both phases, checks
    the score layout and keeps the fitted state. Usage::

        attributor = build_attributor(cfg.method)   # or e.g. GradSimAttributor(GradSimConfig())
        attributor.fit(model, ClassificationTask(), train_set)
        scores = attributor.score(query_set)        # [n_query, n_train], positive = helpful
        attributor.timings.to_metrics("gradsim/")
    """

    #: Registry name of the method (``method=<name>`` in Hydra).
    name: ClassVar[str] = "base"
    #: Per-token layouts this method can produce.
    per_token_modes: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, config: Any) -> None:
        per_token = getattr(config, "per_token", "none")
        if per_token not in self.per_token_modes:
            raise ValueError(
                f"{self.name}: per_token={per_token!r} is not supported; this method supports "
                f"{list(self.per_token_modes)}"
            )
        self.config = config
        self.timings = AttributionTimings()
        self.model: nn.Module | None = None
        self.task: AttributionTask | None = None
        self.train_data: Dataset | None = None
        self.checkpoints: list[dict[str, torch.Tensor]] | None = None

    @property
    def per_token(self) -> str:
        return getattr(self.config, "per_token", "none")

    @property
    def n_train(self) -> int:
        self._require_fitted()
        return len(self.train_data)  # type: ignore[arg-type]

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__}.fit(model, task, train_data) must come first"
            )

    def fit(
        self,
        model: nn.Module,
        task: AttributionTask,
        train_data: Dataset,
        checkpoints: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> Self:
        """Prepare the method on ``model`` (its current weights are w*) and the training set.

        ``checkpoints``: optional further state dicts of the same architecture (e.g. models trained
        on other seeds or subsets) for methods that ensemble over them (TRAK); others ignore them.
        The caller's model is never modified.
        """
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise ValueError("train_data is empty")
        if self.per_token != "none" and not task.supports_per_token:
            raise ValueError(
                f"{self.name}: per_token={self.per_token!r} needs a task with per-token losses; "
                f"{type(task).__name__} has none"
            )
        self.model, self.task, self.train_data = model, task, train_data
        self.checkpoints = list(checkpoints) if checkpoints is not None else None
        self.timings.fit = type(self.timings.fit)()
        with measure_phase() as record:
            self._fit()
        self.timings.fit = record
        log.info("%s fit: %.2f s, +%.0f MB RSS", self.name, record.seconds, record.peak_rss_mb)
        return self

    def score(self, query_data: Dataset) -> torch.Tensor:
        """Scores of every query against every training item (positive = helpful).

        Returns ``[n_query, n_train]`` float32 on the CPU (per-token layouts: module docstring).
        Repeated calls accumulate into ``timings.score``.
        """
        self._require_fitted()
        n_query = len(query_data)  # type: ignore[arg-type]
        if n_query == 0:
            raise ValueError("query_data is empty")
        with measure_phase() as record:
            scores = self._score(query_data)
        self.timings.score.add(record)
        scores = scores.detach().to("cpu", torch.float32)
        self._check_layout(scores, n_query)
        log.info("%s score: %.2f s, +%.0f MB RSS", self.name, record.seconds, record.peak_rss_mb)
        return scores

    def _check_layout(self, scores: torch.Tensor, n_query: int) -> None:
        n_train = self.n_train
        mode = self.per_token
        ok = {
            "none": scores.dim() == 2 and scores.shape == (n_query, n_train),
            "train": scores.dim() == 3 and scores.shape[:2] == (n_query, n_train),
            "query": scores.dim() == 3 and (scores.shape[0], scores.shape[2]) == (n_query, n_train),
            "both": scores.dim() == 4 and (scores.shape[0], scores.shape[2]) == (n_query, n_train),
        }[mode]
        if not ok:
            raise RuntimeError(
                f"{self.name} returned scores of shape {tuple(scores.shape)}; expected layout "
                f"per_token={mode!r} for {n_query} queries x {n_train} training items"
            )

    @abc.abstractmethod
    def _fit(self) -> None:
        """Prepare (``self.model``, ``self.task``, ``self.train_data`` are set)."""

    @abc.abstractmethod
    def _score(self, query_data: Dataset) -> torch.Tensor:
        """Return scores in the bifrepro layout and sign (positive = helpful)."""

    def describe(self) -> dict[str, Any]:
        """Method name and settings, for logs and MLflow params."""
        from dataclasses import asdict, is_dataclass

        settings = asdict(self.config) if is_dataclass(self.config) else dict(vars(self.config))
        return {"method": self.name, **settings}
