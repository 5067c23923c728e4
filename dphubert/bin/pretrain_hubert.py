"""Pretrain a small HuBERT teacher: one iteration of HuBERT masked prediction of MFCC k-means clusters.

Usage::

    python -m dphubert.bin.pretrain_hubert --data data/train --out exp/teacher/teacher.pt \\
        [--config conf/pretrain_hubert.yaml] [--max-steps 400] [--minutes 4] [--resume] [--num-layers 4 ...]

The demo recipe's stage 0: the toolkit needs a teacher, and no pretrained one can be downloaded offline.

1. Targets: 13 Kaldi MFCCs + deltas + delta-deltas at 100 Hz, every other frame kept (50 Hz: frame j covers
   samples [320 j, 320 j + 400), as the model's CNN frame j does), standardised, clustered with k-means (k-means++
   init, Lloyd iterations on at most ``--kmeans-max-frames`` frames, fixed seed). The frame labels are cached in
   ``<out dir>/pretrain_labels.pt`` and reused when data, clusters and seed match.
2. Model: ``Wav2Vec2Model(base_config("hubert", <sizes>))`` plus a learned mask embedding and a plain linear
   classifier over the clusters (HuBERT uses cosine similarity with label embeddings; one linear layer is the
   simpler equivalent for a single target set). Span masking (``mask_prob * frames / mask_span`` spans of
   ``--mask-span`` frames at random starts, overlaps allowed, as in HuBERT) replaces feature-projection outputs by
   the mask embedding; cross-entropy on the masked frames only. The CNN gradient is scaled by ``--feature-grad-mult``.
3. Training: AdamW, linear warmup then linear decay to 0 at ``--max-steps``, gradient clipping, batches of
   ``--max-batch-seconds`` of audio bucketed by length and cropped to the shortest item. Every step reseeds
   from ``(seed, step)``, so a resumed run repeats an uninterrupted one. ``--minutes`` stops early (wall clock of
   this invocation, feature extraction and k-means included) and still writes the teacher.

Writes ``--out`` (a normal model file: ``dphubert.models.load_model`` reads it; mask embedding and classifier
are not in it), ``<out dir>/pretrain.log`` and ``<out dir>/pretrain_checkpoint.pt`` (atomic; ``--resume``
continues from it). Options can come from a YAML file (``--config``) whose keys are the option names with
underscores (``num_layers: 4``); command-line flags override it.

The defaults fit the demo: 4 x 256 encoder, 128-channel CNN, positional conv kernel 32 (3.6M params; HuBERT Base
has 512 channels and kernel 128, which at this width would make the unprunable CNN and positional conv a third
of the model), 50 clusters, 400 steps of 8 s batches. On the ~50 min demo training set with two CPU threads, features
+ k-means take ~5 s, a step ~0.14 s, and the masked accuracy rises from ~8% to ~20% (always guessing the most
frequent cluster: 9%) in about a minute; the demo's conf/pretrain_hubert.yaml runs 1000 steps (~21%, ~2 minutes).
"""

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from dphubert.data import (AudioDataset, AudioError, BucketBatchSampler, CropCollator, DataDirError, check_audio,
                           make_dataloader, read_audio)
from dphubert.models import Wav2Vec2Model, atomic_save, base_config, save_model
from dphubert.user_options import cli_names

FRAME_SAMPLES = 320  # the model's frame shift: 20 ms at 16 kHz
CHECKPOINT_NAME = "pretrain_checkpoint.pt"
LABELS_NAME = "pretrain_labels.pt"
LOG_NAME = "pretrain.log"
# Options a checkpoint can only be resumed with (model shape, targets, data order).
RESUME_MUST_MATCH = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "cnn_channels", "pos_conv_kernel",
                     "pos_conv_groups", "num_clusters", "seed", "max_batch_seconds", "num_buckets", "min_seconds",
                     "max_seconds")
LABELS_VERSION = 1  # bump when the feature recipe changes, so cached labels are recomputed

logger = logging.getLogger("pretrain_hubert")


class PretrainError(ValueError):
    """Bad options or state; the message names the option or file and the fix."""


