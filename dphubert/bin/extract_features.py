"""Hidden-state features of a Kaldi data dir as kaldiio feats.ark + feats.scp (for ESPnet, Kaldi, icefall).

    python -m dphubert.bin.extract_features --model exp/<tag>/final/model.pt --data data/<set> \\
        (--layer N | --layers "3 6 9" | --weights <s3prl expdir>/dev-best.ckpt) --out DIR \\
        [--dtype float16] [--batch-seconds 100] [--resample] [--downmix] [--device cpu]

One frames x dim matrix per utterance, equal to the model's output on that utterance alone. ``--layer N``:
hidden state N (0 = transformer input .. last layer); ``--layers``: those states concatenated (dim x count);
``--weights``: the learned softmax-weighted sum of an s3prl downstream checkpoint's Featurizer (the features
that SUPERB head used). ``--resample`` / ``--downmix`` as in stage 1 (prepare_data). Writes DIR/feats.ark,
DIR/feats.scp (sorted), DIR/utt2num_frames and DIR/extract_config.json; a killed run continues where it stopped
when started again with the same options.
"""

import argparse
import sys

from dphubert.data import AudioError, DataDirError
from dphubert.export import ExportError
from dphubert.export.features import Selection, extract_features
from dphubert.models import CheckpointError, load_model

from .export import parse_layers


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ungated model file (final/model.pt, teacher, release file)")
    parser.add_argument("--data", required=True, help="Kaldi data dir with wav.scp")
    parser.add_argument("--out", required=True, help="output dir for feats.ark / feats.scp")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--layer", type=int, help="one hidden state")
    which.add_argument("--layers", nargs="+", help='several hidden states, concatenated: --layers "3 6 9"')
    which.add_argument("--weights", help="s3prl downstream checkpoint whose Featurizer weights to apply")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--batch-seconds", type=float, default=100.0,
                        help="padded audio per batch (items x longest item), seconds")
    parser.add_argument("--resample", action="store_true", help="accept other sample rates (resampled on load)")
    parser.add_argument("--downmix", action="store_true", help="accept multi-channel audio (averaged on load)")
    parser.add_argument("--nj", type=int, default=4, help="parallel readers for audio headers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow arbitrary pickles in --model / --weights")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.weights:
            selection = Selection.from_s3prl(args.weights, args.trust_checkpoint)
        elif args.layers:
            selection = Selection.concat(parse_layers(args.layers))
        else:
            selection = Selection.single(args.layer)
        model = load_model(args.model, trust_checkpoint=args.trust_checkpoint)
        counts = extract_features(model, args.data, args.out, selection, dtype=args.dtype,
                                  batch_seconds=args.batch_seconds, resample=args.resample, downmix=args.downmix,
                                  nj=args.nj, device=args.device, model_source=args.model)
    except (CheckpointError, ExportError, DataDirError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}/feats.scp: {counts['utterances']} utterances ({counts['computed']} computed now, "
          f"{counts['resumed']} from an earlier run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
