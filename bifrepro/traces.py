"""Loss traces: the losses of every observed item (or token) on every SGLD draw.

In memory a trace is a tensor ``[num_chains, num_draws, n_items(, n_tokens)]``. With an
``out_dir`` the traces live on disk as memory-mapped ``.npy`` files written draw by draw, next to
a ``manifest.json`` that records the settings and how many draws each chain has completed, so an
interrupted run resumes where it stopped::

    out_dir/
      manifest.json           identity, shapes, completed draws per chain, status
      traces/<name>.npy       [C, D, n(, T)] recorded losses of observable <name>
      traces/init_<name>.npy  [n(, T)] losses at w* (also a fingerprint of the data)
      diagnostics/{sgld_loss,distance}.npy   [C, D]
      chains/chain<c>.pt      sampler state of chain c every `checkpoint_every` draws

The store's identity covers everything that changes the recorded numbers: the SGLD settings
(speed-only fields excluded), the model's weights and buffers, the SGLD training data, the loss
functions and every observable's data (:mod:`bifrepro.fingerprint` says how each is hashed);
reopening a store with any of them different raises :class:`TraceStoreMismatchError` naming what
differs, also when the store is complete. A damaged store (unreadable manifest or arrays, a
"complete" status with draws missing, NaN or Inf among the recorded losses) raises
:class:`TraceStoreError` naming the folder and the file; it never returns wrong numbers.

Chains can run as separate jobs (``SGLDConfig.first_chain``): :func:`merge_trace_stores` joins
their complete stores into the one store a single run of all the chains would have written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bifrepro.chain_diagnostics import ChainDiagnostics
from bifrepro.fingerprint import describe_difference
from bifrepro.sgld_config import SGLDConfig

__all__ = [
    "LossTraces",
    "TraceStore",
    "TraceStoreError",
    "TraceStoreMismatchError",
    "merge_trace_stores",
]

#: Version 2 added the identity (data, weights, loss functions) and ``num_params``.
FORMAT_VERSION = 2
#: Versions :meth:`LossTraces.load` can read (a store is resumed only at FORMAT_VERSION).
READABLE_VERSIONS = (1, 2)
_MANIFEST_KEYS = ("format_version", "config", "observables", "completed", "status")
_CHECK_BYTES = 64 * 2**20


class TraceStoreError(RuntimeError):
    """A trace store cannot be used: damaged, incomplete, or holding other traces."""


class TraceStoreMismatchError(TraceStoreError, ValueError):
    """An ``out_dir`` holds traces of a different configuration, model, loss function or data."""


class LossTraces(Mapping[str, torch.Tensor]):
    """Recorded losses per observable name, with the run's settings and chain diagnostics.

    ``traces[name]`` is ``[num_chains, num_draws, n_items]`` (per token: ``[..., n_items, T]``).
    For on-disk traces the tensors are copy-on-write views of the memory-mapped files.
    ``num_params`` is the number of sampled parameters (those with ``requires_grad``), which the
    health rules need; None when unknown (traces stored before it was recorded).
    ``sampling_seconds`` is the wall time the invocation that finished the draws spent (loading
    them again from a store keeps it; earlier, interrupted invocations are not counted); None
    when unknown (merged or older stores).
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        diagnostics: ChainDiagnostics,
        config: SGLDConfig,
        init_losses: dict[str, torch.Tensor],
        out_dir: Path | None = None,
        num_params: int | None = None,
        sampling_seconds: float | None = None,
    ) -> None:
        self._data = data
        self.sampling_seconds = sampling_seconds
        self.diagnostics = diagnostics
        self.config = config
        self.init_losses = init_losses
        self.out_dir = out_dir
        self.num_params = num_params

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
        """Open the complete traces of a finished run in ``out_dir``.

        Raises:
            FileNotFoundError: no ``manifest.json`` in ``out_dir``.
            TraceStoreError: the run is not complete, or the store is damaged.
        """
        store = TraceStore(Path(out_dir))
        manifest = store.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"no traces in {out_dir} (manifest.json missing)")
        if manifest["status"] != "complete":
            raise TraceStoreError(
                f"traces in {out_dir} are not complete (status {manifest['status']!r}, "
                f"completed draws per chain {manifest['completed']}); re-run the same call to resume"
            )
        return store.to_traces(manifest)


