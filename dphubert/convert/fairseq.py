"""Import a fairseq HuBERT / wav2vec 2.0 checkpoint or an original (unilm) WavLM checkpoint, without fairseq.

Accepted layouts:

* ``{"cfg": {"model": {...}, "task": {...}}, "model": state_dict}`` (fairseq >= 0.10, hydra configs);
* ``{"cfg": {...flat WavLMConfig fields...}, "model": state_dict}`` (microsoft/unilm WavLM releases);
* ``{"args": argparse.Namespace(...), "model": state_dict}`` (older fairseq);
* fine-tuned models (``w2v_encoder.w2v_model.*`` keys, the pretraining config under ``w2v_args``): the
  pretrained encoder is extracted, the CTC projection dropped.

A file whose config holds non-tensor objects (``argparse.Namespace``, OmegaConf ``DictConfig``, fairseq enums)
cannot be read with ``torch.load(weights_only=True)``: it is refused unless ``trust_checkpoint=True``
(``--trust-checkpoint``). Trusted files are unpickled with stand-ins for classes of packages that are not
installed (fairseq), so fairseq need not be installed. Waveform normalisation comes from the task's
``normalize`` flag (the model's flat config for WavLM).
"""

import argparse
import ast
import pickle
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch

from ..models.checkpoint import read_checkpoint
from ..models.model import Wav2Vec2Model
from .common import (ConvertError, StateDict, build_model, check_supported, head_fields, log, rename_keys,
                     tensor_dict)

_LAYER = r"encoder\.layers\.(\d+)\."
_OURS = r"encoder.transformer.layers.\1."
_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    # Group norm (conv 0 only) sits directly at index 2; a layer norm is wrapped as (TransposeLast, LN, TransposeLast).
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.(.+)", r"encoder.transformer.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (_LAYER + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)", _OURS + r"attention.\2_proj.\3"),
    (_LAYER + r"self_attn\.grep_linear\.(weight|bias)", _OURS + r"attention.gru_rel_pos_linear.\2"),
    (_LAYER + r"self_attn\.grep_a", _OURS + r"attention.gru_rel_pos_const"),
    (_LAYER + r"self_attn\.relative_attention_bias\.weight", _OURS + r"attention.rel_attn_embed.weight"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)", _OURS + r"layer_norm.\2"),
    (_LAYER + r"fc1\.(weight|bias)", _OURS + r"feed_forward.intermediate_dense.\2"),
    (_LAYER + r"fc2\.(weight|bias)", _OURS + r"feed_forward.output_dense.\2"),
    (_LAYER + r"final_layer_norm\.(weight|bias)", _OURS + r"final_layer_norm.\2"),
]
# Pretraining / fine-tuning heads the encoder does not use.
_DROP = [r"mask_emb$", r"label_embs_concat$", r"final_proj\.", r"quantizer\.", r"input_quantizer\.",
         r"project_q\.", r"project_inp\.", r"target_glu\.", r"w2v_encoder\.proj\."]
_FINETUNED_PREFIX = "w2v_encoder.w2v_model."
_DEFAULT_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"


def from_fairseq(path: Union[str, Path], trust_checkpoint: bool = False,
                 normalize_waveform: Union[bool, None] = None) -> Wav2Vec2Model:
    """Our model (eval mode) from a fairseq / unilm checkpoint file."""
    source = str(path)
    ckpt = read_fairseq_checkpoint(path, trust_checkpoint)
    if tensor_dict(ckpt):
        raise ConvertError(f"{source}: a bare state dict, not a fairseq checkpoint (no 'model' and 'cfg'/'args'); "
                           f"for a torchaudio state dict use --from torchaudio")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        keys = sorted(map(str, ckpt))[:4] if isinstance(ckpt, dict) else []
        raise ConvertError(f"{source}: not a fairseq checkpoint (a {type(ckpt).__name__} with keys {keys}; expected "
                           f"'model' and 'cfg' or 'args')")
    state = dict(ckpt["model"])
    model_cfg, task_cfg = _configs(ckpt, source)
    if any(k.startswith(_FINETUNED_PREFIX) for k in state):
        model_cfg, task_cfg = _pretraining_configs(model_cfg, source)
        state = {k[len(_FINETUNED_PREFIX):]: v for k, v in state.items() if k.startswith(_FINETUNED_PREFIX)}
    if "feature_extractor.conv_layers.0.0.weight" not in state or not any(".self_attn." in k for k in state):
        raise ConvertError(f"{source}: not a wav2vec 2.0 / HuBERT / WavLM checkpoint (no feature_extractor.conv_layers"
                           f".0.0.weight or encoder.layers.N.self_attn.* in its {len(state)} weights)")
    model_type = _model_type(model_cfg, state)
    config = convert_config(model_cfg, model_type, source)
    state = rename_keys(state, _RULES, _DROP)
    if "encoder.feature_projection.projection.weight" not in state:
        _add_identity_projection(state, config)
    if normalize_waveform is None:
        normalize_waveform = bool(task_cfg.get("normalize", model_cfg.get("normalize", False)))
        log.info("normalize_waveform=%s from the checkpoint's task config (normalize)", normalize_waveform)
    config["normalize_waveform"] = bool(normalize_waveform)
    return build_model(config, state, source)


