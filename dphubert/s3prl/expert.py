"""An s3prl upstream for every model file ``dphubert.models.load_model`` reads.

Our compressed models, converted teachers and the released DPHuBERT/DPWavLM files all go through it. It follows
s3prl's expert contract: a list of 1-D 16 kHz waveforms in, ``{"hidden_states": [B x T x D] * (layers + 1)}``
out, padding handled inside (each item gives the same states as alone), ``get_downsample_rates`` = the CNN's
total stride (320).

    from dphubert.s3prl.expert import register
    register()                                   # s3prl.hub.dphubert_local now exists
    from s3prl.nn import S3PRLUpstream
    upstream = S3PRLUpstream("dphubert_local", path_or_url="exp/<tag>/final/model.pt")

``register()`` also makes the name visible to s3prl's ``run_downstream`` (``-u dphubert_local -k model.pt``) and
to ESPnet's ``S3prlFrontend(frontend_conf={"upstream": "dphubert_local", "path_or_url": ...})``, without editing
site-packages: ``s3prl.hub`` is a plain module, so a runtime attribute is found by ``getattr(hub, name)``.
"""

import math
from typing import Dict, List

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from dphubert.models import load_model

UPSTREAM_NAME = "dphubert_local"


class UpstreamExpert(torch.nn.Module):
    def __init__(self, ckpt: str, model_config: str = None, refresh: bool = False, **kwargs):
        super().__init__()
        self.model = load_model(ckpt)
        if self.model.gates():
            raise ValueError(f"{ckpt}: this model still has pruning gates; prune it first "
                             f"(python -m dphubert.bin.prune --ckpt {ckpt} --out pruned.pt)")
        strides = [stride for _, _, stride in self.model.config["extractor_conv_layer_config"]]
        self.downsample_rate = math.prod(strides)

    def get_downsample_rates(self, key: str) -> int:
        return self.downsample_rate

    def forward(self, wavs: List[Tensor]) -> Dict[str, List[Tensor]]:
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = pad_sequence(wavs, batch_first=True)
        states, _ = self.model.extract_features(padded, lengths)
        return {"hidden_states": states, "last_hidden_state": states[-1]}


def dphubert_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """s3prl hub entry: a dphubert model file (ours, a converted teacher or a released DPHuBERT/DPWavLM file)."""
    return UpstreamExpert(ckpt, *args, **kwargs)


def register() -> None:
    """Apply the torchaudio compatibility layer, then add ``dphubert_local`` (and ``dphubert_onnx``) to ``s3prl.hub``
    (idempotent)."""
    from dphubert.s3prl import compat

    compat.apply()
    import s3prl.hub

    setattr(s3prl.hub, UPSTREAM_NAME, dphubert_local)
    from dphubert.s3prl.onnx_expert import UPSTREAM_NAME as ONNX_NAME, dphubert_onnx

    setattr(s3prl.hub, ONNX_NAME, dphubert_onnx)  # an exported ONNX file (python -m dphubert.bin.export)
