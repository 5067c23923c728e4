"""Checkpoint importers (HF, fairseq, torchaudio, our/released files) and the convert CLI.

Every importer is checked the same way: a tiny reference model with random weights is written to a real file,
converted, and all hidden states are compared with the reference implementation's. Conventions compared:

* HF ``output_hidden_states=True``: ``num_layers + 1`` states, exactly ours (state 0 = input of layer 0).
* torchaudio ``extract_features``: one state per layer, no layer-0 state, so torchaudio ``[i]`` is our ``[i + 1]``.
  For pre-LN (layer_norm_first) models torchaudio's last state lacks the final encoder LayerNorm; that one is
  applied by torchaudio's ``forward``, whose output equals our last state.
* Waveform normalisation happens in HF's / torchaudio's callers, in our model: the references get input that
  is normalised exactly as ours (``layer_norm`` over each item's valid samples) when the converted model
  normalises.
"""

import argparse
import enum
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio
import transformers
from omegaconf import OmegaConf

from dphubert.bin import convert as convert_cli
from dphubert.convert import ConvertError, convert, from_fairseq, from_hf, from_torchaudio, parse_conv_layers
from dphubert.models import CheckpointError, Wav2Vec2Model, load_model

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
SAMPLES = 4000  # 199 frames: relative distances exceed both the exact and the log bucket range of WavLM below

TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4, layerdrop=0.0)
LARGE = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
WAVLM = dict(num_buckets=32, max_bucket_distance=64)
HF_CASES = {
    "hubert-base": (transformers.HubertModel, transformers.HubertConfig, {}),
    "hubert-large": (transformers.HubertModel, transformers.HubertConfig, LARGE),
    "wav2vec2-base": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, {}),
    "wav2vec2-large": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, LARGE),
    "wavlm-base": (transformers.WavLMModel, transformers.WavLMConfig, WAVLM),
    "wavlm-large": (transformers.WavLMModel, transformers.WavLMConfig, {**WAVLM, **LARGE}),
}


# ----- helpers ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random offsets on every parameter, so that LayerNorm affines and biases are not the trivial init."""
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _hf_model(case: str, model_class=None, **overrides):
    base_class, config_class, extra = HF_CASES[case]
    return _perturb((model_class or base_class)(config_class(**TINY_HF, **extra, **overrides)))


def _normalized(x: torch.Tensor, lengths=None) -> torch.Tensor:
    """What our model does inside when ``normalize_waveform`` is set (fairseq's normalisation)."""
    lengths = lengths or [x.size(1)] * x.size(0)
    out = torch.zeros_like(x)
    for i, n in enumerate(lengths):
        out[i, :n] = F.layer_norm(x[i, :n], (n,))
    return out


def _max_diff(ours, reference) -> float:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in zip(ours, reference))


def _hf_states(hf_model, model: Wav2Vec2Model, x, attention_mask=None, lengths=None):
    inputs = _normalized(x, lengths) if model.normalize_waveform else x
    with torch.no_grad():
        return list(hf_model(inputs, attention_mask=attention_mask, output_hidden_states=True).hidden_states)


def _our_states(model: Wav2Vec2Model, x, lengths=None):
    with torch.no_grad():
        return model.extract_features(x, None if lengths is None else torch.tensor(lengths))