def convert_config(cfg: Dict[str, Any], model_type: str, source: str = "checkpoint") -> Dict[str, Any]:
    """Our config dict from a fairseq ``Wav2Vec2Config`` / ``HubertConfig`` / unilm ``WavLMConfig`` dict."""
    relative = bool(cfg.get("relative_position_embedding", False))
    check_supported(source, [
        cfg.get("activation_fn", "gelu") != "gelu"
        and f"activation_fn={cfg.get('activation_fn')!r} is not supported (only 'gelu')",
        cfg.get("extractor_mode", "default") not in ("default", "layer_norm")
        and f"extractor_mode={cfg.get('extractor_mode')!r} is not supported ('default' or 'layer_norm')",
        cfg.get("layer_type", "transformer") != "transformer"
        and f"layer_type={cfg.get('layer_type')!r} (conformer) is not supported",
        int(cfg.get("pos_conv_depth", 1)) != 1 and "pos_conv_depth > 1 is not supported",
        model_type == "wavlm" and not relative and "WavLM without relative_position_embedding is not supported",
        model_type == "wavlm" and not cfg.get("gru_rel_pos", True) and "WavLM without gru_rel_pos is not supported",
    ])
    n = int(cfg.get("encoder_layers", 12))
    config = dict(
        model_type=model_type,
        extractor_mode="layer_norm" if cfg.get("extractor_mode", "default") == "layer_norm" else "group_norm",
        extractor_conv_layer_config=parse_conv_layers(cfg.get("conv_feature_layers", _DEFAULT_CONV), source),
        extractor_conv_bias=bool(cfg.get("conv_bias", False)),
        encoder_embed_dim=int(cfg.get("encoder_embed_dim", 768)),
        encoder_projection_dropout=float(cfg.get("dropout_input", 0.0)),
        encoder_pos_conv_kernel=int(cfg.get("conv_pos", 128)),
        encoder_pos_conv_groups=int(cfg.get("conv_pos_groups", 16)),
        encoder_num_layers=n,
        encoder_attention_dropout=float(cfg.get("attention_dropout", 0.1)),
        encoder_ff_interm_features=int(cfg.get("encoder_ffn_embed_dim", 3072)),
        encoder_ff_interm_dropout=float(cfg.get("activation_dropout", 0.0)),
        encoder_dropout=float(cfg.get("dropout", 0.1)),
        encoder_layer_norm_first=bool(cfg.get("layer_norm_first", False)),
        encoder_layer_drop=float(cfg.get("encoder_layerdrop", 0.0)),
    )
    config.update(head_fields(model_type, int(cfg.get("encoder_attention_heads", 12)), n,
                              cfg.get("num_buckets", 320) if relative else None,
                              cfg.get("max_distance", 1280) if relative else None))
    return config


def parse_conv_layers(spec: Any, source: str = "checkpoint") -> List[List[int]]:
    """``"[(512, 10, 5)] + [(512, 3, 2)] * 4"`` -> ``[[512, 10, 5], ...]`` without ``eval``.

    Allowed: list/tuple literals of integers, ``+`` between lists and ``*`` by an integer.
    """
    if isinstance(spec, (list, tuple)):
        layers = spec
    else:
        try:
            layers = _eval_list_expr(ast.parse(str(spec), mode="eval").body)
        except (SyntaxError, ValueError, TypeError) as e:
            raise ConvertError(f"{source}: cannot parse conv_feature_layers {spec!r} ({e})") from None
    try:
        out = [[int(c), int(k), int(s)] for c, k, s in layers]
    except (TypeError, ValueError):
        raise ConvertError(f"{source}: conv_feature_layers must list (channels, kernel, stride) triples, "
                           f"got {spec!r}") from None
    if not out:
        raise ConvertError(f"{source}: conv_feature_layers is empty")
    return out


