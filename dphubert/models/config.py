"""Model configuration: a plain dict in the schema of the released DPHuBERT/DPWavLM files.

The schema is that of torchaudio's ``wav2vec2_model`` arguments with per-layer lists (``encoder_num_heads``,
``encoder_ff_interm_features``, ``encoder_use_attention``, ``encoder_use_feed_forward``) and pruning switches.
WavLM configs carry ``encoder_total_num_heads`` and ``encoder_remaining_heads`` (the kept original head indices
of each layer) instead of ``encoder_num_heads``; that is how the model type is told apart.
Our own additions: ``model_type`` (informational), ``encoder_projection_input_scale`` (the reference code keeps
that scale as ``feature_extractor.dummy_weight``; ``release.py`` converts both ways) and
``encoder_projection_layer_norm`` (present only when false: no LayerNorm before the feature projection, as in
s3prl's DistilHuBERT; HuBERT, wav2vec 2.0 and WavLM have one).
"""

import copy
from typing import Any, Dict

DEFAULT_CONV = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2

PRUNE_SWITCHES = (
    "extractor_prune_conv_channels",
    "encoder_prune_attention_heads",
    "encoder_prune_attention_layer",
    "encoder_prune_feed_forward_intermediate",
    "encoder_prune_feed_forward_layer",
)

_COMMON_DEFAULTS: Dict[str, Any] = {
    "model_type": "hubert",
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": DEFAULT_CONV,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 768,
    "encoder_projection_dropout": 0.1,
    "encoder_projection_input_scale": False,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 12,
    "encoder_attention_dropout": 0.1,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.05,
    "aux_num_out": None,
    "normalize_waveform": False,
    **{name: False for name in PRUNE_SWITCHES},
}
_PER_LAYER = ("encoder_use_attention", "encoder_use_feed_forward", "encoder_ff_interm_features")
_PLAIN_ONLY = ("encoder_num_heads", "encoder_head_dim")
_WAVLM_ONLY = ("encoder_total_num_heads", "encoder_remaining_heads", "encoder_num_buckets", "encoder_max_distance")
# Keys some reference-code versions wrote that carry no meaning for the model.
_IGNORED = ("use_layerwise_prune",)
# Written only when false, so that every config of a model with the usual LayerNorm stays as it was.
PROJECTION_LAYER_NORM = "encoder_projection_layer_norm"
KNOWN_KEYS = (set(_COMMON_DEFAULTS) | set(_PER_LAYER) | set(_PLAIN_ONLY) | set(_WAVLM_ONLY) | set(_IGNORED)
              | {PROJECTION_LAYER_NORM})


class ConfigError(ValueError):
    """A model config that cannot describe a model."""


def is_wavlm(config: Dict[str, Any]) -> bool:
    return "encoder_remaining_heads" in config


def has_projection_layer_norm(config: Dict[str, Any]) -> bool:
    return config.get(PROJECTION_LAYER_NORM, True)


