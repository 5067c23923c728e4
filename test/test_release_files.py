"""Files of the paper's code in (the released DPHuBERT/DPWavLM, its prune.py / save_final_ckpt.py outputs), and our
models out in their layout (``convert --to release``, ``package --release-out``).

The fixtures are made by ``reference_dphubert.py`` as pyf98/DPHuBERT (commit c18093f) makes such files: a Step-1
student with HardConcrete gates (wav2vec2/hardconcrete.py ``forward``, eval mode, lines 101-113) pruned by the
rules of its ``prune()`` methods (wav2vec2/components.py ``FeatureExtractor.prune`` 198-235,
``SelfAttention.prune`` 451-484, ``WavLMSelfAttention.prune`` 661-694, ``FeedForward.prune`` 763-792,
``Transformer.prune`` 936-956, ``Encoder.prune`` 1011-1017) and saved as prune.py ``prune_from_ckpt`` (11-67)
saves; its docstring names the lines of each rule. They are HuBERT, WavLM and a pre-LN (Large-style) model with
non-trivial ``dummy_weight`` values (0.3, 0.98, 0.21, ...), pruned per layer, with layers left without heads or
FFN units, a WavLM whose layer 0 keeps no head, and layer gates (attlayer, ffnlayer) with soft masks and masks of
0. Hidden states are compared with ``reference_states``, a forward written from wav2vec2/model.py and
components.py, which is itself checked against torchaudio's ``wav2vec2_model`` / ``wavlm_model`` (the code the
paper's is derived from) on a uniformly pruned file torchaudio can express.

Conventions (ours: HF / s3prl): our state 0 is the transformer input (the paper's state 0 is the projection
output before the positional conv, our ``extract_features(..., layer0="projection")[0]``); pre-LN models' last
state has the final encoder LayerNorm (the paper's code applies it only in ``forward``).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from conftest import ALL_GATES, tiny_config
from reference_dphubert import (DUMMY, EXTRA_PLANS, LAST_CONV_VALUES, LAYERS, attention_layer_gate,
                                cnn_features, conv_gate, ffn_layer_gate, final_layer_norm, hard_concrete_mask,
                                head_gate, paper_prune, reference_checkpoint, reference_states, state_shapes,
                                step1_checkpoint, teacher_config, unit_gate, write_reference_file)
from dphubert.bin import convert as convert_cli
from dphubert.bin import package as package_cli
from dphubert.distill import LayerProjections
from dphubert.models import Wav2Vec2Model, load_model, save_model
from dphubert.models.release import DUMMY_WEIGHT, release_checkpoint

KINDS = ["hubert", "wavlm", "hubert_large"]
# Every pruned layout: the three kinds with their default plans, and the extra ones (kind, plan).
LAYOUTS = {**{kind: (kind, None) for kind in KINDS}, **EXTRA_PLANS}
SAMPLES = 4000  # 99 frames: relative distances beyond WavLM's exact (8) and log (64) bucket ranges
TOL = 1e-5


def _states(model, x, layer0="transformer_input"):
    with torch.no_grad():
        return model.extract_features(x, layer0=layer0)[0]


def _diff(a, b) -> float:
    return float((a - b).abs().max())


def assert_reference_states(model, ckpt, x):
    """``model`` computes what the reference code computes for ``ckpt``, up to the documented conventions."""
    reference = reference_states(ckpt, x)
    ref, ours = reference["states"], _states(model, x)
    assert len(ours) == len(ref) == ckpt["config"]["encoder_num_layers"] + 1
    assert _diff(_states(model, x, "projection")[0], ref[0]) < TOL  # the reference's state 0
    assert _diff(ours[0], reference["transformer_input"]) < TOL     # ours: after pos conv (+ encoder LayerNorm)
    for i in range(1, len(ours) - 1):
        assert _diff(ours[i], ref[i]) < TOL, i
    pre_ln = ckpt["config"]["encoder_layer_norm_first"]
    assert _diff(ours[-1], final_layer_norm(ckpt, ref[-1]) if pre_ln else ref[-1]) < TOL


def _torchaudio_twin(ckpt):
    """torchaudio's model with the file's weights and the reference's dummy_weight multiplication of the CNN
    output (components.py FeatureExtractor.forward); returns it and a dict receiving the projection output."""
    cfg = ckpt["config"]
    wavlm = "encoder_remaining_heads" in cfg
    args = dict(extractor_mode=cfg["extractor_mode"], extractor_conv_layer_config=cfg["extractor_conv_layer_config"],
                extractor_conv_bias=cfg["extractor_conv_bias"], encoder_embed_dim=cfg["encoder_embed_dim"],
                encoder_projection_dropout=0.0, encoder_pos_conv_kernel=cfg["encoder_pos_conv_kernel"],
                encoder_pos_conv_groups=cfg["encoder_pos_conv_groups"], encoder_num_layers=cfg["encoder_num_layers"],
                encoder_num_heads=4, encoder_attention_dropout=0.0,
                encoder_ff_interm_features=cfg["encoder_ff_interm_features"][0], encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.0, encoder_layer_norm_first=cfg["encoder_layer_norm_first"], encoder_layer_drop=0.0,
                aux_num_out=None)
    if wavlm:
        model = torchaudio.models.wavlm_model(encoder_num_buckets=cfg["encoder_num_buckets"],
                                              encoder_max_distance=cfg["encoder_max_distance"], **args)
    else:
        model = torchaudio.models.wav2vec2_model(**args)
    state = {}
    for key, value in ckpt["state_dict"].items():
        key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
        state[key.replace("conv.weight_v", "conv.parametrizations.weight.original1")] = value
    dummy = state.pop(DUMMY_WEIGHT)
    if wavlm:  # torchaudio's WavLM attention is an nn.MultiheadAttention: one in_proj for q, k, v
        for i in range(cfg["encoder_num_layers"]):
            p = f"encoder.transformer.layers.{i}.attention."
            for kind in ("weight", "bias"):
                state[f"{p}attention.in_proj_{kind}"] = torch.cat([state.pop(f"{p}{n}_proj.{kind}") for n in "qkv"])
                state[f"{p}attention.out_proj.{kind}"] = state.pop(f"{p}out_proj.{kind}")
    model.load_state_dict(state, strict=True)  # the same names, apart from those three differences
    model.feature_extractor.register_forward_hook(lambda module, args, out: (out[0] * dummy, out[1]))
    captured = {}
    model.encoder.feature_projection.register_forward_hook(lambda module, args, out: captured.update(x=out))
    return model.eval(), captured


def _blocks_removed(step1: dict, i: int):
    """Per the paper's prune(): whether layer i loses its attention / FFN block, and the head / unit masks."""
    sd = step1["state_dict"]
    masks = {name: hard_concrete_mask(sd[gate(i)]) for name, gate in (
        ("heads", head_gate), ("attention_layer", attention_layer_gate), ("units", unit_gate),
        ("ffn_layer", ffn_layer_gate)) if gate(i) in sd}
    no_attention = not masks["heads"].any() or ("attention_layer" in masks and not masks["attention_layer"].any())
    no_ffn = not masks["units"].any() or ("ffn_layer" in masks and not masks["ffn_layer"].any())
    return no_attention, no_ffn, masks


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixtures_hold_what_the_paper_prune_writes(layout):
    """The fixture files against the facts of pyf98/DPHuBERT's prune (the lines: reference_dphubert's docstring)
    and against the gated Step-1 model they come from, where prune() keeps its states."""
    kind, plan = LAYOUTS[layout]
    step1 = step1_checkpoint(kind, plan=plan)
    config, state = paper_prune(step1)
    ckpt = reference_checkpoint(kind, plan=plan)
    assert list(ckpt) == ["state_dict", "config", "distill_linear_projs"]  # prune.py 62-66
    assert ckpt["config"] == config and all(torch.equal(ckpt["state_dict"][k], v) for k, v in state.items())
    # prune.py 33-59: the teacher's config keys in their order, the five switches False, CNN layers as tuples
    assert list(config) == list(teacher_config(kind))
    assert not any(config[k] for k in ("extractor_prune_conv_channels", "encoder_prune_attention_heads",
                                       "encoder_prune_attention_layer", "encoder_prune_feed_forward_intermediate",
                                       "encoder_prune_feed_forward_layer"))
    assert all(type(c) is tuple for c in config["extractor_conv_layer_config"])
    assert not [k for k in state if "hard_concrete" in k]  # the gates are gone (layer.hard_concrete = None)
    sd = step1["state_dict"]
    last = len(config["extractor_conv_layer_config"]) - 1
    channel_mask = hard_concrete_mask(sd[conv_gate(last)])
    kept = channel_mask.nonzero().squeeze(-1)
    assert config["extractor_conv_layer_config"][last][0] == len(kept)
    assert torch.equal(state[DUMMY], channel_mask[kept])  # ones * the last conv's mask, sliced (components.py 218-223)
    wavlm = "encoder_remaining_heads" in config
    for i in range(config["encoder_num_layers"]):
        p = f"{LAYERS}{i}."
        no_attention, no_ffn, masks = _blocks_removed(step1, i)
        heads = masks["heads"].nonzero().squeeze(-1)
        # The head count (WavLM: indices) of the nonzero head-mask entries, even when a layer gate of 0 removed the
        # block with heads left (SelfAttention.prune 468, WavLMSelfAttention.prune 678)
        assert (config["encoder_remaining_heads"][i] if wavlm else config["encoder_num_heads"][i]) == (
            heads.tolist() if wavlm else len(heads))
        assert config["encoder_use_attention"][i] == (not no_attention)
        attention_keys = [k for k in state if k.startswith(p + "attention.")]
        if no_attention:  # layer.attention = None (Transformer.prune 946-947): q/k/v/out_proj, out_proj's bias too
            assert attention_keys == []
        else:
            head_dim = (config["encoder_embed_dim"] // config["encoder_total_num_heads"][i] if wavlm
                        else config["encoder_head_dim"])
            columns = (masks["heads"].repeat_interleave(head_dim)).nonzero().squeeze(-1)
            scale = masks.get("attention_layer", torch.ones(1))
            for name in ("q_proj", "k_proj", "v_proj"):
                assert torch.equal(state[f"{p}attention.{name}.weight"], sd[f"{p}attention.{name}.weight"][columns])
                assert torch.equal(state[f"{p}attention.{name}.bias"], sd[f"{p}attention.{name}.bias"][columns])
            out_w = sd[p + "attention.out_proj.weight"] * scale * masks["heads"].repeat_interleave(head_dim)
            assert torch.equal(state[p + "attention.out_proj.weight"], out_w[:, columns])
            # the bias kept, times the layer gate's mask only (prune_linear_layer slices no bias along "input")
            assert torch.equal(state[p + "attention.out_proj.bias"], sd[p + "attention.out_proj.bias"] * scale)
        units = masks["units"].nonzero().squeeze(-1)
        assert config["encoder_ff_interm_features"][i] == len(units)  # FeedForward.prune 781 (0 when none)
        assert config["encoder_use_feed_forward"][i] == (not no_ffn)
        ffn_keys = [k for k in state if k.startswith(p + "feed_forward.")]
        if no_ffn:  # layer.feed_forward = None (952-953)
            assert ffn_keys == []
        else:
            scale = masks.get("ffn_layer", torch.ones(1))
            out_w = sd[p + "feed_forward.output_dense.weight"] * scale * masks["units"]
            assert torch.equal(state[p + "feed_forward.output_dense.weight"], out_w[:, units])
            assert torch.equal(state[p + "feed_forward.output_dense.bias"], sd[p + "feed_forward.output_dense.bias"]
                               * scale)
        for norm in ("layer_norm", "final_layer_norm"):  # kept whatever goes (EncoderLayer.forward 852)
            assert torch.equal(state[f"{p}{norm}.weight"], sd[f"{p}{norm}.weight"])
    # WavLM: only layer 0 has rel_attn_embed (components.py 1349); it goes with layer 0's attention
    assert [k for k in state if "rel_attn_embed" in k] == (
        [f"{LAYERS}0.attention.rel_attn_embed.weight"] if wavlm and config["encoder_use_attention"][0] else [])

    # Where prune() keeps the gated model's states, the fixture must too (every mask folded in right):
    x = torch.randn(2, SAMPLES)
    pruned = reference_states(ckpt, x)["states"]
    if config["extractor_mode"] == "group_norm":  # the CNN's features on the kept channels, zeros elsewhere
        gated = cnn_features(step1, x)
        assert _diff(gated[..., kept], cnn_features(ckpt, x)) < TOL
        assert float(gated.abs().sum()) == float(gated[..., kept].abs().sum())
    gated = reference_states(step1, x, skip_empty=True, state0=pruned[0])["states"]
    assert max(_diff(a, b) for a, b in zip(gated, pruned)) < TOL
    # ... and it drops what a block whose heads / units are all gated off still adds (its output bias)
    def lossy(masks, inner, layer):
        return not masks[inner].any() and bool(masks.get(layer, torch.ones(1)).all())

    dropped_bias = any(lossy(m, "heads", "attention_layer") or lossy(m, "units", "ffn_layer")
                       for m in (_blocks_removed(step1, i)[2] for i in range(config["encoder_num_layers"])))
    full = reference_states(step1, x, state0=pruned[0])["states"]
    assert (_diff(full[-1], pruned[-1]) > 1e-2) == dropped_bias


