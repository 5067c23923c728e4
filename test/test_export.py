"""ONNX export (dphubert.export, python -m dphubert.bin.export): onnxruntime vs PyTorch, int8 drift, bad input."""

import numpy as np
import onnx
import pytest
import soundfile
import torch

from conftest import ALL_GATES, espeak_speech, tiny_config
from dphubert.bin import export as export_cli
from dphubert.export import ExportError, OnnxEncoder, check_waveforms, export_onnx, layer_drift
from dphubert.export.onnx_export import DEFAULT_INT8_CNN_CONVS
from dphubert.models import Wav2Vec2Model, load_model, save_model


def pruned_model(model_type: str, large: bool) -> Wav2Vec2Model:
    """A physically pruned tiny model with soft gate values folded in, some heads/units gone, and (non-WavLM,
    whose layer 0 has no layer gate) whole blocks removed; the CNN's channels pruned too."""
    torch.manual_seed(1)
    model = Wav2Vec2Model(tiny_config(model_type, large, **ALL_GATES)).eval()
    for gate in model.gates().values():
        gate.log_alpha.data.normal_(1.5, 2.0)
    layers = model.encoder.transformer.layers
    layers[0].attention.hard_concrete_for_heads.log_alpha.data.fill_(-20)  # no head left in layer 0
    layers[1].feed_forward.hard_concrete_for_intermediate.log_alpha.data.fill_(-20)  # no FFN unit in layer 1
    layers[1].attention.hard_concrete_for_heads.log_alpha.data[:2] = -20  # 2 of 4 heads
    layers[2].attention.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # attention block of layer 2 removed
    layers[2].feed_forward.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # FFN block of layer 2 removed
    pruned = model.prune()
    cfg = pruned.config
    assert not cfg["encoder_use_attention"][2] and not cfg["encoder_use_feed_forward"][2]
    assert cfg["encoder_ff_interm_features"][1] == 0
    return pruned


VARIANTS = [("hubert", False), ("wavlm", False), ("hubert", True)]  # post-LN HuBERT, WavLM, pre-LN (Large)


def speech_batch():
    """Three spoken utterances (espeak-ng, 0.4-1.4 s, pauses at the punctuation) as a padded batch."""
    items = [espeak_speech("turn the lights off, in the kitchen. then stop."),
             espeak_speech("what time is it, in tokyo?", "en-gb"), espeak_speech("yes. no.", "en-us+f3")]
    lengths = torch.tensor([len(item) for item in items])
    waveforms = torch.zeros(len(items), int(lengths.max()))
    for i, item in enumerate(items):
        waveforms[i, : len(item)] = torch.from_numpy(item)
    return waveforms, lengths


@pytest.mark.parametrize("model_type,large", VARIANTS, ids=["hubert", "wavlm", "pre_ln"])
def test_onnx_matches_pytorch_on_other_batch_and_padded_items(tmp_path, model_type, large):
    model = pruned_model(model_type, large)
    out = export_onnx(model, tmp_path / "m.onnx")  # traced with a batch of 2 x 8000 samples
    assert not model.training and not any(m.training for m in model.modules())  # export left dropout off
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["waveforms", "lengths"]
    assert [o.name for o in proto.graph.output] == ["hidden_states", "frame_lengths"]
    encoder = OnnxEncoder(out)
    assert encoder.layers == list(range(model.num_layers + 1)) and encoder.precision == "fp32"
    torch.manual_seed(2)
    waveforms = torch.randn(3, 9137) * 0.3
    lengths = torch.tensor([5000, 9137, 3333])  # other batch size and length; items 0 and 2 padded
    rows = layer_drift(model, encoder, waveforms, lengths)
    assert len(rows) == model.num_layers + 1
    worst = max(r["max_abs_diff"] for r in rows)
    assert worst <= 1e-4, rows
    # The padding itself never leaks: garbage past an item's end leaves its states as they are.
    noisy = waveforms.clone()
    noisy[0, 5000:] = 100.0
    a, _ = encoder(waveforms.numpy(), lengths.numpy())
    b, frames = encoder(noisy.numpy(), lengths.numpy())
    n = int(frames[0])
    assert np.abs(a[:, 0, :n] - b[:, 0, :n]).max() <= 1e-5


@pytest.mark.parametrize("model_type,large,cnn_convs", [(*v, c) for v, c in zip(VARIANTS, (None, 3, 0))]
                         + [("hubert", True, None)],
                         ids=["hubert_default", "wavlm_all_cnn", "pre_ln_no_cnn", "pre_ln_layer_norm_cnn_default"])
