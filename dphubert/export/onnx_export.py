"""ONNX export of an ungated encoder (fp32, or int8 with onnxruntime's dynamic quantisation), and running it.

The graph (``TraceableEncoder``, torch's TorchScript-based exporter, opset 17):

- inputs ``waveforms`` ``(batch, samples)`` float32 at 16 kHz and ``lengths`` ``(batch,)`` int64 (valid samples);
- outputs ``hidden_states`` ``(states, batch, frames, dim)`` float32 and ``frame_lengths`` ``(batch,)`` int64
  (valid frames; ONNX forbids an output with an input's name, hence not ``lengths``);
- batch, samples and frames are dynamic; an item of a padded batch gets the states it has alone;
- metadata ``dphubert_layers`` (the hidden-state index of each output state, space-separated),
  ``dphubert_model_type``, ``dphubert_sample_rate``, ``dphubert_downsample_rate`` (samples per frame),
  ``dphubert_precision``.

int8: ``onnxruntime.quantization.quantize_dynamic`` on the MatMul/Gemm weights (the linear projections of
attention and FFN, and the feature projection), and the CNN convs after the first (all of them by default,
``int8_cnn_convs`` to keep later ones fp32) as int8 products with one activation scale per 4 output frames
(``quantized_conv``); the first conv, the positional conv, norms and the attention's activation-by-activation
products stay fp32, which keeps the drift small (``layer_drift`` measures it).
"""

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dphubert.models import Wav2Vec2Model

from .graph import ExportError, TraceableEncoder

INPUT_NAMES = ("waveforms", "lengths")
OUTPUT_NAMES = ("hidden_states", "frame_lengths")
DYNAMIC_AXES = {
    "waveforms": {0: "batch", 1: "samples"},
    "lengths": {0: "batch"},
    "hidden_states": {1: "batch", 2: "frames"},
    "frame_lengths": {0: "batch"},
}
OPSET = 17
PRECISIONS = ("fp32", "int8")
DEFAULT_INT8_CNN_CONVS = 6  # all of a wav2vec 2.0-family CNN (bench/README.md: speed and KS accuracy per count)


