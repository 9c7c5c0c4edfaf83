"""Exact damped influence functions: the ground truth the approximate methods are tested against.

Score (positive = helpful)::

    score(q, i) = ∇φ_qᵀ (H + λI)⁻¹ ∇ℓ_i

where ``H`` is the exact Hessian (or the generalised Gauss–Newton matrix) of the *mean* training
loss at w*, ``λ`` the damping, ``φ_q`` the query measurement (loss-like) and ``ℓ_i`` the loss of
training item ``i``. The classical influence ``IF = dφ/dε_i = -∇φᵀ H⁻¹ ∇ℓ_i`` is the change of the
query measurement when item ``i`` is upweighted; helpful means that change is negative, so the
score is ``-IF``.

Everything is computed in float64 on a copy of the model, with the curvature formed explicitly
(``d × d``), so it is only for small models: models above ``max_params`` trainable parameters are
refused. ``fit`` forms ``H + λI``, factorises it and precomputes ``(H + λI)⁻¹ ∇ℓ_i`` for every
training item; ``score`` is then one matrix product per query batch.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from bifrepro.attribution.base import (
    Attributor,
    functional_task_call,
    iterate_batches,
    model_device,
    trainable_parameters,
)
from bifrepro.attribution.configs import ExactIFConfig
from bifrepro.data.batches import batch_size_of, index_batch

__all__ = ["ExactIFAttributor", "flat_curvature", "per_item_gradients"]

log = logging.getLogger(__name__)

#: Rows of a Jacobian / Hessian computed per vectorised backward pass (bounds peak memory).
_CHUNK = 64


def _to_double(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _to_double(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_double(v) for v in batch)
    return batch


def _unsqueeze(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.unsqueeze(0)
    if isinstance(item, dict):
        return {k: _unsqueeze(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_unsqueeze(v) for v in item)
    return item


def _squeeze(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.squeeze(0)
    if isinstance(item, dict):
        return {k: _squeeze(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_squeeze(v) for v in item)
    return item


class _Flat:
    """Flattening of a parameter dict into one vector and back."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.vector = torch.cat([p.reshape(-1) for p in params.values()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = torch.split(flat, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}


def per_item_gradients(model: nn.Module, fn: Any, flat: _Flat, batch: Any) -> torch.Tensor:
    """``[B, d]``: the gradient of each item's ``fn`` value w.r.t. the flattened parameters."""

    def values(vec: torch.Tensor) -> torch.Tensor:
        return functional_task_call(model, fn, flat.unflatten(vec), batch)

    return torch.func.jacrev(values)(flat.vector)


def flat_curvature(
    model: nn.Module, task: Any, flat: _Flat, batch: Any, curvature: str
) -> torch.Tensor:
    """``[d, d]``: the batch's *summed* Hessian (or Gauss–Newton matrix) of the training loss."""
    if curvature == "hessian":

        def total(vec: torch.Tensor) -> torch.Tensor:
            return functional_task_call(model, task.train_loss, flat.unflatten(vec), batch).sum()

        # Reverse-over-reverse in chunks of rows: bounded memory, and faster than
        # forward-over-reverse (torch.func.hessian) on the small CNNs measured here.
        return torch.func.jacrev(torch.func.jacrev(total), chunk_size=_CHUNK)(flat.vector)

    # Generalised Gauss–Newton: Σ_i J_iᵀ (∂²ℓ_i/∂z²) J_i with z the model output.
    def outputs(vec: torch.Tensor) -> torch.Tensor:
        return functional_task_call(model, task.output, flat.unflatten(vec), batch)

    z = outputs(flat.vector).detach()
    b = z.shape[0]
    jac = torch.func.jacrev(outputs, chunk_size=_CHUNK)(flat.vector).reshape(
        b, -1, flat.vector.numel()
    )  # [B, m, d]

    def item_loss(zi: torch.Tensor, item: Any) -> torch.Tensor:
        return task.loss_from_output(zi.unsqueeze(0), _unsqueeze(item)).sum()

    try:  # ∂²ℓ_i/∂z² for all items at once
        h_out = torch.func.vmap(torch.func.hessian(item_loss))(z, batch)
    except Exception as err:  # noqa: BLE001 - not vmappable: one item at a time
        log.debug("vmapped output Hessian failed (%s); looping over items", err)
        h_out = torch.stack(
            [
                torch.func.hessian(item_loss)(z[i], _squeeze(index_batch(batch, torch.tensor([i]))))
                for i in range(b)
            ]
        )
    h_out = h_out.reshape(b, jac.shape[1], jac.shape[1])
    return torch.einsum("bmd,bmn,bne->de", jac, h_out, jac)