def test_int8_runs_and_reports_per_layer_drift(tmp_path, model_type, large, cnn_convs):
    model = pruned_model(model_type, large)
    out = export_onnx(model, tmp_path / "m8.onnx", layers=[1, 3], precision="int8", int8_cnn_convs=cnn_convs)
    proto = onnx.load(str(out))
    ops = [node.op_type for node in proto.graph.node]
    # Quantised: every linear layer left by pruning (projections, FFN, WavLM's position gate) and the chosen CNN
    # convs; never the group norm's statistics (a MatMul with a constant second input too, were it written so).
    convs_after_first = len(model.feature_extractor.conv_layers) - 1  # default: all (DEFAULT_INT8_CNN_CONVS = 6)
    int8_convs = min(DEFAULT_INT8_CNN_CONVS, convs_after_first) if cnn_convs is None else cnn_convs
    assert ops.count("MatMulIntegerToFloat") == int8_convs, ops
    headless = [name for name, m in model.named_modules() if getattr(m, "num_heads", None) == 0]  # (layer 0)
    projections = [name for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m.in_features and m.out_features
                   and not any(name.startswith(h + ".") for h in headless)]
    assert ops.count("MatMulInteger") == len(projections), (ops.count("MatMulInteger"), projections)
    # The other CNN convs stay fp32 Convs (the first one is a product with its group norm, a Conv in a layer-norm
    # CNN); the positional conv is block DFT products (fp32, an Einsum for its spectrum, no Conv).
    first = 1 if large else 0
    assert ops.count("Conv") == first + len(model.feature_extractor.conv_layers) - 1 - int8_convs, ops
    assert ops.count("Einsum") == 1, ops
    encoder = OnnxEncoder(out, threads=1)
    assert encoder.layers == [1, 3] and encoder.precision == "int8"
    waveforms, lengths = speech_batch()
    rows = layer_drift(model, encoder, waveforms, lengths)
    assert [r["layer"] for r in rows] == [1, 3]
    # Quantised, so not exact, but close. On speech (here 20-32% of the 20 ms frames are 30 dB or more under the
    # item's loudest: pauses), what keeps it close is the int8 convs' activation scale per chunk of frames: one
    # scale per item, set by the item's peaks, leaves the quiet frames a few steps of it. Relative L2, layers 1 / 3 (AMD EPYC, VNNI): group-norm CNN, all convs
    # int8: 0.050 / 0.050 (HuBERT), 0.050 / 0.051 (WavLM, 3 convs); one scale per item: 0.155 / 0.152 and
    # 0.133 / 0.133. A layer-norm CNN normalises each frame, so its convs see no level change and the per-item
    # scale costs little there (0.021 -> 0.022): those variants get the bound of the linear layers' int8 alone.
    bound = 0.04 if large else 0.08
    for r in rows:
        assert 0 < r["relative_l2"] < bound, rows


def optimized_op_counts(path) -> dict:
    """Op types of the graph onnxruntime runs (its fusions applied, those that are not CPU-specific)."""
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path) + ".optimized"
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_int8_file_keeps_onnxruntime_on_add_and_layer_norm(tmp_path):
    """onnxruntime's SkipLayerNormalization (fused Add + LayerNormalization) took 2.6 ms where the two ops take
    0.35 (1.32, CPU); quantize_dynamic's shape annotations let it fuse, so the int8 file is written without them."""
    from dphubert.export.onnx_export import quantize_dynamic_int8

    model = pruned_model("hubert", False)  # post-LN: every layer norm reads a residual Add
    fp32 = export_onnx(model, tmp_path / "m.onnx")
    assert optimized_op_counts(fp32)["SkipLayerNormalization"] == 0  # the exporter writes no value_info
    quantize_dynamic_int8(fp32, tmp_path / "raw8.onnx")  # negative control: quantize_dynamic's file as it is
    assert optimized_op_counts(tmp_path / "raw8.onnx")["SkipLayerNormalization"] > 0
    int8 = export_onnx(model, tmp_path / "m8.onnx", precision="int8")
    assert len(onnx.load(str(int8)).graph.value_info) == 0
    counts = optimized_op_counts(int8)
    assert counts["SkipLayerNormalization"] == 0 and counts["LayerNormalization"] > 0, counts
    assert counts["MatMulIntegerToFloat"] > 0 and counts["DynamicQuantizeMatMul"] > 0, counts  # other fusions kept


