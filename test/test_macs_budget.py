"""A compute budget: expected / deterministic MACs of gated models, the MACs budget of Step 1."""

import pytest
import torch

from conftest import ALL_GATES, tiny_config
from dphubert.models import Wav2Vec2Model
from dphubert.models.macs import count_macs

VARIANTS = [("hubert", False), ("wavlm", False), ("hubert", True), ("wavlm", True)]


def _gated(model_type, large):
    model = Wav2Vec2Model(tiny_config(model_type, large, **ALL_GATES))
    for gate in model.gates().values():
        gate.log_alpha.data.normal_(1.0, 2.5)  # a mix of pruned, soft and kept units
    return model


@pytest.mark.parametrize("model_type,large", VARIANTS)
def test_deterministic_macs_equal_the_pruned_models_count(model_type, large):
    model = _gated(model_type, large)
    layers = model.encoder.transformer.layers
    layers[1].attention.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # a dropped attention block
    layers[2].feed_forward.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # a dropped FFN block
    layers[0].feed_forward.hard_concrete_for_intermediate.log_alpha.data.fill_(-20)  # an FFN with no unit left
    for seconds in (10.0, 1.3):
        pruned = model.prune()
        assert model.deterministic_macs(seconds) == count_macs(pruned, seconds)["total"]
    assert model.deterministic_macs() < count_macs(model)["total"]  # count_macs: the gated model as it runs


@pytest.mark.parametrize("model_type,large", VARIANTS)
def test_expected_macs_is_differentiable_in_every_gate(model_type, large):
    model = _gated(model_type, large)
    expected = model.expected_macs(10.0)
    expected.backward()
    for name, gate in model.gates().items():
        grad = gate.log_alpha.grad
        assert grad is not None and torch.isfinite(grad).all() and (grad > 0).all(), name
    # Every gate fully open: the full model's count; fully closed: only the ungated parts and one conv channel.
    with torch.no_grad():
        for gate in model.gates().values():
            gate.log_alpha.fill_(30.0)
    assert float(model.expected_macs(10.0).detach()) == pytest.approx(count_macs(model, 10.0)["total"], rel=1e-6)
    assert model.deterministic_macs(10.0) == count_macs(model, 10.0)["total"]


def test_attention_macs_grow_with_frames_squared():
    """Heads cost more per head on long inputs: the expected count keeps the T^2 terms."""
    model = _gated("hubert", False)
    heads = [layer.attention.hard_concrete_for_heads for layer in model.encoder.transformer.layers]

    def head_grad(seconds):
        model.zero_grad()
        model.expected_macs(seconds).backward()
        return float(heads[0].log_alpha.grad.sum())

    frames = {s: count_macs(model, s)["frames"] for s in (1.0, 4.0)}
    ratio = head_grad(4.0) / head_grad(1.0)
    linear = frames[4.0] / frames[1.0]
    assert ratio > 1.05 * linear  # more than linear in the frames