def _save_hf(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


# ----- HF -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_hidden_states_match(tmp_path, case):
    hf = _hf_model(case)
    model = from_hf(_save_hf(hf, tmp_path / case))
    cfg = model.config
    assert cfg["model_type"] == case.split("-")[0] and cfg["encoder_num_layers"] == 2
    assert cfg["encoder_layer_norm_first"] == cfg["normalize_waveform"] == case.endswith("large")
    x = torch.randn(2, SAMPLES)
    states, _ = _our_states(model, x)
    diff = _max_diff(states, _hf_states(hf, model, x))
    print(f"hf {case}: max |diff| {diff:.2e} over {len(states)} states")
    assert diff < TOL


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # raised inside HF's WavLM
@pytest.mark.parametrize("case", ["hubert-base", "hubert-large", "wavlm-large"])
def test_hf_padded_batch_matches_on_valid_frames(tmp_path, case):
    hf = _hf_model(case)
    model = from_hf(_save_hf(hf, tmp_path / case))
    lengths = [SAMPLES, 2600]
    x = torch.randn(2, SAMPLES)
    x[1, lengths[1]:] = 0.0
    mask = (torch.arange(SAMPLES)[None] < torch.tensor(lengths)[:, None]).long()
    states, frames = _our_states(model, x, lengths)
    reference = _hf_states(hf, model, x, attention_mask=mask, lengths=lengths)
    # HF's group norm counts the padding in its statistics: for group-norm CNNs only the full item can agree.
    items = range(2) if model.config["extractor_mode"] == "layer_norm" else [0]
    diff = max(_max_diff([s[i, :frames[i]] for s in states], [r[i, :frames[i]] for r in reference]) for i in items)
    print(f"hf {case} padded: max |diff| {diff:.2e} on valid frames")
    assert frames.tolist()[1] < states[0].size(1) and diff < TOL


@pytest.mark.parametrize("case,head_class,prefix", [
    ("wav2vec2-base", transformers.Wav2Vec2ForPreTraining, "wav2vec2"),
    ("hubert-large", transformers.HubertForCTC, "hubert"),
    ("wavlm-base", transformers.WavLMForCTC, "wavlm"),
])
def test_hf_models_with_heads_convert_their_encoder(tmp_path, case, head_class, prefix):
    hf = _hf_model(case, head_class, vocab_size=12)
    model = from_hf(_save_hf(hf, tmp_path / case))
    x = torch.randn(1, SAMPLES)
    diff = _max_diff(_our_states(model, x)[0], _hf_states(getattr(hf, prefix), model, x))
    assert diff < TOL


def test_hf_normalize_waveform_follows_preprocessor_config(tmp_path):
    large = _save_hf(_hf_model("hubert-large"), tmp_path / "large")
    base = _save_hf(_hf_model("hubert-base"), tmp_path / "base")
    assert from_hf(large).normalize_waveform and not from_hf(base).normalize_waveform  # fairseq convention
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(large)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(base)
    assert not from_hf(large).normalize_waveform and from_hf(base).normalize_waveform
    assert not convert("hf", base, normalize_waveform=False).normalize_waveform


def test_hf_unsupported_configs_are_clear_errors(tmp_path):
    relu = _save_hf(_hf_model("hubert-base", hidden_act="relu"), tmp_path / "relu")
    with pytest.raises(ConvertError, match=r"relu.*hidden_act='relu' is not supported"):
        from_hf(relu)
    no_ln = _save_hf(_hf_model("hubert-base", feat_proj_layer_norm=False), tmp_path / "no_ln")
    with pytest.raises(ConvertError, match="feat_proj_layer_norm=false .* is not supported"):
        from_hf(no_ln)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConvertError, match="model_type 'bert' is not supported"):
        from_hf(bert)
    with pytest.raises(ConvertError, match="no weights found"):
        from_hf(_config_only(tmp_path))
    with pytest.raises(ConvertError, match="not a Hugging Face model directory"):
        from_hf(tmp_path / "missing")


def _config_only(tmp_path: Path) -> Path:
    directory = tmp_path / "config_only"
    transformers.HubertConfig(**TINY_HF).save_pretrained(directory)
    return directory


def test_hf_pytorch_model_bin(tmp_path):
    hf = _hf_model("wavlm-base")
    directory = tmp_path / "bin"
    hf.save_pretrained(directory, safe_serialization=False)
    assert (directory / "pytorch_model.bin").is_file()
    model = from_hf(directory)
    x = torch.randn(1, SAMPLES)
    assert _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x)) < TOL