def test_first_block_with_group_norm_as_one_product_matches_the_model_on_each_item():
    """The export's first conv + group norm from the windows' Gram matrix, both layouts, on a padded batch, against
    the model's block in float64 on each item alone (a DC offset costs the model's own float32 block 1.8e-5)."""
    import copy

    from dphubert.export.graph import TraceableEncoder

    model = pruned_model("hubert", False)
    block = model.feature_extractor.conv_layers[0]
    block64 = copy.deepcopy(block).double()
    encoder = TraceableEncoder(model)
    torch.manual_seed(5)
    waveforms = torch.randn(3, 6001) * 0.3
    waveforms[2, :2000] = 0.0  # digital silence too
    waveforms[1] = 0.5 + 0.01 * waveforms[1]  # a DC offset 150x the signal: E[w w^T] - m^T m would cancel it
    lengths = torch.tensor([6001, 4000, 5555])
    with torch.no_grad():
        frames_major, frames = encoder._first_block_group_norm(block, waveforms, lengths, channels_first=False)
        channels_major, _ = encoder._first_block_group_norm(block, waveforms, lengths, channels_first=True)
        for i, n in enumerate(lengths.tolist()):
            reference, _ = block64(waveforms[i:i + 1, None, :n].double(), None)  # (1, C, T) alone
            reference = reference[0].float()
            count = int(frames[i])
            assert count == reference.shape[1]
            assert torch.allclose(frames_major[i, :count], reference.t(), atol=1e-5), i
            assert torch.allclose(channels_major[i, :, :count], reference, atol=1e-5), i