def _eval_list_expr(node: ast.AST) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _eval_list_expr(node.left) + _eval_list_expr(node.right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _eval_list_expr(node.left), _eval_list_expr(node.right)
        if isinstance(left, int) and isinstance(right, list):
            left, right = right, left
        if not (isinstance(left, list) and isinstance(right, int)):
            raise ValueError("'*' must repeat a list by an integer")
        return left * right
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_list_expr(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


# ----- reading the file -----------------------------------------------------------------------------------------
def read_fairseq_checkpoint(path: Union[str, Path], trust_checkpoint: bool) -> Any:
    """``weights_only`` loading, or (trusted) full unpickling with stand-ins for classes of missing packages."""
    if not trust_checkpoint:
        return read_checkpoint(path, False)
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
            ImportError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


class _MissingClass:
    """Stand-in for a pickled class whose package is not installed (fairseq enums, meters, ...).

    Enums pickle as ``Class(value)``: the stand-in returns the plain value, which is what the config needs.
    Other objects keep their pickled state in ``__dict__`` and are never used by the converter.
    """

    def __new__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], (str, int, float, bool)):
            return args[0]
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_MissingClass,), {"__module__": module})


_tolerant_pickle = types.ModuleType("dphubert_tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = lambda f, **kw: _TolerantUnpickler(f, **kw).load()


# ----- configs ----------------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """Namespace / OmegaConf / stand-in objects -> plain dicts and lists, recursively."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return _plain(OmegaConf.to_container(obj, resolve=True))
    if isinstance(obj, argparse.Namespace) or isinstance(obj, _MissingClass):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _configs(ckpt: Dict[str, Any], source: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model config, task config) of a checkpoint; old ``args`` hold both in one namespace."""
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"])
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
            return cfg["model"], cfg.get("task") or {}
        if isinstance(cfg, dict) and "encoder_layers" in cfg:  # unilm WavLM: one flat config
            return cfg, cfg
    elif ckpt.get("args") is not None:
        args = _plain(ckpt["args"])
        if isinstance(args, dict):
            return args, args
    raise ConvertError(f"{source}: the checkpoint has no readable model config ('cfg' with a 'model' section, a "
                       f"flat WavLM 'cfg', or 'args'); is it a fairseq checkpoint?")


def _pretraining_configs(model_cfg: Dict[str, Any], source: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    w2v = model_cfg.get("w2v_args")
    if not isinstance(w2v, dict):
        raise ConvertError(f"{source}: a fine-tuned checkpoint without its pretraining config (w2v_args); convert "
                           f"the pretrained checkpoint instead ({model_cfg.get('w2v_path', 'w2v_path unknown')})")
    if isinstance(w2v.get("model"), dict):
        return w2v["model"], w2v.get("task") or {}
    return w2v, w2v


def _model_type(cfg: Dict[str, Any], state: StateDict) -> str:
    name = str(cfg.get("_name") or cfg.get("arch") or "").lower()
    if cfg.get("relative_position_embedding") or any(".grep_linear." in k for k in state):
        return "wavlm"
    if "hubert" in name:
        return "hubert"
    if "wav2vec" in name:
        return "wav2vec2"
    if "label_embs_concat" in state:
        return "hubert"
    if any(k.startswith("quantizer.") for k in state):
        return "wav2vec2"
    log.info("model type not recorded in the checkpoint; calling it hubert (informational only)")
    return "hubert"


def _add_identity_projection(state: StateDict, config: Dict[str, Any]) -> None:
    """fairseq omits ``post_extract_proj`` when CNN channels equal the embedding dim; ours is then the identity."""
    channels, dim = config["extractor_conv_layer_config"][-1][0], config["encoder_embed_dim"]
    if channels == dim:
        state["encoder.feature_projection.projection.weight"] = torch.eye(dim)
        state["encoder.feature_projection.projection.bias"] = torch.zeros(dim)
