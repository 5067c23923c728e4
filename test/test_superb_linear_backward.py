"""dphubert.superb.linear_backward gives s3prl's own values and gradients, bit for bit.

The references are s3prl's functions as s3prl ships them (``linear_backward.s3prl_originals``:
``s3prl/upstream/interfaces.py`` and ``s3prl/downstream/model.py`` executed afresh from the installed package, so
that a patch installed by another test in this process cannot stand in for the original), and torch's own
``pad_sequence``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dphubert.superb import linear_backward


def values_and_gradients(function, leaves):
    """The function's outputs and the gradients of a fixed random weighting of them with respect to ``leaves``."""
    out = function()
    out = out[0] if isinstance(out, tuple) else out
    stacked = torch.cat([o.reshape(-1) for o in out]) if isinstance(out, list) else out.reshape(-1)
    weights = torch.randn(stacked.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((stacked * weights).sum(), leaves)
    return [o.detach() for o in (out if isinstance(out, list) else [out])], grads


def assert_identical(a, b):
    (values_a, grads_a), (values_b, grads_b) = a, b
    assert len(values_a) == len(values_b) and len(grads_a) == len(grads_b)
    for x, y in zip([*values_a, *grads_a], [*values_b, *grads_b]):
        assert x.shape == y.shape and torch.equal(x, y)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("padding_value", [0.0, -1.5])
def test_pad_sequence_matches_torch(batch_first, padding_value):
    generator = torch.Generator().manual_seed(0)
    items = [torch.randn(n, 6, generator=generator, requires_grad=True) for n in (5, 9, 1, 9, 3)]
    ours = values_and_gradients(lambda: linear_backward.pad_sequence(items, batch_first, padding_value), items)
    torch_own = values_and_gradients(
        lambda: torch.nn.utils.rnn.pad_sequence(items, batch_first=batch_first, padding_value=padding_value), items)
    assert_identical(ours, torch_own)
    labels = [torch.tensor([1, 2, 3]), torch.tensor([4])]  # integer labels (no gradients): torch's own path
    assert torch.equal(linear_backward.pad_sequence(labels, batch_first=True, padding_value=-100),
                       torch.tensor([[1, 2, 3], [4, -100, -100]]))


def test_featurizer_tolist_and_mean_pooling_match_s3prl():
    s3prl_own = linear_backward.s3prl_originals()
    featurizer = SimpleNamespace(downsample_rate=160)
    wavs = [torch.zeros(n * 160) for n in (7, 12, 3, 12)]
    weight = torch.tensor([0.3, 0.7], requires_grad=True)  # as s3prl's learned layer weights feed tolist
    layers = torch.randn(2, 4, 12, 5)

    def split(tolist):
        return lambda: tolist(featurizer, wavs, (weight[:, None, None, None] * layers).sum(0))

    assert_identical(values_and_gradients(split(linear_backward.featurizer_tolist), [weight]),
                     values_and_gradients(split(s3prl_own["featurizer_tolist"]), [weight]))
    with pytest.raises(AssertionError):  # s3prl's own length check still applies
        linear_backward.featurizer_tolist(featurizer, [torch.zeros(40 * 160)], layers[0])

    hidden = torch.randn(4, 12, 5, requires_grad=True)
    lengths = torch.tensor([7, 12, 3, 12])

    def pool(forward):
        return lambda: forward(None, hidden * 1.0, lengths)

    assert_identical(values_and_gradients(pool(linear_backward.mean_pooling_forward), [hidden]),
                     values_and_gradients(pool(s3prl_own["mean_pooling_forward"]), [hidden]))
    assert torch.equal(linear_backward.mean_pooling_forward(None, hidden, lengths)[1], torch.ones(4).long())


def test_install_patches_s3prl_and_the_experts_pad_sequence():
    from dphubert.superb import running

    running.setup()
    linear_backward.install("speech_commands")
    import s3prl.downstream.speech_commands.expert as ks_expert
    from s3prl.downstream.model import MeanPooling
    from s3prl.upstream.interfaces import Featurizer

    assert Featurizer.tolist is linear_backward.featurizer_tolist
    assert MeanPooling.forward is linear_backward.mean_pooling_forward
    assert ks_expert.pad_sequence is linear_backward.pad_sequence
    linear_backward.install(None)  # -e runs: the downstream comes from the saved arguments
    linear_backward.install("no_such_downstream")  # run_downstream reports it itself
