"""Command-line plumbing shared by the training CLIs (distill_prune, final_distill, distilhubert).

``training_parser`` adds the common options; ``run_training`` does everything but building the task: config,
torchrun environment, logging, teacher, data (with the bad-audio check), teacher targets (online or dumped),
``exp/<tag>/config.yaml``, then the shared ``Trainer``. ``run_cli`` turns the package's errors into one
``<prog>: error: <message>`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from dphubert.data import AudioDataset, AudioError, DataDirError, check_audio
from dphubert.models import CheckpointError, ConfigError, PruningError, Wav2Vec2Model
from dphubert.user_options import cli_names

from .config import add_config_arguments, load_config, overrides_from_args, write_config
from .distributed import (DistEnv, any_rank, check_same_inputs, data_digest, exit_worker, model_digest,
                          note_training_agents, resumes_after_restart, setup_distributed, teardown_distributed)
from .errors import DistillError, TeacherMismatchError
from .report import LOGGER_NAME, setup_logging
from .students import load_teacher
from .tasks import DistillTask
from .teacher import DumpedTeacher, OnlineTeacher, TeacherFeatureReader, frame_stride
from .trainer import Trainer, check_fresh_experiment

CONF_DIR = Path(__file__).resolve().parent / "conf"
USER_ERRORS = (DistillError, CheckpointError, ConfigError, DataDirError, AudioError, PruningError)


def default_config_path(method: str) -> Path:
    return CONF_DIR / f"{method}.yaml"


def training_parser(method: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m dphubert.bin.{method}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help=f"YAML config (default: the packaged {default_config_path(method).name})")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model file (dphubert format)")
    parser.add_argument("--data", type=Path, required=True, help="training Kaldi data dir (wav.scp ...)")
    parser.add_argument("--valid", type=Path, default=None, help="validation data dir (optional)")
    parser.add_argument("--exp", type=Path, required=True, help="experiment dir for checkpoints, logs and last.pt")
    parser.add_argument("--teacher-feats", type=Path, default=None,
                        help="read teacher targets from a dump of python -m dphubert.bin.dump_teacher "
                             "instead of running the teacher")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --exp")
    parser.add_argument("--skip-bad-audio", action="store_true",
                        help="drop unreadable/empty utterances (listed in exp/<tag>/skipped.txt) instead of failing")
    parser.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz instead of failing")
    parser.add_argument("--downmix", action="store_true", help="average multi-channel audio instead of failing")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA (the LOCAL_RANK-th GPU) when available, else CPU")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow model files that need arbitrary unpickling (only for trusted files)")
    add_config_arguments(parser, method)
    return parser


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]], prog: str) -> int:
    """Run ``main``; a user error becomes one line and status 1. A torchrun worker ends here (``exit_worker``)."""
    status = 0
    try:
        with cli_names():  # error messages name this CLI's flags
            main(argv)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        status = 1
    finally:
        was_worker = teardown_distributed()
    if was_worker:
        exit_worker(status)
    return status


def check_teacher_student(teacher: Wav2Vec2Model, student: Wav2Vec2Model, layers: List[int],
                          student_layers: Optional[List[int]] = None) -> None:
    """Frames must align and the distilled layers must exist on both sides."""
    t_conv = [c[1:] for c in teacher.config["extractor_conv_layer_config"]]
    s_conv = [c[1:] for c in student.config["extractor_conv_layer_config"]]
    if t_conv != s_conv:
        raise TeacherMismatchError(f"teacher CNN (kernel, stride) {t_conv} and student CNN {s_conv} differ: "
                                   f"their frames would not align")
    if max(layers) > teacher.num_layers:
        raise TeacherMismatchError(f"distilled layers {layers} need a teacher with >= {max(layers)} layers, "
                                   f"the teacher has {teacher.num_layers} (hidden states {teacher.num_layers + 1} "
                                   f"x (frames, {teacher.config['encoder_embed_dim']}))")
    student_layers = layers if student_layers is None else student_layers
    if max(student_layers) > student.num_layers:
        raise TeacherMismatchError(f"student layers {student_layers} need a student with >= {max(student_layers)} "
                                   f"layers, it has {student.num_layers}")


def load_data(path: Path, cfg: Dict[str, Any], args: argparse.Namespace, skipped: Optional[Path]) -> AudioDataset:
    skip_bad = args.skip_bad_audio
    dataset = AudioDataset(path, min_seconds=cfg["min_seconds"], max_seconds=cfg["max_seconds"],
                           resample=args.resample, downmix=args.downmix)
    check_audio(dataset, skip_bad=skip_bad, skipped_path=skipped)
    if not dataset.utt_ids:
        raise AudioError(f"{path}: no usable utterance of {cfg['min_seconds']}-{cfg['max_seconds']} s")
    return dataset


def start_run(method: str, args: argparse.Namespace, exp_dir: Path, argv: Optional[List[str]]
              ) -> Tuple[DistEnv, bool, logging.Logger, str]:
    """What every training CLI does first: processes, the resume decision, ``train.log`` and the command line.

    Returns (env, resume, logger, the command as typed).
    """
    env: DistEnv = setup_distributed(args.device)
    # Workers that torchrun restarted after a lost worker (--max_restarts) resume the run they belong to.
    restarted = resumes_after_restart(exp_dir, env)
    resume = any_rank(args.resume, env) or restarted
    if not resume:
        check_fresh_experiment(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    note_training_agents(exp_dir, env)
    log = setup_logging(exp_dir, env.is_main, env.rank)
    command = f"python -m dphubert.bin.{method} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log.info("%s (rank %d of %d, %s)", command, env.rank, env.world_size, env.device)
    if restarted and not args.resume:
        log.info("torchrun restarted the workers (--max_restarts): resuming from the last checkpoint in %s",
                 exp_dir / "checkpoints")
    return env, resume, log, command


def log_batch_scaling(cfg: Dict[str, Any], env: DistEnv) -> None:
    """Say at start what the process count changes: the global batch, not the per-process batch or the lr."""
    per_step = cfg["batch_seconds"] * cfg["accum_grad"]
    logging.getLogger(LOGGER_NAME).info(
        "batch: %g s of audio per process (batch_seconds) x %d accumulated (accum_grad) x %d processes (%d node%s x "
        "%d) = %g s per optimizer step; batch_seconds, accum_grad and lr (%g) are used as configured whatever the "
        "process count, so the global batch grows with it", cfg["batch_seconds"], cfg["accum_grad"], env.world_size,
        env.num_nodes, "s" if env.num_nodes > 1 else "", env.local_world_size, per_step * env.world_size, cfg["lr"])


def run_training(args: argparse.Namespace, method: str,
                 build_task: Callable[[Dict[str, Any], Wav2Vec2Model, argparse.Namespace], DistillTask],
                 argv: Optional[List[str]]) -> Tuple[Optional[Path], DistillTask]:
    """The common body of the training CLIs; ``build_task(cfg, teacher, args)`` makes the method's task.

    Returns the model file written (rank 0; None on other ranks) and the trained task.
    """
    cfg = load_config(method, args.config or default_config_path(method), overrides_from_args(args, method))
    exp_dir = Path(args.exp)
    env, resume, log, command = start_run(method, args, exp_dir, argv)
    log_batch_scaling(cfg, env)

    teacher = load_teacher(args.teacher, args.trust_checkpoint)
    torch.manual_seed(cfg["seed"])  # gate and head initialisation
    task = build_task(cfg, teacher, args)
    stride = frame_stride(teacher)

    is_main = env.is_main
    train_set = load_data(args.data, cfg, args, exp_dir / "skipped.txt" if is_main else None)
    valid_set = None
    if args.valid is not None:
        valid_set = load_data(args.valid, cfg, args, exp_dir / "skipped_valid.txt" if is_main else None)
    online = OnlineTeacher(teacher, task.teacher_layers, task.layer0, cfg["teacher_precision"])
    if args.teacher_feats is not None:
        reader = TeacherFeatureReader(args.teacher_feats)
        reader.check_compatible(task.teacher_layers, teacher.config["encoder_embed_dim"], stride, train_set.utt_ids,
                                task.layer0)
        targets = DumpedTeacher(reader, task.teacher_layers)
    else:
        targets = online
    teacher_digest = model_digest(teacher, teacher.config)
    if env.distributed:  # every rank must train on the same config, models and data, in one shared exp dir
        check_same_inputs(env, exp_dir, cfg, {
            "teacher": teacher_digest,
            "student": model_digest(task, {}),
            f"training data ({args.data})": data_digest(train_set.utt_ids, train_set.lengths),
            f"validation data ({args.valid})": data_digest(valid_set.utt_ids, valid_set.lengths) if valid_set else "",
        })
    if is_main:
        write_config(cfg, exp_dir / "config.yaml", header=command)
    log.info("training on %d utterances%s; teacher %s (%s params), student %s params", len(train_set.utt_ids),
             f", validating on {len(valid_set.utt_ids)}" if valid_set else "", args.teacher,
             f"{teacher.num_params():,}", f"{task.student.num_params():,}")
    trainer = Trainer(task, targets, cfg, exp_dir, env, train_set, stride, valid_set=valid_set,
                      valid_teacher=online if valid_set is not None else None,
                      inputs={"teacher": {"path": str(args.teacher), "digest": teacher_digest[:16]}})
    return trainer.fit(resume=resume), task
