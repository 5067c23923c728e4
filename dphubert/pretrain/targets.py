"""HuBERT's first-iteration targets: k-means clusters of MFCC frames, aligned with the model's 20 ms frames.

13 Kaldi MFCCs + deltas + delta-deltas at 100 Hz, every other frame kept (50 Hz: frame j covers samples
[320 j, 320 j + 400), as the model's CNN frame j does), standardised, clustered with k-means (k-means++ init,
Lloyd iterations on at most ``kmeans_max_frames`` frames, fixed seed). ``load_or_compute_labels`` caches the
frame labels in a file and reuses them when data, clusters and seed match. ``LabelTargets`` hands a batch's
labels to the shared trainer where the distillation methods get their teacher's states.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dphubert.data import AudioDataset, read_audio
from dphubert.models import atomic_save

from dphubert.distill.errors import DistillConfigError

FRAME_SAMPLES = 320  # the model's frame shift: 20 ms at 16 kHz
LABELS_VERSION = 1  # bump when the feature recipe changes, so cached labels are recomputed
LABEL_KEYS = ("num_clusters", "seed", "kmeans_iters", "kmeans_max_frames")

logger = logging.getLogger("dphubert.pretrain")


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


def dataset_features(dataset: AudioDataset) -> Dict[str, Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-utterance MFCCs are tiny ops: extra threads only spin (10-100x slower)
    try:
        return {utt: mfcc_features(read_audio(dataset.data_dir, utt, resample=dataset.resample,
                                              downmix=dataset.downmix))
                for utt in tqdm(dataset.utt_ids, desc="MFCC", unit="utt", mininterval=2.0)}
    finally:
        torch.set_num_threads(threads)


def compute_labels(dataset: AudioDataset, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Frame labels of every utterance of ``dataset`` (a dict ready to be cached)."""
    features = dataset_features(dataset)
    everything = torch.cat(list(features.values()))
    generator = torch.Generator().manual_seed(cfg["seed"])
    if everything.size(0) < cfg["num_clusters"]:
        raise DistillConfigError(f"only {everything.size(0)} frames for num_clusters {cfg['num_clusters']}; use "
                                 f"more data or fewer clusters (--num-clusters)")
    sample = everything[torch.randperm(everything.size(0), generator=generator)[:cfg["kmeans_max_frames"]]]
    mean, std = sample.mean(0), sample.std(0).clamp(min=1e-5)
    logger.info("k-means: %d clusters on %d of %d frames, %d iterations", cfg["num_clusters"], sample.size(0),
                everything.size(0), cfg["kmeans_iters"])
    centroids = kmeans((sample - mean) / std, cfg["num_clusters"], cfg["kmeans_iters"], generator)
    labels = {utt: torch.cdist((f - mean) / std, centroids).argmin(1).to(torch.int16) for utt, f in features.items()}
    return {"version": LABELS_VERSION, "utt_ids": list(dataset.utt_ids), **{k: cfg[k] for k in LABEL_KEYS},
            "centroids": centroids, "mean": mean, "std": std, "labels": labels}


def load_or_compute_labels(dataset: AudioDataset, cfg: Dict[str, Any], path: Path) -> Dict[str, Any]:
    wanted = {"version": LABELS_VERSION, "utt_ids": list(dataset.utt_ids), **{k: cfg[k] for k in LABEL_KEYS}}
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if all(cached.get(key) == value for key, value in wanted.items()):
            logger.info("reusing the k-means labels of %s", path)
            return cached
        logger.info("%s was made for other data or options: recomputing the labels", path)
    result = compute_labels(dataset, cfg)
    atomic_save(result, path)
    return result


def assign_labels(dataset: AudioDataset, targets: Dict[str, Any]) -> Dict[str, Tensor]:
    """Labels of another data set's frames (a dev set): the nearest centroid of the training k-means."""
    mean, std, centroids = targets["mean"], targets["std"], targets["centroids"]
    return {utt: torch.cdist((f - mean) / std, centroids).argmin(1).to(torch.int16)
            for utt, f in dataset_features(dataset).items()}


def cluster_stats(labels: Dict[str, Tensor], k: int) -> Tuple[int, float]:
    """Clusters in use and the frequency of the most common one (the accuracy of always guessing it)."""
    counts = torch.bincount(torch.cat([l.long() for l in labels.values()]), minlength=k)
    return int((counts > 0).sum()), float(counts.max() / counts.sum())


class LabelTargets:
    """The trainer's target source for pretraining: the cluster labels of a batch's cropped items."""

    def __init__(self, labels: Dict[str, Tensor]):
        self.labels = labels

    def to(self, device) -> "LabelTargets":  # (the trainer moves its target source; labels stay on the CPU)
        return self

    def __call__(self, batch: Dict[str, Any], waveforms: Tensor, frames: int) -> Tensor:
        """Labels ``(batch, n)``, ``n <= frames`` (the CNN may yield a frame more than the MFCCs)."""
        starts = [offset // FRAME_SAMPLES for offset in batch["offsets"].tolist()]
        n = min([frames] + [len(self.labels[utt]) - start for utt, start in zip(batch["utt_ids"], starts)])
        return torch.stack([self.labels[utt][start:start + n].long()
                            for utt, start in zip(batch["utt_ids"], starts)]).to(waveforms.device)
