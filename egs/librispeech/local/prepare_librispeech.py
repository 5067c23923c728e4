"""Kaldi data dirs from a LibriSpeech tree (<root>/<subset>/<speaker>/<chapter>/<utt>.flac + .trans.txt).

    python local/prepare_librispeech.py --root /data/LibriSpeech --out data [--sets train960,train100,dev]

Writes data/<subset with _> for every subset it needs (wav.scp pointing at the flac files, text, utt2spk with
speaker = <speaker>-<chapter> as Kaldi's recipe does, spk2utt), then the combined sets:
train960 = train-clean-100 + train-clean-360 + train-other-500, train100 = train-clean-100,
dev = dev-clean + dev-other; test_clean / test_other when present.
"""

import argparse
import sys
from pathlib import Path

SUBSETS = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
           "test-other"]
COMBINED = {
    "train960": ["train-clean-100", "train-clean-360", "train-other-500"],
    "train100": ["train-clean-100"],
    "dev": ["dev-clean", "dev-other"],
    "test_clean": ["test-clean"],
    "test_other": ["test-other"],
}


class CorpusError(Exception):
    pass


def read_subset(root: Path, subset: str) -> dict:
    """utt -> (flac path, transcript, speaker) for one subset."""
    directory = root / subset
    if not directory.is_dir():
        raise CorpusError(f"{directory} is missing: download and unpack LibriSpeech {subset} "
                          f"(openslr.org/12) into {root}, or drop the sets that need it from --sets")
    utts = {}
    for trans in sorted(directory.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise CorpusError(f"{flac} is listed in {trans} but missing: re-extract {subset}")
            speaker, chapter = utt.split("-")[:2]
            utts[utt] = (str(flac.resolve()), text.strip(), f"{speaker}-{chapter}")
    if not utts:
        raise CorpusError(f"{directory} holds no */*/*.trans.txt files: is it a LibriSpeech {subset} tree?")
    return utts


def write_data_dir(out: Path, utts: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(utts, key=lambda u: u.encode())  # LC_ALL=C order
    spk2utt = {}
    for utt in ids:
        spk2utt.setdefault(utts[utt][2], []).append(utt)
    (out / "wav.scp").write_text("".join(f"{u} {utts[u][0]}\n" for u in ids))
    (out / "text").write_text("".join(f"{u} {utts[u][1]}\n" for u in ids))
    (out / "utt2spk").write_text("".join(f"{u} {utts[u][2]}\n" for u in ids))
    (out / "spk2utt").write_text("".join(f"{s} {' '.join(spk2utt[s])}\n"
                                         for s in sorted(spk2utt, key=lambda s: s.encode())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="LibriSpeech root (LIBRISPEECH in db.sh)")
    parser.add_argument("--out", default="data")
    parser.add_argument("--sets", default="train960,train100,dev,test_clean,test_other",
                        help=f"comma-separated; any of {','.join(COMBINED)}")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        if not root.is_dir():
            raise CorpusError(f"LIBRISPEECH={root} is not a directory: set LIBRISPEECH in db.sh")
        wanted = [s for s in args.sets.split(",") if s]
        unknown = [s for s in wanted if s not in COMBINED]
        if unknown:
            raise CorpusError(f"unknown set(s) {unknown}; choose from {list(COMBINED)}")
        cache = {}
        for name in wanted:
            merged = {}
            for subset in COMBINED[name]:
                if subset not in cache:
                    cache[subset] = read_subset(root, subset)
                merged.update(cache[subset])
            write_data_dir(Path(args.out) / name, merged)
            print(f"data/{name}: {len(merged)} utterances")
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
