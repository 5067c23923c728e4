"""The training loop shared by distill_prune, final_distill, distilhubert and pretrain_hubert.

Plain PyTorch: AdamW over the task's parameter groups, one warmup + linear-decay LambdaLR for all groups,
gradient accumulation, clipping of the global norm, AMP on CUDA (fp16 with a GradScaler, or bf16), DDP under
torchrun (gloo on CPU, NCCL on GPU).

Exact resuming: every micro-batch re-seeds torch's generator from ``(seed, epoch, global batch index)``, the batch
order and crops come from the same numbers (see dphubert.data), and a checkpoint holds the task (student, gates,
projections, lambdas), optimizer, scheduler, scaler, sampler position, every rank's RNG states and the log
history. A run killed at any moment and resumed with ``--resume`` ends with the same weights as an uninterrupted
run (bit for bit on CPU).

Files under ``exp/<tag>/``: ``checkpoints/ckpt_step<N>.pt`` (atomic writes, every ``save_interval`` steps and at
the end, the last ``keep_checkpoints`` kept), ``last.pt`` (the model file, at the end), ``train.log``,
``tensorboard/``, ``training.png``.

Failure behaviour: a NaN/inf loss, or NaN/inf weights at a save point, stops the run (NonFiniteLossError naming
the step) without writing anything more, so the last checkpoint stays the last good one. With ``defer_host_sync``
(the default) the loss terms stay on the device and are read, and checked for NaN/inf, only at log, validation and
save points (no per-step host sync); the run then stops at the next such point, before anything is written after
the bad step.

Speed options (config keys, docs/training.md "Speed options"): ``defer_host_sync``, ``fused_adamw``, ``compile_layers`` (here)
and ``teacher_precision`` (``OnlineTeacher``). ``timer`` (``dphubert.distill.timing.PhaseTimer``) splits each step
into data, teacher, student (forward + backward), optimizer and logging time, for bench/gpu_train_speed.py.

For tests, the environment variable ``DPHUBERT_CRASH_AFTER_STEP=k`` makes the process die abruptly (``os._exit``)
right after optimizer step ``k`` (with ``DPHUBERT_CRASH_RANK=r``: only rank ``r``). It fires once per experiment
dir (it leaves ``exp/<tag>/.crash_hook_fired``), so that a run that torchrun restarts (``--max_restarts``) can finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dphubert.data import AudioDataset, BucketBatchSampler, CropCollator, make_dataloader
from dphubert.models import atomic_save

from .distributed import DistEnv, all_reduce_mean, all_reduce_sum, all_true, barrier, gather_objects
from .errors import DistillConfigError, NonFiniteLossError, ResumeError
from .report import LOGGER_NAME, TensorBoard, plot_history
from .tasks import DistillTask
from .teacher import OnlineTeacher
from .timing import NullTimer

logger = logging.getLogger(f"{LOGGER_NAME}.trainer")

CRASH_ENV = "DPHUBERT_CRASH_AFTER_STEP"
CRASH_RANK_ENV = "DPHUBERT_CRASH_RANK"
CRASH_MARKER = ".crash_hook_fired"
CHECKPOINT_FORMAT = "dphubert-train"
_CKPT_NAME = re.compile(r"^ckpt_step(\d+)\.pt$")

TeacherFn = Callable[[dict, torch.Tensor, int], List[torch.Tensor]]

# Config keys that define what the student learns: a resume with another value would train toward another target,
# so it is refused. Other keys (schedule, batch, bookkeeping) may change on resume, with a warning.
TARGET_KEYS = ("budget", "target_sparsity", "macs_target_sparsity", "sparsity_warmup_steps", "prune_units",
               "distill_layers", "layer0", "projection_groups", "pred_layers", "num_layers", "ffn_width",
               "target_params", "l1_weight", "cos_weight", "l2_weight", "cos_type", "student_overrides")


class WarmupLinearDecay:
    """LR factor of optimizer step ``s`` (0-based): linear up to 1 over ``warmup`` steps, then linear to 0."""

    def __init__(self, warmup_steps: int, max_steps: int):
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, (self.max_steps - step) / max(1, self.max_steps - self.warmup_steps))


def batch_seed(seed: int, epoch: int, global_index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, global_index]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def crash_step(rank: int, exp_dir: Path) -> int:
    """The step after which the test hook kills this process (0: never); see the module docstring."""
    crash_rank = os.environ.get(CRASH_RANK_ENV, "")
    if (crash_rank != "" and int(crash_rank) != rank) or (exp_dir / CRASH_MARKER).exists():
        return 0
    return int(os.environ.get(CRASH_ENV, "0") or 0)


def crash(exp_dir: Path) -> None:
    (exp_dir / CRASH_MARKER).touch()
    os._exit(75)  # die like a killed process, without cleanup


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Checkpoints sorted by step (oldest first)."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def check_fresh_experiment(exp_dir: Path) -> None:
    """Refuse to start a new run over the checkpoints of an earlier one."""
    existing = list_checkpoints(Path(exp_dir) / "checkpoints")
    if existing:
        raise ResumeError(f"{exp_dir}: holds checkpoints of an earlier run ({existing[-1].name}); pass --resume to "
                          f"continue it, or use another --exp / delete the directory")


class NonFiniteWatch:
    """Remembers on the device the first step whose loss was not finite, so that checking it needs no host sync."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.utt_ids: Dict[int, List[str]] = {}  # step -> the first utterances of its batch, since the last check

    def note(self, loss: torch.Tensor, step: int, utt_ids: List[str]) -> None:
        newly_bad = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss.float(), self.bad_loss)
        self.utt_ids.setdefault(step, list(utt_ids[:4]))

    def read(self) -> Optional[Dict[str, Any]]:
        """``{"step", "loss", "utt_ids"}`` of the first non-finite loss since training began, or None (a host sync)."""
        step = int(self.first_bad)
        found = {"step": step, "loss": float(self.bad_loss), "utt_ids": self.utt_ids.get(step, [])} if step else None
        self.utt_ids.clear()
        return found


