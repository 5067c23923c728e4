"""``dphubert_onnx``: an exported ONNX file (fp32 or int8) as an s3prl upstream, run by onnxruntime.

The same contract as ``dphubert_local`` (a list of 1-D 16 kHz waveforms in, ``{"hidden_states": [B x T x D]
...}`` out, each item of the padded batch as alone), so a SUPERB head can be trained or evaluated on exactly
what a deployed model computes, e.g. to compare int8 with fp32:

    python -m dphubert.bin.superb -- -m train -u dphubert_onnx -k model.int8.onnx -d speech_commands -n ks_int8

The file must hold every hidden state (``python -m dphubert.bin.export`` without ``--layers``) so that s3prl's
Featurizer weighs the same states as with the PyTorch model. Inference only (no gradients flow through it).
"""

from typing import Dict, List

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

UPSTREAM_NAME = "dphubert_onnx"


class OnnxUpstreamExpert(torch.nn.Module):
    def __init__(self, ckpt: str, model_config: str = None, refresh: bool = False, **kwargs):
        super().__init__()
        from dphubert.export import OnnxEncoder

        self.encoder = OnnxEncoder(ckpt, threads=torch.get_num_threads())
        layers = self.encoder.layers
        if layers and layers != list(range(len(layers))):
            raise ValueError(f"{ckpt}: holds hidden states {layers} only; an s3prl upstream needs all of them: "
                             f"export again without --layers")
        self.downsample_rate = int(self.encoder.downsample_rate)
        self._device_probe = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # follows .to(device)

    def get_downsample_rates(self, key: str) -> int:
        return self.downsample_rate

    def forward(self, wavs: List[Tensor]) -> Dict[str, List[Tensor]]:
        device = wavs[0].device
        lengths = np.array([len(w) for w in wavs], dtype=np.int64)
        padded = pad_sequence([w.detach().float().cpu() for w in wavs], batch_first=True).numpy()
        states, _ = self.encoder(padded, lengths)
        hidden = [torch.from_numpy(np.ascontiguousarray(s)).to(device) for s in states]
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}


def dphubert_onnx(ckpt: str, *args, **kwargs) -> OnnxUpstreamExpert:
    """s3prl hub entry: an ONNX file written by ``python -m dphubert.bin.export``."""
    return OnnxUpstreamExpert(ckpt, *args, **kwargs)

