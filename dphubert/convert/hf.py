"""Import a Hugging Face ``save_pretrained`` directory of HuBERT, WavLM or wav2vec 2.0.

Reads ``config.json`` (through transformers' config classes, so missing fields get HF's defaults) and the weights
(``model.safetensors``, a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``); nothing is
downloaded. ``HubertModel`` / ``WavLMModel`` / ``Wav2Vec2Model`` and their ``*ForCTC`` / ``*ForPreTraining`` /
``*ForSequenceClassification`` variants work: the encoder under the ``hubert.`` / ``wavlm.`` / ``wav2vec2.``
prefix is kept, heads (``lm_head``, ``quantizer``, ``project_q``, ``project_hid``, ...) and ``masked_spec_embed``
are dropped.

Waveform normalisation: HF models do not normalise inside the model; the feature extractor does it when
``preprocessor_config.json`` says ``do_normalize``. Our models normalise inside (``normalize_waveform``), so
``normalize_waveform=None`` (auto) takes ``do_normalize`` from ``preprocessor_config.json`` when the directory has
one, and otherwise assumes the fairseq convention (normalised input exactly for layer-norm CNNs, i.e. Large
models). Our normalisation is fairseq's (``layer_norm`` over the utterance, eps 1e-5); HF's feature extractor uses
eps 1e-7, a negligible difference for real audio. Pass ``normalize_waveform=True/False`` to decide yourself.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..models.checkpoint import read_checkpoint
from ..models.model import Wav2Vec2Model
from .common import ConvertError, StateDict, build_model, check_supported, head_fields, log, rename_keys

SUPPORTED = ("hubert", "wavlm", "wav2vec2")

# HF encoder names -> ours (feature_extractor.* is the same in both).
_RULES = [
    (r"feature_projection\.(.+)", r"encoder.feature_projection.\1"),
    (r"encoder\.(.+)", r"encoder.transformer.\1"),
]
_DROP = [r"masked_spec_embed$"]


def from_hf(directory: Union[str, Path], normalize_waveform: Optional[bool] = None,
            trust_checkpoint: bool = False) -> Wav2Vec2Model:
    """Our model (eval mode) from an HF ``save_pretrained`` directory."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise ConvertError(f"{directory}: not a Hugging Face model directory (expected config.json and "
                           f"model.safetensors or pytorch_model.bin, as written by save_pretrained)")
    hf_config = _read_config(directory)
    config = convert_config(hf_config, str(directory))
    config["normalize_waveform"] = _normalize_choice(directory, hf_config, normalize_waveform)
    state = convert_state_dict(_read_weights(directory, trust_checkpoint), hf_config.model_type)
    return build_model(config, state, str(directory))


def _read_config(directory: Path):
    path = directory / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConvertError(f"{path}: not a readable JSON config ({e})") from None
    if model_type not in SUPPORTED:
        raise ConvertError(f"{path}: model_type {model_type!r} is not supported; convert one of {list(SUPPORTED)}")
    try:
        import transformers
    except ImportError:
        raise ConvertError(f"{path}: reading HF configs needs the transformers package; pip install "
                           f"'transformers<5'") from None
    config_class = {"hubert": transformers.HubertConfig, "wavlm": transformers.WavLMConfig,
                    "wav2vec2": transformers.Wav2Vec2Config}[model_type]
    return config_class.from_json_file(str(path))


