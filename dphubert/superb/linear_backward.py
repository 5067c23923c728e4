"""Drop-in replacements for three s3prl helpers whose backward grows with the square of the batch size.

s3prl's downstream heads take the upstream's padded batch apart and put it back together item by item:
``Featurizer.tolist`` and ``MeanPooling.forward`` (``s3prl/upstream/interfaces.py``, ``s3prl/downstream/model.py``)
index ``batch[i]`` once per item, and the experts re-pad with ``torch.nn.utils.rnn.pad_sequence``, which copies each
item into a slice of one output tensor. In autograd each ``batch[i]`` (SelectBackward) builds a zero tensor of the
whole batch for its gradient, and each slice copy (CopySlices) clones the whole output gradient: B full-batch
tensors per call. With the learned layer weights upstream of them (s3prl's weighted sum of hidden states) these
backward passes run on every step; a quick-mode KS run on CPU spent 20 of its 43 s there.

The replacements do the same arithmetic in linear time: ``unbind`` (one gradient ``stack``) instead of ``batch[i]``,
and ``stack`` of zero-padded items instead of the slice copies. Values and gradients are bit-identical
(test/test_superb_linear_backward.py compares them with s3prl's own functions); bench/superb_head_speed.py times
them. ``install(downstream)`` patches s3prl's ``Featurizer``, ``MeanPooling`` and the ``pad_sequence`` the
downstream's expert module imported.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_TORCH_PAD_SEQUENCE = torch.nn.utils.rnn.pad_sequence


def pad_sequence(sequences: Sequence[Tensor], batch_first: bool = False, padding_value: float = 0.0,
                 padding_side: str = "right") -> Tensor:
    """``torch.nn.utils.rnn.pad_sequence`` with a linear-time backward (torch's own when no item needs a gradient)."""
    if padding_side != "right" or not any(s.requires_grad for s in sequences):
        return _TORCH_PAD_SEQUENCE(sequences, batch_first=batch_first, padding_value=padding_value,
                                   padding_side=padding_side)
    longest = max(s.size(0) for s in sequences)
    # F.pad's last pair pads dim 0 (time): one zero pair per trailing dim before it
    padded = [F.pad(s, (0, 0) * (s.dim() - 1) + (0, longest - s.size(0)), value=padding_value) for s in sequences]
    return torch.stack(padded, dim=0 if batch_first else 1)


def featurizer_tolist(self, paired_wavs: List[Tensor], paired_feature: Tensor) -> List[Tensor]:
    """s3prl ``Featurizer.tolist``: the padded features cut to each wav's frame count, one item per wav."""
    from s3prl.upstream.interfaces import TOLERABLE_SEQLEN_DIFF

    assert paired_feature.dim() == 3, "(batch_size, max_seq_len, feat_dim)"
    lengths = [round(len(wav) / self.downsample_rate) for wav in paired_wavs]
    length_diff = abs(paired_feature.size(1) - round(max(len(wav) for wav in paired_wavs) / self.downsample_rate))
    assert length_diff < TOLERABLE_SEQLEN_DIFF, f"{length_diff} >= {TOLERABLE_SEQLEN_DIFF}"
    return [item[:length] for item, length in zip(paired_feature.unbind(0), lengths)]


def mean_pooling_forward(self, feature_BxTxH: Tensor, features_len, **kwargs):
    """s3prl ``MeanPooling.forward``: each item's mean over its first ``features_len[i]`` frames."""
    pooled = [torch.mean(item[:length], dim=0) for item, length in zip(feature_BxTxH.unbind(0), features_len)]
    return torch.stack(pooled), torch.ones(len(feature_BxTxH)).long()


def s3prl_originals() -> Dict[str, Callable]:
    """s3prl's own, unpatched ``Featurizer.tolist`` and ``MeanPooling.forward`` (from fresh executions of their
    installed modules, whatever ``install`` patched) and torch's ``pad_sequence``: the references of the test and
    of bench/superb_head_speed.py."""
    fresh = {}
    for name in ("s3prl.upstream.interfaces", "s3prl.downstream.model"):
        spec = importlib.util.spec_from_file_location(f"unpatched_{name}", importlib.util.find_spec(name).origin)
        fresh[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh[name])
    return {"featurizer_tolist": fresh["s3prl.upstream.interfaces"].Featurizer.tolist,
            "pad_sequence": _TORCH_PAD_SEQUENCE,
            "mean_pooling_forward": fresh["s3prl.downstream.model"].MeanPooling.forward}


def install(downstream: Optional[str]) -> None:
    """Patch s3prl's Featurizer and MeanPooling, and ``pad_sequence`` in ``s3prl.downstream.<downstream>.expert``
    (``downstream`` None, as for ``-e`` runs whose downstream is in the saved arguments: the first two only)."""
    from s3prl.downstream.model import MeanPooling
    from s3prl.upstream.interfaces import Featurizer

    Featurizer.tolist = featurizer_tolist
    MeanPooling.forward = mean_pooling_forward
    if downstream is None:
        return
    try:
        expert = importlib.import_module(f"s3prl.downstream.{downstream}.expert")
    except ImportError:
        return  # run_downstream names an unknown downstream itself
    if getattr(expert, "pad_sequence", None) is _TORCH_PAD_SEQUENCE:
        expert.pad_sequence = pad_sequence
