"""Hand-made checkpoint results and data for the merge, token-pair and figure tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from bifrepro.data.token_classes import TOKEN_CLASSES

STEPS = [10, 30, 100, 300, 1000]
K = len(TOKEN_CLASSES)


def fake_data() -> Any:
    """Two query and two observed sequences of 4 tokens; token text = its id."""
    ids = torch.arange(8).reshape(2, 4)
    classes = torch.tensor([[-1, 0, 4, 2], [-1, 1, 3, 4]])
    return SimpleNamespace(
        query_ids=ids, observed_ids=ids + 10, query_classes=classes, observed_classes=classes,
        observed_index=np.array([5, 7]), classifier=SimpleNamespace(text=lambda i: f"t{i}"),
    )  # fmt: skip


def fake_results() -> list[dict[str, Any]]:
    """Induction rises between steps 30 and 300; influence of class 0 on 0 changes sign there."""
    out = []
    for i, step in enumerate(STEPS):
        score = [0.0, 0.1, 1.0, 1.9, 2.0][i]
        mean = torch.full((K, K), 0.01 * i)
        mean[0, 0] = 0.5 - 0.25 * i
        pairs = torch.zeros(2, 4, 2, 4)
        pairs[0, 1, 0, 1] = 0.4 - 0.2 * i  # + before, - after: changes sign
        pairs[1, 2, 1, 3] = 0.1  # never changes sign
        cls = {"mean": mean, "std_error": torch.full((K, K), 0.05),
               "query_counts": torch.ones(K, dtype=torch.long),
               "train_counts": torch.ones(K, dtype=torch.long)}  # fmt: skip
        out.append({
            "label": f"step{step}", "step": step, "diverged": False, "seconds": 1.0,
            "induction": {"score": score, "first_loss": 3.0, "second_loss": 3.0 - score},
            "class_correlation": cls, "class_covariance": cls,
            "pairs": {"correlation": pairs.half(), "covariance": pairs.half()},
            "llc": {"mean": 5.0 + i, "std_error": 0.5}, "loss_train": 3.0 - 0.1 * i,
            "loss_query": 3.2 - 0.1 * i, "healthy": i != 2, "summary": "ok", "chain": {},
            "health": {"health/healthy": float(i != 2)}, "health_summary": "chains ok",
            "sampler": {"step_size": 1e-4},
        })  # fmt: skip
    return out


SETTINGS = SimpleNamespace(
    normalize="correlation", induction_min_rise=0.5, flip_threshold=0.2, num_pairs=2
)
