"""Does the deployed model keep the accuracy? A stage-5 SUPERB head evaluated on PyTorch, ONNX fp32 and ONNX int8.

    python bench/export_accuracy.py --model exp/demo_sp0.75/final/model.pt \\
        --head exp/demo_sp0.75/superb/dphubert/ks/dev-best.ckpt [--task ks] [--out exp/export_accuracy] \
        [--int8-cnn-convs 0 3 6]

The model is exported to ONNX fp32 and int8 (``python -m dphubert.bin.export``'s code; one int8 file per
``--int8-cnn-convs`` value, default the export's), then s3prl's own
``run_downstream -m evaluate`` scores the head's test set three times, with the upstream overridden to
``dphubert_local`` (the model file in PyTorch) and to ``dphubert_onnx`` (each ONNX file):
``-o args.upstream=dphubert_onnx,,args.upstream_ckpt=<file>,,args.expdir=<dir>``, the route docs/deployment.md gives users.
The head (featurizer weights and downstream) is the one trained on the PyTorch features and is not retrained.
Printed: each engine's accuracy with its test-set size and Wilson 95% interval, and the difference to PyTorch
paired over utterances (bootstrap 95% interval) with the utterances whose right/wrong status flips, as a table
(also written to ``<out>/export_accuracy.md``). Classification tasks (KS, IC, SID).

``--drift-data data/test`` (a Kaldi data dir, read as in stage 1: 16 kHz mono): the int8 files' drift on speech,
the relative L2 error of the last hidden state against the fp32 file on ``--drift-clips`` utterances (every n-th
of the list), over all frames and over each utterance's quietest quarter of frames (by the waveform's energy per
frame). Steady noise would hide what speech's level changes do to the int8 CNN convs' activation scales.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dphubert.export import export_onnx  # noqa: E402
from dphubert.export.onnx_export import DEFAULT_INT8_CNN_CONVS  # noqa: E402
from dphubert.models import load_model  # noqa: E402
from dphubert.models.checkpoint import CheckpointError  # noqa: E402
from dphubert.superb import intervals, results, running  # noqa: E402
from dphubert.superb.tasks import TASKS  # noqa: E402


def evaluate(head: Path, upstream: str, upstream_ckpt: Path, expdir: Path, split: str) -> str:
    """s3prl's evaluate of ``head`` with another upstream; its per-utterance files land in ``expdir``."""
    expdir.mkdir(parents=True, exist_ok=True)
    override = (f"args.upstream={upstream},,args.upstream_ckpt={upstream_ckpt.resolve()},,"
                f"args.expdir={expdir.resolve()}")
    argv = running.with_config(["-m", "evaluate", "-e", str(head), "-t", split, "-o", override], {})  # + --device
    return running.run_downstream(argv, log=expdir / "evaluate.log", quiet=True)