# ----- fairseq ------------------------------------------------------------------------------------------------------
def _hf_to_fairseq(hf_state, layer_norm_cnn: bool):
    """Rename an HF encoder state dict to fairseq's / unilm's names (written independently of the importer)."""
    norm_index = "2.1" if layer_norm_cnn else "2"
    out = {}
    for key, value in hf_state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        key = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0.", key)
        key = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.",
                     rf"feature_extractor.conv_layers.\1.{norm_index}.", key)
        key = key.replace("feature_projection.layer_norm.", "layer_norm.")
        key = key.replace("feature_projection.projection.", "post_extract_proj.")
        key = key.replace("encoder.pos_conv_embed.conv.", "encoder.pos_conv.0.")
        key = key.replace("masked_spec_embed", "mask_emb")
        key = re.sub(r"\.attention\.(q|k|v|out)_proj\.", r".self_attn.\1_proj.", key)
        key = key.replace(".attention.gru_rel_pos_linear.", ".self_attn.grep_linear.")
        key = key.replace(".attention.gru_rel_pos_const", ".self_attn.grep_a")
        key = key.replace(".attention.rel_attn_embed.", ".self_attn.relative_attention_bias.")
        key = re.sub(r"(layers\.\d+)\.layer_norm\.", r"\1.self_attn_layer_norm.", key)
        key = key.replace(".feed_forward.intermediate_dense.", ".fc1.").replace(".feed_forward.output_dense.", ".fc2.")
        out[key] = value.clone()
    return out


def _fairseq_model_cfg(hf_config, name: str):
    large = hf_config.do_stable_layer_norm
    cfg = dict(_name=name, extractor_mode="layer_norm" if large else "default", encoder_layers=2,
               encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4, activation_fn="gelu",
               conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 2", conv_bias=large, conv_pos=16,
               conv_pos_groups=4, layer_norm_first=large, dropout=0.1, attention_dropout=0.1, encoder_layerdrop=0.05,
               dropout_input=0.1, final_dim=16)
    if name == "wavlm":
        cfg.update(relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True,
                   normalize=large)
    return cfg


def _fairseq_file(tmp_path: Path, hf, name: str, layout: str = "cfg") -> Path:
    state = _hf_to_fairseq(hf.state_dict(), hf.config.feat_extract_norm == "layer")
    state["final_proj.weight"] = torch.randn(16, 32)  # pretraining heads the importer must drop
    if name == "hubert":
        state["label_embs_concat"] = torch.randn(10, 16)
    if name == "wav2vec2":
        state["quantizer.vars"], state["project_q.weight"] = torch.randn(1, 8, 4), torch.randn(16, 4)
    model_cfg = _fairseq_model_cfg(hf.config, name)
    normalize = hf.config.do_stable_layer_norm
    if layout == "cfg":
        ckpt = {"args": None, "cfg": {"model": model_cfg, "task": {"normalize": normalize}}, "model": state}
    elif layout == "unilm":
        ckpt = {"cfg": model_cfg, "model": state}
    else:
        ckpt = {"args": argparse.Namespace(arch=name, normalize=normalize, **model_cfg), "model": state}
    path = tmp_path / f"{name}_{layout}.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("case,name,layout", [
    ("hubert-base", "hubert", "cfg"),
    ("wav2vec2-large", "wav2vec2", "cfg"),
    ("wavlm-base", "wavlm", "unilm"),
    ("wavlm-large", "wavlm", "unilm"),
])
def test_fairseq_matches_reference(tmp_path, case, name, layout):
    hf = _hf_model(case)
    model = from_fairseq(_fairseq_file(tmp_path, hf, name, layout))
    cfg = model.config
    assert cfg["model_type"] == name and cfg["normalize_waveform"] == case.endswith("large")
    assert cfg["encoder_dropout"] == 0.1 and cfg["encoder_layer_drop"] == 0.05
    x = torch.randn(2, SAMPLES)
    diff = _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x))
    print(f"fairseq {case} ({layout}): max |diff| {diff:.2e}")
    assert diff < TOL


def test_fairseq_namespace_needs_trust(tmp_path):
    hf = _hf_model("hubert-base")
    path = _fairseq_file(tmp_path, hf, "hubert", layout="args")
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*--trust-checkpoint"):
        from_fairseq(path)
    model = from_fairseq(path, trust_checkpoint=True)
    x = torch.randn(1, SAMPLES)
    assert _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x)) < TOL


class _ExtractorMode(enum.Enum):
    default = "default"


class _Meter:
    def __init__(self):
        self.sum, self.count = 3.0, 2


