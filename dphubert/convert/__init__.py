"""Turn pretrained checkpoints of other toolkits into our model (a teacher for distillation).

Usage::

    from dphubert.convert import convert
    model = convert("hf", "path/to/hf_dir")                       # HF save_pretrained directory
    model = convert("fairseq", "hubert_base_ls960.pt", trust_checkpoint=True)
    model = convert("torchaudio", "hubert_base_state_dict.pt", num_heads=12)
    model = convert("dphubert", "DPHuBERT-sp0.75.pth")            # our files and the released ones

Every importer returns a ``Wav2Vec2Model`` in eval mode whose ``extract_features`` matches the source model's
hidden states; unreadable or unknown sources raise ``ConvertError`` / ``CheckpointError`` (one line naming the
file and the fix). The CLI is ``python -m dphubert.bin.convert``.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..models.checkpoint import CheckpointError, extra_entries, model_from_checkpoint, read_checkpoint
from ..models.model import Wav2Vec2Model
from .common import ConvertError, summary
from .fairseq import from_fairseq, parse_conv_layers
from .hf import from_hf
from .torchaudio_sd import from_torchaudio, infer_config

KINDS = ("hf", "fairseq", "torchaudio", "dphubert")


def convert(source_kind: str, src: Union[str, Path, Dict[str, Any]], trust_checkpoint: bool = False,
            normalize_waveform: Optional[bool] = None, **kw) -> Wav2Vec2Model:
    """Our model from ``src`` of kind ``hf``, ``fairseq``, ``torchaudio`` or ``dphubert``.

    ``normalize_waveform`` (None = what the source says or implies) overrides waveform normalisation for every
    kind; ``torchaudio`` also takes ``config`` (dict of our config keys) and ``num_heads``.
    """
    if source_kind == "hf":
        return from_hf(src, normalize_waveform=normalize_waveform, trust_checkpoint=trust_checkpoint, **kw)
    if source_kind == "fairseq":
        return from_fairseq(src, trust_checkpoint=trust_checkpoint, normalize_waveform=normalize_waveform, **kw)
    if source_kind == "torchaudio":
        return from_torchaudio(src, trust_checkpoint=trust_checkpoint, normalize_waveform=normalize_waveform, **kw)
    if source_kind == "dphubert":
        return from_dphubert(src, trust_checkpoint=trust_checkpoint, normalize_waveform=normalize_waveform, **kw)
    raise ConvertError(f"unknown source kind {source_kind!r}; choose one of {list(KINDS)}")


def from_dphubert(path: Union[str, Path], trust_checkpoint: bool = False,
                  normalize_waveform: Optional[bool] = None) -> Wav2Vec2Model:
    """Our own files and the released DPHuBERT / DPWavLM files (``{"state_dict", "config", ...}``)."""
    return read_dphubert(path, trust_checkpoint, normalize_waveform)[0]


def read_dphubert(path: Union[str, Path], trust_checkpoint: bool = False,
                  normalize_waveform: Optional[bool] = None) -> Tuple[Wav2Vec2Model, Dict[str, Any]]:
    """``from_dphubert`` plus the file's other entries (``distill_linear_projs``, ``distill``, ...)."""
    ckpt = read_checkpoint(path, trust_checkpoint)
    if isinstance(ckpt, dict) and "config" in ckpt and "state_dict" in ckpt:
        if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state_dict"], dict):
            raise ConvertError(f"{path}: 'config' and 'state_dict' must both be dicts (found "
                               f"{type(ckpt['config']).__name__} and {type(ckpt['state_dict']).__name__})")
    if normalize_waveform is not None and isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        ckpt = {**ckpt, "config": {**ckpt["config"], "normalize_waveform": bool(normalize_waveform)}}
    return model_from_checkpoint(ckpt, str(path)), extra_entries(ckpt)


__all__ = ["KINDS", "CheckpointError", "ConvertError", "convert", "from_dphubert", "from_fairseq", "from_hf",
           "from_torchaudio", "infer_config", "parse_conv_layers", "read_dphubert", "summary"]
