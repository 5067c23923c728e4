"""Training data: a length-filtered audio dataset, a bad-audio check, a cropping collator, a loader.

Usage::

    dataset = AudioDataset("data/train", min_seconds=2.0, max_seconds=15.6)
    check_audio(dataset, skip_bad=args.skip_bad_audio, skipped_path=exp_dir / "skipped_utts.txt")
    sampler = BucketBatchSampler(dataset.lengths, max_batch_seconds=160, seed=args.seed, ...)
    loader = make_dataloader(dataset, sampler, CropCollator(seed=args.seed), num_workers=4)
    for batch in loader:
        batch["waveforms"]  # B x L float32, every item randomly cropped to the shortest one

Crops are drawn from ``(seed, epoch, global batch index)`` only, so a resumed run (see
BucketBatchSampler.state_dict) sees exactly the batches and crops of an uninterrupted one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dphubert.data.datadir import (
    SAMPLE_RATE,
    AudioError,
    DataDir,
    compute_num_samples,
    load_data_dir,
    read_audio,
)
from dphubert.data.sampler import IndexBatch
from dphubert.user_options import fix_option

logger = logging.getLogger(__name__)


class AudioDataset(Dataset):
    """Utterances of a data dir lasting ``min_seconds`` to ``max_seconds``.

    ``lengths`` (16 kHz samples, for the sampler) come from utt2num_samples, or from the audio file
    headers for utterances it lacks. Utterances whose audio could not be probed are kept aside in
    ``probe_failures`` for check_audio; those outside the length range are dropped and counted.
    """

    def __init__(
        self,
        data_dir: DataDir | str | Path,
        min_seconds: float = 2.0,
        max_seconds: float = 15.6,
        resample: bool = False,
        downmix: bool = False,
        nj: int = 4,
    ):
        self.data_dir = data_dir if isinstance(data_dir, DataDir) else load_data_dir(data_dir)
        self.resample = resample
        self.downmix = downmix
        known = self.data_dir.utt2num_samples
        unknown = [utt for utt in self.data_dir.utt_ids if utt not in known]
        counts = {utt: known[utt] for utt in self.data_dir.utt_ids if utt in known}
        self.probe_failures: list[tuple[str, str]] = []
        if unknown:
            computed, self.probe_failures = compute_num_samples(
                self.data_dir, unknown, nj=nj, resample=resample, downmix=downmix
            )
            counts.update(computed)
        # Utterances whose length was read from utt2num_samples have not been probed yet.
        self.unprobed = {utt for utt in counts if utt in known}

        low, high = min_seconds * SAMPLE_RATE, max_seconds * SAMPLE_RATE
        kept = [utt for utt in self.data_dir.utt_ids if utt in counts and low <= counts[utt] <= high]
        self.num_too_short = sum(1 for count in counts.values() if count < low)
        self.num_too_long = sum(1 for count in counts.values() if count > high)
        logger.info(
            "%s: kept %d utterances; dropped %d shorter than %.1f s and %d longer than %.1f s",
            self.data_dir.path, len(kept), self.num_too_short, min_seconds, self.num_too_long, max_seconds,
        )
        if not kept and not self.probe_failures:
            raise ValueError(
                f"{self.data_dir.path}: no utterance lasts {min_seconds}-{max_seconds} s "
                f"({self.num_too_short} shorter, {self.num_too_long} longer); change min/max_seconds"
            )
        self.utt_ids = kept
        self.lengths = [counts[utt] for utt in kept]

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        utt_id = self.utt_ids[index]
        waveform = read_audio(self.data_dir, utt_id, resample=self.resample, downmix=self.downmix)
        return utt_id, torch.from_numpy(waveform)

    def remove(self, utt_ids: set[str]) -> None:
        keep = [i for i, utt in enumerate(self.utt_ids) if utt not in utt_ids]
        self.utt_ids = [self.utt_ids[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]


def check_audio(
    dataset: AudioDataset,
    skip_bad: bool = False,
    skipped_path: str | Path | None = None,
    nj: int = 4,
    full_read: bool = False,
) -> list[tuple[str, str]]:
    """Find utterances whose audio is unusable before training starts (call before the sampler).

    Headers are checked (``full_read=True``: every file fully decoded; pipes and arks always are).
    Default: raise AudioError naming the first bad utterance and how many there are.
    ``skip_bad=True``: drop them from ``dataset`` and write ``<utt> <source> <reason>`` lines to
    ``skipped_path``. Returns [(utt, reason)] of the bad ones.
    """
    data_dir = dataset.data_dir
    to_probe = dataset.utt_ids if full_read else [utt for utt in dataset.utt_ids if utt in dataset.unprobed]
    _, bad = compute_num_samples(
        data_dir, to_probe, nj=nj, full_read=full_read, resample=dataset.resample, downmix=dataset.downmix
    )
    bad = dataset.probe_failures + bad
    dataset.unprobed = set() if full_read else dataset.unprobed - set(to_probe)
    if not bad:
        return []
    if not skip_bad:
        raise AudioError(
            f"{data_dir.path}: {len(bad)} utterance(s) with bad audio (fix them, or drop them with "
            f"{fix_option('skip_bad_audio')}); first: {bad[0][1]}"
        )
    dataset.remove({utt for utt, _ in bad})
    dataset.probe_failures = []
    logger.warning("%s: skipped %d utterance(s) with bad audio", data_dir.path, len(bad))
    if skipped_path is not None:
        with open(skipped_path, "w", encoding="utf-8") as f:
            for utt, reason in bad:
                f.write(f"{utt} {data_dir.source_of(utt)} {reason}\n")
    if not dataset.utt_ids:
        raise AudioError(f"{data_dir.path}: every utterance has bad audio; first: {bad[0][1]}")
    return bad


class CropCollator:
    """Batch items by cropping each at random to the shortest item's length (no padding).

    Crop offsets are multiples of ``crop_multiple`` samples (320 = one frame of the CNN front end),
    so frame-level targets computed on a full utterance stay aligned: frame offset = offset // 320.
    The common length is the shortest item's full length, not rounded: the shortest item is never
    cut and the models' own framing handles any remainder.
    """

    def __init__(self, crop_multiple: int = 320, seed: int = 0):
        if crop_multiple < 1:
            raise ValueError(f"CropCollator: crop_multiple must be >= 1, got {crop_multiple}")
        self.crop_multiple = crop_multiple
        self.seed = seed

    def collate(self, items: list[tuple[str, torch.Tensor]], epoch: int, batch_index: int) -> dict:
        """Crop ``items`` with randomness drawn from (seed, epoch, batch_index) only."""
        rng = np.random.default_rng([self.seed, epoch, batch_index])
        length = min(len(waveform) for _, waveform in items)
        waveforms = torch.empty(len(items), length, dtype=torch.float32)
        offsets = torch.empty(len(items), dtype=torch.long)
        for row, (_, waveform) in enumerate(items):
            num_choices = (len(waveform) - length) // self.crop_multiple + 1
            offset = int(rng.integers(num_choices)) * self.crop_multiple
            waveforms[row] = waveform[offset : offset + length]
            offsets[row] = offset
        return {"utt_ids": [utt for utt, _ in items], "waveforms": waveforms, "offsets": offsets}

    def __call__(self, fetched: tuple[list[tuple[str, torch.Tensor]], IndexBatch]) -> dict:
        """Collate what BatchFetcher returns; adds "epoch" and "step" for resuming."""
        items, index_batch = fetched
        batch = self.collate(items, index_batch.epoch, index_batch.global_index)
        batch["epoch"] = index_batch.epoch
        batch["step"] = index_batch.step
        return batch


class BatchFetcher(Dataset):
    """Reads a whole IndexBatch at once, so that its epoch/position reach the collator."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, index_batch: IndexBatch) -> tuple[list, IndexBatch]:
        return [self.dataset[i] for i in index_batch], index_batch


def make_dataloader(
    dataset: AudioDataset,
    sampler,
    collator: CropCollator,
    num_workers: int = 4,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
) -> DataLoader:
    """A DataLoader yielding collated batch dicts in the sampler's order."""
    return DataLoader(
        BatchFetcher(dataset),
        sampler=sampler,
        batch_size=None,  # the sampler yields whole batches; BatchFetcher reads them
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
