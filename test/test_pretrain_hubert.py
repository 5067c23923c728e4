"""pretrain_hubert CLI: a tiny real run on espeak-ng speech learns, loads, and resumes exactly after a kill."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from conftest import espeak_speech
from dphubert.bin import pretrain_hubert
from dphubert.distill.config import load_config
from dphubert.models import load_model
from dphubert.pretrain import FRAME_SAMPLES, MaskedPredictionTask, kmeans, mfcc_features, model_config, span_mask

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["turn on the lights in the kitchen", "what time is it in tokyo", "set an alarm for seven thirty",
         "play some music by the river", "how is the weather going to be today", "call my mother on the phone",
         "remind me to buy milk and eggs", "open the window in the living room", "stop the music now please",
         "the quick brown fox jumps over the lazy dog"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-029"]
TINY = ["--num-layers", "2", "--embed-dim", "32", "--num-heads", "2", "--ffn-dim", "64", "--cnn-channels", "32",
        "--pos-conv-kernel", "16", "--pos-conv-groups", "4", "--num-clusters", "20", "--max-steps", "30",
        "--warmup-steps", "5", "--lr", "2e-3", "--dropout", "0.0", "--batch-seconds", "8", "--num-workers", "0",
        "--log-interval", "10", "--save-interval", "10", "--seed", "3", "--unmasked-weight", "0.5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Ten spoken utterances (1.5-3 s) in a Kaldi data dir."""
    root = tmp_path_factory.mktemp("speech")
    lines = []
    for i, text in enumerate(TEXTS):
        utt = f"spk{i % 5}-utt{i:02d}"
        path = root / f"{utt}.wav"
        soundfile.write(path, espeak_speech(text, VOICES[i % 5]), 16000)
        lines.append(f"{utt} {path}\n")
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(sorted(lines)))
    return data


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dphubert.bin.pretrain_hubert", *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def logged(log: str, key: str):
    return [float(line.split(f" {key}=")[1].split()[0]) for line in log.splitlines() if f" {key}=" in line
            and "valid" not in line]


