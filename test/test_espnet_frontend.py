"""Our models as ESPnet's S3prlFrontend: a forward batch, and a real espnet2 ASR training (CTC, 1 epoch) run
through ``python -m dphubert.bin.run_with_upstream -m espnet2.bin.asr_train``."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import tiny_config
from dphubert.models import Wav2Vec2Model, load_model, save_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["AB", "BA", "ABA", "BAB", "AAB", "BBA"]

# What a user puts in an ESPnet ASR config (the test fills in path_or_url).
FRONTEND_YAML = """
frontend: s3prl
frontend_conf:
    frontend_conf:
        upstream: dphubert_local
        path_or_url: MODEL
    multilayer_feature: true
freeze_param: [frontend.upstream]
normalize: null
encoder: transformer
encoder_conf: {output_size: 32, attention_heads: 2, linear_units: 64, num_blocks: 1, input_layer: linear}
decoder: null
model_conf: {ctc_weight: 1.0}
optim: adam
optim_conf: {lr: 0.002}
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("espnet") / "model.pt"
    torch.manual_seed(0)
    save_model(Wav2Vec2Model(tiny_config("hubert")).eval(), path)
    return path


def test_s3prl_frontend_runs_a_batch(model_file):
    from dphubert.s3prl.expert import register

    register()
    from espnet2.asr.frontend.s3prl import S3prlFrontend

    frontend = S3prlFrontend(fs=16000, frontend_conf={"upstream": "dphubert_local", "path_or_url": str(model_file)},
                             multilayer_feature=True).eval()
    wavs = torch.randn(2, 16000)
    feats, lengths = frontend(wavs, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 400, 48) and lengths.tolist() == [400, 200]
    # multilayer_feature: a softmax-weighted sum of the 4 hidden states, equal weights at initialisation
    with torch.no_grad():
        states, _ = load_model(model_file).extract_features(wavs[:1])
    mean_of_layers = torch.stack(states).mean(0)
    frames = mean_of_layers.shape[1]
    assert torch.allclose(feats[0, :frames], mean_of_layers[0], atol=1e-4)


def _write_data(root: Path):
    rng = np.random.default_rng(0)
    data = root / "data"
    (data / "wav").mkdir(parents=True)
    with open(data / "wav.scp", "w") as scp, open(data / "text", "w") as text, \
            open(data / "speech_shape", "w") as shape:
        for i, words in enumerate(TEXTS):
            n = 8000 + 1600 * i
            t = np.arange(n) / 16000
            signal = 0.1 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.01 * rng.standard_normal(n)
            path = data / "wav" / f"utt{i}.wav"
            sf.write(path, signal.astype(np.float32), 16000, subtype="PCM_16")
            scp.write(f"utt{i} {path}\n")
            text.write(f"utt{i} {words}\n")
            shape.write(f"utt{i} {n}\n")
    (root / "tokens.txt").write_text("<blank>\n<unk>\nA\nB\n<sos/eos>\n")
    return data


def test_espnet_asr_training_with_our_frontend(model_file, tmp_path):
    data = _write_data(tmp_path)
    config = yaml.safe_load(FRONTEND_YAML)
    config["frontend_conf"]["frontend_conf"]["path_or_url"] = str(model_file)
    (tmp_path / "asr.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", "asr.yaml", "--output_dir", "exp", "--ngpu", "0", "--max_epoch", "1", "--seed", "0",
            "--batch_type", "unsorted", "--batch_size", "2", "--num_workers", "0", "--num_att_plot", "0",
            "--token_type", "char", "--token_list", "tokens.txt", "--use_preprocessor", "true"]
    for split in ("train", "valid"):
        args += [f"--{split}_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{data}/text,text,text",
                 f"--{split}_shape_file", f"{data}/speech_shape"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "dphubert.bin.run_with_upstream", "-m", "espnet2.bin.asr_train",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "The training was finished at 1 epochs" in proc.stderr
    checkpoint = torch.load(tmp_path / "exp" / "1epoch.pth", map_location="cpu", weights_only=True)
    ours = load_model(model_file).state_dict()
    upstream = {k[len("frontend.upstream.upstream.model."):]: v for k, v in checkpoint.items()
                if k.startswith("frontend.upstream.upstream.model.")}
    assert upstream.keys() == ours.keys()
    assert all(torch.equal(upstream[k], ours[k]) for k in ours)  # our weights, kept frozen
    assert any(k.startswith("encoder.") for k in checkpoint) and any(k.startswith("ctc.") for k in checkpoint)
    assert "frontend.featurizer.weights" in checkpoint


def test_run_with_upstream_bad_target(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "dphubert.bin.run_with_upstream", "-m", "no_such.module_x"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[0].startswith("run_with_upstream: error: no module named no_such.module_x")