def normalize_config(config: Dict[str, Any], source: str = "config") -> Dict[str, Any]:
    """Fill defaults, expand per-layer scalars to lists, and validate. ``source`` names the file in errors."""
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown model config key(s) {unknown}; known keys: {sorted(KNOWN_KEYS)}")
    cfg = copy.deepcopy(_COMMON_DEFAULTS)
    cfg.update(copy.deepcopy({k: v for k, v in config.items() if k not in _IGNORED}))
    if cfg.get(PROJECTION_LAYER_NORM, True) is True:
        cfg.pop(PROJECTION_LAYER_NORM, None)
    elif cfg[PROJECTION_LAYER_NORM] is not False:
        raise ConfigError(f"{source}: {PROJECTION_LAYER_NORM} must be true or false, got {cfg[PROJECTION_LAYER_NORM]!r}")
    n = cfg["encoder_num_layers"]
    wavlm = is_wavlm(cfg)
    if wavlm:
        cfg["model_type"] = "wavlm"
        cfg.setdefault("encoder_num_buckets", 320)
        cfg.setdefault("encoder_max_distance", 800)
        cfg.setdefault("encoder_total_num_heads", [12] * n)
        cfg["encoder_total_num_heads"] = _per_layer(cfg["encoder_total_num_heads"], n, "encoder_total_num_heads",
                                                    source)
        cfg["encoder_remaining_heads"] = [list(map(int, h)) for h in cfg["encoder_remaining_heads"]]
        if len(cfg["encoder_remaining_heads"]) != n:
            raise ConfigError(f"{source}: encoder_remaining_heads has {len(cfg['encoder_remaining_heads'])} "
                              f"entries for {n} layers")
        for total in cfg["encoder_total_num_heads"]:
            if cfg["encoder_embed_dim"] % total:
                raise ConfigError(f"{source}: encoder_embed_dim must be divisible by encoder_total_num_heads")
        stray = [k for k in _PLAIN_ONLY if k in config]
        if stray:
            raise ConfigError(f"{source}: WavLM configs use encoder_remaining_heads, not {stray}")
    else:
        heads = cfg.setdefault("encoder_num_heads", 12)
        if "encoder_head_dim" not in cfg:
            if isinstance(heads, (list, tuple)):
                raise ConfigError(f"{source}: encoder_head_dim is required when encoder_num_heads is a list")
            cfg["encoder_head_dim"] = cfg["encoder_embed_dim"] // heads
        cfg["encoder_num_heads"] = _per_layer(heads, n, "encoder_num_heads", source)
    cfg.setdefault("encoder_use_attention", True)
    cfg.setdefault("encoder_use_feed_forward", True)
    cfg.setdefault("encoder_ff_interm_features", 3072)
    for key in _PER_LAYER:
        cfg[key] = _per_layer(cfg[key], n, key, source)
    cfg["extractor_conv_layer_config"] = [list(map(int, c)) for c in cfg["extractor_conv_layer_config"]]
    for c in cfg["extractor_conv_layer_config"]:
        if len(c) != 3 or min(c) <= 0:
            raise ConfigError(f"{source}: extractor_conv_layer_config entries must be [channels, kernel, stride] "
                              f"with positive values, got {c}")
    if cfg["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise ConfigError(f"{source}: extractor_mode must be 'group_norm' or 'layer_norm', "
                          f"got {cfg['extractor_mode']!r}")
    return cfg


def _per_layer(value, n: int, key: str, source: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{source}: {key} has {len(value)} entries for encoder_num_layers={n}")
        return list(value)
    return [value] * n


def base_config(model_type: str = "hubert", **overrides) -> Dict[str, Any]:
    """HuBERT / wav2vec 2.0 / WavLM Base (post-LN, group-norm CNN). ``overrides`` replace any key."""
    if model_type not in ("hubert", "wav2vec2", "wavlm"):
        raise ConfigError(f"unknown model_type {model_type!r}; choose hubert, wav2vec2 or wavlm")
    cfg: Dict[str, Any] = {"model_type": model_type, **overrides}
    if model_type == "wavlm":
        heads = cfg.pop("encoder_num_heads", 12)
        cfg.setdefault("encoder_total_num_heads", heads)
        layers = cfg.get("encoder_num_layers", 12)
        cfg.setdefault("encoder_remaining_heads", [list(range(heads))] * layers)
    return normalize_config(cfg)


def large_config(model_type: str = "hubert", **overrides) -> Dict[str, Any]:
    """Large models: pre-LN transformer, layer-norm CNN with bias, waveform normalisation, 24 x 1024."""
    large = dict(extractor_mode="layer_norm", extractor_conv_bias=True, encoder_embed_dim=1024,
                 encoder_num_layers=24, encoder_num_heads=16, encoder_ff_interm_features=4096,
                 encoder_layer_norm_first=True, normalize_waveform=True)
    large.update(overrides)
    return base_config(model_type, **large)
