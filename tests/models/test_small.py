"""Small local models: shapes, kronfluence-trackable layers, determinism, no downloads."""

from __future__ import annotations

import torch
from torch import nn

from bifrepro.models.small import MLPClassifier, SmallCNN, count_parameters, tiny_causal_lm


def _owned_by(model: nn.Module, types: tuple[type, ...]) -> int:
    return sum(p.numel() for m in model.modules() if type(m) in types for p in m.parameters(False))


def test_small_cnn_any_image_size_and_only_linear_or_conv_parameters() -> None:
    model = SmallCNN(in_channels=1, num_classes=10, width=4, hidden=16)
    for side in (8, 28):
        assert model(torch.randn(3, 1, side, side)).shape == (3, 10)
    # Every parameter lives in a layer kronfluence can track.
    assert _owned_by(model, (nn.Linear, nn.Conv2d)) == count_parameters(model)
    rgb = SmallCNN(in_channels=3, num_classes=5)
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_mlp_classifier() -> None:
    model = MLPClassifier(6, 3, hidden=(8,))
    assert model(torch.randn(4, 6)).shape == (4, 3)
    assert count_parameters(model) == 6 * 8 + 8 + 8 * 3 + 3
    assert count_parameters(MLPClassifier(4, 2, hidden=())) == 4 * 2 + 2


def test_tiny_causal_lm_is_local_all_linear_and_seeded() -> None:
    model = tiny_causal_lm(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, seed=7)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 50, (2, 10))
    assert model(input_ids=ids).logits.shape == (2, 10, 50)
    # Untied head: lm_head is its own nn.Linear, distinct from the embedding.
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    # Everything but the embedding and the norms is an nn.Linear.
    other = {type(m).__name__ for m in model.modules() if list(m.parameters(False))} - {"Linear"}
    assert other <= {"Embedding", "LlamaRMSNorm"}, other
    linear = _owned_by(model, (nn.Linear,))
    assert linear / count_parameters(model) > 0.5
    again = tiny_causal_lm(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, seed=7)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )
    state = torch.get_rng_state()
    tiny_causal_lm(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