class TraceStore:
    """The on-disk layout of one sampling run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    def _damaged(self, path: Path, why: object) -> TraceStoreError:
        return TraceStoreError(
            f"trace store {self.root}: {path.relative_to(self.root)} is damaged ({why}); "
            "delete the folder (or use another out_dir) to sample again"
        )

    # -- manifest --------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None if there is none; :class:`TraceStoreError` if it is unreadable."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._damaged(self.manifest_path, f"not valid JSON: {err}") from None
        if not isinstance(manifest, dict) or any(k not in manifest for k in _MANIFEST_KEYS):
            raise self._damaged(self.manifest_path, f"a manifest needs keys {_MANIFEST_KEYS}")
        return manifest

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
        identity: dict[str, Any],
        num_params: int | None = None,
    ) -> dict[str, Any]:
        """Create the store, or check an existing one matches and return its manifest.

        ``identity`` is a JSON-able description of everything besides ``config`` that the
        traces depend on (weights, data, loss functions; see :mod:`bifrepro.fingerprint`).
        """
        shapes = {k: list(v.shape) for k, v in init_rows.items()}
        existing = self.read_manifest()
        if existing is not None:
            self._check_match(existing, config, shapes, identity, init_rows)
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
            "identity": identity,
            "num_params": num_params,
            "observables": shapes,
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
        identity: dict[str, Any],
        init_rows: dict[str, torch.Tensor],
    ) -> None:
        where = f"out_dir {self.root}"
        if manifest.get("format_version") != FORMAT_VERSION:
            raise TraceStoreMismatchError(
                f"{where} was written by trace format version {manifest.get('format_version')} "
                f"(this is {FORMAT_VERSION}, which records more of what the traces depend on); "
                "use another out_dir or delete this one"
            )
        if manifest.get("fingerprint") != config.fingerprint():
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
        stored = manifest.get("identity") or {}
        differs = describe_difference(stored, identity)
        if differs:
            raise TraceStoreMismatchError(
                f"{where} holds traces of {_explain(differs)} (differing: {', '.join(differs)}); "
                "use another out_dir or delete this one"
            )
        for name, row in init_rows.items():
            old_row = self._load_npy(self.root / "traces" / f"init_{name}.npy")
            if old_row.shape != tuple(row.shape) or not np.allclose(
                old_row, row.numpy(), rtol=1e-4, atol=1e-6
            ):
                raise TraceStoreMismatchError(
                    f"{where}: losses at w* of observable {name!r} differ from the stored ones "
                    "(different data or loss function)"
                )

    # -- arrays -----------------------------------------------------------------------------
    def _load_npy(self, path: Path, mmap_mode: str | None = None) -> np.ndarray:
        """``np.load`` whose failures (missing, truncated, garbage) name the store and the file."""
        try:
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise self._damaged(path, f"{type(err).__name__}: {err}") from None

    def _array(self, path: Path, mode: str, shape: tuple[int, ...]) -> np.memmap:
        arr = self._load_npy(path, mode)
        if arr.shape != shape:
            raise self._damaged(path, f"shape {arr.shape}, expected {shape}")
        return arr

    def _shapes(self) -> tuple[dict[str, Any], int, int]:
        manifest = self.read_manifest() or {}
        cfg = manifest.get("config", {})
        return manifest.get("observables", {}), cfg.get("num_chains", 0), cfg.get("num_draws", 0)

    def trace_array(self, name: str, mode: str = "r+") -> np.memmap:
        observables, c, d = self._shapes()
        shape = (c, d, *observables.get(name, []))
        return self._array(self.root / "traces" / f"{name}.npy", mode, shape)

    def diag_array(self, name: str, mode: str = "r+") -> np.memmap:
        _, c, d = self._shapes()
        return self._array(self.root / "diagnostics" / f"{name}.npy", mode, (c, d))

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
        try:
            return torch.load(path, weights_only=False)
        except Exception as err:  # torch.load raises many types on a damaged file
            raise self._damaged(path, f"{type(err).__name__}: {err}") from None

    # -- finished traces ----------------------------------------------------------------------
    def check_complete(self, manifest: dict[str, Any]) -> None:
        """Every chain has all its draws and every recorded number is finite, or raise."""
        c, d = manifest["config"]["num_chains"], manifest["config"]["num_draws"]
        completed = manifest["completed"]
        if len(completed) != c or any(done != d for done in completed):
            raise self._damaged(
                self.manifest_path,
                f"status {manifest['status']!r} but completed draws per chain are {completed}, "
                f"expected {d} for each of {c} chains",
            )
        for name in manifest["observables"]:
            self._check_finite(self.trace_array(name, "r"), f"observable {name!r}")
        for name in ("sgld_loss", "distance"):
            self._check_finite(self.diag_array(name, "r"), f"diagnostic {name!r}")

    def _check_finite(self, arr: np.ndarray, what: str) -> None:
        """Raise naming the first chain and draw of ``arr`` (``[C, D, ...]``) holding NaN/Inf."""
        per_draw = max(1, int(np.prod(arr.shape[2:], dtype=np.int64)) * arr.itemsize)
        step = max(1, _CHECK_BYTES // per_draw)
        for chain in range(arr.shape[0]):
            for start in range(0, arr.shape[1], step):
                block = np.asarray(arr[chain, start : start + step]).reshape(
                    min(step, arr.shape[1] - start), -1
                )
                ok = np.isfinite(block).all(axis=1)
                if not ok.all():
                    draw = start + int(np.argmin(ok))
                    raise TraceStoreError(
                        f"trace store {self.root}: {what} holds NaN or Inf at chain {chain}, "
                        f"draw {draw} (the files are damaged); delete the folder to sample again"
                    )

    def to_traces(self, manifest: dict[str, Any], verify: bool = True) -> LossTraces:
        """Wrap the finished arrays as :class:`LossTraces` (copy-on-write memory maps).

        With ``verify`` (default) :meth:`check_complete` runs first; pass False only right after
        it has run on the same files.
        """
        if manifest.get("format_version") not in READABLE_VERSIONS:
            raise self._damaged(
                self.manifest_path, f"unknown format version {manifest.get('format_version')}"
            )
        try:
            config = SGLDConfig(**manifest["config"])
        except (TypeError, ValueError) as err:
            raise self._damaged(self.manifest_path, f"invalid config: {err}") from None
        if verify:
            self.check_complete(manifest)
        data = {
            name: torch.from_numpy(self.trace_array(name, "c")) for name in manifest["observables"]
        }
        init = {
            name: torch.from_numpy(self._load_npy(self.root / "traces" / f"init_{name}.npy"))
            for name in manifest["observables"]
        }
        diagnostics = ChainDiagnostics(
            sgld_loss=torch.from_numpy(np.array(self.diag_array("sgld_loss", "r"))),
            distance=torch.from_numpy(np.array(self.diag_array("distance", "r"))),
            observed_loss={n: _mean_over_items(t) for n, t in data.items()},
            init_loss={n: float(v.double().mean()) for n, v in init.items()},
        )
        return LossTraces(
            data,
            diagnostics,
            config,
            init,
            out_dir=self.root,
            num_params=manifest.get("num_params"),
            sampling_seconds=manifest.get("sampling_seconds"),
        )


def _explain(differs: list[str]) -> str:
    """What differing identity keys (dotted paths) mean, in words."""
    what = []
    for key in differs:
        parts = key.split(".")
        if parts[0] == "model":
            what.append("different model weights (sampled around different w*)")
        elif parts[0] == "train_data":
            what.append("different SGLD training data (train_data)")
        elif parts[0] == "loss_fn":
            what.append("a different loss function")
        elif parts[0] == "observables" and len(parts) > 2 and parts[2] == "data":
            what.append(f"different data of observable {parts[1]!r}")
        elif parts[0] == "observables" and len(parts) > 2 and parts[2] == "loss_fn":
            what.append(f"a different loss function of observable {parts[1]!r}")
        else:
            what.append(f"a different {key}")
    return "; ".join(dict.fromkeys(what))


def _mean_over_items(trace: torch.Tensor) -> torch.Tensor:
    """``[C, D]`` mean loss per draw of a ``[C, D, n(, T)]`` trace."""
    return trace.reshape(trace.shape[0], trace.shape[1], -1).double().mean(-1)


# -- merging the stores of chain jobs -----------------------------------------------------------
#: Config fields in which the stores of one run's chain jobs differ.
_CHAIN_FIELDS = ("num_chains", "first_chain")


def merge_trace_stores(
    sources: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> LossTraces:
    """Join the complete stores of chain jobs into the store one run of all chains writes.

    Each source is a finished run of ``num_chains=k, first_chain=j`` (chains j..j+k-1 of one
    larger run, see ``SGLDConfig.first_chain``). The result in ``out_dir`` has the traces and
    diagnostics of every chain in chain order, ``num_chains`` = the total and ``first_chain`` =
    the smallest; its manifest is the one a single run writes (plus ``merged_from``, the sources),
    so :func:`~bifrepro.sampling.sample_loss_traces` with the full configuration loads it. Chain
    checkpoints are not copied: a complete store never resumes.

    The merge is written in a staging folder next to ``out_dir`` and renamed into place, so a
    failure leaves nothing half-written. If ``out_dir`` already holds the same complete traces it
    is loaded, not rewritten.

    Raises:
        TraceStoreMismatchError: naming what differs, when the sources are not complete, differ
            in identity (weights, data, loss functions), in the SGLD settings apart from
            ``num_chains``/``first_chain``, in observables, shapes, ``num_params`` or losses at
            w*, when their chain ranges overlap or leave a gap, or when ``out_dir`` holds
            other traces.
        TraceStoreError: a source is damaged (missing draws, NaN or Inf).
    """
    if not sources:
        raise ValueError("merge_trace_stores needs at least one source store")
    stores = [TraceStore(Path(p)) for p in sources]
    manifests = [_complete_source(st) for st in stores]
    order = sorted(range(len(stores)), key=lambda i: manifests[i]["config"]["first_chain"])
    stores = [stores[i] for i in order]
    manifests = [manifests[i] for i in order]
    _check_same_run(stores, manifests)
    _check_contiguous(stores, manifests)

    ref = manifests[0]
    total = sum(m["config"]["num_chains"] for m in manifests)
    config = SGLDConfig(**ref["config"]).replace(
        num_chains=total, first_chain=ref["config"]["first_chain"]
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "identity": ref["identity"],
        "num_params": ref.get("num_params"),
        "observables": ref["observables"],
        "completed": [config.num_draws] * total,
        "status": "complete",
        "error": None,
        "merged_from": [
            {
                "out_dir": str(st.root),
                "first_chain": m["config"]["first_chain"],
                "num_chains": m["config"]["num_chains"],
            }
            for st, m in zip(stores, manifests, strict=True)
        ],
    }
    out = TraceStore(Path(out_dir))
    existing = _existing_merge(out, manifest)
    if existing is not None:
        return existing
    out.root.parent.mkdir(parents=True, exist_ok=True)
    staging = TraceStore(out.root.with_name(f".{out.root.name}.merging-{os.getpid()}"))
    shutil.rmtree(staging.root, ignore_errors=True)
    try:
        _write_merged(staging, stores, manifest)
        try:
            os.rename(staging.root, out.root)  # replaces only a missing or empty folder
        except OSError:
            existing = _existing_merge(out, manifest)  # another process merged first?
            if existing is None:
                raise TraceStoreMismatchError(
                    f"out_dir {out.root} exists and is not a trace store; use another out_dir"
                ) from None
            shutil.rmtree(staging.root, ignore_errors=True)
            return existing
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    return out.to_traces(manifest, verify=False)


def _complete_source(store: TraceStore) -> dict[str, Any]:
    """The manifest of a complete, undamaged source store of the current format, or raise."""
    manifest = store.read_manifest()
    if manifest is None:
        raise TraceStoreMismatchError(f"cannot merge {store.root}: it holds no trace store")
    if manifest["status"] != "complete":
        raise TraceStoreMismatchError(
            f"cannot merge {store.root}: its run is not complete (status "
            f"{manifest['status']!r}, completed draws per chain {manifest['completed']})"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TraceStoreMismatchError(
            f"cannot merge {store.root}: trace format version {manifest.get('format_version')} "
            f"(merging needs {FORMAT_VERSION}, which records the store's identity)"
        )
    store.check_complete(manifest)
    return manifest


def _run_settings(manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Fingerprint and fields of a store's config with the chain range set aside."""
    config = SGLDConfig(**manifest["config"]).replace(num_chains=1, first_chain=0)
    fields = {k: v for k, v in config.to_dict().items() if k not in _CHAIN_FIELDS}
    return config.fingerprint(), fields


