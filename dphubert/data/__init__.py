"""Data pipeline: Kaldi data dirs, audio reading/checking, bucketed sampling and cropping collation."""

from dphubert.data.datadir import (
    SAMPLE_RATE,
    AudioError,
    DataDir,
    DataDirError,
    Segment,
    c_sorted,
    compute_num_samples,
    datadir_to_tsv,
    load_data_dir,
    probe_num_samples,
    read_audio,
    read_kaldi_map,
    tsv_to_datadir,
    validate_audio,
    write_kaldi_map,
    write_utt2num_samples,
)
from dphubert.data.dataset import AudioDataset, BatchFetcher, CropCollator, check_audio, make_dataloader
from dphubert.data.sampler import BucketBatchSampler, IndexBatch

__all__ = [
    "SAMPLE_RATE",
    "AudioDataset",
    "AudioError",
    "BatchFetcher",
    "BucketBatchSampler",
    "CropCollator",
    "DataDir",
    "DataDirError",
    "IndexBatch",
    "Segment",
    "c_sorted",
    "check_audio",
    "compute_num_samples",
    "datadir_to_tsv",
    "load_data_dir",
    "make_dataloader",
    "probe_num_samples",
    "read_audio",
    "read_kaldi_map",
    "tsv_to_datadir",
    "validate_audio",
    "write_kaldi_map",
    "write_utt2num_samples",
]
