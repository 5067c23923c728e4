"""Check a Kaldi data dir's audio and write its utt2num_samples (recipe stage 1).

    python -m dphubert.bin.prepare_data --data data/train [--nj 4] [--full-read] [--resample] [--downmix]
        [--skip-bad-audio]

Reads every utterance's header (or the whole file with --full-read, always for pipes and arks), writes
``<data>/utt2num_samples``, and fails with one line per problem (utt id, path, reason, fix) if any audio is
missing, corrupt, empty, not 16 kHz (unless --resample) or not mono (unless --downmix). With --skip-bad-audio
the bad utterances are listed in ``<data>/skipped_audio.txt`` (``<utt> <reason>``) and left out of
utt2num_samples instead; the training stages then skip them too (given --skip-bad-audio as well).
"""

import argparse
import sys
from pathlib import Path

from dphubert.data import AudioError, DataDirError, load_data_dir, write_utt2num_samples
from dphubert.user_options import cli_names, fix_option

SKIPPED_NAME = "skipped_audio.txt"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Kaldi data dir with wav.scp")
    parser.add_argument("--nj", type=int, default=4, help="parallel readers")
    parser.add_argument("--full-read", action="store_true", help="decode every file, not only its header")
    parser.add_argument("--resample", action="store_true", help="accept other sample rates (resampled on load)")
    parser.add_argument("--downmix", action="store_true", help="accept multi-channel audio (averaged on load)")
    parser.add_argument("--skip-bad-audio", action="store_true",
                        help=f"list bad utterances in <data>/{SKIPPED_NAME} instead of failing")
    return parser


def _main(args: argparse.Namespace) -> int:
    skipped = Path(args.data) / SKIPPED_NAME
    try:
        data = load_data_dir(args.data)
        bad = write_utt2num_samples(args.data, nj=args.nj, full_read=args.full_read, resample=args.resample,
                                    downmix=args.downmix)
    except (DataDirError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if bad and args.skip_bad_audio and len(bad) < len(data.utt_ids):
        skipped.write_text("".join(f"{utt} {reason}\n" for utt, reason in bad), encoding="utf-8")
        print(f"warning: {args.data}: skipped {len(bad)} of {len(data.utt_ids)} utterance(s) with bad audio "
              f"(listed in {skipped}), first: {bad[0][1]}", file=sys.stderr)
    elif bad:
        for utt, reason in bad[:20]:
            print(f"error: {utt}: {reason}", file=sys.stderr)
        every = " (every utterance)" if len(bad) == len(data.utt_ids) else ""
        print(f"error: {len(bad)} bad utterance(s){every} in {args.data}; fix or remove them "
              f"(utils/fix_data_dir.sh after deleting their lines from wav.scp)"
              f"{'' if every else ', or skip them with ' + fix_option('skip_bad_audio')}", file=sys.stderr)
        return 1
    print(f"{args.data}: audio checked, utt2num_samples written")
    return 0


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    with cli_names():  # error messages name this CLI's flags
        return _main(args)


if __name__ == "__main__":
    sys.exit(main())
