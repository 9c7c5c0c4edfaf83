"""Per-token loss weights by token class: the intervention of the stagewise controls.

:class:`ClassLossWeights` upweights (factor > 1) or removes (factor 0) the predicted tokens of one
token class (:mod:`bifrepro.data.token_classes`) in the training loss, as ``token_weights`` of
:func:`bifrepro.training.lm.train_causal_lm`. If class-level BIF is causal, upweighting a class it
calls helpful for a query class lowers that query class's loss.
"""

from __future__ import annotations

import torch

from bifrepro.data.token_classes import TOKEN_CLASSES, TokenClassifier

__all__ = ["ClassLossWeights"]


class ClassLossWeights:
    """``[B, T-1]`` loss weights: ``factor`` for predicted tokens of ``class_name``, 1 elsewhere.

    Classes are those of :meth:`TokenClassifier.classify` on the batch as trained on (synthetic
    repeated-token sequences included), so the weights follow each token's role in context.
    """

    def __init__(self, classifier: TokenClassifier, class_name: str, factor: float) -> None:
        if class_name not in TOKEN_CLASSES:
            raise ValueError(f"class_name={class_name!r} must be one of {list(TOKEN_CLASSES)}")
        if not (factor >= 0 and factor < float("inf")):
            raise ValueError(f"factor={factor} must be finite and >= 0")
        self.classifier = classifier
        self.class_id = TOKEN_CLASSES.index(class_name)
        self.class_name = class_name
        self.factor = float(factor)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        classes = self.classifier.classify(input_ids, attention_mask)[:, 1:]
        w = torch.ones(classes.shape, dtype=torch.float32)
        w[classes == self.class_id] = self.factor
        return w