# ----- options -------------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's layout and show every default."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="Kaldi data dir with wav.scp (16 kHz mono audio)")
    parser.add_argument("--out", required=True, help="teacher model file to write (e.g. exp/teacher/teacher.pt)")
    parser.add_argument("--config", help="YAML file of option defaults (keys: option names with underscores)")
    parser.add_argument("--resume", action="store_true", help=f"continue from <out dir>/{CHECKPOINT_NAME}")
    model = parser.add_argument_group("model (HuBERT Base layout, small sizes)")
    model.add_argument("--num-layers", type=int, default=4)
    model.add_argument("--embed-dim", type=int, default=256)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--ffn-dim", type=int, default=1024)
    model.add_argument("--cnn-channels", type=int, default=128, help="channels of each of the 7 CNN layers")
    model.add_argument("--pos-conv-kernel", type=int, default=32)
    model.add_argument("--pos-conv-groups", type=int, default=16)
    model.add_argument("--dropout", type=float, default=0.0,
                       help="encoder, attention and projection dropout (HuBERT: 0.1; 0 learns faster in short runs)")
    labels = parser.add_argument_group("targets")
    labels.add_argument("--num-clusters", type=int, default=50)
    labels.add_argument("--kmeans-iters", type=int, default=30)
    labels.add_argument("--kmeans-max-frames", type=int, default=100_000, help="frames k-means is fitted on")
    train = parser.add_argument_group("training")
    train.add_argument("--mask-prob", type=float, default=0.65)
    train.add_argument("--mask-span", type=int, default=10, help="frames per masked span")
    train.add_argument("--max-steps", type=int, default=400)
    train.add_argument("--minutes", type=float, default=None, help="stop after this wall-clock budget")
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--warmup-steps", type=int, default=40)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--grad-clip", type=float, default=10.0)
    train.add_argument("--feature-grad-mult", type=float, default=0.1, help="CNN gradient scale (HuBERT: 0.1)")
    train.add_argument("--max-batch-seconds", type=float, default=8.0)
    train.add_argument("--num-buckets", type=int, default=10)
    train.add_argument("--min-seconds", type=float, default=1.0, help="shorter utterances are left out")
    train.add_argument("--max-seconds", type=float, default=16.0, help="longer utterances are left out")
    train.add_argument("--skip-bad-audio", action="store_true", help="drop unreadable utterances instead of failing")
    train.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz instead of failing")
    train.add_argument("--downmix", action="store_true", help="average multi-channel audio instead of failing")
    train.add_argument("--num-workers", type=int, default=1, help="audio reading processes")
    train.add_argument("--num-threads", type=int, default=0, help="torch threads for training (0: torch's default)")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--log-every", type=int, default=25)
    train.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise PretrainError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise PretrainError(f"--config {path}: expected a mapping of option: value")
        known = {action.dest for action in parser._actions} - {"help", "config", "data", "out"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise PretrainError(f"--config {path}: unknown option(s) {unknown}; known: {sorted(known)}")
        parser.set_defaults(**loaded)
        args = parser.parse_args(argv)  # flags given on the command line win over the file
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    positive = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "cnn_channels", "pos_conv_kernel",
                "pos_conv_groups", "num_clusters", "kmeans_iters", "kmeans_max_frames", "mask_span", "max_steps",
                "max_batch_seconds", "log_every", "save_every", "lr")
    for name in positive:
        if getattr(args, name) <= 0:
            raise PretrainError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.embed_dim % args.num_heads or args.embed_dim % args.pos_conv_groups:
        raise PretrainError(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads} and "
                            f"--pos-conv-groups {args.pos_conv_groups}")
    if not 0.0 < args.mask_prob < 1.0:
        raise PretrainError(f"--mask-prob must be in (0, 1), got {args.mask_prob}")
    if args.minutes is not None and args.minutes <= 0:
        raise PretrainError(f"--minutes must be positive, got {args.minutes}")
    if args.num_clusters < 2:
        raise PretrainError(f"--num-clusters must be at least 2, got {args.num_clusters}")


def model_config(args: argparse.Namespace) -> Dict[str, Any]:
    c = args.cnn_channels
    return base_config(
        "hubert", extractor_conv_layer_config=[[c, 10, 5]] + [[c, 3, 2]] * 4 + [[c, 2, 2]] * 2,
        encoder_embed_dim=args.embed_dim, encoder_num_layers=args.num_layers, encoder_num_heads=args.num_heads,
        encoder_ff_interm_features=args.ffn_dim, encoder_pos_conv_kernel=args.pos_conv_kernel,
        encoder_pos_conv_groups=args.pos_conv_groups, encoder_projection_dropout=args.dropout,
        encoder_attention_dropout=args.dropout, encoder_dropout=args.dropout, encoder_layer_drop=0.0)


