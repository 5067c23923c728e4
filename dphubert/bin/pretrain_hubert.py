"""Pretrain a small HuBERT teacher: one iteration of HuBERT masked prediction of MFCC k-means clusters.

Usage::

    python -m dphubert.bin.pretrain_hubert --data data/train --out exp/teacher/teacher.pt \\
        [--config conf/pretrain_hubert.yaml] [--valid data/dev] [--exp DIR] [--resume] [--max-steps 400 ...]
    torchrun --nproc_per_node 4 -m dphubert.bin.pretrain_hubert ...        # DDP, one process per GPU

The demo recipe's stage 0: the toolkit needs a teacher, and no pretrained one can be downloaded offline.
Targets: k-means of MFCC frames (``dphubert.pretrain.targets``, cached in ``<exp>/pretrain_labels.pt``); model
and loss: ``dphubert.pretrain.task`` (span masking, cross-entropy on masked frames, ``unmasked_weight`` times
the one on unmasked frames); the loop is the shared trainer of the distillation methods, so exact resume
(``--resume``, from ``<exp>/checkpoints/``), DDP, AMP, ``train.log``, ``tensorboard/`` and ``training.png`` are
theirs. ``--exp`` defaults to the directory of ``--out``. Every config key is also an option
(``--num-layers 4``, ``--unmasked-weight 1.0``); the packaged defaults are dphubert/distill/conf/pretrain_hubert.yaml.

Writes ``--out``: a normal model file (``dphubert.models.load_model`` reads it; mask embedding and classifier are
not in it) with a ``pretrain`` summary (steps, masked / unmasked accuracy, the chance accuracy of always
guessing the most frequent cluster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from dphubert.distill.cli import run_cli
from dphubert.distill.config import add_config_arguments

METHOD = "pretrain_hubert"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m dphubert.bin.{METHOD}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="training Kaldi data dir (wav.scp, 16 kHz audio)")
    parser.add_argument("--out", type=Path, required=True, help="teacher model file to write")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the packaged one)")
    parser.add_argument("--valid", type=Path, default=None, help="validation data dir (masked accuracy on it)")
    parser.add_argument("--exp", type=Path, default=None, help="checkpoints, logs, labels [the dir of --out]")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --exp")
    parser.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz instead of failing")
    parser.add_argument("--downmix", action="store_true", help="average multi-channel audio instead of failing")
    parser.add_argument("--skip-bad-audio", action="store_true",
                        help="drop unreadable/empty utterances (listed in <exp>/skipped.txt) instead of failing")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA (the LOCAL_RANK-th GPU) when available, else CPU")
    add_config_arguments(parser, METHOD)
    return parser


def _main(argv: Optional[List[str]] = None) -> None:
    from dphubert.pretrain.run import run_pretraining

    run_pretraining(get_parser().parse_args(argv), argv)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv, f"python -m dphubert.bin.{METHOD}")


if __name__ == "__main__":
    sys.exit(main())
