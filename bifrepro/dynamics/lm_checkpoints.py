"""Where the checkpoints of a stagewise LM run come from, and the folder their jobs share.

The embedded causal LM is trained here with a ``save_pretrained`` snapshot at every checkpoint
step (resumable, cached; :meth:`LMCheckpoints.train`); a model trained elsewhere names its
checkpoints as Hugging Face ``revision``s (Pythia's ``step1000`` …) or as sub-folders of a local
run. Either way :meth:`LMCheckpoints.load` goes through ``from_pretrained``. The work folder
(``work_dir``) holds what the jobs of one run share: the training manifest, the calibration and
one result per checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bifrepro.data.tokenizer import load_or_train_tokenizer, load_tokenizer
from bifrepro.io import atomic_write_json
from bifrepro.models.lm import CausalLMConfig, load_causal_lm, snapshot_dir
from bifrepro.training.lm import embedded_causal_lm

__all__ = ["LMCheckpoints", "settings_hash"]


def settings_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted JSON: names folders by their settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class LMCheckpoints:
    """The labelled checkpoints of one run (sorted by training step) and its folders."""

    model: CausalLMConfig
    labels: list[str]
    steps: list[int]
    #: Shared folder of the run's jobs.
    work_dir: Path
    #: Tokenizer and trained-model cache.
    cache_dir: Path
    #: Labels are sub-folders of ``model.name_or_path`` instead of Hugging Face revisions.
    subfolders: bool = False
    device: str | torch.device = "cpu"
    progress: bool | None = None

    @property
    def manifest(self) -> Path:
        """``training.json``: the snapshots and loss curve of the embedded training."""
        return self.work_dir / "training.json"

    def step(self, label: str) -> int:
        return self.steps[self.labels.index(label)]

    def tokenizer(self, texts: Sequence[str]) -> tuple[Any, str]:
        """The tokenizer (trained on ``texts`` for the embedded model) and a name for it."""
        m = self.model
        if m.is_embedded:
            tok, path = load_or_train_tokenizer(list(texts), self.cache_dir, m.vocab_size)
            return tok, path.name
        root = Path(str(m.name_or_path)).expanduser()
        if self.subfolders and not (root / "tokenizer.json").exists():
            return load_tokenizer(root / self.labels[0]), f"{root}/{self.labels[0]}"
        return load_tokenizer(str(m.name_or_path)), str(m.name_or_path)

    def train(
        self,
        tokenizer: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        data_key: str,
        batch_transform: Any = None,
    ) -> dict[str, Any]:
        """Train the embedded model with a snapshot at every checkpoint step (resumable, cached);
        write and return the manifest (snapshot folders, loss curve, summary)."""
        train = self.model.train
        cfg = dataclasses.replace(
            self.model,
            train=dataclasses.replace(train, save_steps=sorted(set(train.save_steps) | set(self.steps))),
        )  # fmt: skip
        _, final, summary = embedded_causal_lm(
            cfg, tokenizer, input_ids, attention_mask, self.cache_dir, data_key, self.device,
            self.progress, batch_transform=batch_transform,
        )  # fmt: skip
        run_dir = final.parent / "training"
        state = torch.load(run_dir / "train_state.pt", weights_only=False, map_location="cpu")
        snapshots = {lab: snapshot_dir(run_dir, st) for lab, st in zip(self.labels, self.steps, strict=True)}  # fmt: skip
        missing = [lab for lab, path in snapshots.items() if not (path / "config.json").exists()]
        if missing:
            raise RuntimeError(
                f"training finished but snapshots {missing} are missing in {run_dir}"
            )
        manifest = {
            "model_dir": str(final),
            "snapshots": {lab: str(path) for lab, path in snapshots.items()},
            "loss_curve": [float(x) for x in state["losses"]],
            "train_seconds": float(summary["train_seconds"]),
            "num_parameters": int(summary["num_parameters"]),
            "final_loss": float(summary["final_loss"]),
        }
        atomic_write_json(manifest, self.manifest)
        return manifest

    def training(self) -> dict[str, Any] | None:
        """The manifest of an earlier :meth:`train` (None if there is none)."""
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else None

    def load(self, label: str) -> torch.nn.Module:
        """The model at checkpoint ``label`` (``from_pretrained``, eval mode)."""
        m = self.model
        if m.is_embedded:
            training = self.training()
            if training is None:
                raise RuntimeError(
                    f"no trained snapshots in {self.work_dir}: run `python -m "
                    "experiments.stagewise_lm experiment=stagewise_lm experiment.mode=train` "
                    "(same settings) before the checkpoint jobs"
                )
            snaps = training["snapshots"]
            if label not in snaps:
                raise RuntimeError(
                    f"checkpoint {label!r} was not snapshotted (have {sorted(snaps)})"
                )
            return load_causal_lm(snaps[label], dtype=m.dtype, device=self.device)
        if self.subfolders:
            path = Path(str(m.name_or_path)).expanduser() / label
            return load_causal_lm(path, dtype=m.dtype, device=self.device)
        return load_causal_lm(
            str(m.name_or_path), revision=label, dtype=m.dtype, device=self.device,
            local_files_only=m.local_files_only,
        )  # fmt: skip
