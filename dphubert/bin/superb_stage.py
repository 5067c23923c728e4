"""Recipe stage 5: SUPERB tasks for several models with s3prl, and a report comparing them.

Usage:
    python -m dphubert.bin.superb_stage --tasks "ks ic sid pr" \\
        --models teacher=exp/teacher/teacher.pt dphubert=exp/x/final/model.pt distilhubert=exp/x/distilhubert/model.pt \\
        --out exp/x/superb [--db db.sh] [--corpus VAR=PATH ...] [--full] [--er-folds "1 2 3 4 5"] \\
        [--set runner.total_steps=500 ...] [--num-threads N] [--jobs N] [--force]

For every model x task: s3prl's run_downstream -m train (frozen upstream, learned weighted sum of the hidden
states, the task's head), then -m evaluate on the test split with the best-on-dev checkpoint (ASV: the last),
the metric parsed from s3prl's output. An FBANK row (s3prl's ``fbank`` upstream, same path and settings; off
with --no-fbank) is the floor every model must clear. Each value has its test-set size and a 95% interval
(Wilson for accuracies, a bootstrap over utterances for PER/WER, from s3prl's per-utterance test files).
Writes OUT/RESULTS.md (a table like the paper's, best per column in bold, ``value +- half-width``; the summary
names the differences beyond the intervals), OUT/results.json and OUT/results.png; OUT/<model>/<task>/ holds
each s3prl experiment and its logs.
Finished pairs (OUT/<model>/<task>/.done) are skipped on a rerun unless their model file changed since (a
retrained model runs again); --force reruns them all. --jobs N runs N pairs at once in separate processes (a
quick CPU run: --jobs <cores> --num-threads 1).

By default the quick settings of dphubert/superb/configs/quick.yaml are used (150-1500 steps; the demo's
mini-SUPERB); --full uses SUPERB's own step counts, batch sizes and learning rates.

Tasks: pr ks ic sid er asr qbe sf asv sd. Corpus paths come from db.sh (default ./db.sh) or --corpus:
  ks  SPEECH_COMMANDS [SPEECH_COMMANDS_TEST]     ic  FLUENT_SPEECH_COMMANDS
  sid VOXCELEB1 (with iden_split.txt)             asv VOXCELEB1 (with veri_test2.txt)
  pr  LIBRIPHONE, or LIBRISPEECH [LIBRISPEECH_LEXICON]
  asr LIBRISPEECH                                 er  IEMOCAP
  qbe QUESST14                                    sf  SNIPS          sd LIBRIMIX
(see dphubert/superb/corpora.py for what each must contain).
"""

import argparse
import sys
import time
from pathlib import Path

from dphubert.superb.errors import SuperbError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dphubert.bin.superb_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, help='SUPERB tasks, e.g. "ks ic pr"')
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL.pt",
                        help="model files to compare, each named (teacher=..., dphubert=..., distilhubert=...)")
    parser.add_argument("--out", required=True, type=Path, help="output dir (RESULTS.md, results.json, ...)")
    parser.add_argument("--db", type=Path, help="db.sh with the corpus paths [./db.sh when present]")
    parser.add_argument("--corpus", nargs="+", default=[], metavar="VAR=PATH", help="corpus paths over db.sh")
    parser.add_argument("--full", action="store_true", help="SUPERB's step counts instead of the quick ones")
    parser.add_argument("--er-folds", default=None,
                        help='ER test folds to run and average [quick: "1"; --full: "1 2 3 4 5"]')
    parser.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="config values for every task, e.g. runner.total_steps=500")
    parser.add_argument("--feature-cache", action=argparse.BooleanOptionalAction, default=None,
                        help="memoise the frozen upstream's features per waveform (upstream dphubert_cached) "
                             "[on in quick mode, off with --full]")
    parser.add_argument("--cache-mb", type=int, default=3000, help="memory for the feature cache, MB")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="torch CPU threads of each run (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="model x task runs at once, each in its own process (on a CPU: about cores / "
                             "--num-threads)")
    parser.add_argument("--fbank", action=argparse.BooleanOptionalAction, default=True,
                        help="add the FBANK baseline row: s3prl's own fbank upstream (80 log-mel + deltas, CMVN) "
                             "through the same tasks and settings")
    parser.add_argument("--seed", type=int, default=1337, help="s3prl's --seed")
    parser.add_argument("--force", action="store_true", help="rerun finished model x task pairs")
    parser.add_argument("--verbose", action="store_true", help="also print s3prl's output (always in the logs)")
    return parser


def parse_models(items):
    models = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SuperbError(f"bad --models entry '{item}': use NAME=path/to/model.pt")
        if name in models:
            raise SuperbError(f"--models names '{name}' twice; give each model its own name")
        if not Path(path).is_file():
            raise SuperbError(f"model file {path} (--models {name}=...) not found")
        models[name] = path
    return models


def parse_folds(text, full):
    if text is None:
        return [1, 2, 3, 4, 5] if full else [1]
    try:
        folds = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        folds = []
    if not folds or any(not 1 <= f <= 5 for f in folds):
        raise SuperbError(f"bad --er-folds '{text}': give fold numbers 1-5, e.g. \"1 2 3 4 5\"")
    return folds


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from dphubert.superb import corpora
    from dphubert.superb.stage import StageOptions, run_stage
    from dphubert.superb.tasks import parse_tasks

    start = time.time()
    try:
        tasks = parse_tasks(args.tasks)
        models = parse_models(args.models)
        db = args.db or (Path("db.sh") if Path("db.sh").is_file() else None)
        paths = corpora.corpus_paths(db, args.corpus)
        if args.jobs < 1:
            raise SuperbError(f"--jobs {args.jobs}: give 1 or more parallel runs")
        if args.num_threads:
            import torch

            torch.set_num_threads(args.num_threads)
        options = StageOptions(full=args.full, overrides=args.overrides, er_folds=parse_folds(args.er_folds, args.full),
                               force=args.force, seed=args.seed, quiet=not args.verbose,
                               cache_features=args.feature_cache, cache_mb=args.cache_mb,
                               jobs=args.jobs, num_threads=args.num_threads, fbank=args.fbank)
        data = run_stage(models, tasks, args.out, paths, options, log=lambda m: print(m, flush=True))
    except SuperbError as e:
        print(f"superb_stage: error: {e}", file=sys.stderr)
        return 1
    print(f"[superb] results: {args.out}/RESULTS.md, results.json, results.png ({time.time() - start:.0f} s)")
    if data["failures"]:
        print(f"superb_stage: error: {sum(len(f) for f in data['failures'].values())} model x task run(s) failed; "
              f"see {args.out}/RESULTS.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