def _check_same_run(stores: list[TraceStore], manifests: list[dict[str, Any]]) -> None:
    """Every source holds chains of the same run as the first one, or raise naming the difference."""
    ref_store, ref = stores[0], manifests[0]
    ref_print, ref_fields = _run_settings(ref)
    for store, manifest in zip(stores[1:], manifests[1:], strict=True):
        where = f"cannot merge {store.root} with {ref_store.root}:"
        fingerprint, fields = _run_settings(manifest)
        if fingerprint != ref_print:
            diff = {k: (ref_fields[k], v) for k, v in fields.items() if ref_fields.get(k) != v}
            raise TraceStoreMismatchError(
                f"{where} different SGLD settings besides num_chains/first_chain (first → this: "
                f"{diff})"
            )
        differs = describe_difference(ref.get("identity") or {}, manifest.get("identity") or {})
        if differs:
            raise TraceStoreMismatchError(
                f"{where} traces of {_explain(differs)} (differing: {', '.join(differs)})"
            )
        if manifest["observables"] != ref["observables"]:
            raise TraceStoreMismatchError(
                f"{where} different observables or shapes ({ref['observables']} → "
                f"{manifest['observables']})"
            )
        if manifest.get("num_params") != ref.get("num_params"):
            raise TraceStoreMismatchError(
                f"{where} different numbers of sampled parameters ({ref.get('num_params')} → "
                f"{manifest.get('num_params')})"
            )
        for name in ref["observables"]:
            a = ref_store._load_npy(ref_store.root / "traces" / f"init_{name}.npy")
            b = store._load_npy(store.root / "traces" / f"init_{name}.npy")
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6):
                raise TraceStoreMismatchError(
                    f"{where} different losses at w* of observable {name!r} (different weights, "
                    "data or loss function)"
                )