@pytest.mark.parametrize("kind", KINDS)
def test_reference_forward_and_our_loader_match_torchaudio(kind, tmp_path):
    """On a file torchaudio can express (every head kept, one FFN width), the independent reference forward equals
    torchaudio with the dummy_weight multiplication, and load_model gives those states in our convention."""
    ckpt = write_reference_file(tmp_path / "uniform.pth", kind, plan=dict(heads=[[0, 1, 2, 3]] * 3, units=[61] * 3))
    twin, captured = _torchaudio_twin(ckpt)
    x = torch.randn(2, SAMPLES)
    inputs = F.layer_norm(x, x.shape[-1:]) if ckpt["config"]["normalize_waveform"] else x
    with torch.no_grad():
        per_layer, _ = twin.extract_features(inputs)
    ref = reference_states(ckpt, x)["states"]
    assert _diff(ref[0], captured["x"]) < TOL
    assert max(_diff(a, b) for a, b in zip(ref[1:], per_layer)) < TOL
    assert_reference_states(load_model(tmp_path / "uniform.pth"), ckpt, x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_files_load_and_convert(layout, tmp_path, capsys):
    kind, plan = LAYOUTS[layout]
    ckpt = write_reference_file(tmp_path / "DPHuBERT-sp0.75.pth", kind, plan=plan)
    assert ckpt["state_dict"][DUMMY_WEIGHT][:3].tolist() == pytest.approx(LAST_CONV_VALUES)
    model = load_model(tmp_path / "DPHuBERT-sp0.75.pth")
    assert model.config["encoder_projection_input_scale"]
    assert torch.equal(model.encoder.feature_projection.input_scale, ckpt["state_dict"][DUMMY_WEIGHT])
    x = torch.randn(2, SAMPLES)
    assert_reference_states(model, ckpt, x)

    # The scale matters (so the checks above can fail); an all-ones one is dropped.
    ones = copy.deepcopy(ckpt)
    ones["state_dict"][DUMMY_WEIGHT].fill_(1.0)
    torch.save(ones, tmp_path / "ones.pth")
    plain = load_model(tmp_path / "ones.pth")
    assert plain.encoder.feature_projection.input_scale is None
    assert _diff(_states(plain, x)[-1], _states(model, x)[-1]) > 1e-3

    assert convert_cli.main(["--from", "dphubert", str(tmp_path / "DPHuBERT-sp0.75.pth"),
                             "--out", str(tmp_path / "ours.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert converted["format"] == "dphubert" and sorted(converted["distill_linear_projs"]) == sorted(
        ckpt["distill_linear_projs"])
    for a, b in zip(_states(load_model(tmp_path / "ours.pt"), x), _states(model, x)):
        assert torch.equal(a, b)

    if layout == "hubert":  # newer torch spells the weight-norm parameters of the positional conv differently
        renamed = copy.deepcopy(ckpt)
        renamed["state_dict"] = {k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
                                 .replace("conv.weight_v", "conv.parametrizations.weight.original1"): v
                                 for k, v in ckpt["state_dict"].items()}
        torch.save(renamed, tmp_path / "parametrized.pth")
        for a, b in zip(_states(load_model(tmp_path / "parametrized.pth"), x), _states(model, x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_convert_to_release_writes_what_the_reference_wrote(layout, tmp_path):
    """A reference file -> our model -> --to release gives back the reference file: keys, config, tensors."""
    kind, plan = LAYOUTS[layout]
    ckpt = write_reference_file(tmp_path / "ref.pth", kind, plan=plan)
    assert convert_cli.main(["--from", "dphubert", str(tmp_path / "ref.pth"), "--to", "release",
                             "--out", str(tmp_path / "release.pth")]) == 0
    out = torch.load(tmp_path / "release.pth", weights_only=True)
    assert list(out) == ["state_dict", "config", "distill_linear_projs"]
    assert out["config"] == ckpt["config"] and list(out["config"]) == list(ckpt["config"])
    for entry in ("state_dict", "distill_linear_projs"):
        assert sorted(out[entry]) == sorted(ckpt[entry])
        for key, value in ckpt[entry].items():
            assert torch.equal(out[entry][key], value), key
    x = torch.randn(1, SAMPLES)
    for a, b in zip(_states(load_model(tmp_path / "release.pth"), x), _states(load_model(tmp_path / "ref.pth"), x)):
        assert torch.equal(a, b)


def _our_pruned_model(kind):
    """Our prune() of a gated tiny model: CNN channels (so an input scale), layer 0 without heads (WavLM keeps its
    relative-position embedding), layer 1 without FFN units; non-trivial LayerNorm affines."""
    gated = Wav2Vec2Model(tiny_config("hubert" if kind == "hubert_large" else kind, large=kind == "hubert_large",
                                      **dict(ALL_GATES, encoder_prune_attention_layer=False,
                                             encoder_prune_feed_forward_layer=False))).eval()
    for gate in gated.gates().values():
        gate.log_alpha.data.normal_(1.5, 2.0)
    layers = gated.encoder.transformer.layers
    layers[0].attention.hard_concrete_for_heads.log_alpha.data.fill_(-20.0)
    layers[1].feed_forward.hard_concrete_for_intermediate.log_alpha.data.fill_(-20.0)
    with torch.no_grad():
        for p in gated.main_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gated.prune()


@pytest.mark.parametrize("kind", KINDS)
def test_our_models_package_to_the_release_layout(kind, tmp_path, capsys):
    model = _our_pruned_model(kind)
    assert model.encoder.feature_projection.input_scale is not None
    projections = LayerProjections([0, 1, 2, 3], [[0], [1, 2, 3]], 48, 48)
    extra = {"distill_linear_projs": projections.per_layer_state_dict(), "distill": projections.metadata()}
    save_model(model, tmp_path / "last.pt", extra)
    release = tmp_path / "final" / "model_release.pth"
    if kind == "hubert":  # recipe stage 4
        assert package_cli.main(["--model", str(tmp_path / "last.pt"), "--out", str(tmp_path / "final" / "model.pt"),
                                 "--release-out", str(release)]) == 0
    else:
        assert convert_cli.main(["--from", "dphubert", str(tmp_path / "last.pt"), "--to", "release",
                                 "--out", str(release)]) == 0
    assert f"{release}" in capsys.readouterr().out
    out = torch.load(release, weights_only=True)
    reference = reference_checkpoint(kind)
    assert list(out) == list(reference)
    assert list(out["config"]) == list(reference["config"])  # exactly wav2vec2_model's / wavlm_model's arguments
    # exactly what the reference's wav2vec2_model(**config) holds, so load_state_dict(strict=False) misses nothing
    assert {k: tuple(v.shape) for k, v in out["state_dict"].items()} == state_shapes(out["config"])
    assert sorted(out["distill_linear_projs"]) == sorted(reference["distill_linear_projs"])
    assert torch.equal(out["state_dict"][DUMMY_WEIGHT], model.encoder.feature_projection.input_scale)
    x = torch.randn(2, SAMPLES)
    assert_reference_states(model, out, x)  # the reference code computes our model's states from the file
    for a, b in zip(_states(load_model(release), x), _states(model, x)):
        assert torch.equal(a, b)
    if kind == "hubert":  # without an input scale, dummy_weight is all ones
        unscaled = release_checkpoint(Wav2Vec2Model(tiny_config("hubert")))["state_dict"][DUMMY_WEIGHT]
        assert unscaled.shape == (32,) and bool((unscaled == 1).all())


def test_release_export_bad_input_gives_one_line(tmp_path, capsys):
    save_model(Wav2Vec2Model(tiny_config("hubert", **ALL_GATES)), tmp_path / "gated.pt")
    save_model(Wav2Vec2Model(tiny_config("hubert")), tmp_path / "plain.pt")
    (tmp_path / "a_file").write_text("not a directory")
    cases = [
        (convert_cli, ["--from", "dphubert", tmp_path / "gated.pt", "--to", "release", "--out", tmp_path / "x.pth"],
         1, "gated.pt: still has pruning gates"),
        (convert_cli, ["--from", "dphubert", tmp_path / "plain.pt", "--to", "relase", "--out", tmp_path / "x.pth"],
         2, "--to relase: choose dphubert"),
        (convert_cli, ["--from", "dphubert", tmp_path / "plain.pt", "--to", "release",
                       "--out", tmp_path / "a_file" / "x.pth"], 1, "a_file/x.pth: cannot write it"),
        (package_cli, ["--model", tmp_path / "plain.pt", "--out", tmp_path / "pkg" / "model.pt",
                       "--release-out", tmp_path / "a_file" / "x.pth"], 1, "choose another --release-out"),
    ]
    for module, args, status, message in cases:
        assert module.main([str(a) for a in args]) == status, args
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "x.pth").exists()


def test_s3prl_upstream_and_run_downstream_read_a_reference_file(tmp_path, monkeypatch):
    from test_superb import make_speech_commands

    from dphubert.bin import superb as superb_cli
    from dphubert.superb import running

    ckpt = write_reference_file(tmp_path / "DPWavLM-sp0.75.pth", "wavlm")
    running.setup()  # registers dphubert_local (and defers ESPnet's import that s3prl.hub would trigger)
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("dphubert_local", path_or_url=str(tmp_path / "DPWavLM-sp0.75.pth")).eval()
    x = torch.randn(2, SAMPLES)
    with torch.no_grad():
        states, _ = upstream(x, torch.tensor([SAMPLES, SAMPLES]))
    assert_reference_states(upstream.upstream.model, ckpt, x)
    for a, b in zip(states, _states(upstream.upstream.model, x)):
        assert _diff(a[:, :b.size(1)], b) < TOL  # s3prl repeats the last frame up to samples / stride frames

    make_speech_commands(tmp_path / "corpus")
    (tmp_path / "db.sh").write_text(f"SPEECH_COMMANDS={tmp_path / 'corpus' / 'speech_commands_v0.01'}\n")
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp" / "ks"
    steps = ["runner.total_steps=4", "runner.eval_step=4", "runner.save_step=4", "runner.log_step=2",
             "downstream_expert.datarc.batch_size=4"]
    status = superb_cli.main(["--db", str(tmp_path / "db.sh"), "--quick", "--set", *steps, "--", "-m", "train", "-u",
                              "dphubert_local", "-k", str(tmp_path / "DPWavLM-sp0.75.pth"), "-d", "speech_commands",
                              "-p", str(exp)])
    assert status == 0
    assert (exp / "states-4.ckpt").exists() and (exp / "dev-best.ckpt").exists()  # trained, then evaluated on dev
    predicted, truth = [(exp / name).read_text().splitlines() for name in ("dev_predict.txt", "dev_truth.txt")]
    assert len(predicted) == len(truth) > 0
