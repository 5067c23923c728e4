"""HuBERT pretraining of a small teacher (the demo's stage 0), as a task of the shared trainer.

- ``targets``: MFCC features, k-means, the cached frame labels and the trainer's target source;
- ``task``: the masked-prediction model (encoder + mask embedding + classifier) and its loss;
- ``run``: the CLI's body (``python -m dphubert.bin.pretrain_hubert``).
"""

from .targets import FRAME_SAMPLES, LabelTargets, cluster_stats, kmeans, load_or_compute_labels, mfcc_features
from .task import MaskedPredictionTask, model_config, span_mask

__all__ = ["FRAME_SAMPLES", "LabelTargets", "MaskedPredictionTask", "cluster_stats", "kmeans",
           "load_or_compute_labels", "mfcc_features", "model_config", "span_mask"]
