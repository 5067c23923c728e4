"""Pieces every importer shares: the error type, key renaming, config assembly and strict model building."""

import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..models.checkpoint import CheckpointError, load_state_dict_strict, normalize_state_dict
from ..models.config import ConfigError
from ..models.model import Wav2Vec2Model

log = logging.getLogger("dphubert.convert")

StateDict = Dict[str, torch.Tensor]


class ConvertError(CheckpointError):
    """A source that cannot be converted; the message names the file and the fix."""


def rename_keys(state: StateDict, rules: Sequence[Tuple[str, str]], drop: Sequence[str] = ()) -> StateDict:
    """Apply the first matching ``(regex, replacement)`` rule to each key; keys matching a ``drop`` regex go.

    Keys no rule matches are kept as they are, so that strict loading reports them as unexpected.
    """
    compiled = [(re.compile(pattern + r"$"), repl) for pattern, repl in rules]
    dropped = [re.compile(pattern) for pattern in drop]
    out = {}
    for key, value in state.items():
        if any(d.match(key) for d in dropped):
            continue
        for pattern, repl in compiled:
            if pattern.match(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    return out


def tensor_dict(obj: Any) -> bool:
    """True for a non-empty dict whose values are all tensors (a state dict)."""
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def num_layers_in(state: StateDict, prefix: str) -> int:
    """How many ``prefix<N>.`` blocks the state dict holds (``prefix`` ends with a dot)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for m in map(pattern.match, state) if m}
    return max(indices) + 1 if indices else 0


def head_fields(model_type: str, num_heads: int, num_layers: int, num_buckets: Optional[int] = None,
                max_distance: Optional[int] = None) -> Dict[str, Any]:
    """Config keys for the attention heads: plain models count heads, WavLM lists the kept original heads."""
    if model_type != "wavlm":
        return {"encoder_num_heads": num_heads}
    fields = {"encoder_total_num_heads": num_heads, "encoder_remaining_heads": [list(range(num_heads))] * num_layers}
    if num_buckets is not None:
        fields["encoder_num_buckets"] = num_buckets
    if max_distance is not None:
        fields["encoder_max_distance"] = max_distance
    return fields


def build_model(config: Dict[str, Any], state: StateDict, source: str) -> Wav2Vec2Model:
    """Our model from a config and a state dict in our names; disagreements raise one clear error."""
    try:
        model = Wav2Vec2Model(config)
    except ConfigError as e:
        raise ConvertError(f"{source}: cannot build a model from the converted config: {e}") from None
    load_state_dict_strict(model, normalize_state_dict(state), source)
    return model.eval()


def check_supported(source: str, problems: Iterable[Optional[str]]) -> None:
    """Raise on the first non-empty problem description (a config feature our model cannot express)."""
    for problem in problems:
        if problem:
            raise ConvertError(f"{source}: {problem}")


def summary(model: Wav2Vec2Model) -> str:
    cfg = model.config
    heads: List[int] = ([len(h) for h in cfg["encoder_remaining_heads"]] if "encoder_remaining_heads" in cfg
                        else cfg["encoder_num_heads"])
    head_text = str(heads[0]) if len(set(heads)) == 1 else "/".join(map(str, heads))
    style = "pre-LN" if cfg["encoder_layer_norm_first"] else "post-LN"
    return (f"{cfg['model_type']}, {cfg['encoder_num_layers']} layers, dim {cfg['encoder_embed_dim']}, "
            f"{head_text} heads, {style}, {cfg['extractor_mode']} CNN, "
            f"normalize_waveform={cfg['normalize_waveform']}, {model.num_params() / 1e6:.2f}M params")
