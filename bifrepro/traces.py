"""Loss traces: the losses of every observed item (or token) on every SGLD draw.

In memory a trace is a tensor ``[num_chains, num_draws, n_items(, n_tokens)]``. With an
``out_dir`` the traces live on disk as memory-mapped ``.npy`` files written draw by draw, next to
a ``manifest.json`` that records the settings and how many draws each chain has completed, so an
interrupted run resumes where it stopped::

    out_dir/
      manifest.json           settings fingerprint, shapes, completed draws per chain, status
      traces/<name>.npy       [C, D, n(, T)] recorded losses of observable <name>
      traces/init_<name>.npy  [n(, T)] losses at w* (also a fingerprint of the data)
      diagnostics/{sgld_loss,distance}.npy   [C, D]
      chains/chain<c>.pt      sampler state of chain c every `checkpoint_every` draws
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bifrepro.sampling.config import SGLDConfig
from bifrepro.sampling.diagnostics import ChainDiagnostics

__all__ = ["LossTraces", "TraceStore", "TraceStoreMismatchError"]

FORMAT_VERSION = 1


class TraceStoreMismatchError(ValueError):
    """An ``out_dir`` holds traces of a different configuration, model or data."""


class LossTraces(Mapping[str, torch.Tensor]):
    """Recorded losses per observable name, with the run's settings and chain diagnostics.

    ``traces[name]`` is ``[num_chains, num_draws, n_items]`` (per token: ``[..., n_items, T]``).
    For on-disk traces the tensors are copy-on-write views of the memory-mapped files.
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        diagnostics: ChainDiagnostics,
        config: SGLDConfig,
        init_losses: dict[str, torch.Tensor],
        out_dir: Path | None = None,
    ) -> None:
        self._data = data
        self.diagnostics = diagnostics
        self.config = config
        self.init_losses = init_losses
        self.out_dir = out_dir

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(f"no observable {name!r}; recorded: {self.names}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def names(self) -> list[str]:
        return list(self._data)

    def stacked(self, name: str) -> torch.Tensor:
        """``[num_chains * num_draws, ...]``: all draws of all chains in one sample axis."""
        t = self[name]
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._data.items())
        return f"LossTraces({shapes}; {self.diagnostics.summary()})"

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> LossTraces:
        """Open the complete traces of a finished run in ``out_dir``."""
        store = TraceStore(Path(out_dir))
        manifest = store.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"no traces in {out_dir} (manifest.json missing)")
        if manifest["status"] != "complete":
            raise RuntimeError(
                f"traces in {out_dir} are not complete (status {manifest['status']!r}, "
                f"completed draws per chain {manifest['completed']}); re-run the same call to resume"
            )
        return store.to_traces(manifest)


def _fingerprint_model(params: list[torch.Tensor]) -> list[list[float]]:
    """Cheap model fingerprint: (numel, sum, sum of squares) of every sampled parameter."""
    out = []
    for p in params:
        d = p.detach().double()
        out.append([float(p.numel()), float(d.sum()), float((d * d).sum())])
    return out