def _check_contiguous(stores: list[TraceStore], manifests: list[dict[str, Any]]) -> None:
    """The sources' chain ranges (sorted by first chain) follow one another without overlap."""
    for i in range(1, len(stores)):
        prev, cur = manifests[i - 1]["config"], manifests[i]["config"]
        end = prev["first_chain"] + prev["num_chains"]
        start = cur["first_chain"]
        if start != end:
            what = "overlap" if start < end else f"leave a gap (chains {end}..{start - 1} missing)"
            raise TraceStoreMismatchError(
                f"cannot merge: the chain ranges of {stores[i - 1].root} (chains "
                f"{prev['first_chain']}..{end - 1}) and {stores[i].root} (chains "
                f"{start}..{start + cur['num_chains'] - 1}) {what}"
            )


def _existing_merge(out: TraceStore, manifest: dict[str, Any]) -> LossTraces | None:
    """The traces in ``out`` if it already holds this merge's complete traces; None if it holds
    nothing; :class:`TraceStoreMismatchError` if it holds anything else."""
    existing = out.read_manifest()
    if existing is None:
        return None
    same = (
        existing["status"] == "complete"
        and existing.get("format_version") == FORMAT_VERSION
        and existing.get("fingerprint") == manifest["fingerprint"]
        and existing["observables"] == manifest["observables"]
        and existing.get("num_params") == manifest["num_params"]
        and not describe_difference(existing.get("identity") or {}, manifest["identity"])
    )
    if not same:
        raise TraceStoreMismatchError(
            f"out_dir {out.root} already holds other traces (status {existing['status']!r}, "
            f"fingerprint {existing.get('fingerprint')}, merge's {manifest['fingerprint']}); "
            "use another out_dir or delete this one"
        )
    return out.to_traces(existing)


