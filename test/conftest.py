"""Shared fixtures: tiny model configs (the suite runs on a 2-core CPU)."""

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import resample_poly

from dphubert.models import base_config, large_config

ALL_GATES = dict(extractor_prune_conv_channels=True, encoder_prune_attention_heads=True,
                 encoder_prune_attention_layer=True, encoder_prune_feed_forward_intermediate=True,
                 encoder_prune_feed_forward_layer=True)


def espeak_speech(text: str, voice: str = "en-us", rate: int = 16000) -> np.ndarray:
    """Real speech from espeak-ng (which writes 22.05 kHz): float32 at 22.05 kHz or resampled to 16 kHz."""
    wav_bytes = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    samples, espeak_rate = soundfile.read(io.BytesIO(wav_bytes), dtype="float32")
    assert espeak_rate == 22050 and rate in (16000, 22050), (espeak_rate, rate)
    return samples if rate == 22050 else resample_poly(samples, 160, 441).astype(np.float32)


def tiny_config(model_type: str = "hubert", large: bool = False, **overrides):
    """A 3-layer, 48-dim encoder with a 4-layer, 32-channel CNN (downsampling 5*2*2*2 = 40)."""
    factory = large_config if large else base_config
    cfg = dict(extractor_conv_layer_config=[[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]], encoder_embed_dim=48,
               encoder_num_layers=3, encoder_num_heads=4, encoder_ff_interm_features=96, encoder_pos_conv_kernel=16,
               encoder_pos_conv_groups=4, encoder_layer_drop=0.0, encoder_projection_dropout=0.0,
               encoder_attention_dropout=0.0, encoder_dropout=0.0)
    if model_type == "wavlm":
        cfg.update(encoder_num_buckets=32, encoder_max_distance=64)
    cfg.update(overrides)
    return factory(model_type, **cfg)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


REPO = Path(__file__).resolve().parents[1]


def make_recipe_dir(path: Path, run_args: str, backend: str = "local") -> Path:
    """A corpus recipe as egs/<corpus> has it: the real stage script and utils (linked), the demo's path.sh and
    cmd.sh (with `cmd_backend` set to `backend`), an empty db.sh and a run.sh calling dphubert.sh with
    `run_args` followed by its own arguments. Callers add conf/, data/ and exp/ as their test needs."""
    path.mkdir(parents=True)
    os.symlink(REPO / "egs" / "TEMPLATE" / "utils", path / "utils")
    os.symlink(REPO / "egs" / "TEMPLATE" / "dphubert.sh", path / "dphubert.sh")
    shutil.copy(REPO / "egs" / "demo" / "path.sh", path / "path.sh")
    cmd = (REPO / "egs" / "demo" / "cmd.sh").read_text()
    (path / "cmd.sh").write_text(cmd.replace("\ncmd_backend=local\n", f"\ncmd_backend={backend}\n"))
    (path / "db.sh").write_text("")
    (path / "run.sh").write_text(f'#!/usr/bin/env bash\n./dphubert.sh {run_args} "$@"\n')
    (path / "run.sh").chmod(0o755)
    return path