class TraceStore:
    """The on-disk layout of one sampling run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    # -- manifest --------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        with open(self.manifest_path) as fh:
            return json.load(fh)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically (a crash leaves the old or the new one)."""
        tmp = self.manifest_path.with_suffix(".json.tmp")
        with open(tmp, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest_path)

    # -- opening -----------------------------------------------------------------------------
    def open(
        self,
        config: SGLDConfig,
        init_rows: dict[str, torch.Tensor],
        params: list[torch.Tensor],
    ) -> dict[str, Any]:
        """Create the store, or check an existing one matches and return its manifest."""
        shapes = {k: list(v.shape) for k, v in init_rows.items()}
        model_fp = _fingerprint_model(params)
        existing = self.read_manifest()
        if existing is not None:
            self._check_match(existing, config, shapes, model_fp, init_rows)
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "traces").mkdir(exist_ok=True)
        (self.root / "diagnostics").mkdir(exist_ok=True)
        (self.root / "chains").mkdir(exist_ok=True)
        c, d = config.num_chains, config.num_draws
        for name, row in init_rows.items():
            np.save(self.root / "traces" / f"init_{name}.npy", row.numpy())
            np.lib.format.open_memmap(
                self.root / "traces" / f"{name}.npy",
                mode="w+",
                dtype=config.trace_dtype,
                shape=(c, d, *row.shape),
            ).flush()
        for diag in ("sgld_loss", "distance"):
            np.lib.format.open_memmap(
                self.root / "diagnostics" / f"{diag}.npy", mode="w+", dtype="float64", shape=(c, d)
            ).flush()
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "fingerprint": config.fingerprint(),
            "observables": shapes,
            "model_fingerprint": model_fp,
            "completed": [0] * c,
            "status": "running",
            "error": None,
        }
        self.write_manifest(manifest)
        return manifest

    def _check_match(
        self,
        manifest: dict[str, Any],
        config: SGLDConfig,
        shapes: dict[str, list[int]],
        model_fp: list[list[float]],
        init_rows: dict[str, torch.Tensor],
    ) -> None:
        where = f"out_dir {self.root}"
        if manifest.get("format_version") != FORMAT_VERSION:
            raise TraceStoreMismatchError(f"{where} was written by another trace format version")
        if manifest["fingerprint"] != config.fingerprint():
            old = manifest["config"]
            diff = {
                k: (old.get(k), v)
                for k, v in config.to_dict().items()
                if old.get(k) != v and k in old
            }
            raise TraceStoreMismatchError(
                f"{where} holds traces of a different SGLD configuration (stored → requested: "
                f"{diff}); use another out_dir or delete this one"
            )
        if manifest["observables"] != shapes:
            raise TraceStoreMismatchError(
                f"{where} holds observables {manifest['observables']}, requested {shapes}"
            )
        if not np.allclose(np.array(manifest["model_fingerprint"]), np.array(model_fp), rtol=1e-6):
            raise TraceStoreMismatchError(f"{where} was sampled around different model weights")
        for name, row in init_rows.items():
            stored = np.load(self.root / "traces" / f"init_{name}.npy")
            if not np.allclose(stored, row.numpy(), rtol=1e-4, atol=1e-6):
                raise TraceStoreMismatchError(
                    f"{where}: losses at w* of observable {name!r} differ from the stored ones "
                    "(different data or loss function)"
                )

    # -- arrays -----------------------------------------------------------------------------
    def trace_array(self, name: str, mode: str = "r+") -> np.memmap:
        return np.load(self.root / "traces" / f"{name}.npy", mmap_mode=mode)

    def diag_array(self, name: str, mode: str = "r+") -> np.memmap:
        return np.load(self.root / "diagnostics" / f"{name}.npy", mmap_mode=mode)

    def checkpoint_path(self, chain: int) -> Path:
        return self.root / "chains" / f"chain{chain}.pt"

    def save_checkpoint(self, chain: int, state: dict[str, Any]) -> None:
        path = self.checkpoint_path(chain)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, chain: int) -> dict[str, Any] | None:
        path = self.checkpoint_path(chain)
        if not path.exists():
            return None
        return torch.load(path, weights_only=False)

    def to_traces(self, manifest: dict[str, Any]) -> LossTraces:
        """Wrap the finished arrays as :class:`LossTraces` (copy-on-write memory maps)."""
        config = SGLDConfig(**manifest["config"])
        data = {
            name: torch.from_numpy(self.trace_array(name, "c")) for name in manifest["observables"]
        }
        init = {
            name: torch.from_numpy(np.load(self.root / "traces" / f"init_{name}.npy"))
            for name in manifest["observables"]
        }
        diagnostics = ChainDiagnostics(
            sgld_loss=torch.from_numpy(np.array(self.diag_array("sgld_loss", "r"))),
            distance=torch.from_numpy(np.array(self.diag_array("distance", "r"))),
            observed_loss={n: _mean_over_items(t) for n, t in data.items()},
            init_loss={n: float(v.double().mean()) for n, v in init.items()},
        )
        return LossTraces(data, diagnostics, config, init, out_dir=self.root)


def _mean_over_items(trace: torch.Tensor) -> torch.Tensor:
    """``[C, D]`` mean loss per draw of a ``[C, D, n(, T)]`` trace."""
    return trace.reshape(trace.shape[0], trace.shape[1], -1).double().mean(-1)
