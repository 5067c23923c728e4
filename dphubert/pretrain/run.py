"""``python -m dphubert.bin.pretrain_hubert``'s body: config, data, k-means targets, then the shared Trainer.

Everything around the step is the distillation methods' (``dphubert.distill.trainer``): AdamW with warmup +
linear decay, gradient clipping and accumulation, AMP, DDP under torchrun, per-batch re-seeding (exact resume
from ``<exp>/checkpoints/``), ``train.log``, ``tensorboard/``, ``training.png`` and ``last.pt``. Here: the
config (``pretrain_hubert`` keys of ``dphubert.distill.config``), the frame labels (``targets``; cached in
``<exp>/pretrain_labels.pt``, computed by rank 0), the task (``task.MaskedPredictionTask``) and, at the end,
the teacher file ``--out`` (a normal model file with a ``pretrain`` summary: steps, accuracies, chance).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from dphubert.distill.cli import load_data, log_batch_scaling, start_run
from dphubert.distill.config import load_config, overrides_from_args, write_config
from dphubert.distill.distributed import barrier
from dphubert.distill.trainer import Trainer
from dphubert.models import save_model

from .targets import FRAME_SAMPLES, LabelTargets, assign_labels, cluster_stats, load_or_compute_labels
from .task import MaskedPredictionTask

METHOD = "pretrain_hubert"
LABELS_NAME = "pretrain_labels.pt"
CONF_PATH = Path(__file__).resolve().parents[1] / "distill" / "conf" / f"{METHOD}.yaml"


def exp_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.exp) if args.exp else Path(args.out).parent


def run_pretraining(args: argparse.Namespace, argv: Optional[List[str]]) -> Dict[str, Any]:
    """Pretrain, write ``args.out``; returns the ``pretrain`` summary stored in it (rank 0; {} elsewhere)."""
    cfg = load_config(METHOD, args.config or CONF_PATH, overrides_from_args(args, METHOD))
    exp_dir = exp_dir_of(args)
    env, resume, log, command = start_run(METHOD, args, exp_dir, argv)
    log_batch_scaling(cfg, env)

    train_set = load_data(args.data, cfg, args, exp_dir / "skipped.txt" if env.is_main else None)
    valid_set = load_data(args.valid, cfg, args, None) if args.valid else None
    minutes = sum(train_set.lengths) / 16000 / 60
    log.info("%s: %d utterances, %.1f min of audio", args.data, len(train_set.utt_ids), minutes)
    labels_path = exp_dir / LABELS_NAME
    if env.is_main:  # one k-means; the other ranks read its file
        targets = load_or_compute_labels(train_set, cfg, labels_path)
    barrier(env)
    if not env.is_main:
        targets = torch.load(labels_path, map_location="cpu", weights_only=True)
    labels = dict(targets["labels"])
    if valid_set is not None:  # the dev set's frames under the training set's k-means
        labels.update(assign_labels(valid_set, targets))
    used, chance = cluster_stats(targets["labels"], cfg["num_clusters"])
    log.info("targets: %d of %d clusters in use; chance accuracy (most frequent cluster) %.1f%%",
             used, cfg["num_clusters"], 100 * chance)

    torch.manual_seed(cfg["seed"])  # model initialisation
    info = {"data": str(args.data), "minutes": minutes, "num_clusters": cfg["num_clusters"],
            "chance_accuracy": chance, "unmasked_weight": cfg["unmasked_weight"]}
    task = MaskedPredictionTask(cfg, info)
    if env.is_main:
        write_config(cfg, exp_dir / "config.yaml", header=command)
    log.info("model: %.2fM params (encoder), %d layers x %d dims; %d steps, batches of <= %g s",
             task.student.num_params() / 1e6, cfg["num_layers"], cfg["embed_dim"], cfg["max_steps"],
             cfg["batch_seconds"])
    source = LabelTargets(labels)
    trainer = Trainer(task, source, cfg, exp_dir, env, train_set, FRAME_SAMPLES, valid_set=valid_set,
                      valid_teacher=source if valid_set is not None else None)
    trainer.fit(resume=resume)
    if not env.is_main:
        return {}
    last = trainer.history[-1] if trainer.history else {}
    info.update(steps=trainer.step, **{k: last[k] for k in ("loss", "masked_accuracy", "unmasked_accuracy")
                                       if k in last})
    save_model(task.student.eval(), args.out, {"pretrain": info})
    log.info("wrote the teacher to %s (%.2fM params) after %d steps: masked accuracy %.3f (chance %.3f)", args.out,
             task.student.num_params() / 1e6, trainer.step, info.get("masked_accuracy", float("nan")), chance)
    return info