def check_writable(out: Union[str, Path]) -> Path:
    """``out``'s directory exists (or can be made) and takes a file; one-line ExportError otherwise."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out}: is a directory; give a file name such as {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=True):
            pass
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable path") from None
    return out


def export_onnx(model: Wav2Vec2Model, out: Union[str, Path], layers: Optional[Sequence[int]] = None,
                precision: str = "fp32", source: str = "model", int8_cnn_convs: Optional[int] = None) -> Path:
    """Write ``model`` as ONNX to ``out`` (atomically: a kill never leaves a half file); returns ``out``.

    ``int8_cnn_convs`` (int8 only; default all of them, at most ``DEFAULT_INT8_CNN_CONVS``): how many CNN convs
    after the first run as int8 products. Each makes the file faster; with one activation scale per 4 output
    frames each is 0.5-0.8% off on the demo's test speech, about what its 7-bit weights cost (bench/README.md,
    "Accuracy of the deployed model").
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {PRECISIONS} (--quantize int8 or none)")
    if int8_cnn_convs is None:
        convs_after_first = len(model.feature_extractor.conv_layers) - 1
        int8_cnn_convs = min(DEFAULT_INT8_CNN_CONVS, convs_after_first) if precision == "int8" else 0
    elif int8_cnn_convs and precision != "int8":
        raise ExportError(f"--int8-cnn-convs {int8_cnn_convs} needs an int8 file; add --quantize int8")
    was_training = model.training
    # (puts model in eval mode; restored below)
    encoder = TraceableEncoder(model, layers, source, int8_cnn_convs=int8_cnn_convs)
    out = check_writable(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    fp32 = tmp if precision == "fp32" else out.with_name(f".{out.name}.fp32.tmp{os.getpid()}")
    # Two items of different lengths: the trace then sees a padded batch (nothing in it depends on that).
    example = (torch.randn(2, 8000), torch.tensor([8000, 6000], dtype=torch.int64))
    try:
        with torch.no_grad():
            torch.onnx.export(encoder, example, str(fp32), input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True,
                              custom_opsets={"com.microsoft": 1} if int8_cnn_convs else None)
        if precision == "int8":
            quantize_int8(fp32, tmp)
        downsample_rate = math.prod(stride for _, _, stride in model.config["extractor_conv_layer_config"])
        _set_metadata(tmp, encoder.layers, model.config.get("model_type", "hubert"), downsample_rate, precision)
        os.replace(tmp, out)
    finally:
        model.train(was_training)
        for path in {tmp, fp32}:
            if path.exists():
                path.unlink()
    return out


def quantize_int8(fp32_path: Union[str, Path], out: Union[str, Path]) -> None:
    """Dynamic int8 quantisation of the weight MatMuls (per-channel weights); everything else stays fp32."""
    import onnx

    quantize_dynamic_int8(fp32_path, out)
    # quantize_dynamic leaves the shapes it inferred in the file (value_info), which name the residual Add's
    # dims alike; onnxruntime then fuses each Add + LayerNormalization into SkipLayerNormalization, whose CPU
    # kernel (onnxruntime 1.32) took 2.6 ms where Add + LayerNormalization take 0.35 (4 x 499 x 256, 1 thread):
    # 5-8% of the demo model's time, 4% of a Base-shaped one. The fp32 export has no value_info and no fusion.
    proto = onnx.load(str(out))
    del proto.graph.value_info[:]
    onnx.save(proto, str(out))


def quantize_dynamic_int8(fp32_path: Union[str, Path], out: Union[str, Path]) -> None:
    """onnxruntime's ``quantize_dynamic`` with the settings of our int8 files (``quantize_int8`` finishes the file).

    ``reduce_range``: 7-bit weights. Without it, CPUs lacking VNNI (AVX2 only, e.g. an AMD EPYC without AVX-512)
    saturate the u8 x s8 products of onnxruntime's int8 kernels: a Base-shaped model drifted 2.8e-2 (relative L2)
    on such a CPU, 3.4e-3 with it, at the same speed. The file may run on any CPU, so it is always made
    safe."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a hint to run its shape pre-processing, whose symbolic inference fails on the
    # dynamic-length graph (and that is not needed for dynamic quantisation): silence the root logger meanwhile.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32_path), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def _set_metadata(path: Path, layers: List[int], model_type: str, downsample_rate: int, precision: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    entries = {"dphubert_layers": " ".join(map(str, layers)), "dphubert_model_type": model_type,
               "dphubert_sample_rate": "16000", "dphubert_downsample_rate": str(downsample_rate),
               "dphubert_precision": precision}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


class OnnxEncoder:
    """An exported model in onnxruntime: ``encoder(waveforms, lengths) -> (states, frame_lengths)`` (numpy)."""

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layers = [int(v) for v in meta.get("dphubert_layers", "").split()]
        self.precision = meta.get("dphubert_precision", "fp32")
        self.downsample_rate = int(meta.get("dphubert_downsample_rate", 320))

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray):
        feeds = {"waveforms": np.ascontiguousarray(waveforms, dtype=np.float32),
                 "lengths": np.ascontiguousarray(lengths, dtype=np.int64)}
        states, frames = self.session.run(list(OUTPUT_NAMES), feeds)
        return states, frames


def check_waveforms(samples: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The export's default check input: a padded batch of two items (``samples`` and 2/3 of that) with speech's
    level changes, a 140 Hz tone plus noise under a syllable-rate (3.7 Hz) envelope whose floor is 30 dB below its
    peaks. Steady noise hides what speech's level changes do to int8 activation scales (with the earlier
    per-tensor int8 CNN convs, 6 of them on the demo's model: last state 7.8e-3 on noise, 3.4e-1 on its test
    speech). With one scale per 4 output frames, demo model, last state, relative L2, 0 / 1 / 3 / 6 int8 CNN
    convs: this input 1.2e-2 / 1.2e-2 / 1.3e-2 / 5.3e-2; 40 test utterances 8.5e-3 / 8.7e-3 / 9.2e-3 / 2.1e-2."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    phase = torch.rand(2, 1, generator=generator) * 2 * math.pi
    envelope = torch.sin(2 * math.pi * 3.7 * t + phase).clamp(min=0.0) + 0.03
    source = 0.5 * torch.randn(2, samples, generator=generator) + torch.sin(2 * math.pi * 140.0 * t)
    waveforms = 0.3 * envelope * source
    lengths = torch.tensor([samples, samples * 2 // 3])
    waveforms[1, lengths[1]:] = 0.0
    return waveforms.float(), lengths


def layer_drift(model: Wav2Vec2Model, encoder: OnnxEncoder, waveforms: torch.Tensor,
                lengths: torch.Tensor) -> List[Dict[str, float]]:
    """Per output state: max |onnx - PyTorch| and relative L2 error over valid frames.

    The reference is ``model.extract_features`` on each item alone; the ONNX model runs the padded batch, so
    this also checks padding invariance and the frame counts.
    """
    states, frames = encoder(waveforms.numpy(), lengths.numpy())
    layers = encoder.layers or list(range(model.num_layers + 1))
    max_diff = np.zeros(len(layers))
    err = np.zeros(len(layers))
    ref_norm = np.zeros(len(layers))
    with torch.no_grad():
        for i, n in enumerate(lengths.tolist()):
            reference, _ = model.extract_features(waveforms[i:i + 1, :n])
            count = reference[0].shape[1]
            if int(frames[i]) != count:
                raise AssertionError(f"item {i}: ONNX gives {int(frames[i])} frames, PyTorch {count}")
            for j, layer in enumerate(layers):
                ref = reference[layer][0].numpy()
                got = states[j, i, :count]
                max_diff[j] = max(max_diff[j], float(np.abs(got - ref).max()))
                err[j] += float(np.square(got - ref).sum())
                ref_norm[j] += float(np.square(ref).sum())
    return [{"layer": layer, "max_abs_diff": float(max_diff[j]),
             "relative_l2": float(np.sqrt(err[j] / max(ref_norm[j], 1e-30)))} for j, layer in enumerate(layers)]


def format_drift(rows: List[Dict[str, float]], precision: str) -> str:
    lines = [f"{precision} vs PyTorch (items of a padded batch vs alone): layer, max |diff|, relative L2"]
    lines += [f"  {r['layer']:>3d}  {r['max_abs_diff']:.2e}  {r['relative_l2']:.2e}" for r in rows]
    return "\n".join(lines)