def test_fairseq_trusted_file_with_classes_of_missing_packages(tmp_path):
    """fairseq enums / meters / OmegaConf in a checkpoint: readable with trust, without fairseq installed."""
    fake = types.ModuleType("fairseq_not_installed")
    for cls in (_ExtractorMode, _Meter):
        setattr(fake, cls.__name__, cls)
    _ExtractorMode.__module__ = _Meter.__module__ = fake.__name__
    hf = _hf_model("hubert-base")
    model_cfg = _fairseq_model_cfg(hf.config, "hubert")
    model_cfg["extractor_mode"] = _ExtractorMode.default
    ckpt = {"cfg": {"model": model_cfg, "task": OmegaConf.create({"normalize": False})},
            "model": _hf_to_fairseq(hf.state_dict(), False), "extra_state": {"meters": {"loss": _Meter()}}}
    sys.modules[fake.__name__] = fake
    try:
        torch.save(ckpt, tmp_path / "hubert.pt")
    finally:
        del sys.modules[fake.__name__]
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        from_fairseq(tmp_path / "hubert.pt")
    model = from_fairseq(tmp_path / "hubert.pt", trust_checkpoint=True)
    x = torch.randn(1, SAMPLES)
    assert model.config["extractor_mode"] == "group_norm"
    assert _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x)) < TOL


def test_fairseq_finetuned_checkpoint_gives_its_encoder(tmp_path):
    hf = _hf_model("hubert-large")
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in _hf_to_fairseq(hf.state_dict(), True).items()}
    state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"] = torch.randn(30, 32), torch.randn(30)
    w2v_args = {"model": _fairseq_model_cfg(hf.config, "hubert"), "task": {"normalize": True}}
    ckpt = {"cfg": {"model": {"_name": "hubert_ctc", "w2v_args": w2v_args}, "task": {"normalize": True}},
            "model": state}
    torch.save(ckpt, tmp_path / "ft.pt")
    model = from_fairseq(tmp_path / "ft.pt")
    x = torch.randn(1, SAMPLES)
    assert model.normalize_waveform and _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x)) < TOL
    ckpt["cfg"]["model"]["w2v_args"] = None
    torch.save(ckpt, tmp_path / "ft_no_args.pt")
    with pytest.raises(ConvertError, match="without its pretraining config"):
        from_fairseq(tmp_path / "ft_no_args.pt")


def test_parse_conv_layers_is_safe(tmp_path):
    spec = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    assert parse_conv_layers(spec) == [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    assert parse_conv_layers("2 * [(8, 3, 2)]") == [[8, 3, 2]] * 2
    for bad in ["[(512, 10)]", "[(1, 2, 3)] * 'a'", "[]"]:
        with pytest.raises(ConvertError, match="conv_feature_layers"):
            parse_conv_layers(bad)
    # Code in a checkpoint's config must not run: a payload with a visible effect, which an eval-based parser
    # would execute (its result, a list of one int, then fails as a bad spec and still raises ConvertError).
    marker = tmp_path / "payload_ran"
    payload = f"[__import__('pathlib').Path({str(marker)!r}).touch()] + [(512, 10, 5)]"
    with pytest.raises(ConvertError, match="cannot parse conv_feature_layers"):
        parse_conv_layers(payload)
    assert not marker.exists(), "parse_conv_layers executed code from the checkpoint"


def test_fairseq_unknown_content_is_a_clear_error(tmp_path):
    torch.save({"model": {"encoder.weight": torch.zeros(2)}, "cfg": {"model": {}}}, tmp_path / "other.pt")
    with pytest.raises(ConvertError, match="other.pt: not a wav2vec 2.0 / HuBERT / WavLM checkpoint"):
        from_fairseq(tmp_path / "other.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(ConvertError, match="sd.pt: a bare state dict, not a fairseq checkpoint.*--from torchaudio"):
        from_fairseq(tmp_path / "sd.pt")


# ----- torchaudio ---------------------------------------------------------------------------------------------------
def _torchaudio_model(wavlm: bool, large: bool, aux_num_out=None):
    args = dict(extractor_mode="layer_norm" if large else "group_norm",
                extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2)], extractor_conv_bias=large,
                encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
                encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0,
                encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
                encoder_layer_norm_first=large, encoder_layer_drop=0.0, aux_num_out=aux_num_out)
    if wavlm:
        return _perturb(torchaudio.models.wavlm_model(encoder_num_buckets=32, encoder_max_distance=64, **args)), args
    return _perturb(torchaudio.models.wav2vec2_model(**args)), args