def speech_drift(fp32: Path, int8_files, data_dir: Path, clips: int):
    """Rows ``(label, relative L2 all frames, relative L2 quietest quarter)`` on ``clips`` utterances."""
    from dphubert.data import AudioError, DataDirError, load_data_dir, read_audio
    from dphubert.export import OnnxEncoder

    try:
        data = load_data_dir(data_dir)
    except DataDirError as e:
        sys.exit(f"--drift-data: {e}")
    utts = data.utt_ids[:: max(1, len(data.utt_ids) // clips)][:clips]
    reference = OnnxEncoder(fp32, threads=1)
    sums = {label: np.zeros(4) for label in int8_files}
    engines = {label: OnnxEncoder(path, threads=1) for label, path in int8_files.items()}
    for utt in utts:
        try:
            wav = read_audio(data, utt)  # 16 kHz mono or a one-line error naming the utterance
        except AudioError as e:
            sys.exit(f"--drift-data: {e}")
        x, n = wav[None], np.array([len(wav)])
        ref = reference(x, n)[0][-1, 0]
        frames = ref.shape[0]
        hop = len(wav) // frames
        energy = np.square(wav[: frames * hop]).reshape(frames, hop).sum(1)
        quiet = energy <= np.quantile(energy, 0.25)
        for label, engine in engines.items():
            err = np.square(engine(x, n)[0][-1, 0] - ref).sum(1)
            norm = np.square(ref).sum(1)
            sums[label] += [err.sum(), norm.sum(), err[quiet].sum(), norm[quiet].sum()]
    return [(label, float(np.sqrt(e / r)), float(np.sqrt(eq / rq))) for label, (e, r, eq, rq) in sums.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the (pruned) model file the head was trained on")
    parser.add_argument("--head", type=Path, required=True, help="the s3prl downstream checkpoint (dev-best.ckpt)")
    parser.add_argument("--task", default="ks", choices=["ks", "ic", "sid"])
    parser.add_argument("--out", type=Path, default=Path("exp/export_accuracy"))
    parser.add_argument("--int8-cnn-convs", type=int, nargs="+", default=[DEFAULT_INT8_CNN_CONVS],
                        help="int8 files to score: CNN convs after the first in int8 (the export's option)")
    parser.add_argument("--drift-data", type=Path, default=None,
                        help="a Kaldi data dir: also print the int8 files' drift on its speech (wav.scp)")
    parser.add_argument("--drift-clips", type=int, default=40, help="utterances for --drift-data")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if not args.head.is_file():
        parser.error(f"--head {args.head}: no such file (stage 5 writes exp/<tag>/superb/<model>/<task>/"
                     f"dev-best.ckpt)")
    args.out.mkdir(parents=True, exist_ok=True)

    try:
        model = load_model(args.model).eval()
    except CheckpointError as e:
        parser.error(f"--model: {e}")
    fp32 = export_onnx(model, args.out / "model.onnx")
    engines = [("PyTorch fp32", "dphubert_local", args.model), ("onnxruntime fp32", "dphubert_onnx", fp32)]
    for convs in args.int8_cnn_convs:
        int8 = export_onnx(model, args.out / f"model.int8.cnn{convs}.onnx", precision="int8", int8_cnn_convs=convs)
        engines.append((f"onnxruntime int8, {convs} int8 CNN convs", "dphubert_onnx", int8))
    if args.drift_data is not None:
        int8_files = {name: path for name, _, path in engines[2:]}
        print(f"int8 drift on speech ({args.drift_clips} utterances of {args.drift_data}): relative L2 error of the "
              f"last hidden state vs the fp32 file, all frames / the quietest quarter of each utterance's frames")
        for label, everywhere, quiet in speech_drift(fp32, int8_files, args.drift_data, args.drift_clips):
            print(f"  {label}: {everywhere:.2e} / {quiet:.2e}", flush=True)
    rows, reference = [], None
    for name, upstream, ckpt in engines:
        expdir = args.out / name.replace(", ", "_").replace(" ", "_")
        text = evaluate(args.head, upstream, ckpt, expdir, task.eval_split)
        value = results.parse_metrics(task, text, source=str(expdir / "evaluate.log"))[task.metric.name]
        correct = intervals.correct_per_utterance(expdir, task.name)
        if not correct:
            sys.exit(f"{expdir}: s3prl wrote no test predictions for {task.title} (see {expdir}/evaluate.log); "
                     f"is --head a {task.title} head (--task)?")
        low, high = intervals.wilson(sum(correct.values()), len(correct))
        row = f"| {name} | {len(correct)} | {value:.2f} [{100 * low:.1f}, {100 * high:.1f}]"
        if reference is None:
            reference = correct
            row += " | (reference) | |"
        else:
            diff, (d_low, d_high) = intervals.paired_difference(reference, correct)
            changed = sum(reference[u] != correct[u] for u in correct)
            row += f" | {diff:+.2f} [{d_low:+.2f}, {d_high:+.2f}] | {changed} |"
        rows.append(row)
        print(row, flush=True)
    table = "\n".join([f"| engine | n_test | {task.title} {task.metric.name} % [95% CI] | vs PyTorch, paired "
                       f"[95% CI] | right/wrong flips |", "|---|---|---|---|---|", *rows])
    (args.out / "export_accuracy.md").write_text(table + "\n")
    print(f"\n{table}\n(written to {args.out / 'export_accuracy.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
