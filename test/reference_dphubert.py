"""Files as the paper's code writes them, and hidden states as it computes them, made by following its source:
github.com/pyf98/DPHuBERT at commit c18093fe4b56a0027a80bf9b9b1a23f932cbf14c (``PAPER_COMMIT``). That code is
not a dependency and nothing here is copied from it; each rule below names the file, function and lines it
follows (files of that repository; ``components.py`` etc. are under its ``wav2vec2/``).

Files (``reference_checkpoint`` / ``write_reference_file``) are made the way its pipeline makes them:

1. The Step-1 student (``step1_checkpoint``). distill.py ``run_train`` (lines 66-81) builds it as
   ``wav2vec2_model(**teacher config)`` with the switches of ``--pruning_units`` (``conv,head,interm`` in run.sh,
   line 32, whose comment offers ``attlayer,ffnlayer`` too) and loads the teacher's weights with ``strict=False``, so
   ``feature_extractor.dummy_weight`` (an ``nn.Parameter``, requires_grad False, components.py
   ``FeatureExtractor.__init__`` 150-156) keeps its all-ones init. A gate is a ``HardConcrete`` whose only state
   is ``log_alpha`` (hardconcrete.py 60): ``feature_extractor.conv_layers.<i>.hard_concrete`` (conv),
   ``encoder.transformer.layers.<i>.attention.hard_concrete_for_heads`` (head) / ``.hard_concrete_for_layer``
   (attlayer), ``....feed_forward.hard_concrete_for_intermediate`` (interm) / ``.hard_concrete_for_layer``
   (ffnlayer) (components.py 89-92, 369-377, 714-724). The teacher configs are those of the converters:
   convert_hubert_from_hf.py 19-43, convert_wavlm_from_hf.py 19-46, convert_hubert_large_from_fairseq.py 20-44.
2. A gate's eval-mode mask (``hard_concrete_mask``): hardconcrete.py ``HardConcrete.forward`` 101-113 with
   ``l0_norm`` 76-84 and ``bias`` 64 (temperature 2/3, stretch 0.1: 33-34): the ``round(n - l0_norm)`` entries of
   smallest ``sigmoid(log_alpha / beta * 0.8)`` are 0, every other entry keeps that soft value. ``gate_log_alpha`` picks
   log_alphas whose mask keeps given entries with given soft values.
3. ``prune()`` (``paper_prune``), model.py ``Wav2Vec2Model.prune`` 115-124, in that order:
   - CNN, components.py ``FeatureExtractor.prune`` 198-235: layer i keeps the channels of nonzero mask (conv rows,
     conv bias, norm: 213-216); the mask multiplies the next conv's input channels, which are then sliced
     (224-226); the last layer's multiplies ``dummy_weight``, which is then sliced (218-223). ``Encoder.prune``
     1011-1017 slices the feature projection's LayerNorm and the projection's input columns.
   - attention, ``SelfAttention.prune`` 451-484 (WavLM: ``WavLMSelfAttention.prune`` 661-694): a layer gate's
     mask multiplies ``out_proj`` weight *and* bias (456-463), and a mask of 0 sets use_attention False. With head
     gates the config's head count is the number of nonzero head-mask entries (468; WavLM: their indices, 678);
     none left sets use_attention False (469-470); otherwise q/k/v keep the rows of the kept heads (biases too),
     ``out_proj.weight`` is multiplied column-wise by the head mask and its columns sliced, and ``out_proj.bias``
     is left as it is (471-480; pruning_utils.py ``prune_linear_layer`` 9-23 slices a bias for dim "output"
     only). ``Transformer.prune`` 936-956 then sets ``layer.attention = None`` where use_attention is False
     (946-947): the block's every entry leaves the state dict (q/k/v/out_proj with out_proj's bias; WavLM's
     ``gru_rel_pos_*`` and, in layer 0, ``rel_attn_embed``), also when a layer gate of 0 removed it with heads
     left, whose count (indices) the config then keeps.
   - FFN, ``FeedForward.prune`` 763-792: the same with ``output_dense`` (layer gate 768-775; units 777-789, a layer
     without units gets ``ff_interm_features`` 0 and use_feed_forward False) and ``layer.feed_forward = None``
     (952-953).
4. The file, prune.py ``prune_from_ckpt`` 11-67: the teacher file's config (``--original_ckpt``), its switches
   set from the Step-1 keys of layer 0 (20-29), is copied and updated (33-59): ``encoder_num_heads`` (HuBERT) or
   ``encoder_remaining_heads`` (WavLM, whose prune() returns no num_heads: 35-40), ``extractor_conv_layer_config``
   (``(channels, kernel, stride)`` tuples, components.py 209-211), ``encoder_use_attention``,
   ``encoder_use_feed_forward``, ``encoder_ff_interm_features``, the five switches False; saved as
   ``{"state_dict": model.state_dict(), "config", "distill_linear_projs"}`` (62-66), which ``load_pruned_model``
   (70-74) loads with ``strict=True`` into ``wav2vec2_model(**config)``. save_final_ckpt.py 27-47 writes the same
   three entries after Step 2 with that config. ``distill_linear_projs`` is the state dict of distill.py's
   ``nn.ModuleList`` (92-100) in which each group of ``--distill_layers`` (run.sh line 21: ``0.4,8,12``) repeats
   one identity-initialised ``nn.Linear`` (24-26): keys ``<k>.weight`` / ``<k>.bias`` for every distilled layer,
   a group's entries the same tensors.

Hidden states (``reference_states``): model.py ``Wav2Vec2Model.extract_features`` 58-107 for one unpadded batch:
waveform LayerNorm if ``normalize_waveform`` (103); the CNN, ``ConvLayerBlock.forward`` 94-121 (conv, GroupNorm in
layer 0 for ``group_norm`` / LayerNorm over channels in every layer for ``layer_norm`` (1068-1081), GELU, then a
conv gate's mask); ``x * dummy_weight`` (``FeatureExtractor.forward`` 184); the feature projection (LayerNorm,
Linear, 263-274) = state 0 (``Encoder.extract_features`` 995-1003 returns ``[x] + interm``); ``x + pos_conv(x)``
(``Transformer._preprocess`` 885-892; weight norm over dim 2, one frame dropped for an even kernel, GELU: 280-333)
then the encoder LayerNorm for post-LN models only (``_get_encoder`` passes ``layer_norm_first=not
layer_norm_first``, 1283 and 1381); one state per layer from ``get_intermediate_outputs`` 909-927, which never
applies the final encoder LayerNorm (pre-LN models apply it only in ``forward``, 905-906). A layer
(``EncoderLayer.forward`` 814-857) runs its attention only if present, its FFN only if present, and post-LN
models apply both LayerNorms even without them (852). Attention (``SelfAttention.forward`` 379-436): scaled
q k^T, softmax, times v, the head gate's mask per head, out_proj, the layer gate's mask; WavLM
(``WavLMSelfAttention.forward`` 602-659): layer 0's ``rel_attn_embed`` (only layer 0 has one, 1349) makes the
bucketed bias for all original heads (546-600), passed on to the next layers, each gating it with its own input
(``gru_rel_pos_linear`` on the input split into the original heads, ``gru_rel_pos_const``) and keeping the rows of
its ``remaining_heads``. A WavLM layer 0 without attention makes no bias, so no layer of that model has one. FFN
(726-748): intermediate_dense, GELU, the units' mask, output_dense, the layer gate's mask.

On a Step-1 student, ``reference_states`` is the gated model in eval mode. prune() does not keep all of its
states: (a) the feature projection's LayerNorm normalises over the kept channels only, where the gated model's
counted the gated-off ones (zeros), and so does each conv's LayerNorm in a ``layer_norm`` CNN (there the norm comes
before the mask, so it counted those channels' conv outputs); (b) a block whose heads / units are all gated off
still adds its out_proj / output_dense bias in the gated model (times its layer mask), and prune() removes it;
(c) WavLM: with layer 0's attention removed no layer gets the position bias. Elsewhere prune() is exact, which
checks the folding of every mask into the fixtures: the features of a ``group_norm`` CNN on the kept channels
(``cnn_features``), and the transformer from the same projection output with ``skip_empty`` (the gated model
without (b)'s blocks, which also leaves out (c)).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_COMMIT = "c18093fe4b56a0027a80bf9b9b1a23f932cbf14c"
PRUNE_SWITCHES = ("extractor_prune_conv_channels", "encoder_prune_attention_heads", "encoder_prune_attention_layer",
                  "encoder_prune_feed_forward_intermediate", "encoder_prune_feed_forward_layer")
# --pruning_units names (distill.py 70-77) -> the config switch each sets
UNIT_SWITCHES = {"conv": "extractor_prune_conv_channels", "head": "encoder_prune_attention_heads",
                 "attlayer": "encoder_prune_attention_layer", "interm": "encoder_prune_feed_forward_intermediate",
                 "ffnlayer": "encoder_prune_feed_forward_layer"}
LAYERS = "encoder.transformer.layers."
DUMMY = "feature_extractor.dummy_weight"

# HardConcrete's constants (hardconcrete.py 33-34: temperature 2/3, stretch 0.1; 64: bias; 109: the 0.8)
BETA = 2.0 / 3.0
GATE_BIAS = -BETA * math.log(0.1 / 1.1)
SOFT_FACTOR = 0.8


def conv_gate(i: int) -> str:
    return f"feature_extractor.conv_layers.{i}.hard_concrete.log_alpha"


def head_gate(i: int) -> str:
    return f"{LAYERS}{i}.attention.hard_concrete_for_heads.log_alpha"


def attention_layer_gate(i: int) -> str:
    return f"{LAYERS}{i}.attention.hard_concrete_for_layer.log_alpha"


def unit_gate(i: int) -> str:
    return f"{LAYERS}{i}.feed_forward.hard_concrete_for_intermediate.log_alpha"


def ffn_layer_gate(i: int) -> str:
    return f"{LAYERS}{i}.feed_forward.hard_concrete_for_layer.log_alpha"


# ----- teacher configs, as the converters write them ---------------------------------------------------------------
def teacher_config(kind: str, num_layers: int = 3, dim: int = 48, heads: int = 4, ffn: int = 96) -> dict:
    """A tiny teacher config with exactly the keys (in their order) and the non-shape values the converters write.
    ``kind``: hubert (convert_hubert_from_hf.py), wavlm (convert_wavlm_from_hf.py) or hubert_large (pre-LN,
    convert_hubert_large_from_fairseq.py: layer_norm CNN without conv bias, normalize_waveform True)."""
    large = kind == "hubert_large"
    config = dict(
        extractor_mode="layer_norm" if large else "group_norm",
        extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 2, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=dim,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=num_layers,
        encoder_use_attention=[True] * num_layers,
        encoder_use_feed_forward=[True] * num_layers,
    )
    if kind == "wavlm":
        config.update(encoder_total_num_heads=[heads] * num_layers,
                      encoder_remaining_heads=[list(range(heads)) for _ in range(num_layers)],
                      encoder_num_buckets=32, encoder_max_distance=64)
    else:
        config.update(encoder_num_heads=[heads] * num_layers, encoder_head_dim=dim // heads)
    config.update(
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=[ffn] * num_layers,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.1,
        encoder_layer_norm_first=large,
        encoder_layer_drop=0.05,
        aux_num_out=None,
        normalize_waveform=large,
        **{name: False for name in PRUNE_SWITCHES},
    )
    return config


def _heads_and_dim(config: dict, i: int):
    if "encoder_remaining_heads" in config:
        total = config["encoder_total_num_heads"][i]
        return len(config["encoder_remaining_heads"][i]), config["encoder_embed_dim"] // total
    return config["encoder_num_heads"][i], config["encoder_head_dim"]


def state_shapes(config: dict) -> Dict[str, tuple]:
    """Names and shapes of ``wav2vec2_model(**config).state_dict()``, gates included, in the order torch writes
    them (a module's own parameters, then its submodules in the order ``__init__`` assigns them)."""
    shapes: Dict[str, tuple] = {}

    def linear(prefix: str, out_features: int, in_features: int) -> None:
        shapes[prefix + "weight"], shapes[prefix + "bias"] = (out_features, in_features), (out_features,)

    def norm(prefix: str, features: int) -> None:
        shapes[prefix + "weight"] = shapes[prefix + "bias"] = (features,)

    conv = config["extractor_conv_layer_config"]
    shapes[DUMMY] = (conv[-1][0],)  # FeatureExtractor's own parameter, before its conv_layers
    in_channels = 1
    for i, (out_channels, kernel, _) in enumerate(conv):  # ConvLayerBlock: layer_norm, conv, hard_concrete
        p = f"feature_extractor.conv_layers.{i}."
        if config["extractor_mode"] == "layer_norm" or i == 0:
            norm(p + "layer_norm.", out_channels)
        shapes[p + "conv.weight"] = (out_channels, in_channels, kernel)
        if config["extractor_conv_bias"]:
            shapes[p + "conv.bias"] = (out_channels,)
        if config["extractor_prune_conv_channels"]:
            shapes[conv_gate(i)] = (out_channels,)
        in_channels = out_channels
    dim = config["encoder_embed_dim"]
    norm("encoder.feature_projection.layer_norm.", in_channels)
    linear("encoder.feature_projection.projection.", dim, in_channels)
    p = "encoder.transformer.pos_conv_embed.conv."  # weight_norm: bias, then weight_g, weight_v
    kernel, groups = config["encoder_pos_conv_kernel"], config["encoder_pos_conv_groups"]
    shapes[p + "bias"], shapes[p + "weight_g"], shapes[p + "weight_v"] = (dim,), (1, 1, kernel), (dim, dim // groups,
                                                                                                   kernel)
    norm("encoder.transformer.layer_norm.", dim)
    wavlm = "encoder_remaining_heads" in config
    for i in range(config["encoder_num_layers"]):  # EncoderLayer: attention, layer_norm, feed_forward, final
        p = f"{LAYERS}{i}."
        if config["encoder_use_attention"][i]:
            heads, head_dim = _heads_and_dim(config, i)
            total = config["encoder_total_num_heads"][i] if wavlm else heads
            if wavlm:
                shapes[p + "attention.gru_rel_pos_const"] = (1, total, 1, 1)
            for name in ("k_proj", "v_proj", "q_proj"):
                linear(f"{p}attention.{name}.", heads * head_dim, dim)
            linear(p + "attention.out_proj.", dim, heads * head_dim)
            if config["encoder_prune_attention_heads"]:
                shapes[head_gate(i)] = (heads,)
            if config["encoder_prune_attention_layer"]:
                shapes[attention_layer_gate(i)] = (1,)
            if wavlm:
                if i == 0:
                    shapes[p + "attention.rel_attn_embed.weight"] = (config["encoder_num_buckets"], total)
                linear(p + "attention.gru_rel_pos_linear.", 8, head_dim)
        norm(p + "layer_norm.", dim)
        if config["encoder_use_feed_forward"][i]:
            units = config["encoder_ff_interm_features"][i]
            linear(p + "feed_forward.intermediate_dense.", units, dim)
            linear(p + "feed_forward.output_dense.", dim, units)
            if config["encoder_prune_feed_forward_intermediate"]:
                shapes[unit_gate(i)] = (units,)
            if config["encoder_prune_feed_forward_layer"]:
                shapes[ffn_layer_gate(i)] = (1,)
        norm(p + "final_layer_norm.", dim)
    return shapes


def random_state(config: dict, generator: torch.Generator) -> Dict[str, Tensor]:
    """Trained-looking teacher weights (LayerNorm/GroupNorm affines near 1/0, small biases) in the Step-1 student's
    layout: ``dummy_weight`` all ones, gates left out (``step1_checkpoint`` sets them)."""
    state = {}
    for name, shape in state_shapes(config).items():
        if name.endswith("log_alpha"):
            continue
        if name == DUMMY:
            state[name] = torch.ones(shape)
        elif "norm.weight" in name or name.endswith("gru_rel_pos_const"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("weight_g"):
            state[name] = 1.0 + 0.2 * torch.rand(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 10
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in) + (0.02 if len(shape) == 1 else 0)
    return state


# ----- HardConcrete's eval-mode mask --------------------------------------------------------------------------------
def hard_concrete_mask(log_alpha: Tensor) -> Tensor:
    """``HardConcrete.forward`` in eval mode (hardconcrete.py 101-113)."""
    n = log_alpha.numel()
    num_zeros = round(n - float(torch.sigmoid(log_alpha + GATE_BIAS).sum()))
    mask = torch.sigmoid(log_alpha / BETA * SOFT_FACTOR)
    if num_zeros:
        mask[torch.topk(mask, k=num_zeros, largest=False).indices] = 0.0
    return mask


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


def gate_log_alpha(n: int, keep: Sequence[int], soft: Sequence[float]) -> Tensor:
    """log_alphas whose eval-mode mask is ``soft`` at ``keep`` and 0 elsewhere. The entries kept get the soft
    values' log_alphas; those dropped one log_alpha whose expected L0 makes up what the kept ones lack of 1 each,
    so that ``round(n - l0_norm)`` is the number dropped (and their soft values are the smallest)."""
    keep = sorted(int(k) for k in keep)
    log_alpha = torch.empty(n)
    soft_t = torch.tensor(list(soft), dtype=torch.float32)
    log_alpha[keep] = _logit(soft_t) * BETA / SOFT_FACTOR
    dropped = [i for i in range(n) if i not in keep]
    if dropped:
        shortfall = len(keep) - float(torch.sigmoid(log_alpha[keep] + GATE_BIAS).sum())
        share = min(max(shortfall / len(dropped), 1e-6), 0.45)
        log_alpha[dropped] = float(_logit(torch.tensor(share))) - GATE_BIAS
    mask = hard_concrete_mask(log_alpha)
    assert mask.nonzero().squeeze(-1).tolist() == keep, (keep, mask)  # (fixture self-check)
    assert torch.allclose(mask[keep], soft_t, atol=1e-6), (mask[keep], soft_t)
    return log_alpha


def _soft_values(count: int, dropped: int, generator: torch.Generator, first: Sequence[float] = ()) -> List[float]:
    """Soft mask values of ``count`` kept entries (then ``first``): a gate keeping every entry must have an L0
    within 0.5 of n, so they are then all near 1; otherwise most are near 1 and up to ``dropped`` of them lower
    (the dropped entries' expected L0 makes up what those lack, ``gate_log_alpha``)."""
    if not dropped:
        return (0.99 + 0.009 * torch.rand(count, generator=generator)).tolist()[: count - len(first)] + list(first)
    values = (0.95 + 0.045 * torch.rand(count, generator=generator)).tolist()
    lower = min(dropped, count)
    values[:lower] = (0.3 + 0.5 * torch.rand(lower, generator=generator)).tolist()
    values[: len(first)] = list(first)
    return values


# ----- the Step-1 student and prune() ---------------------------------------------------------------------------
# The pruned structures of the fixtures: per layer the kept heads and the number of kept FFN units (some layers keep
# none); "attention_layer" / "ffn_layer" (the attlayer / ffnlayer units): each layer's layer-gate mask (0: block
# removed by its layer gate). The last CNN layer's first kept channels get LAST_CONV_VALUES (they end up in
# dummy_weight).
PLANS = {
    "hubert": dict(heads=[[0, 2, 3], [], [1]], units=[40, 17, 0]),
    "wavlm": dict(heads=[[0, 1, 3], [], [2]], units=[0, 50, 20]),
    "hubert_large": dict(heads=[[2], [0, 1, 2, 3], []], units=[30, 0, 96]),
}
# More layouts of the paper's prune(): a WavLM whose layer 0 (the owner of rel_attn_embed) keeps no head, and layer
# gates (attlayer, ffnlayer) with soft masks and masks of 0 that remove a block whose heads / units are kept.
EXTRA_PLANS = {
    "wavlm_headless_layer0": ("wavlm", dict(heads=[[], [0, 1, 3], [2]], units=[50, 0, 20])),
    "hubert_layer_gates": ("hubert", dict(heads=[[0, 1, 2, 3], [1, 3], [0, 2]], units=[96, 40, 30],
                                          attention_layer=[0.65, 0.0, 0.9], ffn_layer=[0.8, 0.5, 0.0])),
    "wavlm_layer_gates": ("wavlm", dict(heads=[[0, 2], [0, 1, 2, 3], []], units=[0, 60, 25],
                                        attention_layer=[0.7, 0.0, 0.4], ffn_layer=[0.3, 0.9, 0.0])),
    "large_layer_gates": ("hubert_large", dict(heads=[[1, 2], [], [0, 1, 2, 3]], units=[20, 96, 0],
                                               attention_layer=[0.0, 0.8, 0.55], ffn_layer=[0.6, 0.0, 0.75])),
}
LAST_CONV_VALUES = (0.3, 0.98, 0.21)


def pruning_units(plan: dict) -> List[str]:
    return ["conv", "head", "interm"] + (["attlayer"] if "attention_layer" in plan else []) + (
        ["ffnlayer"] if "ffn_layer" in plan else [])


def step1_checkpoint(kind: str, seed: int = 0, plan: Optional[dict] = None,
                     conv_keep: Sequence[int] = (29, 32, 27, 30),
                     dummy_values: Sequence[float] = LAST_CONV_VALUES) -> dict:
    """``{"state_dict", "config"}`` of a Step-1 student at the end of Step 1 (distill.py): the teacher's weights,
    ``dummy_weight`` all ones, and gates whose eval-mode masks prune as ``plan`` (default ``PLANS[kind]``)."""
    generator = torch.Generator().manual_seed(seed)
    plan = plan or PLANS[kind]
    config = teacher_config(kind)
    config.update({UNIT_SWITCHES[unit]: True for unit in pruning_units(plan)})
    state = random_state(config, generator)
    gates: Dict[str, Tensor] = {}
    conv = config["extractor_conv_layer_config"]
    for i, ((channels, _, _), keep) in enumerate(zip(conv, conv_keep)):
        kept = torch.randperm(channels, generator=generator)[:keep].sort().values.tolist()
        first = dummy_values if i == len(conv) - 1 else ()  # (the last layer's end up in dummy_weight)
        gates[conv_gate(i)] = gate_log_alpha(channels, kept, _soft_values(keep, channels - keep, generator, first))
    heads = config.get("encoder_num_heads") or config["encoder_total_num_heads"]
    for i, keep in enumerate(plan["heads"]):
        gates[head_gate(i)] = gate_log_alpha(heads[i], keep, _soft_values(len(keep), heads[i] - len(keep),
                                                                            generator))
    for i, count in enumerate(plan["units"]):
        units = config["encoder_ff_interm_features"][i]
        kept = torch.randperm(units, generator=generator)[:count].tolist()
        gates[unit_gate(i)] = gate_log_alpha(units, kept, _soft_values(count, units - count, generator))
    for key, name in (("attention_layer", attention_layer_gate), ("ffn_layer", ffn_layer_gate)):
        for i, value in enumerate(plan.get(key, ())):
            gates[name(i)] = gate_log_alpha(1, [0] if value else [], [value] if value else [])
    shapes = state_shapes(config)
    state.update(gates)
    state = {name: state[name] for name in shapes}  # in the order of the model's state_dict
    assert all(tuple(state[k].shape) == shapes[k] for k in shapes)
    return {"state_dict": state, "config": config}


def paper_prune(step1: dict) -> tuple:
    """``(pruned config, pruned state dict)``: prune.py ``prune_from_ckpt`` on a Step-1 student (rules 3 and 4 of
    the module docstring)."""
    state = {k: v.clone() for k, v in step1["state_dict"].items()}
    config = dict(step1["config"])
    # prune.py 20-29: the switches from the Step-1 keys of layer 0
    config.update(extractor_prune_conv_channels=conv_gate(0) in state,
                  encoder_prune_attention_heads=head_gate(0) in state,
                  encoder_prune_attention_layer=attention_layer_gate(0) in state,
                  encoder_prune_feed_forward_intermediate=unit_gate(0) in state,
                  encoder_prune_feed_forward_layer=ffn_layer_gate(0) in state)

    # FeatureExtractor.prune (components.py 198-235)
    conv = [tuple(c) for c in config["extractor_conv_layer_config"]]
    new_conv = []
    index = torch.arange(conv[-1][0])
    for i, (channels, kernel, stride) in enumerate(conv):
        p = f"feature_extractor.conv_layers.{i}."
        if conv_gate(i) not in state:
            new_conv.append((channels, kernel, stride))
            index = torch.arange(channels)
            continue
        mask = hard_concrete_mask(state.pop(conv_gate(i)))
        index = mask.nonzero().squeeze(-1)
        assert len(index) > 0  # (the paper asserts it, 208)
        new_conv.append((len(index), kernel, stride))
        for name in ("conv.weight", "conv.bias", "layer_norm.weight", "layer_norm.bias"):
            if p + name in state:
                state[p + name] = state[p + name].index_select(0, index)
        if i == len(conv) - 1:
            state[DUMMY] = (state[DUMMY] * mask).index_select(0, index)
        else:
            nxt = f"feature_extractor.conv_layers.{i + 1}.conv.weight"
            state[nxt] = (state[nxt] * mask.unsqueeze(-1)).index_select(1, index)
    # Encoder.prune (1011-1017)
    p = "encoder.feature_projection."
    for name in ("layer_norm.weight", "layer_norm.bias"):
        state[p + name] = state[p + name].index_select(0, index)
    state[p + "projection.weight"] = state[p + "projection.weight"].index_select(1, index)

    # Transformer.prune (936-956): per layer the attention's prune, then the FFN's
    wavlm = "encoder_remaining_heads" in config
    use_attention, use_feed_forward, heads_out, units_out = [], [], [], []
    for i in range(config["encoder_num_layers"]):
        p = f"{LAYERS}{i}."
        _, head_dim = _heads_and_dim(config, i)
        heads = list(config["encoder_remaining_heads"][i]) if wavlm else config["encoder_num_heads"][i]
        on = True
        if attention_layer_gate(i) in state:  # 456-463
            layer_mask = hard_concrete_mask(state.pop(attention_layer_gate(i)))
            for kind in ("weight", "bias"):
                key = f"{p}attention.out_proj.{kind}"
                state[key] = state[key] * layer_mask
            on = bool(layer_mask != 0)
        if head_gate(i) in state:  # 465-481 (WavLM 675-691)
            head_mask = hard_concrete_mask(state.pop(head_gate(i)))
            kept = head_mask.nonzero().squeeze(-1)
            heads = kept.tolist() if wavlm else len(kept)
            if len(kept) == 0:
                on = False
            else:
                full_mask = head_mask.repeat_interleave(head_dim)
                full_index = full_mask.nonzero().squeeze(-1)
                for name in ("k_proj", "v_proj", "q_proj"):
                    for kind in ("weight", "bias"):
                        key = f"{p}attention.{name}.{kind}"
                        state[key] = state[key].index_select(0, full_index)
                key = p + "attention.out_proj.weight"
                state[key] = (state[key] * full_mask).index_select(1, full_index)
        heads_out.append(heads)
        use_attention.append(on)
        if not on:  # layer.attention = None (946-947)
            for key in [k for k in state if k.startswith(p + "attention.")]:
                del state[key]

        units = config["encoder_ff_interm_features"][i]
        on = True
        if ffn_layer_gate(i) in state:  # 768-775
            layer_mask = hard_concrete_mask(state.pop(ffn_layer_gate(i)))
            for kind in ("weight", "bias"):
                key = f"{p}feed_forward.output_dense.{kind}"
                state[key] = state[key] * layer_mask
            on = bool(layer_mask != 0)
        if unit_gate(i) in state:  # 777-789
            unit_mask = hard_concrete_mask(state.pop(unit_gate(i)))
            kept = unit_mask.nonzero().squeeze(-1)
            units = len(kept)
            if units == 0:
                on = False
            else:
                for kind in ("weight", "bias"):
                    key = f"{p}feed_forward.intermediate_dense.{kind}"
                    state[key] = state[key].index_select(0, kept)
                key = p + "feed_forward.output_dense.weight"
                state[key] = (state[key] * unit_mask).index_select(1, kept)
        units_out.append(units)
        use_feed_forward.append(on)
        if not on:  # layer.feed_forward = None (952-953)
            for key in [k for k in state if k.startswith(p + "feed_forward.")]:
                del state[key]

    pruned = config.copy()  # prune.py 33-59
    pruned["encoder_remaining_heads" if wavlm else "encoder_num_heads"] = heads_out
    pruned.update(extractor_conv_layer_config=new_conv, encoder_use_attention=use_attention,
                  encoder_use_feed_forward=use_feed_forward, encoder_ff_interm_features=units_out,
                  **{name: False for name in PRUNE_SWITCHES})
    shapes = state_shapes(pruned)  # load_pruned_model's strict load (prune.py 70-74)
    assert set(state) == set(shapes), sorted(set(state) ^ set(shapes))
    assert all(tuple(state[k].shape) == shapes[k] for k in shapes)
    return pruned, {name: state[name] for name in shapes}


def distill_linear_projs(groups: Sequence[Sequence[int]], dim: int, generator: torch.Generator) -> Dict[str, Tensor]:
    """The state dict of distill.py's ModuleList: one Linear per group (identity-initialised, then trained),
    repeated for each layer of the group (same tensors)."""
    state = {}
    k = 0
    for group in groups:
        weight = torch.eye(dim) + 0.05 * torch.randn(dim, dim, generator=generator)
        bias = 0.05 * torch.randn(dim, generator=generator)
        for _ in group:
            state[f"{k}.weight"], state[f"{k}.bias"] = weight, bias
            k += 1
    return state


def reference_checkpoint(kind: str, seed: int = 0, plan: Optional[dict] = None, **step1) -> dict:
    """The dict prune.py / save_final_ckpt.py save for a tiny ``kind`` model pruned as ``plan`` (default PLANS)."""
    student = step1_checkpoint(kind, seed, plan, **step1)
    pruned_config, pruned_state = paper_prune(student)
    generator = torch.Generator().manual_seed(seed + 1)
    groups = [[0], list(range(1, pruned_config["encoder_num_layers"] + 1))]  # run.sh's "0.4,8,12" for 3 layers
    return {"state_dict": pruned_state, "config": pruned_config,
            "distill_linear_projs": distill_linear_projs(groups, pruned_config["encoder_embed_dim"], generator)}


def write_reference_file(path, kind: str, **kw) -> dict:
    ckpt = reference_checkpoint(kind, **kw)
    torch.save(ckpt, path)
    return ckpt


# ----- the paper's forward (wav2vec2/model.py extract_features, one unpadded batch) ---------------------------------
def _relative_buckets(frames: int, num_buckets: int, max_distance: int) -> Tensor:
    """WavLMSelfAttention._relative_positions_bucket (bidirectional, 563-600) for key position minus query
    position."""
    positions = torch.arange(frames)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    relative = relative.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return buckets + torch.where(relative < max_exact, relative, large)


def _mask(sd: Dict[str, Tensor], key: str) -> Optional[Tensor]:
    return hard_concrete_mask(sd[key]) if key in sd else None


def _attention(x: Tensor, sd: Dict[str, Tensor], config: dict, i: int, position_bias: Optional[Tensor]):
    p = f"{LAYERS}{i}.attention."
    batch, frames, _ = x.shape
    heads, head_dim = _heads_and_dim(config, i)
    bias = None
    if "encoder_remaining_heads" in config:
        total = config["encoder_total_num_heads"][i]
        if p + "rel_attn_embed.weight" in sd and position_bias is None:
            buckets = _relative_buckets(frames, config["encoder_num_buckets"], config["encoder_max_distance"])
            position_bias = sd[p + "rel_attn_embed.weight"][buckets].permute(2, 0, 1)  # (total, T, T)
        if position_bias is not None:
            per_head = x.view(batch, frames, total, head_dim).permute(0, 2, 1, 3)
            gru = F.linear(per_head, sd[p + "gru_rel_pos_linear.weight"], sd[p + "gru_rel_pos_linear.bias"])
            gates = torch.sigmoid(gru.view(batch, total, frames, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            gate = gate_a * (gate_b * sd[p + "gru_rel_pos_const"] - 1.0) + 2.0
            bias = (gate * position_bias[None])[:, config["encoder_remaining_heads"][i]]
    shape = (batch, frames, heads, head_dim)
    q = F.linear(x, sd[p + "q_proj.weight"], sd[p + "q_proj.bias"]).view(shape).transpose(1, 2)
    k = F.linear(x, sd[p + "k_proj.weight"], sd[p + "k_proj.bias"]).view(shape).transpose(1, 2)
    v = F.linear(x, sd[p + "v_proj.weight"], sd[p + "v_proj.bias"]).view(shape).transpose(1, 2)
    weights = (q * head_dim ** -0.5) @ k.transpose(-1, -2)
    if bias is not None:
        weights = weights + bias
    out = weights.softmax(-1) @ v  # (B, heads, T, head_dim)
    head_mask = _mask(sd, p + "hard_concrete_for_heads.log_alpha")
    if head_mask is not None:
        out = out * head_mask[None, :, None, None]
    out = F.linear(out.transpose(1, 2).reshape(batch, frames, heads * head_dim), sd[p + "out_proj.weight"],
                   sd[p + "out_proj.bias"])
    layer_mask = _mask(sd, p + "hard_concrete_for_layer.log_alpha")
    return (out if layer_mask is None else out * layer_mask), position_bias


def _layer_norm(x: Tensor, sd: Dict[str, Tensor], prefix: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"])


def _empty(sd: Dict[str, Tensor], gates: Sequence[str]) -> bool:
    """Whether a block's gates are all zero in eval mode (prune() removes such a block)."""
    return any(key in sd and not bool(hard_concrete_mask(sd[key]).any()) for key in gates)


@torch.no_grad()
def cnn_features(ckpt: dict, waveforms: Tensor) -> Tensor:
    """The feature extractor's output ``(batch, frames, channels)``, ``dummy_weight`` applied (model.py 101-105,
    components.py 94-121 and 158-185)."""
    sd, config = ckpt["state_dict"], ckpt["config"]
    x = F.layer_norm(waveforms, waveforms.shape[-1:]) if config["normalize_waveform"] else waveforms
    x = x[:, None]
    for i, (channels, _, stride) in enumerate(config["extractor_conv_layer_config"]):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, sd[p + "conv.weight"], sd.get(p + "conv.bias"), stride=stride)
        if config["extractor_mode"] == "layer_norm":
            x = _layer_norm(x.transpose(1, 2), sd, p + "layer_norm.").transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, channels, sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
        x = F.gelu(x)
        mask = _mask(sd, conv_gate(i))
        if mask is not None:
            x = x * mask[:, None]
    return x.transpose(1, 2) * sd[DUMMY]


@torch.no_grad()
def reference_states(ckpt: dict, waveforms: Tensor, skip_empty: bool = False,
                     state0: Optional[Tensor] = None) -> dict:
    """``{"states": the paper's extract_features list, "transformer_input": x after pos conv (+ LN)}`` of a pruned
    file, or of a Step-1 student (its gates in eval mode; ``skip_empty``: without the blocks prune() removes).
    ``state0``: start from that feature-projection output instead of the waveforms'."""
    sd, config = ckpt["state_dict"], ckpt["config"]
    if state0 is None:
        x = _layer_norm(cnn_features(ckpt, waveforms), sd, "encoder.feature_projection.layer_norm.")
        p = "encoder.feature_projection.projection."
        x = F.linear(x, sd[p + "weight"], sd[p + "bias"])
    else:
        x = state0
    states = [x]
    p = "encoder.transformer.pos_conv_embed.conv."
    v, g = sd.get(p + "weight_v", sd.get(p + "parametrizations.weight.original1")), sd.get(
        p + "weight_g", sd.get(p + "parametrizations.weight.original0"))
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm(dim=2): a norm per kernel position
    kernel = config["encoder_pos_conv_kernel"]
    pos = F.conv1d(x.transpose(1, 2), weight, sd[p + "bias"], padding=kernel // 2,
                   groups=config["encoder_pos_conv_groups"])
    if kernel % 2 == 0:
        pos = pos[..., :-1]
    x = x + F.gelu(pos).transpose(1, 2)
    pre_ln = config["encoder_layer_norm_first"]
    if not pre_ln:
        x = _layer_norm(x, sd, "encoder.transformer.layer_norm.")
    transformer_input = x
    position_bias = None
    for i in range(config["encoder_num_layers"]):
        p = f"{LAYERS}{i}."
        attention = config["encoder_use_attention"][i] and not (
            skip_empty and _empty(sd, [head_gate(i), attention_layer_gate(i)]))
        if attention:
            attn_in = _layer_norm(x, sd, p + "layer_norm.") if pre_ln else x
            out, position_bias = _attention(attn_in, sd, config, i, position_bias)
            x = x + out
        ffn = config["encoder_use_feed_forward"][i] and not (skip_empty and _empty(sd, [unit_gate(i),
                                                                                      ffn_layer_gate(i)]))
        if pre_ln:
            if ffn:
                x = x + _feed_forward(_layer_norm(x, sd, p + "final_layer_norm."), sd, p)
        else:
            x = _layer_norm(x, sd, p + "layer_norm.")
            if ffn:
                x = x + _feed_forward(x, sd, p)
            x = _layer_norm(x, sd, p + "final_layer_norm.")
        states.append(x)
    return {"states": states, "transformer_input": transformer_input}


def _feed_forward(x: Tensor, sd: Dict[str, Tensor], p: str) -> Tensor:
    p += "feed_forward."
    h = F.gelu(F.linear(x, sd[p + "intermediate_dense.weight"], sd[p + "intermediate_dense.bias"]))
    mask = _mask(sd, p + "hard_concrete_for_intermediate.log_alpha")
    if mask is not None:
        h = h * mask
    out = F.linear(h, sd[p + "output_dense.weight"], sd[p + "output_dense.bias"])
    layer_mask = _mask(sd, p + "hard_concrete_for_layer.log_alpha")
    return out if layer_mask is None else out * layer_mask


def final_layer_norm(ckpt: dict, state: Tensor) -> Tensor:
    """The encoder LayerNorm that pre-LN models apply to the last layer (the paper's code only in ``forward``)."""
    return _layer_norm(state, ckpt["state_dict"], "encoder.transformer.layer_norm.")