@pytest.mark.parametrize("kernel,groups", [(16, 4), (15, 4), (128, 16), (1, 2)])
def test_block_dft_positional_conv_matches_conv1d(tmp_path, kernel, groups):
    """The positional conv as block DFT products, in PyTorch and in onnxruntime, against conv1d with its padding
    (an even kernel's extra frame dropped), for lengths below, at and past a block, several blocks."""
    import onnxruntime

    from dphubert.export.block_dft_conv import BlockDFTConv

    torch.manual_seed(6)
    channels = 8 * groups
    weight, bias = torch.randn(channels, 8, kernel) * 0.1, torch.randn(channels)
    conv = BlockDFTConv(weight, bias, groups).eval()
    torch.onnx.export(conv, (torch.randn(2, 2 * kernel + 3, channels),), str(tmp_path / "p.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "frames"}}, opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    for frames in sorted({1, kernel - 1, kernel, kernel + 1, 3 * kernel + 5}):
        x = torch.randn(3, max(frames, 1), channels)
        reference = torch.nn.functional.conv1d(x.transpose(1, 2), weight, bias, padding=kernel // 2, groups=groups)
        reference = reference[..., : x.shape[1]].transpose(1, 2)  # (the even kernel's one extra frame dropped)
        with torch.no_grad():
            ours = conv(x)
        theirs = session.run(None, {"x": x.numpy()})[0]
        assert ours.shape == reference.shape and theirs.shape == tuple(reference.shape)
        scale = float(reference.abs().max())
        assert (ours - reference).abs().max() <= 1e-5 * scale, frames
        assert np.abs(theirs - reference.numpy()).max() <= 1e-5 * scale, frames


@pytest.mark.parametrize("kernel,stride", [(10, 5), (3, 2), (2, 2), (4, 3), (5, 2), (1, 1)])
def test_im2col_matches_conv1d(kernel, stride):
    from dphubert.export.graph import im2col_columns
    from dphubert.export.quantized_conv import quantize_weight

    torch.manual_seed(4)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride)
    for frames in (37, 38, kernel):  # odd, even, exactly one output frame
        x = torch.randn(2, 6, frames)
        with torch.no_grad():
            reference = conv(x).transpose(1, 2)  # (B, T', C_out)
            weight = conv.weight.permute(2, 1, 0).reshape(-1, 5)  # the row order quantize_weight uses
            columns = torch.cat(im2col_columns(x.transpose(1, 2), kernel, stride, 6), dim=2)
            assert columns.shape == (2, reference.shape[1], kernel * 6)
            assert torch.allclose(columns @ weight + conv.bias, reference, atol=1e-5)
    q, scale = quantize_weight(conv.weight)
    assert q.dtype == torch.int8 and q.min() >= -64 and q.max() <= 63  # 7-bit: no u8 x s8 saturation
    assert torch.allclose(q.float() * scale, weight, atol=float(scale.max()) / 2 + 1e-7)


@pytest.mark.parametrize("model_type,large", VARIANTS, ids=["hubert", "wavlm", "pre_ln"])
def test_exported_reshapes_take_no_shape_arithmetic(tmp_path, model_type, large):
    """Every Reshape of the fp32 and int8 files gets its target from a constant, or from one Shape node and a
    constant (``onnx_shapes``). Reshapes written with a traced batch size cost a Shape, Gather, Unsqueeze and
    Concat each: the int8 demo file ran 798 nodes after onnxruntime's optimisation, 517 without them."""
    from dphubert.export.onnx_shapes import reshape

    model = pruned_model(model_type, large)
    for precision in ("fp32", "int8"):
        proto = onnx.load(str(export_onnx(model, tmp_path / f"{precision}.onnx", precision=precision)))
        producer = {output: node for node in proto.graph.node for output in node.output}
        reshapes = [node for node in proto.graph.node if node.op_type == "Reshape"]
        assert reshapes
        for node in reshapes:
            target = producer.get(node.input[1])  # None: an initializer
            if target is None or target.op_type == "Constant":
                continue
            sources = [producer[name].op_type for name in target.input if name in producer]
            assert target.op_type == "Concat" and sorted(sources) == ["Constant", "Shape"], (node.name, sources)
    with pytest.raises(ValueError, match="give one -1 too"):
        reshape(torch.zeros(2, 3), 0, 3)  # (torch's exporter asserts on such a target)


def test_int8_convs_get_each_items_valid_frames():
    """The int8 convs' masks (each a strided slice of the one before, in the graph) mark exactly the frames that
    ``output_lengths`` gives each item of a padded batch, at every conv; a wrong mask would let padding set
    activation scales."""
    from dphubert.export.graph import TraceableEncoder

    model = pruned_model("hubert", False)
    blocks = model.feature_extractor.conv_layers
    encoder = TraceableEncoder(model, int8_cnn_convs=len(blocks) - 1)
    seen = []
    for conv in encoder.quantized_convs:
        conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[1].clone()))
    # 60 samples: the CNN's receptive field, one output frame; 59: none; 7040: a multiple of every stride
    lengths = torch.tensor([12001, 60, 59, 7040])
    with torch.no_grad():
        encoder(torch.randn(4, 12001), lengths)
    assert len(seen) == len(blocks) - 1
    frames = blocks[0].output_lengths(lengths)
    for block, valid in zip(blocks[1:], seen):
        expected = (torch.arange(valid.shape[1])[None, :] < frames[:, None]).float()
        assert torch.equal(valid, expected), block
        frames = block.output_lengths(frames)


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (4, 2), (5, 3)])
def test_quantized_conv_scales_each_chunk_and_ignores_padding(tmp_path, kernel, stride):
    """The int8 conv (PyTorch arithmetic of the exported ops) against conv1d on a GELU input whose level drops
    40 dB halfway, as speech's does: each half keeps a small error of its own (one scale per tensor, set by the
    loud half, leaves the quiet half at 78-95% error here); an item of a padded batch gets what it gets alone,
    in PyTorch and in onnxruntime running the exported ops."""
    import onnxruntime

    from dphubert.export.quantized_conv import QuantizedConv

    torch.manual_seed(5)
    conv = torch.nn.Conv1d(16, 12, kernel, stride=stride)
    quantized = QuantizedConv(conv, rows=4)
    frames = 8 * quantized.span  # whole chunks, as TraceableEncoder._pad_for_chunks makes them
    level = torch.ones(frames, 1)
    level[frames // 2:] = 0.01
    x = torch.nn.functional.gelu(torch.randn(2, frames, 16) * 3 * level)
    valid = torch.ones(2, frames)
    with torch.no_grad():
        reference = conv(x.transpose(1, 2)).transpose(1, 2)
        out = quantized(x, valid)[:, : reference.shape[1]]
    half = reference.shape[1] // 2 - 2  # rows reading only loud frames / only quiet ones
    for rows in (slice(0, half), slice(-half, None)):
        error = (out[:, rows] - reference[:, rows]).norm() / (reference[:, rows] - conv.bias).norm()
        assert 0 < error < 0.03, (rows, error)
    # Padding: item 1 ends inside its third chunk, loud garbage after it; its valid rows are what it gets alone
    # (alone: its frames zero-padded to whole chunks, as the graph pads a lone item), and the mask is what does it.
    end = 3 * quantized.span - 2 * stride
    padded = x.clone()
    padded[1, end:] = 50.0
    valid[1, end:] = 0.0
    alone = torch.nn.functional.pad(x[1:, :end], (0, 0, 0, 3 * quantized.span - end))
    with torch.no_grad():
        in_batch = quantized(padded, valid)[1]
        by_itself = quantized(alone, valid[1:, : alone.shape[1]])[0]
        unmasked = quantized(padded, torch.ones(2, frames))[1]
    rows = (end - kernel) // stride + 1
    assert torch.allclose(in_batch[:rows], by_itself[:rows], rtol=0, atol=1e-6 * float(by_itself.abs().max()))
    assert not torch.allclose(unmasked[:rows], by_itself[:rows], atol=1e-3)
    # The same in onnxruntime: the exported ops (per-axis QuantizeLinear, MatMulIntegerToFloat on 4-D columns).
    path = tmp_path / "conv.onnx"
    axes = {"x": {0: "batch", 1: "frames"}, "valid": {0: "batch", 1: "frames"}, "y": {0: "batch", 1: "rows"}}
    torch.onnx.export(quantized, (padded, valid), str(path), input_names=["x", "valid"], output_names=["y"],
                      dynamic_axes=axes, opset_version=17, dynamo=False, custom_opsets={"com.microsoft": 1})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_batch = session.run(None, {"x": padded.numpy(), "valid": valid.numpy()})[0][1, :rows]
    ort_alone = session.run(None, {"x": alone.numpy(), "valid": valid[1:, : alone.shape[1]].numpy()})[0][0, :rows]
    scale = float(by_itself.abs().max())
    assert np.abs(ort_batch - ort_alone).max() <= 1e-6 * scale
    assert np.abs(ort_alone - by_itself[:rows].numpy()).max() <= 1e-5 * scale  # (2.6e-7 measured)


def test_cli_exports_checks_and_rejects_bad_input_in_one_line(tmp_path, capsys):
    model = pruned_model("hubert", False)
    save_model(model, tmp_path / "pruned.pt")
    gated = Wav2Vec2Model(tiny_config("hubert", **ALL_GATES))
    save_model(gated, tmp_path / "gated.pt")

    out = tmp_path / "sub" / "m.onnx"
    assert export_cli.main(["--model", str(tmp_path / "pruned.pt"), "--format", "onnx", "--out", str(out),
                            "--layers", "0 2", "--check-seconds", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "hidden states [0, 2]" in printed and "fp32 vs PyTorch" in printed
    states, frames = OnnxEncoder(out)(np.zeros((1, 4000), np.float32), np.array([4000]))
    assert states.shape == (2, 1, int(frames[0]), 48)
    assert load_model(tmp_path / "pruned.pt").output_lengths(torch.tensor([4000])).item() == frames[0]

    cases = [
        (["--model", str(tmp_path / "gated.pt"), "--out", str(tmp_path / "g.onnx")], "prune it first"),
        (["--model", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "u.onnx"), "--layers", "1", "9"],
         "unknown layer(s) [9]"),
        (["--model", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "pruned.pt" / "x.onnx")],
         "cannot write there"),
        (["--model", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "l.onnx"), "--layers", "last"],
         "give hidden-state numbers"),
        (["--model", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "c.onnx"), "--int8-cnn-convs", "2"],
         "add --quantize int8"),
        (["--model", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "c.onnx"), "--quantize", "int8",
          "--int8-cnn-convs", "7"], "choose 0..3"),
    ]
    for argv, expected in cases:
        assert export_cli.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not any((tmp_path / f).exists() for f in ("g.onnx", "u.onnx", "c.onnx"))


