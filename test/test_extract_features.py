"""Kaldi features (python -m dphubert.bin.extract_features): values, layer choices, s3prl weights, resume."""

import argparse

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from conftest import ALL_GATES, tiny_config
from dphubert.bin import extract_features as cli
from dphubert.data import load_data_dir, read_audio
from dphubert.export.features import recover
from dphubert.models import Wav2Vec2Model, load_model, save_model

LENGTHS = [4000, 7321, 2500, 6100, 5000]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A pruned tiny model and a data dir of real wav files (one stereo, one 22.05 kHz)."""
    root = tmp_path_factory.mktemp("feats")
    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny_config("hubert", **ALL_GATES)).eval()
    for gate in model.gates().values():
        gate.log_alpha.data.normal_(1.5, 2.0)
    save_model(model.prune(), root / "model.pt")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, n in enumerate(LENGTHS):
        wav = root / f"u{i}.wav"
        if i == 1:
            soundfile.write(wav, rng.uniform(-0.5, 0.5, (n, 2)), 16000)  # stereo: needs --downmix
        elif i == 4:
            soundfile.write(wav, rng.uniform(-0.5, 0.5, int(n * 22050 / 16000)), 22050)  # needs --resample
        else:
            soundfile.write(wav, rng.uniform(-0.5, 0.5, n), 16000)
        lines.append(f"utt{i} {wav}\n")
    (data / "wav.scp").write_text("".join(lines))
    return root, data, load_model(root / "model.pt")


def _alone(model, data, utt):
    wav = torch.from_numpy(read_audio(load_data_dir(data), utt, resample=True, downmix=True))
    with torch.no_grad():
        states, _ = model.extract_features(wav[None])
    return [s[0].numpy() for s in states]


def _run(setup, out, *extra):
    root, data, _ = setup
    return cli.main(["--model", str(root / "model.pt"), "--data", str(data), "--out", str(out), "--resample",
                     "--downmix", "--batch-seconds", "0.8", *extra])


def test_layers_concat_and_single_equal_each_utterance_alone(setup, tmp_path):
    root, data, model = setup
    assert _run(setup, tmp_path / "a", "--layers", "1 3") == 0
    feats = dict(kaldiio.load_scp_sequential(str(tmp_path / "a" / "feats.scp")))
    assert list(feats) == [f"utt{i}" for i in range(len(LENGTHS))]  # sorted scp
    frames = dict(line.split() for line in (tmp_path / "a" / "utt2num_frames").read_text().splitlines())
    for utt, matrix in feats.items():
        states = _alone(model, data, utt)
        expected = np.concatenate([states[1], states[3]], axis=1)
        assert matrix.dtype == np.float32 and matrix.shape == expected.shape and int(frames[utt]) == len(matrix)
        assert np.abs(matrix - expected).max() <= 1e-4
    assert _run(setup, tmp_path / "b", "--layer", "2", "--dtype", "float16") == 0
    matrix = kaldiio.load_mat(dict(line.split() for line in (tmp_path / "b" / "feats.scp").read_text().splitlines())
                              ["utt1"])
    assert matrix.dtype == np.float16
    assert np.abs(matrix.astype(np.float32) - _alone(model, data, "utt1")[2]).max() <= 1e-2


def _s3prl_checkpoint(root, path, normalize):
    """A downstream checkpoint the way s3prl's runner saves it (runner.py: all_states), with a real Featurizer."""
    from dphubert.s3prl import compat
    from dphubert.s3prl.expert import UpstreamExpert

    compat.apply()  # (not s3prl.hub: importing every upstream takes long; the Featurizer needs none of them)
    from s3prl.upstream.interfaces import Featurizer

    upstream = UpstreamExpert(str(root / "model.pt")).eval()
    featurizer = Featurizer(upstream, upstream_device="cpu", normalize=normalize)
    with torch.no_grad():
        featurizer.weights.copy_(torch.randn(featurizer.weights.shape))
    downstream = torch.nn.Linear(featurizer.output_dim, 12)
    optimizer = torch.optim.Adam(list(featurizer.parameters()) + list(downstream.parameters()))
    args = argparse.Namespace(upstream="dphubert_local", upstream_feature_normalize=normalize,
                              upstream_feature_selection="hidden_states", upstream_layer_selection=None)
    torch.save({"Optimizer": optimizer.state_dict(), "Step": 100, "Epoch": 1, "Args": args,
                "Config": {"runner": {"total_steps": 100}}, "Downstream": downstream.state_dict(),
                "Featurizer": featurizer.state_dict()}, path)
    return upstream, featurizer