def convert_config(hf, source: str = "config.json") -> Dict[str, Any]:
    """Our config dict from a transformers ``HubertConfig`` / ``WavLMConfig`` / ``Wav2Vec2Config``."""
    check_supported(source, [
        hf.hidden_act != "gelu" and f"hidden_act={hf.hidden_act!r} is not supported (only 'gelu')",
        hf.feat_extract_activation != "gelu"
        and f"feat_extract_activation={hf.feat_extract_activation!r} is not supported (only 'gelu')",
        hf.feat_extract_norm not in ("group", "layer")
        and f"feat_extract_norm={hf.feat_extract_norm!r} is not supported ('group' or 'layer')",
        abs(hf.layer_norm_eps - 1e-5) > 1e-12 and f"layer_norm_eps={hf.layer_norm_eps} is not supported (only 1e-5)",
        not getattr(hf, "feat_proj_layer_norm", True)
        and "feat_proj_layer_norm=false (no LayerNorm before the feature projection) is not supported",
        getattr(hf, "conv_pos_batch_norm", False) and "conv_pos_batch_norm=true is not supported",
        getattr(hf, "add_adapter", False) and "add_adapter=true (an adapter after the encoder) is not supported",
        getattr(hf, "adapter_attn_dim", None) and "adapter_attn_dim (attention adapters) is not supported",
    ])
    n = hf.num_hidden_layers
    config = dict(
        model_type=hf.model_type,
        extractor_mode="layer_norm" if hf.feat_extract_norm == "layer" else "group_norm",
        extractor_conv_layer_config=[list(c) for c in zip(hf.conv_dim, hf.conv_kernel, hf.conv_stride)],
        extractor_conv_bias=bool(hf.conv_bias),
        encoder_embed_dim=hf.hidden_size,
        encoder_projection_dropout=hf.feat_proj_dropout,
        encoder_pos_conv_kernel=hf.num_conv_pos_embeddings,
        encoder_pos_conv_groups=hf.num_conv_pos_embedding_groups,
        encoder_num_layers=n,
        encoder_attention_dropout=hf.attention_dropout,
        encoder_ff_interm_features=hf.intermediate_size,
        encoder_ff_interm_dropout=hf.activation_dropout,
        encoder_dropout=hf.hidden_dropout,
        encoder_layer_norm_first=bool(hf.do_stable_layer_norm),
        encoder_layer_drop=hf.layerdrop,
    )
    config.update(head_fields(hf.model_type, hf.num_attention_heads, n, getattr(hf, "num_buckets", None),
                              getattr(hf, "max_bucket_distance", None)))
    return config


def convert_state_dict(state: StateDict, model_type: str) -> StateDict:
    """HF names -> ours; the encoder of a model with heads is taken from under its ``<model_type>.`` prefix."""
    prefix = f"{model_type}."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return rename_keys(state, _RULES, _DROP)


def _read_weights(directory: Path, trust_checkpoint: bool) -> StateDict:
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ConvertError(f"{index}: not a safetensors index ({e})") from None
        state: StateDict = {}
        for shard in shards:
            state.update(_read_safetensors(directory / shard))
        return state
    bin_path = directory / "pytorch_model.bin"
    if bin_path.is_file():
        state = read_checkpoint(bin_path, trust_checkpoint)
        if not isinstance(state, dict):
            raise ConvertError(f"{bin_path}: expected a state dict, found a {type(state).__name__}")
        return state
    raise ConvertError(f"{directory}: no weights found (model.safetensors, model.safetensors.index.json or "
                       f"pytorch_model.bin); save the model with save_pretrained")


def _read_safetensors(path: Path) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConvertError(f"{path}: reading safetensors needs the safetensors package; pip install "
                           f"safetensors") from None
    if not path.is_file():
        raise ConvertError(f"{path}: no such file (listed in the safetensors index)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ConvertError(f"{path}: not a readable safetensors file ({e})") from None


def _normalize_choice(directory: Path, hf_config, requested: Optional[bool]) -> bool:
    if requested is not None:
        return bool(requested)
    preprocessor = directory / "preprocessor_config.json"
    if preprocessor.is_file():
        try:
            do_normalize = json.loads(preprocessor.read_text()).get("do_normalize", True)
        except (json.JSONDecodeError, AttributeError) as e:
            raise ConvertError(f"{preprocessor}: not a readable JSON file ({e})") from None
        log.info("normalize_waveform=%s from %s (do_normalize)", bool(do_normalize), preprocessor)
        return bool(do_normalize)
    guess = hf_config.feat_extract_norm == "layer"
    log.info("normalize_waveform=%s: %s has no preprocessor_config.json, so the fairseq convention for a %s-norm "
             "CNN is assumed (override with --normalize-waveform)", guess, directory, hf_config.feat_extract_norm)
    return guess
