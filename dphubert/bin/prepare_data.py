"""Check a Kaldi data dir's audio and write its utt2num_samples (recipe stage 1).

    python -m dphubert.bin.prepare_data --data data/train [--nj 4] [--full-read] [--resample] [--downmix]

Reads every utterance's header (or the whole file with --full-read, always for pipes and arks), writes
``<data>/utt2num_samples``, and fails with one line per problem (utt id, path, reason, fix) if any audio is
missing, corrupt, empty, not 16 kHz or not mono.
"""

import argparse
import sys

from dphubert.data import AudioError, DataDirError, load_data_dir, write_utt2num_samples


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Kaldi data dir with wav.scp")
    parser.add_argument("--nj", type=int, default=4, help="parallel readers")
    parser.add_argument("--full-read", action="store_true", help="decode every file, not only its header")
    parser.add_argument("--resample", action="store_true", help="accept other sample rates (resampled on load)")
    parser.add_argument("--downmix", action="store_true", help="accept multi-channel audio (averaged on load)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        load_data_dir(args.data)
        bad = write_utt2num_samples(args.data, nj=args.nj, full_read=args.full_read, resample=args.resample,
                                    downmix=args.downmix)
    except (DataDirError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if bad:
        for utt, reason in bad[:20]:
            print(f"error: {utt}: {reason}", file=sys.stderr)
        print(f"error: {len(bad)} bad utterance(s) in {args.data}; fix or remove them "
              f"(utils/fix_data_dir.sh after deleting their lines from wav.scp)", file=sys.stderr)
        return 1
    print(f"{args.data}: audio checked, utt2num_samples written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
