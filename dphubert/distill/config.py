"""Training configs of the methods the shared trainer runs: defaults, YAML loading, command-line overrides.

A config is a flat dict. Every key has a default, a type and a help line (``OPTIONS``); each method
(``distill_prune``, ``final_distill``, ``distilhubert``, and ``pretrain_hubert``, the HuBERT pretraining of
``dphubert.pretrain``) uses a subset with its own defaults (``METHOD_DEFAULTS``).
Precedence: defaults < ``--config file.yaml`` < command-line overrides (``--max-steps 100``: every key is also a
CLI option, its value parsed as YAML). Unknown keys and ill-typed values are errors naming the key and the file.

Usage::

    cfg = load_config("distill_prune", "conf/distill_prune.yaml", overrides={"max_steps": "100"})
    write_config(cfg, "exp/tag/config.yaml", header="python -m dphubert.bin.distill_prune ...")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

from .errors import DistillConfigError

PRUNE_UNITS = {
    "conv": "extractor_prune_conv_channels",
    "head": "encoder_prune_attention_heads",
    "attlayer": "encoder_prune_attention_layer",
    "interm": "encoder_prune_feed_forward_intermediate",
    "ffnlayer": "encoder_prune_feed_forward_layer",
}


@dataclass(frozen=True)
class Option:
    kind: str  # int, float, str, bool, list, dict; "|null" suffix allows None
    help: str
    choices: Optional[Sequence[str]] = None


OPTIONS: Dict[str, Option] = {
    # reproducibility
    "seed": Option("int", "seed: data order, crops, gate noise and dropout all derive from (seed, epoch, batch)"),
    # data
    "min_seconds": Option("float", "drop training utterances shorter than this (seconds)"),
    "max_seconds": Option("float", "drop training utterances longer than this (seconds)"),
    "batch_seconds": Option("float", "audio per batch and process after cropping to the shortest item (seconds)"),
    "num_buckets": Option("int|null", "length buckets of the batch sampler (null: one sorted run)"),
    "num_workers": Option("int", "DataLoader worker processes per training process"),
    # optimisation
    "max_steps": Option("int", "optimizer steps"),
    "lr": Option("float", "peak learning rate of the main parameters (student and projections/heads)"),
    "warmup_steps": Option("int", "linear learning-rate warmup steps (then linear decay to 0 at max_steps)"),
    "weight_decay": Option("float", "AdamW weight decay of the main parameters (distilhubert: of every tensor but "
                                    "the biases, as s3prl)"),
    "adam_betas": Option("list", "AdamW's (beta1, beta2)"),
    "adam_eps": Option("float", "AdamW's epsilon"),
    "grad_clip": Option("float|null", "clip the global gradient norm to this value (null: no clipping)"),
    "accum_grad": Option("int", "batches accumulated per optimizer step"),
    "amp": Option("str", "mixed precision: none, fp16 (CUDA, with a GradScaler) or bf16", ("none", "fp16", "bf16")),
    # speed (results equal to the plain path within float tolerance; docs/training.md "Speed options")
    "defer_host_sync": Option("bool", "keep the loss terms on the device and read / check them for NaN-inf only at "
                                      "log, validation and save points (false: every step, a host sync each)"),
    "teacher_precision": Option("str", "online teacher: amp (as the student: amp's autocast, fp32 weights) or "
                                       "bf16 (bf16 weights, bf16 autocast, inference_mode)", ("amp", "bf16")),
    "fused_adamw": Option("bool", "AdamW's fused kernel (one launch for all parameters) instead of foreach"),
    "compile_layers": Option("str|null", "torch.compile every encoder layer (teacher and student) with this "
                                         "backend, e.g. inductor; null: eager"),
    # distillation loss
    "l1_weight": Option("float", "weight of the L1 distance"),
    "cos_weight": Option("float", "weight of the cosine term"),
    "l2_weight": Option("float", "weight of the mean squared error (0: off)"),
    "cos_type": Option("str", "cosine term: raw (-cos) or log_sig (-log sigmoid(cos))", ("raw", "log_sig")),
    "distill_layers": Option("list|null", "teacher/student layers to distil (0: see layer0); null: "
                                          "0 and every third of the depth, e.g. [0, 4, 8, 12] for 12 layers"),
    "layer0": Option("str|null", "what teacher/student layer 0 is: transformer_input (after the positional conv "
                                 "and, post-LN, the encoder LayerNorm; HF/s3prl's state 0) or projection (the "
                                 "feature-projection output before the positional conv, the paper's code); "
                                 "final_distill: null = as in Step 1 (the student file's)",
                     ("transformer_input", "projection")),
    "projection_groups": Option("list|null", "layers sharing one linear projection, e.g. [[0], [4, 8, 12]]; "
                                             "null: layer 0 alone and the others together"),
    "student_overrides": Option("dict", "model config keys replaced in the student (dropouts, encoder_layer_drop); "
                                         "Steps 1 and 2 run without LayerDrop unless encoder_layer_drop is set here"),
    # pruning (distill_prune)
    "prune_units": Option("list", f"gated unit kinds, any of {sorted(PRUNE_UNITS)}"),
    "budget": Option("str", "what the target constrains: params (1 - params / teacher params, the paper), macs "
                            "(1 - MACs / teacher MACs for 10 s of audio) or params+macs (both; the MACs target is "
                            "macs_target_sparsity)", ("params", "macs", "params+macs")),
    "target_sparsity": Option("float", "final target sparsity of the budget's quantity: 1 - params / teacher params "
                                       "(budget params, params+macs) or 1 - MACs / teacher MACs (budget macs)"),
    "macs_target_sparsity": Option("float|null", "budget params+macs only: final target 1 - MACs / teacher MACs"),
    "sparsity_warmup_steps": Option("int", "steps over which the target rises linearly from 0"),
    "reg_lr": Option("float", "learning rate of the gates' log_alpha and of the Lagrange multipliers"),
    "multiplier_reset": Option("bool", "anti-windup: set lambda1 to 0 whenever it pushes the expected sparsity away "
                                       "from the target (false: the paper's Lagrangian)"),
    # DistilHuBERT baseline
    "head_type": Option("str", "prediction heads: mlp (s3prl's DistilHuBERT: Linear(dim, dim x heads) -> GELU -> a "
                               "Linear per head) or linear (one Linear per head)", ("mlp", "linear")),
    "pred_layers": Option("list|null", "teacher layers predicted by the heads; null: every third of the depth, "
                                       "e.g. [4, 8, 12]"),
    "num_layers": Option("int|null", "transformer layers (distilhubert: of the student; null: 2, or chosen to match "
                                     "target_params; pretrain_hubert: of the model)"),
    "ffn_width": Option("int|null", "student FFN width; null: the teacher's, or chosen to match target_params"),
    "target_params": Option("int|null", "size the student to this parameter count (heads excluded)"),
    # HuBERT pretraining (pretrain_hubert): model sizes, k-means targets, masking
    "embed_dim": Option("int", "transformer width"),
    "num_heads": Option("int", "attention heads per layer"),
    "ffn_dim": Option("int", "feed-forward width"),
    "cnn_channels": Option("int", "channels of each of the 7 CNN layers"),
    "pos_conv_kernel": Option("int", "kernel of the convolutional positional embedding"),
    "pos_conv_groups": Option("int", "groups of the convolutional positional embedding"),
    "dropout": Option("float",
                      "encoder, attention and projection dropout (HuBERT: 0.1; 0 learns faster in short runs)"),
    "feature_grad_mult": Option("float", "scale of the CNN's gradient (HuBERT: 0.1)"),
    "num_clusters": Option("int", "k-means clusters of the MFCC targets"),
    "kmeans_iters": Option("int", "Lloyd iterations of k-means"),
    "kmeans_max_frames": Option("int", "frames k-means is fitted on (a seeded random sample)"),
    "mask_prob": Option("float", "share of frames that start a masked span (spans may overlap, as in HuBERT)"),
    "mask_span": Option("int", "frames per masked span"),
    "unmasked_weight": Option("float", "weight of the cross-entropy on unmasked frames (HuBERT's pred_nomask_weight; "
                                       "0: masked frames only)"),
    # bookkeeping
    "log_interval": Option("int", "steps between log lines / TensorBoard points"),
    "save_interval": Option("int", "steps between checkpoints"),
    "keep_checkpoints": Option("int", "checkpoints kept (the oldest are deleted)"),
    "valid_interval": Option("int", "steps between validation passes (with --valid)"),
    "valid_max_batches": Option("int|null", "limit the validation batches per process (null: all)"),
}

_COMMON = dict(
    seed=2022, min_seconds=2.0, max_seconds=15.6, batch_seconds=160.0, num_buckets=50, num_workers=4,
    weight_decay=0.0, adam_betas=[0.9, 0.999], adam_eps=1e-8, grad_clip=10.0, accum_grad=1, amp="none",
    defer_host_sync=True, teacher_precision="amp", fused_adamw=False, compile_layers=None,
    l1_weight=1.0, cos_weight=1.0, l2_weight=0.0, cos_type="raw", student_overrides={},
    log_interval=50, save_interval=1000, keep_checkpoints=3, valid_interval=1000, valid_max_batches=None,
)

METHOD_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "distill_prune": dict(_COMMON, max_steps=50000, lr=2e-4, warmup_steps=15000, distill_layers=None,
                          layer0="projection", projection_groups=None, prune_units=["conv", "head", "interm"],
                          budget="params", target_sparsity=0.75, macs_target_sparsity=None,
                          sparsity_warmup_steps=5000, reg_lr=0.02, multiplier_reset=False),
    "final_distill": dict(_COMMON, max_steps=25000, lr=1e-4, warmup_steps=5000, layer0=None),
    # s3prl's DistilHuBERT (pretrain/distiller): AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01 but on biases,
    # 7% warmup, clip 5, the CNN's gradient x 0.1, MLP heads; its dropouts are the student's (students.py).
    "distilhubert": dict(_COMMON, max_steps=200000, lr=2e-4, warmup_steps=14000, cos_type="log_sig",
                         weight_decay=0.01, adam_betas=[0.9, 0.98], adam_eps=1e-6, grad_clip=5.0,
                         feature_grad_mult=0.1, head_type="mlp",
                         pred_layers=None, num_layers=None, ffn_width=None, target_params=None),
    # A small HuBERT (4 x 256, 128-channel CNN, positional kernel 32: 3.6M params), one iteration on MFCC k-means.
    "pretrain_hubert": dict(
        seed=1, min_seconds=1.0, max_seconds=8.0, batch_seconds=8.0, num_buckets=10, num_workers=1,
        max_steps=400, lr=5e-4, warmup_steps=40, weight_decay=0.01, adam_betas=[0.9, 0.999], adam_eps=1e-8,
        grad_clip=10.0, accum_grad=1, amp="none",
        num_layers=4, embed_dim=256, num_heads=4, ffn_dim=1024, cnn_channels=128, pos_conv_kernel=32,
        pos_conv_groups=16, dropout=0.0, feature_grad_mult=0.1, num_clusters=50, kmeans_iters=30,
        kmeans_max_frames=100_000, mask_prob=0.65, mask_span=10, unmasked_weight=0.0,
        defer_host_sync=True, fused_adamw=False, compile_layers=None,
        log_interval=25, save_interval=50, keep_checkpoints=2, valid_interval=100, valid_max_batches=4),
}


def _type_ok(value: Any, kind: str) -> bool:
    base, _, nullable = kind.partition("|")
    if value is None:
        return bool(nullable)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[base])


def check_value(key: str, value: Any, source: str) -> Any:
    option = OPTIONS[key]
    if isinstance(value, str) and option.kind.startswith("float"):
        try:  # PyYAML reads "1e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(value, option.kind):
        raise DistillConfigError(f"{source}: key '{key}' must be {option.kind.replace('|null', ' or null')}, "
                                 f"got {value!r}")
    if option.choices and value is not None and value not in option.choices:
        raise DistillConfigError(f"{source}: key '{key}' must be one of {list(option.choices)}, got {value!r}")
    if option.kind.startswith("float") and value is not None:
        value = float(value)
    return value


def load_config(method: str, path: Optional[str | Path] = None,
                overrides: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Defaults of ``method``, updated by the YAML file ``path`` and by ``overrides`` (YAML-parsed strings)."""
    cfg = copy.deepcopy(METHOD_DEFAULTS[method])
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DistillConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise DistillConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise DistillConfigError(f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        for key, value in loaded.items():
            if key not in cfg:
                raise DistillConfigError(f"{path}: unknown key '{key}' for {method}; known keys: {sorted(cfg)}")
            cfg[key] = check_value(key, value, str(path))
    for key, text in (overrides or {}).items():
        source = f"command line (--{key.replace('_', '-')})"
        if key not in cfg:
            raise DistillConfigError(f"{source}: unknown key '{key}' for {method}")
        try:
            value = yaml.safe_load(text) if isinstance(text, str) else text
        except yaml.YAMLError:
            raise DistillConfigError(f"{source}: cannot parse {text!r} as a YAML value") from None
        cfg[key] = check_value(key, value, source)
    _check_ranges(cfg, method, str(path) if path else "config")
    return cfg


def _check_ranges(cfg: Dict[str, Any], method: str, source: str) -> None:
    positive = ["max_steps", "accum_grad", "log_interval", "save_interval", "keep_checkpoints", "valid_interval",
                "batch_seconds"]
    for key in positive:
        if cfg[key] <= 0:
            raise DistillConfigError(f"{source}: key '{key}' must be > 0, got {cfg[key]}")
    for key in ("warmup_steps", "num_workers", "min_seconds", "lr", "weight_decay"):
        if cfg[key] < 0:
            raise DistillConfigError(f"{source}: key '{key}' must be >= 0, got {cfg[key]}")
    if cfg["max_seconds"] <= cfg["min_seconds"]:
        raise DistillConfigError(f"{source}: max_seconds ({cfg['max_seconds']}) must exceed min_seconds "
                                 f"({cfg['min_seconds']})")
    if cfg["batch_seconds"] < cfg["max_seconds"]:
        raise DistillConfigError(f"{source}: batch_seconds ({cfg['batch_seconds']}) must be >= max_seconds "
                                 f"({cfg['max_seconds']}) so that every utterance fits a batch")
    betas = cfg["adam_betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise DistillConfigError(f"{source}: key 'adam_betas' must be two numbers in [0, 1), got {betas}")
    if not cfg["adam_eps"] > 0:
        raise DistillConfigError(f"{source}: key 'adam_eps' must be > 0, got {cfg['adam_eps']}")
    if cfg.get("feature_grad_mult", 1.0) < 0:
        raise DistillConfigError(f"{source}: key 'feature_grad_mult' must be >= 0, got {cfg['feature_grad_mult']}")
    if method == "pretrain_hubert":
        _check_pretrain(cfg, source)
    if method == "distill_prune":
        bad = [u for u in cfg["prune_units"] if u not in PRUNE_UNITS]
        if bad or not cfg["prune_units"]:
            raise DistillConfigError(f"{source}: prune_units must be a non-empty list of {sorted(PRUNE_UNITS)}, "
                                     f"got {cfg['prune_units']}")
        if cfg["layer0"] is None:
            raise DistillConfigError(f"{source}: layer0 must be transformer_input or projection, got null")
        for key in ("target_sparsity", "macs_target_sparsity"):
            if cfg[key] is not None and not 0.0 < cfg[key] < 1.0:
                raise DistillConfigError(f"{source}: key '{key}' must be in (0, 1) (a fraction of the teacher's "
                                         f"size to remove), got {cfg[key]}")
        if (cfg["budget"] == "params+macs") != (cfg["macs_target_sparsity"] is not None):
            raise DistillConfigError(
                f"{source}: key 'macs_target_sparsity' is {cfg['macs_target_sparsity']} with budget "
                f"{cfg['budget']}; it is the MACs target of budget params+macs only (set both, or neither)")
        if cfg["sparsity_warmup_steps"] < 0:
            raise DistillConfigError(f"{source}: sparsity_warmup_steps must be >= 0")


def _check_pretrain(cfg: Dict[str, Any], source: str) -> None:
    for key in ("num_layers", "embed_dim", "num_heads", "ffn_dim", "cnn_channels", "pos_conv_kernel",
                "pos_conv_groups", "kmeans_iters", "kmeans_max_frames", "mask_span"):
        if cfg[key] is None or cfg[key] <= 0:
            raise DistillConfigError(f"{source}: key '{key}' must be > 0, got {cfg[key]}")
    if cfg["embed_dim"] % cfg["num_heads"] or cfg["embed_dim"] % cfg["pos_conv_groups"]:
        raise DistillConfigError(f"{source}: embed_dim {cfg['embed_dim']} must be divisible by num_heads "
                                 f"{cfg['num_heads']} and pos_conv_groups {cfg['pos_conv_groups']}")
    if cfg["num_clusters"] < 2:
        raise DistillConfigError(f"{source}: key 'num_clusters' must be at least 2, got {cfg['num_clusters']}")
    if not 0.0 < cfg["mask_prob"] < 1.0:
        raise DistillConfigError(f"{source}: key 'mask_prob' must be in (0, 1), got {cfg['mask_prob']}")
    if cfg["unmasked_weight"] < 0 or cfg["dropout"] < 0 or cfg["feature_grad_mult"] < 0:
        raise DistillConfigError(f"{source}: unmasked_weight, dropout and feature_grad_mult must be >= 0")


def write_config(cfg: Dict[str, Any], path: str | Path, header: str = "") -> None:
    """Write the resolved config as YAML that ``--config`` accepts again (``header`` becomes a comment)."""
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def add_config_arguments(parser, method: str) -> None:
    """Add ``--<key>`` for every config key of ``method`` (value parsed as YAML, e.g. ``--distill-layers [0,4]``)."""
    group = parser.add_argument_group("config overrides (replace the YAML value; parsed as YAML)")
    for key, default in METHOD_DEFAULTS[method].items():
        group.add_argument(f"--{key.replace('_', '-')}", dest=f"cfg_{key}", metavar="VALUE", default=None,
                           help=f"{OPTIONS[key].help} (default {default!r})")


def overrides_from_args(args, method: str) -> Dict[str, str]:
    return {key: getattr(args, f"cfg_{key}") for key in METHOD_DEFAULTS[method]
            if getattr(args, f"cfg_{key}", None) is not None}