def _write_merged(staging: TraceStore, stores: list[TraceStore], manifest: dict[str, Any]) -> None:
    """Write the merged store into ``staging`` (chain by chain, in blocks of draws)."""
    root = staging.root
    for sub in ("traces", "diagnostics", "chains"):
        (root / sub).mkdir(parents=True)
    cfg = manifest["config"]
    c, d = cfg["num_chains"], cfg["num_draws"]
    for name in manifest["observables"]:
        shutil.copyfile(stores[0].root / "traces" / f"init_{name}.npy",
                        root / "traces" / f"init_{name}.npy")  # fmt: skip
    targets: list[tuple[str, str, str, tuple[int, ...]]] = [
        ("traces", name, cfg["trace_dtype"], (c, d, *shape))
        for name, shape in manifest["observables"].items()
    ]
    targets += [("diagnostics", diag, "float64", (c, d)) for diag in ("sgld_loss", "distance")]
    for kind, name, dtype, shape in targets:
        path = root / kind / f"{name}.npy"
        dest = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = 0
        for store in stores:
            if kind == "traces":
                src = store.trace_array(name, "r")
            else:
                src = store.diag_array(name, "r")
            per_draw = max(1, int(np.prod(src.shape[2:], dtype=np.int64)) * src.itemsize)
            step = max(1, _CHECK_BYTES // per_draw)
            for chain in range(src.shape[0]):
                for start in range(0, d, step):
                    dest[offset + chain, start : start + step] = src[chain, start : start + step]
            offset += src.shape[0]
        dest.flush()
        del dest
    staging.write_manifest(manifest)
