"""s3prl's own ``run_downstream`` with the dphubert upstream registered and the torchaudio compat layer applied.

Usage:
    python -m dphubert.bin.superb [--db db.sh] [--corpus VAR=PATH ...] [--quick] [--set key=value ...] \\
        -- <run_downstream arguments>

    # train KS on a model file, then evaluate the best dev checkpoint on the test set
    python -m dphubert.bin.superb --db db.sh -- -m train -u dphubert_local -k exp/x/final/model.pt \\
        -d speech_commands -p exp/x/superb_manual/ks
    python -m dphubert.bin.superb -- -m evaluate -e exp/x/superb_manual/ks/dev-best.ckpt -t test

Everything after ``--`` goes to s3prl's ``run_downstream.py`` unchanged (``-- -h`` shows its help), except:
- without ``-c`` (and without ``-e``), our shipped config of the downstream (dphubert/superb/configs/) is used,
  with the corpus paths of db.sh (default: ./db.sh when present) and ``--corpus`` filled in; the resolved file
  is written to ``<expdir>/superb_config.yaml``. It has SUPERB's full step counts; ``--quick`` uses the short
  demo settings of configs/quick.yaml, ``--set runner.total_steps=500`` changes single values;
- ``--device cpu`` is added when no GPU is visible.
Downstream names: speech_commands (KS), fluent_commands (IC), voxceleb1 (SID), ctc (PR, libriphone),
asr (ASR), emotion (ER), quesst14_dtw (QbE), sv_voxceleb1 (ASV), diarization (SD); SF needs -c (ctc + snips).
Corpus variables: see ``python -m dphubert.bin.superb_stage --help``.
"""

import argparse
import sys
from pathlib import Path

from dphubert.superb.errors import SuperbError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dphubert.bin.superb",
        description="Run s3prl's run_downstream with the dphubert_local upstream; its arguments follow '--'.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--db", type=Path, help="recipe db.sh with the corpus paths [./db.sh when present]")
    parser.add_argument("--corpus", nargs="+", default=[], metavar="VAR=PATH",
                        help="corpus paths that override db.sh, e.g. SPEECH_COMMANDS=/data/sc")
    parser.add_argument("--quick", action="store_true", help="short demo step counts (configs/quick.yaml)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config values, e.g. runner.total_steps=500 (our config only; else use s3prl's -o)")
    return parser


OUR_FLAGS = ("-h", "--help", "--db", "--corpus", "--quick", "--set")


def split_argv(argv):
    """(our options, run_downstream's) split at the first '--'; without '--', all are ours when the first is
    one of ours (``--help``), else all are run_downstream's."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    if argv and argv[0].split("=")[0] in OUR_FLAGS:
        return list(argv), []
    return [], list(argv)


def main(argv=None) -> int:
    ours, theirs = split_argv(sys.argv[1:] if argv is None else list(argv))
    args = get_parser().parse_args(ours)
    from dphubert.superb import corpora, running

    try:
        db = args.db or (Path("db.sh") if Path("db.sh").is_file() else None)
        paths = corpora.corpus_paths(db, args.corpus)
        upstream_ckpt = running._value(theirs, "-k", "--upstream_ckpt")
        if running._value(theirs, "-u", "--upstream") == "dphubert_local" and upstream_ckpt:
            running.check_model(upstream_ckpt)
        if "-h" in theirs or "--help" in theirs:
            running.run_downstream(theirs)  # s3prl's own help
            return 0
        downstream_args = running.with_config(theirs, paths, full=not args.quick, overrides=args.overrides)
        running.run_downstream(downstream_args)
    except SuperbError as e:
        print(f"superb: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
