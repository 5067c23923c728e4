"""Dump teacher hidden states for distillation with ``--teacher-feats`` (saves the teacher's forward pass).

Usage::

    python -m dphubert.bin.dump_teacher --teacher teacher.pt --data data/train \\
        --config conf/distill_prune.yaml --out dump/teacher/train [--device cuda] [--skip-bad-audio]
    python -m dphubert.bin.dump_teacher ... --layers 0,4,8,12 [--layer0 projection]     # without a config

Writes ``<out>/feats.ark`` + ``<out>/feats.scp`` (kaldiio; float16 ``(frames, dim)`` matrices keyed
``<utt>-L<layer>``), ``<out>/meta.yaml`` and, with ``--skip-bad-audio``, ``<out>/skipped.txt``. Re-running the
same command resumes: utterances already complete in ``feats.scp`` are skipped. Each utterance is run whole;
training crops pick their frames by offset (see ``dphubert.distill.teacher``).

The layers and the meaning of layer 0 are those Step 1 distils: with ``--config`` (the Step-1 YAML of
``distill_prune``), its ``distill_layers`` (null: 0 and every third of the teacher's depth) and ``layer0``; an
explicit ``--layers`` must then cover them and ``--layer0`` equal it, else the dump stops before reading any
audio. Without ``--config``: ``--layers`` (default: 0 and every third of the depth) and ``--layer0``.
Space: frames x dim x 2 bytes per layer (HuBERT Base, 4 layers: ~300 MB per hour).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from dphubert.distill.cli import run_cli
from dphubert.distill.config import METHOD_DEFAULTS, load_config
from dphubert.distill.errors import DistillConfigError
from dphubert.distill.projections import default_distill_layers, resolve_layers_and_groups
from dphubert.distill.report import setup_logging
from dphubert.distill.students import load_teacher
from dphubert.distill.teacher import dump_teacher_features
from dphubert.models.model import LAYER0_CHOICES
from dphubert.user_options import fix_option

PROG = "python -m dphubert.bin.dump_teacher"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model file")
    parser.add_argument("--data", type=Path, required=True, help="Kaldi data dir")
    parser.add_argument("--out", type=Path, required=True, help="output dir (resumed if it exists)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the Step-1 config (distill_prune YAML): dump its distill_layers with its layer0")
    parser.add_argument("--layers", default=None,
                        help="comma-separated hidden-state indices, e.g. 0,4,8,12 (with --config: checked to "
                             "cover the config's; default: the config's, else 0 and every third of the depth)")
    parser.add_argument("--layer0", default=None, choices=LAYER0_CHOICES,
                        help="what state 0 is (with --config: checked against the config's; default: the "
                             "config's, else distill_prune's default, projection)")
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


def layers_to_dump(args: argparse.Namespace, num_layers: int) -> Tuple[List[int], str]:
    """The layers and layer0 to dump: the Step-1 config's (``--config``), an explicit choice checked against it."""
    layers = parse_layers(args.layers) if args.layers else None
    if args.config is None:
        return layers or default_distill_layers(num_layers), args.layer0 or METHOD_DEFAULTS["distill_prune"]["layer0"]
    cfg = load_config("distill_prune", args.config)
    distilled, _ = resolve_layers_and_groups(cfg["distill_layers"], cfg["projection_groups"], num_layers,
                                             str(args.config))
    if layers is not None and not set(distilled) <= set(layers):
        missing = sorted(set(distilled) - set(layers))
        why = " (distill_layers: null, i.e. 0 and every third of the depth)" if cfg["distill_layers"] is None else ""
        raise DistillConfigError(f"{fix_option('dump_layers')} {args.layers} lacks layers {missing}: {args.config} "
                                 f"distils layers {distilled} of this {num_layers}-layer teacher{why}; drop the "
                                 f"option to dump the config's layers")
    if args.layer0 is not None and args.layer0 != cfg["layer0"]:
        raise DistillConfigError(f"--layer0 {args.layer0} but {args.config} has layer0: {cfg['layer0']}; drop "
                                 f"--layer0 (the config's is dumped)")
    return layers or distilled, cfg["layer0"]


def _main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    log = setup_logging(None, True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DistillConfigError("--device cuda: no CUDA device is available; use --device cpu")
    teacher = load_teacher(args.teacher, args.trust_checkpoint)
    layers, layer0 = layers_to_dump(args, teacher.num_layers)
    log.info("dumping teacher layers %s (layer 0: %s)%s", layers, layer0,
             f" as {args.config} distils them" if args.config else "")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    counts = dump_teacher_features(teacher, args.data, layers, args.out, teacher_path=str(args.teacher),
                                   device=device, skip_bad_audio=args.skip_bad_audio, resample=args.resample,
                                   downmix=args.downmix, layer0=layer0)
    log.info("%s: %d utterances dumped, %d already done, %d skipped (bad audio); layers %s", args.out,
             counts["written"], counts["skipped_done"], counts["bad"], layers)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
