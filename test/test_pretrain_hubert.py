"""pretrain_hubert CLI: a tiny real run on espeak-ng speech learns, loads, and resumes exactly after a kill."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from scipy.signal import resample_poly

from dphubert.bin import pretrain_hubert
from dphubert.models import load_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["turn on the lights in the kitchen", "what time is it in tokyo", "set an alarm for seven thirty",
         "play some music by the river", "how is the weather going to be today", "call my mother on the phone",
         "remind me to buy milk and eggs", "open the window in the living room", "stop the music now please",
         "the quick brown fox jumps over the lazy dog"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-029"]
TINY = ["--num-layers", "2", "--embed-dim", "32", "--num-heads", "2", "--ffn-dim", "64", "--cnn-channels", "32",
        "--pos-conv-kernel", "16", "--pos-conv-groups", "4", "--num-clusters", "20", "--max-steps", "30",
        "--warmup-steps", "5", "--lr", "2e-3", "--dropout", "0.0", "--max-batch-seconds", "8", "--num-workers", "0",
        "--log-every", "10", "--save-every", "10", "--seed", "3", "--num-threads", "1"]


def espeak_16k(text: str, voice: str) -> np.ndarray:
    wav_bytes = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav_bytes), dtype="float32")
    assert rate == 22050
    return resample_poly(samples, 160, 441).astype(np.float32)  # 22.05 kHz -> 16 kHz


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Ten spoken utterances (1.5-3 s) in a Kaldi data dir."""
    root = tmp_path_factory.mktemp("speech")
    lines = []
    for i, text in enumerate(TEXTS):
        utt = f"spk{i % 5}-utt{i:02d}"
        path = root / f"{utt}.wav"
        soundfile.write(path, espeak_16k(text, VOICES[i % 5]), 16000)
        lines.append(f"{utt} {path}\n")
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(sorted(lines)))
    return data


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dphubert.bin.pretrain_hubert", *args], cwd=REPO,
                          capture_output=True, text=True, **kwargs)


def logged_losses(log: str):
    return [float(line.split("loss ")[1].split(",")[0]) for line in log.splitlines() if ": loss " in line]


def test_tiny_run_learns_loads_and_resumes_exactly(data_dir, tmp_path):
    # 1. an uninterrupted run
    full = tmp_path / "full" / "teacher.pt"
    done = run_cli("--data", str(data_dir), "--out", str(full), *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (full.parent / "pretrain.log").read_text()
    losses = logged_losses(log)
    assert len(losses) == 3  # steps 10, 20, 30
    assert losses[-1] < losses[0] - 0.05, log  # it learns (from random logits towards the targets)
    assert "masked accuracy" in log and "chance" in log
    teacher = load_model(full)
    cfg = teacher.config
    assert (cfg["encoder_num_layers"], cfg["encoder_embed_dim"], cfg["extractor_conv_layer_config"][0]) == (2, 32,
                                                                                                         [32, 10, 5])
    assert not teacher.gates()
    saved = torch.load(full, weights_only=True)
    assert "mask_emb" not in str(list(saved["state_dict"])) and saved["pretrain"]["steps"] == 30
    states, _ = teacher.extract_features(torch.randn(1, 16000))
    assert len(states) == 3 and states[-1].shape == (1, 49, 32)

    # 2. the same run killed after its first checkpoint, then resumed
    part = tmp_path / "part" / "teacher.pt"
    checkpoint = part.parent / pretrain_hubert.CHECKPOINT_NAME
    process = subprocess.Popen([sys.executable, "-m", "dphubert.bin.pretrain_hubert", "--data", str(data_dir),
                                "--out", str(part), *TINY], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 10 <= killed_at < 30 and not part.exists()

    again = run_cli("--data", str(data_dir), "--out", str(part), *TINY)
    assert again.returncode == 1 and "pass --resume" in again.stderr
    changed = run_cli("--data", str(data_dir), "--out", str(part), *TINY, "--resume", "--embed-dim", "64")
    assert changed.returncode == 1 and "--embed-dim 32 -> 64" in changed.stderr
    resumed = run_cli("--data", str(data_dir), "--out", str(part), *TINY, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    part_log = (part.parent / "pretrain.log").read_text()
    assert f"resumed from step {killed_at}" in part_log
    assert "reusing the k-means labels" in part_log
    assert logged_losses(part_log)[-1] == pytest.approx(losses[-1], abs=1e-4)
    reference, continued = load_model(full).state_dict(), load_model(part).state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(continued[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"num_layers": 3, "embed_dim": 64, "mask_prob": 0.8}))
    args = pretrain_hubert.parse_args(["--data", "d", "--out", "o.pt", "--config", str(config), "--embed-dim", "48"])
    assert (args.num_layers, args.embed_dim, args.mask_prob) == (3, 48, 0.8)
    cfg = pretrain_hubert.model_config(args)
    assert cfg["encoder_num_layers"] == 3 and cfg["encoder_embed_dim"] == 48
    assert np.prod([stride for _, _, stride in cfg["extractor_conv_layer_config"]]) == pretrain_hubert.FRAME_SAMPLES


def test_span_mask_covers_about_mask_prob():
    torch.manual_seed(0)
    mask = pretrain_hubert.span_mask(8, 500, 0.65, 10)
    fraction = mask.float().mean().item()
    assert 0.35 < fraction < 0.65  # overlapping spans cover less than mask_prob, as in HuBERT
    for row in mask.tolist():  # every masked run is made of whole 10-frame spans
        runs = "".join("1" if m else "0" for m in row).split("0")
        assert runs and all(len(run) >= 10 for run in runs if run)


def test_labels_align_with_model_frames(data_dir):
    from dphubert.data import load_data_dir, read_audio

    dd = load_data_dir(data_dir)
    wav = read_audio(dd, dd.utt_ids[0])
    feats = pretrain_hubert.mfcc_features(wav)
    assert feats.shape[1] == 39
    model_frames = (len(wav) - 400) // 320 + 1
    assert feats.shape[0] == model_frames  # MFCC frame 2j and CNN frame j cover the same 400 samples


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(200, 2, generator=generator) for c in centers])
    found = pretrain_hubert.kmeans(points, 3, 10, torch.Generator().manual_seed(1))
    distances = torch.cdist(centers, found).min(1).values
    assert float(distances.max()) < 0.1


@pytest.mark.parametrize("case", ["missing_dir", "bad_option", "unknown_config_key", "wrong_rate"])
def test_bad_input_gives_one_line(case, tmp_path, capsys):
    argv = ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "exp" / "t.pt")]
    expected = "data dir not found"
    if case == "bad_option":
        argv += ["--mask-prob", "1.5"]
        expected = "--mask-prob must be in (0, 1)"
    elif case == "unknown_config_key":
        (tmp_path / "c.yaml").write_text("num_layer: 3\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
        expected = "unknown option(s) ['num_layer']"
    elif case == "wrong_rate":
        data = tmp_path / "data8k"
        data.mkdir()
        soundfile.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 8000)
        (data / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
        argv[1] = str(data)
        expected = "is 8000 Hz, expected 16000 Hz"
    assert pretrain_hubert.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
