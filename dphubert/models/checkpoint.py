"""Our checkpoint format and safe loading of model files.

A model file is ``{"format": "dphubert", "version": 1, "config": {...}, "state_dict": {...}}`` (plus optional
``"distill_linear_projs"``): plain tensors and containers, loadable with ``torch.load(weights_only=True)``.
The released DPHuBERT / DPWavLM files and every file of the reference code (``{"state_dict", "config",
"distill_linear_projs"}``, with ``feature_extractor.dummy_weight``) load too: see ``release.py``.
"""

import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .config import ConfigError, normalize_config
from .model import Wav2Vec2Model

FORMAT = "dphubert"
VERSION = 1


class CheckpointError(ValueError):
    """A file that cannot be turned into a model; the message names the file and the fix."""


def read_checkpoint(path: Union[str, Path], trust_checkpoint: bool = False) -> Dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; arbitrary pickles only with ``trust_checkpoint=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if needs:
            raise CheckpointError(
                f"{path}: the file needs arbitrary code to unpickle ({needs.group(1)}); if you trust its source, "
                f"pass --trust-checkpoint (trust_checkpoint=True)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or another format)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ModuleNotFoundError, IndexError,
            KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def normalize_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Accept both weight-norm spellings and drop what the encoder does not use (fine-tuning heads)."""
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        if key.startswith("aux."):
            continue
        out[key] = value
    return out


def model_from_checkpoint(ckpt: Any, source: str = "checkpoint") -> Wav2Vec2Model:
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        kind = type(ckpt).__name__
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else []
        raise CheckpointError(
            f"{source}: not a dphubert/DPHuBERT model file (a {kind} with keys {keys}; expected 'config' and "
            f"'state_dict'); convert it first: python -m dphubert.bin.convert --from {{hf,fairseq,torchaudio}} "
            f"{source} --out model.pt")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{source}: 'config' and 'state_dict' must both be dicts (got "
                              f"{type(ckpt['config']).__name__} and {type(ckpt['state_dict']).__name__})")
    try:
        config = normalize_config(dict(ckpt["config"]), source)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    from .release import from_release_layout  # (release.py imports this module)

    config, state = from_release_layout(config, normalize_state_dict(ckpt["state_dict"]), source)
    model = Wav2Vec2Model(config)
    load_state_dict_strict(model, state, source)
    return model.eval()


def load_state_dict_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: config and state_dict disagree: missing keys {_short(missing)}, "
                              f"unexpected keys {_short(unexpected)}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{source}: config and state_dict disagree on shapes (file vs config): {_short(wrong)}")
    model.load_state_dict(state, strict=True)


def _short(items, limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def load_model(path: Union[str, Path], trust_checkpoint: bool = False) -> Wav2Vec2Model:
    """Load one of our model files or a released DPHuBERT/DPWavLM file; the model is returned in eval mode."""
    return model_from_checkpoint(read_checkpoint(path, trust_checkpoint), str(path))


MODEL_KEYS = ("format", "version", "config", "state_dict")


def extra_entries(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """What a model file carries besides the model (``distill_linear_projs``, ``teacher_num_params``, ...)."""
    return {k: v for k, v in ckpt.items() if k not in MODEL_KEYS}


def checkpoint_dict(model: Wav2Vec2Model, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    ckpt = {"format": FORMAT, "version": VERSION, "config": dict(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    ckpt.update(extra or {})
    return ckpt


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """Write to a temporary file in the same directory, then rename: a kill never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:  # Python's open: an unwritable path raises OSError, not torch's RuntimeError
        torch.save(obj, f)
    os.replace(tmp, path)


def save_model(model: Wav2Vec2Model, path: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> None:
    atomic_save(checkpoint_dict(model, extra), path)