@pytest.mark.parametrize("wavlm", [False, True], ids=["wav2vec2", "wavlm"])
@pytest.mark.parametrize("large", [False, True], ids=["base", "large"])
def test_torchaudio_matches_reference(tmp_path, wavlm, large):
    reference, args = _torchaudio_model(wavlm, large)
    torch.save(reference.state_dict(), tmp_path / "sd.pt")
    extra = {"encoder_max_distance": 64} if wavlm else {}
    model = from_torchaudio(tmp_path / "sd.pt", config=extra, num_heads=None if wavlm else 4)
    cfg = model.config
    assert cfg["extractor_conv_layer_config"] == [list(c) for c in args["extractor_conv_layer_config"]]
    assert (cfg["extractor_conv_bias"], cfg["encoder_layer_norm_first"], cfg["normalize_waveform"]) == (large,) * 3
    assert (cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"], cfg["encoder_ff_interm_features"]) == (
        16, 4, [64, 64])
    # A padded batch where torchaudio handles one: its group norm counts padding and its WavLM takes no lengths.
    padded = large and not wavlm
    lengths = [SAMPLES, 2600] if padded else [SAMPLES, SAMPLES]
    x = torch.randn(2, SAMPLES)
    x[1, lengths[1]:] = 0.0
    inputs = _normalized(x, lengths) if large else x
    ours, frames = _our_states(model, x, lengths)
    with torch.no_grad():
        per_layer, _ = reference.extract_features(inputs, torch.tensor(lengths) if padded else None)
        last, _ = reference(inputs, torch.tensor(lengths) if padded else None)
    if large:  # pre-LN: torchaudio's per-layer list lacks the final LayerNorm that forward applies
        compared, expected = ours[1:-1] + [ours[-1]], per_layer[:-1] + [last]
    else:
        compared, expected = ours[1:], per_layer
        assert _max_diff([ours[-1]], [last]) < TOL
    diff = max(_max_diff([s[i, :frames[i]] for s in compared], [s[i, :frames[i]] for s in expected])
               for i in range(2))
    print(f"torchaudio {'wavlm' if wavlm else 'wav2vec2'} {'large' if large else 'base'}: max |diff| {diff:.2e}")
    assert diff < TOL


def test_torchaudio_bundle_style_inputs_and_errors(tmp_path):
    reference, _ = _torchaudio_model(wavlm=False, large=False, aux_num_out=7)
    state = reference.state_dict()
    assert any(k.startswith("aux.") for k in state)
    model = convert("torchaudio", dict(state), num_heads=4)  # a state dict in memory works too
    assert model.config["encoder_num_heads"] == [4, 4]
    with pytest.raises(ConvertError, match="not divisible by 5 heads"):
        from_torchaudio(dict(state), num_heads=5)
    del state["encoder.transformer.layers.1.final_layer_norm.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken.pt: config and state_dict disagree: missing keys "
                                              r"\[encoder.transformer.layers.1.final_layer_norm.bias\]"):
        from_torchaudio(tmp_path / "broken.pt", num_heads=4)
    torch.save(torch.nn.LSTM(4, 4).state_dict(), tmp_path / "lstm.pt")
    with pytest.raises(ConvertError, match="lstm.pt: not a torchaudio wav2vec2/HuBERT/WavLM state dict"):
        from_torchaudio(tmp_path / "lstm.pt")
    torch.save({"config": {}, "state_dict": {}}, tmp_path / "ours.pt")
    with pytest.raises(ConvertError, match="use --from dphubert"):
        from_torchaudio(tmp_path / "ours.pt")


# ----- our files and the released schema ----------------------------------------------------------------------------
# Files of the paper's reference code (the released DPHuBERT/DPWavLM schema) are tested in test_release_files.py.


# ----- the CLI ------------------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run(_cli_command(args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def _cli_command(args):
    return [sys.executable, "-m", "dphubert.bin.convert", *map(str, args)]