def test_tiny_run_learns_loads_and_resumes_exactly(data_dir, tmp_path):
    """The shared trainer runs pretraining: logs, TensorBoard, plot, model file; a crash + --resume is exact."""
    # 1. an uninterrupted run
    full = tmp_path / "full" / "teacher.pt"
    done = run_cli("--data", str(data_dir), "--out", str(full), "--valid", str(data_dir), *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (full.parent / "train.log").read_text()
    losses = logged(log, "loss")
    assert len(losses) == 3  # steps 10, 20, 30
    assert losses[-1] < losses[0] - 0.05, log  # it learns (from random logits towards the targets)
    assert len(logged(log, "masked_accuracy")) == 3 and "chance accuracy" in log and "step 30 valid:" in log
    assert (full.parent / "training.png").stat().st_size > 1000 and list((full.parent / "tensorboard").iterdir())
    teacher = load_model(full)
    cfg = teacher.config
    assert (cfg["encoder_num_layers"], cfg["encoder_embed_dim"], cfg["extractor_conv_layer_config"][0]) == (2, 32,
                                                                                                         [32, 10, 5])
    assert not teacher.gates()
    saved = torch.load(full, weights_only=True)
    assert "mask_emb" not in str(list(saved["state_dict"])) and saved["pretrain"]["steps"] == 30
    assert 0 < saved["pretrain"]["masked_accuracy"] < 1 and saved["pretrain"]["unmasked_weight"] == 0.5
    states, _ = teacher.extract_features(torch.randn(1, 16000))
    assert len(states) == 3 and states[-1].shape == (1, 49, 32)

    # 2. the same run dying right after step 15 (the trainer's test hook; last checkpoint: step 10), resumed
    part = tmp_path / "part" / "teacher.pt"
    killed = run_cli("--data", str(data_dir), "--out", str(part), "--valid", str(data_dir), *TINY,
                     env={"DPHUBERT_CRASH_AFTER_STEP": "15"})
    assert killed.returncode == 75 and not part.exists()
    assert [p.name for p in (part.parent / "checkpoints").iterdir()] == ["ckpt_step00000010.pt"]

    again = run_cli("--data", str(data_dir), "--out", str(part), *TINY)
    assert again.returncode == 1 and "pass --resume" in again.stderr
    changed = run_cli("--data", str(data_dir), "--out", str(part), *TINY, "--resume", "--embed-dim", "64")
    assert changed.returncode == 1 and "student_config.encoder_embed_dim: 32 -> 64" in changed.stderr.strip().splitlines()[-1]
    resumed = run_cli("--data", str(data_dir), "--out", str(part), "--valid", str(data_dir), *TINY, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    part_log = (part.parent / "train.log").read_text()
    assert "(step 10)" in part_log and "reusing the k-means labels" in part_log
    assert logged(part_log, "loss")[-1] == losses[-1]
    reference, continued = load_model(full).state_dict(), load_model(part).state_dict()
    for key, value in reference.items():
        assert torch.equal(continued[key], value), key  # bit for bit on CPU


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"num_layers": 3, "embed_dim": 64, "mask_prob": 0.8}))
    args = pretrain_hubert.get_parser().parse_args(["--data", "d", "--out", "o.pt", "--config", str(config),
                                                    "--embed-dim", "48"])
    from dphubert.distill.config import overrides_from_args

    cfg = load_config("pretrain_hubert", args.config, overrides_from_args(args, "pretrain_hubert"))
    assert (cfg["num_layers"], cfg["embed_dim"], cfg["mask_prob"]) == (3, 48, 0.8)
    model = model_config(cfg)
    assert model["encoder_num_layers"] == 3 and model["encoder_embed_dim"] == 48
    assert np.prod([stride for _, _, stride in model["extractor_conv_layer_config"]]) == FRAME_SAMPLES
    for demo in ("pretrain_hubert.yaml", "smoke/pretrain_hubert.yaml"):  # the demo's configs load
        assert load_config("pretrain_hubert", REPO / "egs" / "demo" / "conf" / demo)["num_layers"] == 4


def test_unmasked_weight_adds_the_unmasked_frames_loss():
    cfg = load_config("pretrain_hubert", overrides={"num_layers": "1", "embed_dim": "32", "num_heads": "2",
                                                    "ffn_dim": "32", "cnn_channels": "16", "pos_conv_kernel": "8",
                                                    "pos_conv_groups": "4", "num_clusters": "5"})
    waveforms = torch.randn(2, 16000)
    targets = torch.randint(0, 5, (2, 49))
    outs = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        task = MaskedPredictionTask(dict(cfg, unmasked_weight=weight), {})
        torch.manual_seed(1)
        outs[weight] = task(waveforms, targets, 0)
    assert torch.allclose(outs[0.0]["loss"], outs[0.0]["masked_loss"])
    assert torch.allclose(outs[1.0]["loss"], outs[1.0]["masked_loss"] + outs[1.0]["unmasked_loss"])
    assert torch.allclose(outs[0.0]["masked_loss"], outs[1.0]["masked_loss"])  # same seeds, same mask


def span_mask_fraction_moments(frames: int, span: int, mask_prob: float):
    """[(probability, mean, variance)] of one row's masked fraction for each span count the rule draws.

    The rule (HuBERT's): ``n = int(mask_prob * frames / span + U)``, U uniform in [0, 1) (so the floor or the
    ceiling of ``mask_prob * frames / span``, with the probabilities of a stochastic rounding), and ``n`` distinct
    span starts drawn uniformly from the ``N = frames - span + 1`` positions. Frame f is left unmasked when none of
    the ``c_f`` starts covering it is drawn: probability ``C(N - c_f, n) / C(N, n)``; two frames f, g both when
    none of the ``|S_f | S_g|`` starts covering either is. The mean and variance of the fraction follow exactly.
    """
    span = min(span, frames)
    starts = frames - span + 1
    f = np.arange(frames)
    lo, hi = np.maximum(0, f - span + 1), np.minimum(f, starts - 1)  # the starts covering frame f
    covering = hi - lo + 1
    both = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]) + 1, 0, None)
    union = covering[:, None] + covering[None] - both
    base = mask_prob * frames / span
    low = math.floor(base)
    out = []
    for n, probability in ((low, 1 - (base - low)), (low + 1, base - low)):
        n = max(1, n)
        unmasked = np.array([math.comb(starts - u, n) / math.comb(starts, n) for u in range(2 * span + 1)])
        mean = 1 - unmasked[covering].mean()
        variance = (unmasked[union] - np.outer(unmasked[covering], unmasked[covering])).mean()
        out.append((probability, mean, variance))
    return out