def compile_encoder_layers(model: torch.nn.Module, backend: str) -> None:
    """``torch.compile`` every encoder layer in place (the state-dict keys stay as they are).

    ``dynamic=True``: every batch has another (items, frames) shape; one graph for all of them instead of a
    recompilation per new shape."""
    for layer in model.encoder.transformer.layers:
        layer.compile(backend=backend, dynamic=True)


class Trainer:
    def __init__(self, task: DistillTask, teacher: TeacherFn, cfg: Dict[str, Any], exp_dir: Path, env: DistEnv,
                 train_set: AudioDataset, crop_multiple: int, valid_set: Optional[AudioDataset] = None,
                 valid_teacher: Optional[TeacherFn] = None, inputs: Optional[Dict[str, Dict[str, str]]] = None,
                 timer=None):
        self.cfg = cfg
        # What a resume must find unchanged besides the task, e.g. {"teacher": {"path": ..., "digest": ...}}.
        self.inputs = inputs or {}
        self.timer = timer or NullTimer()  # see the module docstring
        self.env = env
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.device = env.device
        if cfg["amp"] == "fp16" and self.device.type != "cuda":
            raise DistillConfigError(f"amp fp16 needs a CUDA device (this run is on {self.device}); pass --amp bf16 "
                                     f"or --amp none (or set amp: in the --config file)")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg["amp"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")

        self.task = task.to(self.device)
        self.teacher = teacher.to(self.device)
        self.valid_teacher = valid_teacher.to(self.device) if valid_teacher is not None else None
        if cfg["compile_layers"]:
            compile_encoder_layers(task.student, cfg["compile_layers"])
            if isinstance(teacher, OnlineTeacher):
                compile_encoder_layers(teacher.model, cfg["compile_layers"])
            if isinstance(valid_teacher, OnlineTeacher) and valid_teacher is not teacher:
                compile_encoder_layers(valid_teacher.model, cfg["compile_layers"])
        self.model = task
        if env.distributed:
            self.model = DistributedDataParallel(
                task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not task.uses_all_parameters())
        self.optimizer = torch.optim.AdamW(task.param_groups(cfg), lr=cfg["lr"], betas=tuple(cfg["adam_betas"]),
                                           eps=cfg["adam_eps"], fused=cfg["fused_adamw"] or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupLinearDecay(cfg["warmup_steps"], cfg["max_steps"]))
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

        self.sampler = BucketBatchSampler(train_set.lengths, cfg["batch_seconds"], cfg["num_buckets"],
                                          seed=cfg["seed"], rank=env.rank, world_size=env.world_size)
        self.loader = make_dataloader(train_set, self.sampler, CropCollator(crop_multiple, cfg["seed"]),
                                      num_workers=cfg["num_workers"], pin_memory=self.device.type == "cuda")
        self.valid_loader = None
        if valid_set is not None:
            valid_sampler = BucketBatchSampler(valid_set.lengths, cfg["batch_seconds"], None, shuffle=False,
                                               seed=cfg["seed"], rank=env.rank, world_size=env.world_size)
            self.valid_loader = make_dataloader(valid_set, valid_sampler, CropCollator(crop_multiple, cfg["seed"]),
                                                num_workers=min(cfg["num_workers"], 2))
        self.step = 0
        self.position: Optional[Dict[str, int]] = None  # sampler state after the last optimizer step
        self.history: List[Dict[str, float]] = []
        self.last_checkpoint: Optional[Path] = None
        self.nonfinite = NonFiniteWatch(self.device)

    # ----- public ---------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Optional[Path]:
        """Train to ``max_steps``; returns the model file ``exp/<tag>/last.pt`` (rank 0) or None."""
        resumed = self._resume() if resume else self._refuse_overwrite()
        cfg = self.cfg
        tensorboard = TensorBoard(self.exp_dir / "tensorboard", self.env.is_main,
                                  purge_step=self.step + 1 if resumed else None)
        bar = tqdm(total=cfg["max_steps"], initial=self.step, desc=f"{self.task.method}", unit="step",
                   disable=not self.env.is_main, dynamic_ncols=True)
        crash_after = crash_step(self.env.rank, self.exp_dir)
        sums: Dict[str, Any] = defaultdict(float)  # device tensors (float64) unless defer_host_sync is off
        steps_in_window = 0
        micro_batches = self._micro_batches()
        self.task.train()
        try:
            while self.step < cfg["max_steps"]:
                terms = self._train_step(micro_batches)
                self.step += 1
                if crash_after and self.step == crash_after:
                    crash(self.exp_dir)  # test hook
                with self.timer("logging"):
                    for key, value in terms.items():
                        sums[key] = sums[key] + value
                    steps_in_window += 1
                    bar.update(1)
                    if not cfg["defer_host_sync"]:
                        bar.set_postfix(_postfix(_read(terms)), refresh=False)
                    if self.step % cfg["log_interval"] == 0 or self.step == cfg["max_steps"]:
                        self._check_finite()
                        window = {k: v / steps_in_window for k, v in _read(sums).items()}
                        self._log(window, tensorboard)
                        bar.set_postfix(_postfix(window), refresh=False)
                        sums, steps_in_window = defaultdict(float), 0
                    if self.valid_loader is not None and (self.step % cfg["valid_interval"] == 0
                                                          or self.step == cfg["max_steps"]):
                        self._check_finite()
                        tensorboard.scalars("valid", self.validate(), self.step)
                    if self.step % cfg["save_interval"] == 0 and self.step < cfg["max_steps"]:
                        self._check_finite()
                        self._save_checkpoint()
                self.timer.end_step()
        finally:
            bar.close()
            tensorboard.close()
        self._check_finite()
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:08d}.pt"):
            self._save_checkpoint()
        model_path = None
        if self.env.is_main:
            model_path = self.exp_dir / "last.pt"
            atomic_save(self.task.model_file(), model_path)
            plot = plot_history(self.history, self.exp_dir / "training.png")
            logger.info("finished %d steps: model file %s%s", self.step, model_path,
                        f", curves {plot}" if plot else "")
        barrier(self.env)  # a rank tearing the process group down while another still works can abort gloo
        return model_path

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Mean loss terms over the validation set (all ranks together); the model is in eval mode meanwhile."""
        self.task.eval()
        sums: Dict[str, float] = defaultdict(float)
        count = 0
        teacher = self.valid_teacher or self.teacher
        for index, batch in enumerate(self.valid_loader):
            if self.cfg["valid_max_batches"] is not None and index >= self.cfg["valid_max_batches"]:
                break
            waveforms = batch["waveforms"].to(self.device)
            with self._autocast():
                targets = teacher(batch, waveforms, self.task.num_frames(waveforms.size(1)))
                out = self.task(waveforms, targets, self.step)
            for key in ("loss", "distill", "l1", "cos", "l2", "masked_accuracy", "unmasked_accuracy"):
                if key in out:
                    sums[key] += float(out[key])
            count += 1
        self.task.train()
        sums["count"] = count
        summed = all_reduce_sum(dict(sums), self.env)
        total = max(summed.pop("count"), 1)
        values = {k: v / total for k, v in summed.items()}
        logger.info("step %d valid: %s", self.step, _format(values))
        return values

    # ----- steps ----------------------------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[dict]:
        epoch = self.sampler.epoch
        while True:
            self.sampler.set_epoch(epoch)
            for batch in self.loader:
                yield batch
            epoch += 1

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, micro_batches: Iterator[dict]) -> Dict[str, Any]:
        """One optimizer step; returns its terms as float64 tensors on the device (floats without defer_host_sync)."""
        accum = self.cfg["accum_grad"]
        totals: Dict[str, Any] = defaultdict(float)
        for i in range(accum):
            with self.timer("data"):
                batch = next(micro_batches)
            sync = i == accum - 1
            context = self.model.no_sync() if self.env.distributed and not sync else contextlib.nullcontext()
            with context:
                out = self._forward(batch)
                with self.timer("student"):
                    self.scaler.scale(out["loss"] / accum).backward()
            for key, value in out.items():
                totals[key] = totals[key] + self._scalar(value) / accum
            self.position = {"epoch": int(batch["epoch"]), "position": int(batch["step"]) + 1,
                             "world_size": self.env.world_size, "seed": self.cfg["seed"]}
        with self.timer("optimizer"):
            self.scaler.unscale_(self.optimizer)
            if self.cfg["grad_clip"] is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg["grad_clip"])
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        totals["grad_norm"] = self._scalar(norm)
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        return totals

    def _scalar(self, value: torch.Tensor) -> Any:
        """A logged value: kept where it is (float64: sums as exact as Python's) or read now (a host sync)."""
        value = value.detach()
        return value.double() if self.cfg["defer_host_sync"] else float(value)

    def _forward(self, batch: dict) -> Dict[str, torch.Tensor]:
        global_index = int(batch["step"]) * self.env.world_size + self.env.rank
        torch.manual_seed(batch_seed(self.cfg["seed"], int(batch["epoch"]), global_index))
        waveforms = batch["waveforms"].to(self.device, non_blocking=True)
        with self._autocast():
            with self.timer("teacher"):
                targets = self.teacher(batch, waveforms, self.task.num_frames(waveforms.size(1)))
            with self.timer("student"):  # forward here, backward in _train_step
                out = self.model(waveforms, targets, self.step)
        loss = out["loss"]
        if self.cfg["defer_host_sync"]:
            self.nonfinite.note(loss.detach(), self.step + 1, batch["utt_ids"])  # checked by _check_finite
        elif not all_true(bool(torch.isfinite(loss.detach()).item()), self.env):
            last = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise NonFiniteLossError(
                f"step {self.step + 1}: the loss is not finite ({float(loss.detach()):.4g} on rank {self.env.rank}: "
                f"{', '.join(batch['utt_ids'][:4])}); training stopped, the last good checkpoint is {last}; "
                f"lower lr, check the audio, or use amp bf16/none and resume with --resume")
        return out

    def _check_finite(self) -> None:
        """Stop the run if a loss since the start was not finite (the deferred form of the check in _forward)."""
        found = self.nonfinite.read()
        if all_true(found is None, self.env):
            return
        found = dict(found, rank=self.env.rank) if found else None
        bad = min((f for f in gather_objects(found, self.env) if f), key=lambda f: f["step"])
        last = self.last_checkpoint or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"step {bad['step']}: the loss is not finite ({bad['loss']:.4g} on rank {bad['rank']}: "
            f"{', '.join(bad['utt_ids'])}); training stopped at step {self.step} before saving, the last good "
            f"checkpoint is {last}; lower lr, check the audio, or use amp bf16/none and resume with --resume")

    def _log(self, values: Dict[str, float], tensorboard: TensorBoard) -> None:
        values = all_reduce_mean(values, self.env)
        self.history.append(dict(values, step=self.step))
        tensorboard.scalars("train", values, self.step)
        logger.info("step %d/%d: %s", self.step, self.cfg["max_steps"], _format(values))

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def _refuse_overwrite(self) -> bool:
        check_fresh_experiment(self.exp_dir)
        return False

    def _check_weights_finite(self) -> None:
        """A diverging run can turn weights inf in an update whose loss was still finite (seen on AMD CPUs at
        lr 30): check them before they are saved, so that the last checkpoint stays a good one."""
        flags = [torch.isfinite(v).all() for v in self.task.state_dict().values() if v.is_floating_point()]
        finite = bool(torch.stack(flags).all()) if flags else True  # one host sync for all of them
        if all_true(finite, self.env):
            return
        last = self.last_checkpoint or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"step {self.step}: the weights are not finite after this step's update (training diverged); training "
            f"stopped at step {self.step} before saving, the last good checkpoint is {last}; lower lr, check the "
            f"audio, or use amp bf16/none and resume with --resume")

    def _save_checkpoint(self) -> None:
        self._check_weights_finite()
        states = gather_objects(rng_state(), self.env)
        if not self.env.is_main:
            self.last_checkpoint = self.ckpt_dir / f"ckpt_step{self.step:08d}.pt"
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT, "version": 1, "step": self.step, "describe": self.task.describe(),
            "task": {k: v.detach().cpu() for k, v in self.task.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "sampler": self.position, "rng": states,
            "history": self.history, "config": self.cfg, "inputs": self.inputs,
        }
        path = self.ckpt_dir / f"ckpt_step{self.step:08d}.pt"
        atomic_save(ckpt, path)
        self.last_checkpoint = path
        for old in list_checkpoints(self.ckpt_dir)[: -self.cfg["keep_checkpoints"]]:
            old.unlink()
        logger.info("step %d: saved %s", self.step, path)

    def _resume(self) -> bool:
        for stale in self.ckpt_dir.glob(".ckpt_step*.pt.tmp*") if self.ckpt_dir.is_dir() else []:
            stale.unlink(missing_ok=True)  # a save interrupted by a kill
        found = list_checkpoints(self.ckpt_dir)
        if not found:
            logger.info("--resume: no checkpoint in %s, starting from scratch", self.ckpt_dir)
            return False
        path = found[-1]
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt file: atomic saves make this unlikely, but say which one
            raise ResumeError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0]}); delete it to "
                              f"resume from the one before") from None
        if ckpt.get("describe") != self.task.describe():
            raise ResumeError(f"{path}: was written for another student/method "
                              f"({_diff(ckpt.get('describe'), self.task.describe())}); resume with the same "
                              f"teacher, student and options, or use another --exp")
        for name, now in self.inputs.items():
            before = (ckpt.get("inputs") or {}).get(name)
            if before is not None and before.get("digest") != now.get("digest"):
                raise ResumeError(f"{path}: was written with another {name} ({before.get('path')} "
                                  f"[{before.get('digest')}] -> {now.get('path')} [{now.get('digest')}]); resume "
                                  f"with the --{name} of that run, or use another --exp")
        changed = [k for k in self.cfg if ckpt["config"].get(k) != self.cfg[k]]
        targets = [k for k in changed if k in TARGET_KEYS]
        if targets:
            raise ResumeError(f"{path}: resuming would change what the run trains toward "
                              f"({_changes(ckpt['config'], self.cfg, targets)}); resume with the values of that run "
                              f"(its config.yaml), or use another --exp")
        if changed:
            logger.warning("resuming with changed config (%s): the run will differ from an uninterrupted one",
                           _changes(ckpt["config"], self.cfg, changed))
        self.task.load_state_dict(ckpt["task"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        try:
            self.sampler.load_state_dict(ckpt["sampler"])
        except ValueError as e:
            raise ResumeError(f"{path}: {e}") from None
        self.position = ckpt["sampler"]
        if len(ckpt["rng"]) == self.env.world_size:
            set_rng_state(ckpt["rng"][self.env.rank])
        self.step = int(ckpt["step"])
        self.history = list(ckpt["history"])
        self.last_checkpoint = path
        logger.info("resumed from %s (step %d)", path, self.step)
        return True


def _changes(old: Dict[str, Any], new: Dict[str, Any], keys: List[str]) -> str:
    """``key: old -> new`` for each key (values shortened)."""
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return ", ".join(f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in keys)


def _diff(old: Any, new: Any, prefix: str = "") -> str:
    """The differing entries of two descriptions as ``key: old -> new`` (nested dicts as ``a.b``)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "no description" if not prefix else _changes({prefix: old}, {prefix: new}, [prefix])
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        name = f"{prefix}{key}"
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            parts.append(_diff(old[key], new[key], name + "."))
        else:
            parts.append(_changes({name: old.get(key)}, {name: new.get(key)}, [name]))
    return ", ".join(parts)


def _read(values: Dict[str, Any]) -> Dict[str, float]:
    """Device tensors to floats: the one host sync of a log window."""
    return {k: float(v) for k, v in values.items()}


def _format(values: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))


def _postfix(terms: Dict[str, float]) -> Dict[str, str]:
    postfix = {"loss": f"{terms['loss']:.3f}"}
    if "expected_sparsity" in terms:  # expected/target of the constrained quantities (MACs: "macs")
        for key, name in (("", "sparsity"), ("_macs", "macs")):
            if f"target{key}_sparsity" in terms:
                postfix[name] = f"{terms[f'expected{key}_sparsity']:.3f}/{terms[f'target{key}_sparsity']:.3f}"
    return postfix
