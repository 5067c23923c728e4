"""The prunable speech SSL encoder (HuBERT, wav2vec 2.0, WavLM) and its checkpoints."""

from .checkpoint import CheckpointError, atomic_save, load_model, model_from_checkpoint, read_checkpoint, save_model
from .config import ConfigError, base_config, large_config, normalize_config
from .gates import HardConcrete
from .model import Wav2Vec2Model
from .pruning import PruningError

__all__ = [
    "CheckpointError", "ConfigError", "HardConcrete", "PruningError", "Wav2Vec2Model", "atomic_save",
    "base_config", "large_config", "load_model", "model_from_checkpoint", "normalize_config", "read_checkpoint",
    "save_model",
]