def test_span_mask_covers_the_expected_fraction():
    """Overlapping spans cover less than mask_prob (as in HuBERT): 500 frames, mask_prob 0.65, spans of 10 frames
    cover 0.4912 on average (0.4858 with 32 spans, 0.4967 with 33), where the old bound 0.35-0.65 took anything.
    Measured over 500 calls of 8 rows; a call's rows share its span count, so the mean's variance is
    (E[row variance] / 8 + variance of the per-count means) / 500: a standard deviation of 5.1e-4, and 4 of
    them is the tolerance (a rule that always rounds the span count down or up is 10 away)."""
    calls, rows, frames, span, mask_prob = 500, 8, 500, 10, 0.65
    moments = span_mask_fraction_moments(frames, span, mask_prob)
    expected = sum(p * mean for p, mean, _ in moments)
    variance = (sum(p * var for p, _, var in moments) / rows + sum(p * mean ** 2 for p, mean, _ in moments)
                - expected ** 2) / calls
    assert expected == pytest.approx(0.4912, abs=1e-4) and math.sqrt(variance) == pytest.approx(5.1e-4, abs=2e-5)
    torch.manual_seed(0)
    masks = [span_mask(rows, frames, mask_prob, span) for _ in range(calls)]
    fraction = float(torch.stack(masks).float().mean())
    assert abs(fraction - expected) < 4 * math.sqrt(variance), (fraction, expected, math.sqrt(variance))
    for row in masks[0].tolist():  # every masked run is made of whole 10-frame spans
        runs = "".join("1" if m else "0" for m in row).split("0")
        assert runs and all(len(run) >= 10 for run in runs if run)


def test_labels_align_with_model_frames(data_dir):
    from dphubert.data import load_data_dir, read_audio

    dd = load_data_dir(data_dir)
    wav = read_audio(dd, dd.utt_ids[0])
    feats = mfcc_features(wav)
    assert feats.shape[1] == 39
    model_frames = (len(wav) - 400) // 320 + 1
    assert feats.shape[0] == model_frames  # MFCC frame 2j and CNN frame j cover the same 400 samples


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(200, 2, generator=generator) for c in centers])
    found = kmeans(points, 3, 10, torch.Generator().manual_seed(1))
    distances = torch.cdist(centers, found).min(1).values
    assert float(distances.max()) < 0.1


@pytest.mark.parametrize("case", ["missing_dir", "bad_option", "unknown_config_key", "wrong_rate"])
def test_bad_input_gives_one_line(case, tmp_path, capsys):
    argv = ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "exp" / "t.pt")]
    expected = "data dir not found"
    if case == "bad_option":
        argv += ["--mask-prob", "1.5"]
        expected = "key 'mask_prob' must be in (0, 1), got 1.5"
    elif case == "unknown_config_key":
        (tmp_path / "c.yaml").write_text("num_layer: 3\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
        expected = "unknown key 'num_layer' for pretrain_hubert"
    elif case == "wrong_rate":
        data = tmp_path / "data8k"
        data.mkdir()
        soundfile.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 8000)
        (data / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
        argv[1] = str(data)
        expected = "is 8000 Hz, expected 16000 Hz"
    assert pretrain_hubert.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m dphubert.bin.pretrain_hubert: error: ") and expected in err[-1], err