def test_cli_checks_on_a_data_dir_of_real_speech(tmp_path, capsys):
    model = pruned_model("hubert", False)
    save_model(model, tmp_path / "pruned.pt")
    data = tmp_path / "data"
    data.mkdir()
    soundfile.write(tmp_path / "a.wav", espeak_speech("turn the lights off in the kitchen"), 16000)
    soundfile.write(tmp_path / "b.wav", espeak_speech("yes", rate=22050), 22050)
    (data / "wav.scp").write_text(f"utt-a {tmp_path / 'a.wav'}\nutt-b {tmp_path / 'b.wav'}\n")
    out = tmp_path / "m8.onnx"
    argv = ["--model", str(tmp_path / "pruned.pt"), "--out", str(out), "--quantize", "int8", "--check-data", str(data)]
    assert export_cli.main(argv) == 1  # utt-b is 22.05 kHz: refused before anything is written
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "utt-b" in err and "22050 Hz" in err and "--resample" in err, err
    assert not out.exists()
    assert export_cli.main([*argv, "--resample"]) == 0
    printed = capsys.readouterr().out
    assert f"check input: 2 utterances of {data}" in printed and "int8 vs PyTorch" in printed, printed
    rows = [line.split() for line in printed.splitlines() if line.startswith("  ")]
    # Relative L2 per state: 0.044 (AMD EPYC, VNNI) to 0.049 (Intel); 0.12-0.15 with one activation scale per
    # item instead of per chunk of frames in the int8 convs, which this bound is to catch on real speech.
    assert len(rows) == model.num_layers + 1 and all(0 < float(r[2]) < 0.08 for r in rows), rows
    assert export_cli.main([*argv, "--resample", "--check-utterances", "0"]) == 1
    assert "give 1 or more" in capsys.readouterr().err
    soundfile.write(tmp_path / "a.wav", np.zeros(50, np.float32), 16000)  # under the tiny CNN's 60 samples
    assert export_cli.main([*argv, "--resample"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "utt utt-a has 50 samples, too short for one frame" in err, err


def test_synthetic_check_input_has_speech_level_changes():
    """The default check input: padded like a batch, with quiet stretches ~30 dB under its peaks (steady noise
    hides the int8 CNN convs' drift; see check_waveforms)."""
    waveforms, lengths = check_waveforms(32000)
    assert waveforms.shape == (2, 32000) and lengths.tolist() == [32000, 21333]
    assert (waveforms[1, 21333:] == 0).all()
    for item, n in zip(waveforms, lengths.tolist()):
        frames = item[: n // 320 * 320].reshape(-1, 320).square().mean(1)  # 20 ms frames
        level_db = 10 * torch.log10(frames / frames.max())
        assert level_db.min() < -25 and (level_db > -6).float().mean() > 0.2, level_db


def test_export_api_errors(tmp_path):
    """Each bad option is refused before anything is written: no file, no temporary file, no directory."""
    model = pruned_model("hubert", False)
    out = tmp_path / "sub" / "never.onnx"
    odd = Wav2Vec2Model(tiny_config("hubert", extractor_conv_layer_config=[[32, 10, 5], [32, 3, 2], [32, 5, 2]]))
    cases = [
        (model, dict(precision="fp16"), "unknown precision"),
        (model, dict(precision="int8", int8_cnn_convs=4), "choose 0..3"),
        (model, dict(int8_cnn_convs=1), "add --quantize int8"),
        (odd.eval(), dict(precision="int8"), r"CNN conv 2 \(kernel 5, stride 2\) has no int8 form.*--int8-cnn-convs 1"),
    ]
    for bad_model, options, message in cases:
        with pytest.raises(ExportError, match=message):
            export_onnx(bad_model, out, **options)
        assert not out.exists() and list(tmp_path.iterdir()) == [], (options, list(tmp_path.rglob("*")))


def test_onnx_file_as_s3prl_upstream_matches_dphubert_local(tmp_path):
    from dphubert.s3prl.expert import UpstreamExpert
    from dphubert.s3prl.onnx_expert import OnnxUpstreamExpert

    model = pruned_model("wavlm", False)
    save_model(model, tmp_path / "m.pt")
    export_onnx(model, tmp_path / "m.onnx")
    export_onnx(model, tmp_path / "part.onnx", layers=[2])
    ours, theirs = OnnxUpstreamExpert(str(tmp_path / "m.onnx")), UpstreamExpert(str(tmp_path / "m.pt"))
    assert ours.get_downsample_rates("hidden_states") == theirs.get_downsample_rates("hidden_states") == 40
    wavs = [torch.randn(6000) * 0.3, torch.randn(3900) * 0.3]
    with torch.no_grad():
        a, b = ours(wavs)["hidden_states"], theirs(wavs)["hidden_states"]
    assert len(a) == len(b) == model.num_layers + 1
    frames = model.output_lengths(torch.tensor([6000, 3900]))
    for x, y in zip(a, b):
        for i, n in enumerate(frames.tolist()):
            assert (x[i, :n] - y[i, :n]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="export again without --layers"):
        OnnxUpstreamExpert(str(tmp_path / "part.onnx"))