class ExactIFAttributor(Attributor):
    """Exact damped influence ``∇φᵀ (H + λI)⁻¹ ∇ℓ_i`` (positive = helpful), small models only."""

    name = "exact_if"

    def __init__(self, config: ExactIFConfig | None = None) -> None:
        super().__init__(config if config is not None else ExactIFConfig())
        self.config: ExactIFConfig
        self.min_eigenvalue: float | None = None
        self.positive_definite: bool | None = None

    def _fit(self) -> None:
        cfg, task = self.config, self.task
        assert self.model is not None and task is not None and self.train_data is not None
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if n_params > cfg.max_params:
            raise ValueError(
                f"exact_if: {type(self.model).__name__} has {n_params:,} trainable parameters, "
                f"above max_params={cfg.max_params:,}; its {n_params}² curvature would take "
                f"{n_params**2 * 8 / 1e9:.1f} GB in float64. Use ekfac or bif for this model, or "
                "raise method.max_params if you really have the memory and time."
            )
        self._work = copy.deepcopy(self.model).double().eval()
        device = model_device(self._work)
        self._flat = _Flat(trainable_parameters(self._work))
        d = self._flat.vector.numel()
        n = len(self.train_data)  # type: ignore[arg-type]
        curv = torch.zeros(d, d, dtype=torch.float64, device=device)
        grads = []
        for batch in iterate_batches(self.train_data, cfg.batch_size, device):
            batch = _to_double(batch)
            curv += flat_curvature(self._work, task, self._flat, batch, cfg.curvature)
            grads.append(per_item_gradients(self._work, task.train_loss, self._flat, batch))
        curv /= n
        curv = 0.5 * (curv + curv.T)
        self.curvature = curv
        damped = curv + cfg.damping * torch.eye(d, dtype=curv.dtype, device=device)
        train_grads = torch.cat(grads)  # [n, d]
        chol, info = torch.linalg.cholesky_ex(damped)
        self.positive_definite = int(info) == 0
        if self.positive_definite:
            self._precond = torch.cholesky_solve(train_grads.T, chol)  # [d, n]
        else:
            self.min_eigenvalue = float(torch.linalg.eigvalsh(damped)[0])
            warnings.warn(
                f"exact_if: H + λI is not positive definite (smallest eigenvalue "
                f"{self.min_eigenvalue:.3g} with damping λ={cfg.damping:g}); the influence "
                "function is ill-defined at this point. Raise method.damping or use "
                "curvature=gauss_newton.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._precond = torch.linalg.solve(damped, train_grads.T)
        self.train_gradients = train_grads

    def _score(self, query_data: Dataset) -> torch.Tensor:
        task = self.task
        assert task is not None
        device = model_device(self._work)
        rows = []
        for batch in iterate_batches(query_data, self.config.batch_size, device):
            batch = _to_double(batch)
            q = per_item_gradients(self._work, task.measurement, self._flat, batch)
            if q.shape[0] != batch_size_of(batch):
                raise RuntimeError("task.measurement must return one value per item")
            rows.append(q @ self._precond)
        return torch.cat(rows).float()