def _cli_together(arg_lists):
    """Run several CLI calls at once (each spends most of its time importing torch): [(rc, stdout, stderr)]."""
    runs = [subprocess.Popen(_cli_command(args), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for args in arg_lists]
    return [_finish(run) for run in runs]


def _finish(run):
    stdout, stderr = run.communicate(timeout=120)
    return run.returncode, stdout, stderr


def test_cli_converts_hf_and_round_trips(tmp_path):
    hf = _hf_model("wavlm-base")
    src = _save_hf(hf, tmp_path / "hf")
    result = _cli("--from", "hf", src, "--out", tmp_path / "exp" / "teacher.pt")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'exp' / 'teacher.pt'} from hf {src}: wavlm, 2 layers, dim 32, 4 heads")
    assert "note: normalize_waveform=False" in result.stdout and "Traceback" not in result.stderr
    saved = torch.load(tmp_path / "exp" / "teacher.pt", weights_only=True)
    assert saved["config"]["model_type"] == "wavlm"
    model = load_model(tmp_path / "exp" / "teacher.pt")
    x = torch.randn(1, SAMPLES)
    assert _max_diff(_our_states(model, x)[0], _hf_states(hf, model, x)) < TOL


def test_cli_torchaudio_and_trusted_fairseq(tmp_path):
    reference, _ = _torchaudio_model(wavlm=False, large=True)
    torch.save(reference.state_dict(), tmp_path / "ta.pt")
    (tmp_path / "over.yaml").write_text("model_type: wav2vec2\n")
    fairseq_file = _fairseq_file(tmp_path, _hf_model("hubert-base"), "hubert", layout="args")
    torchaudio_run, fairseq_run = _cli_together([
        ["--from", "torchaudio", tmp_path / "ta.pt", "--out", tmp_path / "ta_out.pt", "--num-heads", "4",
         "--config", tmp_path / "over.yaml", "--normalize-waveform", "false"],
        ["--from", "fairseq", fairseq_file, "--out", tmp_path / "fs_out.pt", "--trust-checkpoint"],
    ])
    assert torchaudio_run[0] == 0 and fairseq_run[0] == 0, (torchaudio_run, fairseq_run)
    assert "wav2vec2, 2 layers, dim 32, 4 heads, pre-LN, layer_norm CNN, normalize_waveform=False" in torchaudio_run[1]
    assert load_model(tmp_path / "fs_out.pt").config["model_type"] == "hubert"


def test_cli_bad_inputs_give_one_line(tmp_path):
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"foo": 1, "bar": [2]}, tmp_path / "dict.pt")
    reference, _ = _torchaudio_model(wavlm=False, large=False)
    state = reference.state_dict()
    state["encoder.transformer.layers.0.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "mismatch.pt")
    namespace = _fairseq_file(tmp_path, _hf_model("hubert-base"), "hubert", layout="args")
    cases = [
        (["--from", "torchaudio", tmp_path / "noise.pt"], "not a readable PyTorch checkpoint"),
        (["--from", "fairseq", tmp_path / "dict.pt"], "not a fairseq checkpoint"),
        (["--from", "torchaudio", tmp_path / "mismatch.pt", "--num-heads", "4"],
         r"unexpected keys \[encoder.transformer.layers.0.extra.weight\]"),
        (["--from", "fairseq", namespace], "--trust-checkpoint"),
    ]
    results = _cli_together([[*args, "--out", tmp_path / "never.pt"] for args, _ in cases])
    for (returncode, _, stderr), (args, message) in zip(results, cases):
        lines = stderr.strip().splitlines()
        assert returncode == 1 and len(lines) == 1, (args, stderr)
        assert lines[0].startswith(f"error: {args[2]}") and re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "never.pt").exists()


def test_cli_main_errors_in_process(tmp_path, capsys):
    torch.save({"foo": 1}, tmp_path / "dict.pt")
    torch.save({"config": "hubert", "state_dict": None}, tmp_path / "odd.pt")
    for args, message in [(["--from", "dphubert", tmp_path / "dict.pt"], "not a dphubert/DPHuBERT model file"),
                          (["--from", "dphubert", tmp_path / "odd.pt"], "must both be dicts"),
                          (["--from", "hf", tmp_path], "not a Hugging Face model directory")]:
        assert convert_cli.main([*map(str, args), "--out", str(tmp_path / "never.pt")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {args[2]}") and message in err and "\n" not in err


def test_cli_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main(["--from", "hf", "src", "--out", "x.pt", "--num-heads", "4"])
    assert exit_info.value.code == 2 and "only apply to --from torchaudio" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main(["--help"])
    assert exit_info.value.code == 0 and "--trust-checkpoint" in capsys.readouterr().out