@pytest.mark.parametrize("normalize", [False, True])
def test_weights_from_s3prl_featurizer_match_s3prl(setup, tmp_path, normalize):
    root, data, model = setup
    upstream, featurizer = _s3prl_checkpoint(root, tmp_path / "dev-best.ckpt", normalize)
    assert _run(setup, tmp_path / "w", "--weights", str(tmp_path / "dev-best.ckpt")) == 0
    feats = dict(kaldiio.load_scp_sequential(str(tmp_path / "w" / "feats.scp")))
    for utt in ("utt0", "utt3"):
        wav = torch.from_numpy(read_audio(load_data_dir(data), utt))
        with torch.no_grad():
            expected = featurizer([wav], upstream([wav]))[0].numpy()  # s3prl's own weighted sum
        n = min(len(expected), len(feats[utt]))
        assert abs(len(expected) - len(feats[utt])) <= 1  # s3prl rounds len / downsample rate
        assert np.abs(feats[utt][:n] - expected[:n]).max() <= 1e-4


def test_resume_after_kill_has_no_duplicates_or_loss(setup, tmp_path, monkeypatch):
    root, data, model = setup
    out = tmp_path / "r"
    import dphubert.export.features as features

    calls = {"n": 0}
    real = features.read_audio

    # Batches (0.8 s, longest first): [utt1], [utt3, utt4], [utt0, utt2]; killed reading the third one's audio.
    def dying_read(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(features, "read_audio", dying_read)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out, "--layer", "3")
    monkeypatch.setattr(features, "read_audio", real)
    committed = (out / "feats.scp").read_text().splitlines()
    assert sorted(line.split()[0] for line in committed) == ["utt1", "utt3", "utt4"]
    # Also a torn tail: half a record in the ark and half a line in the scp, as a kill mid-write leaves them.
    with open(out / "feats.ark", "ab") as f:
        f.write(b"utt9 \0BFM garbage")
    with open(out / "feats.scp", "a") as f:
        f.write("utt9 /x/feats.ark:12")
    assert set(recover(out)) == {line.split()[0] for line in committed}
    assert _run(setup, out, "--layer", "3") == 0
    lines = (out / "feats.scp").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == [f"utt{i}" for i in range(len(LENGTHS))]
    for utt, matrix in kaldiio.load_scp_sequential(str(out / "feats.scp")):
        assert np.abs(matrix - _alone(model, data, utt)[3]).max() <= 1e-4
    # Ark holds exactly the 5 records: nothing torn or duplicated stays in it.
    assert len(list(kaldiio.load_ark(str(out / "feats.ark")))) == len(LENGTHS)
    assert _run(setup, out, "--layer", "3") == 0  # finished: nothing to do, still consistent
    assert _run(setup, out, "--layer", "2") == 1  # another setting into the same dir: refused


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    root, data, _ = setup
    gated = Wav2Vec2Model(tiny_config("hubert", **ALL_GATES))
    save_model(gated, tmp_path / "gated.pt")
    torch.save({"Downstream": {}}, tmp_path / "nofeat.ckpt")
    cases = [
        (["--model", str(tmp_path / "gated.pt"), "--layer", "1"], "prune it first"),
        (["--model", str(root / "model.pt"), "--layer", "7"], "unknown layer(s) [7]"),
        (["--model", str(root / "model.pt"), "--weights", str(tmp_path / "nofeat.ckpt")], "use --layer N"),
        (["--model", str(root / "model.pt"), "--weights", str(tmp_path / "missing.ckpt")], "no such file"),
    ]
    for argv, expected in cases:
        assert cli.main([*argv, "--data", str(data), "--out", str(tmp_path / "x"), "--resample", "--downmix"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert cli.main(["--model", str(root / "model.pt"), "--layer", "1", "--data", str(data), "--out",
                     str(root / "model.pt" / "feats")]) == 1  # under a file: cannot be created
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create it" in err, err
    assert cli.main(["--model", str(root / "model.pt"), "--layer", "1", "--data", str(tmp_path / "nodata"),
                     "--out", str(tmp_path / "z")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nodata" in err, err
    # An utterance too short for one frame (tiny CNN: 10 + 5 * (2 + 2 * (2 + 2 * 1)) = 60 samples) is named.
    short = tmp_path / "short"
    short.mkdir()
    soundfile.write(tmp_path / "s.wav", np.zeros(59), 16000)
    (short / "wav.scp").write_text(f"tiny {tmp_path / 's.wav'}\n")
    assert cli.main(["--model", str(root / "model.pt"), "--layer", "1", "--data", str(short), "--out",
                     str(tmp_path / "s")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (and a progress bar)
    assert len(err) == 1 and "tiny" in err[0] and "60 samples" in err[0], err
    # Stage-1 audio rules: a stereo file without --downmix names the utterance and the fix.
    assert cli.main(["--model", str(root / "model.pt"), "--data", str(data), "--out", str(tmp_path / "y"),
                     "--layer", "1", "--resample"]) == 1
    err = capsys.readouterr().err.strip()
    assert "utt1" in err and "downmix" in err, err