# ----- targets: MFCC -> k-means ------------------------------------------------------------------------------------
def mfcc_features(waveform: np.ndarray) -> Tensor:
    """(frames, 39) at 50 Hz: 13 MFCCs + deltas + delta-deltas, every other 100 Hz frame."""
    from torchaudio.compliance import kaldi
    from torchaudio.functional import compute_deltas

    # Kaldi's conventions assume 16-bit sample values; dither off for reproducibility.
    wav = torch.from_numpy(waveform).float()[None] * 32768.0
    mfcc = kaldi.mfcc(wav, sample_frequency=16000, use_energy=False, num_ceps=13, dither=0.0).T  # (13, frames)
    delta = compute_deltas(mfcc)
    feats = torch.cat([mfcc, delta, compute_deltas(delta)]).T
    return feats[::2].contiguous()


def kmeans(points: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """Centroids ``(k, dim)``: k-means++ initialisation, then Lloyd iterations; empty clusters are re-seeded."""
    n = points.size(0)
    centroids = points[torch.randint(n, (1,), generator=generator)]
    closest = torch.cdist(points, centroids).squeeze(1).square()
    for _ in range(1, k):
        pick = torch.multinomial(closest + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        closest = torch.minimum(closest, (points - points[pick]).square().sum(1))
    for _ in range(iters):
        assign = torch.cdist(points, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # move empty clusters to random points
            centroids[empty] = points[torch.randint(n, (int(empty.sum()),), generator=generator)]
    return centroids


def compute_labels(dataset: AudioDataset, args: argparse.Namespace) -> Dict[str, Any]:
    """Frame labels of every utterance of ``dataset`` (a dict ready to be cached)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-utterance MFCCs are tiny ops: extra threads only spin (10-100x slower)
    try:
        return _compute_labels(dataset, args)
    finally:
        torch.set_num_threads(threads)


def _compute_labels(dataset: AudioDataset, args: argparse.Namespace) -> Dict[str, Any]:
    features = {}
    for utt in tqdm(dataset.utt_ids, desc="MFCC", unit="utt", mininterval=2.0):
        features[utt] = mfcc_features(read_audio(dataset.data_dir, utt, resample=dataset.resample,
                                                 downmix=dataset.downmix))
    everything = torch.cat(list(features.values()))
    generator = torch.Generator().manual_seed(args.seed)
    if everything.size(0) < args.num_clusters:
        raise PretrainError(f"{args.data}: only {everything.size(0)} frames for --num-clusters {args.num_clusters}; "
                            f"use more data or fewer clusters")
    sample = everything[torch.randperm(everything.size(0), generator=generator)[:args.kmeans_max_frames]]
    mean, std = sample.mean(0), sample.std(0).clamp(min=1e-5)
    logger.info("k-means: %d clusters on %d of %d frames, %d iterations", args.num_clusters, sample.size(0),
                everything.size(0), args.kmeans_iters)
    centroids = kmeans((sample - mean) / std, args.num_clusters, args.kmeans_iters, generator)
    labels = {utt: torch.cdist((f - mean) / std, centroids).argmin(1).to(torch.int16) for utt, f in features.items()}
    return {"version": LABELS_VERSION, "utt_ids": list(dataset.utt_ids), "num_clusters": args.num_clusters,
            "seed": args.seed, "kmeans_iters": args.kmeans_iters, "kmeans_max_frames": args.kmeans_max_frames,
            "centroids": centroids, "mean": mean, "std": std, "labels": labels}


def load_or_compute_labels(dataset: AudioDataset, args: argparse.Namespace, path: Path) -> Dict[str, Any]:
    wanted = {"version": LABELS_VERSION, "utt_ids": list(dataset.utt_ids), "num_clusters": args.num_clusters,
              "seed": args.seed, "kmeans_iters": args.kmeans_iters, "kmeans_max_frames": args.kmeans_max_frames}
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if all(cached.get(key) == value for key, value in wanted.items()):
            logger.info("reusing the k-means labels of %s", path)
            return cached
        logger.info("%s was made for other data or options: recomputing the labels", path)
    result = compute_labels(dataset, args)
    atomic_save(result, path)
    return result


def cluster_stats(labels: Dict[str, Tensor], k: int) -> Tuple[int, float]:
    """Clusters in use and the frequency of the most common one (the accuracy of always guessing it)."""
    counts = torch.bincount(torch.cat([l.long() for l in labels.values()]), minlength=k)
    return int((counts > 0).sum()), float(counts.max() / counts.sum())


# ----- model -------------------------------------------------------------------------------------------------------
class MaskedPredictionModel(nn.Module):
    """The encoder plus what only pretraining needs: a mask embedding and a cluster classifier."""

    def __init__(self, config: Dict[str, Any], num_clusters: int, feature_grad_mult: float):
        super().__init__()
        self.encoder = Wav2Vec2Model(config)
        dim = config["encoder_embed_dim"]
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.classifier = nn.Linear(dim, num_clusters)
        self.feature_grad_mult = feature_grad_mult

    def forward(self, waveforms: Tensor, mask_prob: float, mask_span: int) -> Tuple[Tensor, Tensor]:
        """Cluster logits ``(batch, frames, clusters)`` and the mask ``(batch, frames)`` that was applied."""
        features, _ = self.encoder.feature_extractor(waveforms, None)
        if self.feature_grad_mult != 1.0:  # same value, gradient scaled (HuBERT's feature_grad_mult)
            features = features * self.feature_grad_mult + features.detach() * (1.0 - self.feature_grad_mult)
        x = self.encoder.encoder.feature_projection(features)
        mask = span_mask(x.size(0), x.size(1), mask_prob, mask_span)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        states = self.encoder.encoder.transformer(x, None)
        return self.classifier(states[-1]), mask


def span_mask(batch: int, frames: int, mask_prob: float, span: int) -> Tensor:
    """HuBERT/wav2vec 2.0 masking: ``mask_prob * frames / span`` random span starts per item (spans may overlap)."""
    span = min(span, frames)
    num_spans = max(1, int(mask_prob * frames / span + torch.rand(()).item()))
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for row in range(batch):
        starts = torch.randperm(frames - span + 1)[:num_spans]
        positions = (starts[:, None] + torch.arange(span)).reshape(-1)
        mask[row, positions] = True
    return mask


# ----- training ----------------------------------------------------------------------------------------------------
def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def batch_targets(batch: Dict[str, Any], labels: Dict[str, Tensor], frames: int) -> Tensor:
    """Labels ``(batch, n)`` of the cropped items, ``n <= frames`` (the CNN may yield a frame more than MFCC)."""
    starts = [offset // FRAME_SAMPLES for offset in batch["offsets"].tolist()]
    n = min([frames] + [len(labels[utt]) - start for utt, start in zip(batch["utt_ids"], starts)])
    return torch.stack([labels[utt][start:start + n].long() for utt, start in zip(batch["utt_ids"], starts)])


def setup_logging(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(out_dir / LOG_NAME), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    package_logger = logging.getLogger("dphubert")  # the data pipeline's messages go to the log too
    package_logger.setLevel(logging.INFO)
    package_logger.handlers.clear()
    for handler in logger.handlers:
        package_logger.addHandler(handler)


class Metrics:
    """Loss and masked / unmasked frame accuracy summed over the steps since the last log line."""

    def __init__(self):
        self.steps, self.loss = 0, 0.0
        self.correct = {True: 0, False: 0}  # key: masked?
        self.frames = {True: 0, False: 0}

    @torch.no_grad()
    def add(self, loss: Tensor, logits: Tensor, target: Tensor, mask: Tensor) -> None:
        self.steps += 1
        self.loss += loss.item()
        correct = logits.argmax(-1) == target
        for masked, where in ((True, mask), (False, ~mask)):
            self.correct[masked] += int(correct[where].sum())
            self.frames[masked] += int(where.sum())

    def summary(self) -> Dict[str, float]:
        nan = float("nan")
        return {"loss": self.loss / self.steps if self.steps else nan,
                "masked_accuracy": self.correct[True] / self.frames[True] if self.frames[True] else nan,
                "unmasked_accuracy": self.correct[False] / self.frames[False] if self.frames[False] else nan}


def save_checkpoint(path: Path, step: int, model, optimizer, scheduler, sampler_state, args) -> None:
    atomic_save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "sampler": sampler_state, "args": vars(args)}, path)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    out = Path(args.out)
    out_dir = out.parent
    started = time.monotonic()
    setup_logging(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if checkpoint_path.is_file() and not args.resume:
        raise PretrainError(f"{checkpoint_path} exists: pass --resume to continue it, or delete it to start over")
    logger.info("pretrain_hubert options: %s", vars(args))
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)

    try:
        dataset = AudioDataset(args.data, min_seconds=args.min_seconds, max_seconds=args.max_seconds, nj=2,
                               resample=args.resample, downmix=args.downmix)
    except (DataDirError, AudioError):
        raise
    except ValueError as error:  # e.g. no utterance within --min-seconds/--max-seconds
        raise PretrainError(str(error)) from None
    check_audio(dataset, skip_bad=args.skip_bad_audio, skipped_path=out_dir / "skipped_utts.txt", nj=2)
    hours = sum(dataset.lengths) / 16000 / 3600
    logger.info("%s: %d utterances, %.1f min of audio", args.data, len(dataset), 60 * hours)
    targets = load_or_compute_labels(dataset, args, out_dir / LABELS_NAME)
    used, chance = cluster_stats(targets["labels"], args.num_clusters)
    logger.info("targets: %d of %d clusters in use; chance accuracy (most frequent cluster) %.1f%%",
                used, args.num_clusters, 100 * chance)

    config = model_config(args)
    model = MaskedPredictionModel(config, args.num_clusters, args.feature_grad_mult)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.warmup_steps, args.max_steps))
    try:
        sampler = BucketBatchSampler(dataset.lengths, args.max_batch_seconds,
                                     num_buckets=min(args.num_buckets, len(dataset)), seed=args.seed)
    except ValueError as error:  # e.g. --max-batch-seconds shorter than the longest utterance
        raise PretrainError(str(error)) from None
    step = 0
    if args.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        changed = [f"--{k.replace('_', '-')} {state['args'].get(k)} -> {getattr(args, k)}" for k in RESUME_MUST_MATCH
                   if state["args"].get(k) != getattr(args, k)]
        if changed:
            raise PretrainError(f"{checkpoint_path} was made with other options ({', '.join(changed)}); use the "
                                f"same options to resume, or delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
        logger.info("resumed from step %d of %s", step, checkpoint_path)
    elif args.resume:
        logger.info("--resume: no %s yet, starting from step 0", checkpoint_path)
    logger.info("model: %.2fM params (encoder), %d layers x %d dims; %d steps, batches of <= %.0f s",
                model.encoder.num_params() / 1e6, args.num_layers, args.embed_dim, args.max_steps,
                args.max_batch_seconds)

    loader = make_dataloader(dataset, sampler, CropCollator(FRAME_SAMPLES, seed=args.seed),
                             num_workers=args.num_workers)
    deadline = None if args.minutes is None else started + 60 * args.minutes
    window, last = Metrics(), Metrics().summary()
    sampler_state = sampler.state_dict(consumed=sampler.state_dict()["position"])
    progress = tqdm(total=args.max_steps, initial=step, desc="pretrain", unit="step", mininterval=2.0)
    model.train()
    stopped_early = False
    while step < args.max_steps and not stopped_early:
        for batch in loader:
            torch.manual_seed(args.seed * 1_000_003 + step)  # dropout and masks depend on (seed, step) only
            logits, mask = model(batch["waveforms"], args.mask_prob, args.mask_span)
            target = batch_targets(batch, targets["labels"], logits.size(1))
            logits, mask = logits[:, :target.size(1)], mask[:, :target.size(1)]
            loss = F.cross_entropy(logits[mask], target[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            sampler_state = sampler.state_dict(consumed=batch["step"] + 1)
            window.add(loss, logits, target, mask)
            progress.update(1)
            if step % args.log_every == 0 or step == args.max_steps:
                last, window = window.summary(), Metrics()
                progress.set_postfix(loss=f"{last['loss']:.3f}", acc_m=f"{last['masked_accuracy']:.3f}")
                logger.info("step %d: loss %.4f, masked accuracy %.3f, unmasked accuracy %.3f (chance %.3f), lr %.2e",
                            step, last["loss"], last["masked_accuracy"], last["unmasked_accuracy"], chance,
                            scheduler.get_last_lr()[0])
            if step % args.save_every == 0:
                save_checkpoint(checkpoint_path, step, model, optimizer, scheduler, sampler_state, args)
                logger.info("saved checkpoint at step %d", step)
            if step >= args.max_steps:
                break
            if deadline is not None and time.monotonic() > deadline:
                logger.info("--minutes %g reached at step %d: stopping", args.minutes, step)
                stopped_early = True
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    progress.close()
    if window.steps:  # steps since the last log line (an early stop)
        last = window.summary()
    save_checkpoint(checkpoint_path, step, model, optimizer, scheduler, sampler_state, args)
    info = {"steps": step, "num_clusters": args.num_clusters, "data": str(args.data), "hours": hours,
            "chance_accuracy": chance, **last}
    save_model(model.encoder.eval(), out, {"pretrain": info})
    logger.info("wrote the teacher to %s (%.2fM params) after %d steps", out, model.encoder.num_params() / 1e6, step)
    return info


def main(argv: Optional[List[str]] = None) -> int:
    try:
        with cli_names():  # error messages name this CLI's flags
            args = parse_args(argv)
            train(args)
    except (PretrainError, DataDirError, AudioError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
