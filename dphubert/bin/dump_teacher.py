"""Dump teacher hidden states for distillation with ``--teacher-feats`` (saves the teacher's forward pass).

Usage::

    python -m dphubert.bin.dump_teacher --teacher teacher.pt --data data/train --layers 0,4,8,12 \\
        --out dump/teacher/train [--device cuda] [--skip-bad-audio] [--layer0 projection]

Writes ``<out>/feats.ark`` + ``<out>/feats.scp`` (kaldiio; float16 ``(frames, dim)`` matrices keyed
``<utt>-L<layer>``), ``<out>/meta.yaml`` and, with ``--skip-bad-audio``, ``<out>/skipped.txt``. Re-running the
same command resumes: utterances already complete in ``feats.scp`` are skipped. Each utterance is run whole;
training crops pick their frames by offset (see ``dphubert.distill.teacher``). Default layers: 0 and every third
of the teacher's depth. Space: frames x dim x 2 bytes per layer (HuBERT Base, 4 layers: ~300 MB per hour).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from dphubert.distill.cli import run_cli
from dphubert.distill.errors import DistillConfigError
from dphubert.distill.projections import default_distill_layers
from dphubert.distill.report import setup_logging
from dphubert.distill.students import load_teacher
from dphubert.distill.teacher import dump_teacher_features
from dphubert.models.model import LAYER0_CHOICES

PROG = "python -m dphubert.bin.dump_teacher"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model file")
    parser.add_argument("--data", type=Path, required=True, help="Kaldi data dir")
    parser.add_argument("--out", type=Path, required=True, help="output dir (resumed if it exists)")
    parser.add_argument("--layers", default=None, help="comma-separated hidden-state indices, e.g. 0,4,8,12")
    parser.add_argument("--layer0", default="transformer_input", choices=LAYER0_CHOICES,
                        help="what state 0 is; must equal the training config's layer0 (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--skip-bad-audio", action="store_true", help="skip unreadable/empty utterances")
    parser.add_argument("--resample", action="store_true", help="resample non-16 kHz audio instead of failing")
    parser.add_argument("--downmix", action="store_true", help="average multi-channel audio instead of failing")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary unpickling (trusted files)")
    return parser


def parse_layers(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DistillConfigError(f"--layers must be comma-separated integers like 0,4,8,12, got {text!r}") from None


def _main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    log = setup_logging(None, True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DistillConfigError("--device cuda: no CUDA device is available; use --device cpu")
    teacher = load_teacher(args.teacher, args.trust_checkpoint)
    layers = parse_layers(args.layers) if args.layers else default_distill_layers(teacher.num_layers)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    counts = dump_teacher_features(teacher, args.data, layers, args.out, teacher_path=str(args.teacher),
                                   device=device, skip_bad_audio=args.skip_bad_audio, resample=args.resample,
                                   downmix=args.downmix, layer0=args.layer0)
    log.info("%s: %d utterances dumped, %d already done, %d skipped (bad audio); layers %s", args.out,
             counts["written"], counts["skipped_done"], counts["bad"], layers)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
