"""Export a compressed (pruned) model for deployment: ONNX, fp32 or int8, run with onnxruntime.

    python -m dphubert.bin.export --model exp/<tag>/final/model.pt --format onnx --out model.onnx \\
        [--layers "3 6 9"] [--quantize int8 [--int8-cnn-convs N]] [--check-seconds 2] [--check-data data/dev]

Inputs ``waveforms`` (batch, samples) float32 16 kHz and ``lengths`` (batch,) int64; outputs ``hidden_states``
(states, batch, frames, dim) for the ``--layers`` hidden states (default all: 0 = transformer input .. N) and
``frame_lengths`` (batch,). Batch and length are dynamic. After writing, the file is run in onnxruntime on a
padded batch and compared with PyTorch on each item alone; the per-layer max |diff| and relative L2 error are
printed (the int8 drift). The batch is two synthetic items with speech's level changes (``check_waveforms``), or
with ``--check-data`` the first ``--check-utterances`` utterances of a Kaldi data dir (real audio: the number to
trust for an int8 file; audio read as in stage 1, 16 kHz mono).
"""

import argparse
import re
import sys

import torch

from dphubert.data import AudioError, DataDirError, load_data_dir, read_audio
from dphubert.export import ExportError, OnnxEncoder, check_waveforms, export_onnx, format_drift, layer_drift
from dphubert.export.onnx_export import DEFAULT_INT8_CNN_CONVS
from dphubert.models import CheckpointError, load_model
from dphubert.user_options import cli_names


def parse_layers(values):
    """``--layers 3 6 9`` or ``--layers "3 6 9"`` / ``"3,6,9"`` -> [3, 6, 9]."""
    if not values:
        return None
    tokens = [t for v in values for t in re.split(r"[\s,]+", v.strip()) if t]
    try:
        return [int(t) for t in tokens]
    except ValueError:
        given = " ".join(values)
        raise ExportError(f"--layers {given!r}: give hidden-state numbers, e.g. --layers \"3 6 9\"") from None


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ungated model file (final/model.pt, pruned.pt, release file)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="output format")
    parser.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    parser.add_argument("--layers", nargs="+", default=None, help="hidden states to output (default: all)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"],
                        help="int8: dynamic quantisation of the linear layers and of --int8-cnn-convs CNN convs")
    parser.add_argument("--int8-cnn-convs", type=int, default=None,
                        help=f"with --quantize int8: CNN convs after the first run in int8 (default all, "
                             f"{DEFAULT_INT8_CNN_CONVS} in a wav2vec 2.0-family CNN; fewer drift less and are slower, "
                             f"0 keeps the CNN fp32)")
    parser.add_argument("--check-seconds", type=float, default=2.0,
                        help="length of the longer of the two check inputs (0: skip the check)")
    parser.add_argument("--check-data", default=None,
                        help="a Kaldi data dir whose first utterances are the check input (instead of synthetic)")
    parser.add_argument("--check-utterances", type=int, default=4, help="utterances of --check-data to use")
    parser.add_argument("--resample", action="store_true", help="--check-data: accept other sample rates")
    parser.add_argument("--downmix", action="store_true", help="--check-data: accept multi-channel audio")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary pickles in --model")
    return parser


def data_check_batch(model, data: str, utterances: int, resample: bool, downmix: bool):
    """The first ``utterances`` utterances of a data dir as a padded batch ``(waveforms, lengths)``."""
    if utterances < 1:
        raise ExportError(f"--check-utterances {utterances}: give 1 or more")
    data_dir = load_data_dir(data)
    utts = data_dir.utt_ids[:utterances]
    with cli_names():  # audio errors name this CLI's --resample / --downmix
        waves = [torch.from_numpy(read_audio(data_dir, utt, resample=resample, downmix=downmix)) for utt in utts]
    lengths = torch.tensor([len(w) for w in waves])
    for utt, n, frames in zip(utts, lengths.tolist(), model.output_lengths(lengths).tolist()):
        if frames < 1:
            raise ExportError(f"--check-data {data}: utt {utt} has {n} samples, too short for one frame; give "
                              f"a data dir of longer utterances (or leave out --check-data)")
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    precision = "int8" if args.quantize == "int8" else "fp32"
    try:
        layers = parse_layers(args.layers)
        model = load_model(args.model, trust_checkpoint=args.trust_checkpoint)
        # Read the check audio before exporting, so that a bad --check-data fails before the file is written.
        check = None
        if args.check_data:
            check = data_check_batch(model, args.check_data, args.check_utterances, args.resample, args.downmix)
        out = export_onnx(model, args.out, layers, precision, source=args.model, int8_cnn_convs=args.int8_cnn_convs)
    except (CheckpointError, ExportError, DataDirError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    encoder = OnnxEncoder(out)
    print(f"{out}: {precision} ONNX, hidden states {encoder.layers}, {out.stat().st_size / 2 ** 20:.1f} MiB")
    if check is None and args.check_seconds > 0:
        check = check_waveforms(max(int(args.check_seconds * 16000), 1600))
    if check is not None:
        source = f"{len(check[1])} utterances of {args.check_data}" if args.check_data else "synthetic, speech-like"
        print(f"check input: {source}")
        print(format_drift(layer_drift(model, encoder, *check), precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
