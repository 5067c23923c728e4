"""dphubert.s3prl.compat: torchaudio replacements that let s3prl 0.4.18 run on torchaudio >= 2.9.

The replacement functions are tested in this process without apply(); everything that needs
apply() (it patches torchaudio globally) runs in subprocesses, so other tests see a clean torchaudio.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from dphubert.s3prl import compat

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def sine(seconds, freq=440.0, amp=0.5, sr=SR):
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo(frames=4000, sr=SR):
    """[T, 2] test signal: a sine and a ramp, inside (-1, 1)."""
    left = sine(frames / sr, 300.0, 0.6, sr)
    right = np.linspace(-0.5, 0.5, frames, dtype=np.float32)
    return np.stack([left, right], axis=1)


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env=env)


# ----------------------------------------------------------------------------- apply() in fresh interpreters

APPLIED_SCRIPT = """
import json, sys
import soundfile, numpy as np
import torchaudio, torchaudio.functional, torchaudio.transforms, torchaudio.compliance.kaldi
working = lambda: {"functional.resample": torchaudio.functional.resample,
                   "transforms.Resample": torchaudio.transforms.Resample,
                   "compliance.kaldi.fbank": torchaudio.compliance.kaldi.fbank}
originals = working()
from dphubert.s3prl import compat
first, second = compat.apply(), compat.apply()
out = {"first": first, "second": second,
       "originals_kept": {name: obj is originals[name] for name, obj in working().items()},
       "torchcodec_usable": compat.torchcodec_usable(),
       "load_is_compat": torchaudio.load is compat.load,
       "set_audio_backend_is_compat": torchaudio.set_audio_backend is compat.set_audio_backend}
import s3prl.hub, s3prl.nn
out["hub_has_hubert_local"] = callable(getattr(s3prl.hub, "hubert_local", None))
from torchaudio.sox_effects import apply_effects_file
out["sox_module_is_compat"] = apply_effects_file is compat.apply_effects_file

# KS dataset end to end: an 8 kHz stereo file -> 16 kHz mono at -3 dB
t = np.arange(8000) / 8000
left, right = 0.6 * np.sin(2 * np.pi * 200 * t), 0.2 * np.sin(2 * np.pi * 200 * t)
soundfile.write("yes.wav", np.stack([left, right], 1), 8000, subtype="PCM_16")
from s3prl.downstream.speech_commands.dataset import SpeechCommandsDataset
wav, label, _ = SpeechCommandsDataset([("yes", "yes.wav")], speech_commands_root=".")[0]
out["ks_len"], out["ks_peak"], out["ks_label"] = len(wav), float(np.abs(wav).max()), int(label)

from s3prl.util.audio_info import get_audio_info
out["audio_info"] = get_audio_info(["yes.wav"], ["yes"], cache_dir=".", num_workers=1)[0]

import importlib
experts = {}
for task in ["speech_commands", "voxceleb1", "ctc", "emotion"]:
    importlib.import_module(f"s3prl.downstream.{task}.expert")
    experts[task] = "ok"
out["experts"] = experts
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("applied")
    proc = run_python(APPLIED_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_s3prl_hub_fails_without_apply(tmp_path):
    proc = run_python("import s3prl.hub", tmp_path)
    assert proc.returncode != 0
    assert "AttributeError" in proc.stderr and "set_audio_backend" in proc.stderr


def test_apply_is_idempotent_and_patches_only_missing_apis(applied):
    assert applied["first"] == applied["second"]
    assert {"set_audio_backend", "info", "sox_effects"} <= set(applied["first"])
    # load/save are replaced exactly when torchcodec cannot serve them
    assert ("load" in applied["first"]) == (not applied["torchcodec_usable"]) == applied["load_is_compat"]
    assert applied["set_audio_backend_is_compat"]
    assert applied["originals_kept"] == {"functional.resample": True, "transforms.Resample": True,
                                         "compliance.kaldi.fbank": True}


def test_s3prl_imports_after_apply(applied):
    assert applied["hub_has_hubert_local"]
    assert applied["sox_module_is_compat"]
    assert applied["experts"] == {t: "ok" for t in ["speech_commands", "voxceleb1", "ctc", "emotion"]}


def test_s3prl_code_paths_after_apply(applied):
    assert applied["ks_len"] == 16000 and applied["ks_label"] == 0  # resampled 8k -> 16k, "yes" is class 0
    assert applied["ks_peak"] == pytest.approx(0.4 * 10 ** (-3 / 20), rel=2e-2)  # mean of channels, -3 dB
    assert applied["audio_info"] == {"sample_rate": 8000, "num_frames": 8000, "num_channels": 2,
                                     "bits_per_sample": 16, "encoding": "PCM_S"}


# ----------------------------------------------------------------------------- info / load / save


@pytest.mark.parametrize("ext,subtype,encoding,bits,tol", [
    ("wav", "PCM_16", "PCM_S", 16, 1 / 32768),
    ("wav", "FLOAT", "PCM_F", 32, 0.0),
    ("flac", "PCM_24", "FLAC", 24, 1 / 2 ** 23),
])
def test_info_and_load_match_soundfile(tmp_path, ext, subtype, encoding, bits, tol):
    path = tmp_path / f"a.{ext}"
    data = stereo(4000, 8000)
    soundfile.write(path, data, 8000, subtype=subtype)
    meta = compat.info(path)
    assert (meta.sample_rate, meta.num_frames, meta.num_channels) == (8000, 4000, 2)
    assert (meta.encoding, meta.bits_per_sample) == (encoding, bits)

    wav, sr = compat.load(path)
    assert sr == 8000 and wav.dtype == torch.float32 and wav.shape == (2, 4000)
    np.testing.assert_allclose(wav.numpy().T, data, atol=tol + 1e-7)

    part, _ = compat.load(str(path), frame_offset=1000, num_frames=500)
    assert torch.equal(part, wav[:, 1000:1500])
    tail, _ = compat.load(path, frame_offset=3900)
    assert torch.equal(tail, wav[:, 3900:])
    time_major, _ = compat.load(path, num_frames=10, channels_first=False)
    assert torch.equal(time_major, wav[:, :10].t())
    past_end, _ = compat.load(path, frame_offset=5000)
    assert past_end.shape == (2, 0)


def test_load_normalize_false_gives_native_integers(tmp_path):
    ints = np.array([[-32768, 0], [1, -1], [32767, 12345]], dtype=np.int16)
    soundfile.write(tmp_path / "s16.wav", ints, SR, subtype="PCM_16")
    wav, _ = compat.load(tmp_path / "s16.wav", normalize=False)
    assert wav.dtype == torch.int16 and torch.equal(wav, torch.from_numpy(ints.T.copy()))

    soundfile.write(tmp_path / "s24.wav", ints, SR, subtype="PCM_24")
    wav, _ = compat.load(tmp_path / "s24.wav", normalize=False)  # 24-bit -> whole int32 range
    assert wav.dtype == torch.int32 and torch.equal(wav, torch.from_numpy(ints.T.astype(np.int32) << 16))

    u8 = np.array([[0.0], [-1.0], [0.5]], dtype=np.float32)
    soundfile.write(tmp_path / "u8.wav", u8, SR, subtype="PCM_U8")
    wav, _ = compat.load(tmp_path / "u8.wav", normalize=False)
    assert wav.dtype == torch.uint8 and wav.flatten().tolist() == [128, 0, 192]

    soundfile.write(tmp_path / "a.flac", ints, SR, subtype="PCM_16")  # not WAV: always float
    wav, _ = compat.load(tmp_path / "a.flac", normalize=False)
    assert wav.dtype == torch.float32 and wav[0, 0] == -1.0


def test_save_round_trip_and_defaults(tmp_path):
    data = torch.from_numpy(stereo(1000).T.copy())
    compat.save(tmp_path / "f.wav", data, SR)  # float32 -> 32-bit float WAV, exact
    assert soundfile.info(str(tmp_path / "f.wav")).subtype == "FLOAT"
    assert torch.equal(compat.load(tmp_path / "f.wav")[0], data)

    ints = (data * 20000).to(torch.int16)
    compat.save(tmp_path / "i.wav", ints, SR)
    assert soundfile.info(str(tmp_path / "i.wav")).subtype == "PCM_16"
    assert torch.equal(compat.load(tmp_path / "i.wav", normalize=False)[0], ints)

    compat.save(tmp_path / "a.flac", data, 8000)
    meta = compat.info(tmp_path / "a.flac")
    assert (meta.encoding, meta.bits_per_sample, meta.sample_rate) == ("FLAC", 24, 8000)
    np.testing.assert_allclose(compat.load(tmp_path / "a.flac")[0], data, atol=2 ** -22)

    compat.save(tmp_path / "m.wav", data[0], SR, bits_per_sample=16)  # 1-D = mono
    assert compat.info(tmp_path / "m.wav").num_channels == 1
    assert soundfile.info(str(tmp_path / "m.wav")).subtype == "PCM_16"

    compat.save(tmp_path / "t.wav", data.t(), SR, channels_first=False)
    assert torch.equal(compat.load(tmp_path / "t.wav")[0], data)

    compat.save(tmp_path / "c.wav", torch.tensor([[2.0, -3.0, 0.5]]), SR, encoding="PCM_S", bits_per_sample=16)
    assert compat.load(tmp_path / "c.wav")[0].flatten().tolist() == pytest.approx([32767 / 32768, -1.0, 0.5])


def test_bad_audio_gives_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        compat.load(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 10)
    for name in ("empty.wav", "junk.wav"):
        with pytest.raises(compat.AudioReadError, match=name):
            compat.info(tmp_path / name)
    with pytest.raises(ValueError, match="num_frames"):
        compat.load(tmp_path / "junk.wav", num_frames=0)
    with pytest.raises(ValueError, match="format"):
        compat.save(tmp_path / "noext", torch.zeros(1, 10), SR)
    with pytest.raises(ValueError, match="bits_per_sample"):
        compat.save(tmp_path / "a.flac", torch.zeros(1, 10), SR, bits_per_sample=32)


# ----------------------------------------------------------------------------- sox effects


def effects(wav, effect_list, sr=SR):
    return compat.apply_effects_tensor(wav, sr, effect_list)


def test_rate_resamples_with_the_right_length_and_content():
    wav = torch.from_numpy(sine(0.5, 440.0, 0.5, 8000))[None]
    out, sr = effects(wav, [["rate", "16000"]], sr=8000)
    assert sr == 16000 and out.shape == (1, 8000)
    reference = torch.from_numpy(sine(0.5, 440.0, 0.5, 16000))
    assert (out[0, 100:-100] - reference[100:-100]).abs().max() < 2e-2  # same tone, away from the edges
    out, sr = effects(torch.zeros(1, 44100), [["rate", "-v", "16k"]], sr=44100)
    assert sr == 16000 and out.shape == (1, 16000)


def test_channels_gain_and_norm():
    wav = torch.from_numpy(stereo(800).T.copy())
    mono, _ = effects(wav, [["channels", "1"]])
    assert torch.allclose(mono[0], wav.mean(0))
    dup, _ = effects(mono, [["channels", "2"]])
    assert torch.equal(dup[0], dup[1]) and torch.equal(dup[0], mono[0])

    quieter, _ = effects(wav, [["gain", "-3.0"]])
    assert torch.allclose(quieter, wav * 10 ** (-3 / 20))
    chains = [([["norm"]], 1.0), ([["norm", "-6"]], 10 ** (-6 / 20)), ([["gain", "-n", "-3"]], 10 ** (-3 / 20))]
    for chain, peak in chains:
        out, _ = effects(wav, chain)
        assert out.abs().max().item() == pytest.approx(peak, rel=1e-6)
        assert torch.allclose(out / out.abs().max(), wav / wav.abs().max(), atol=1e-6)  # shape unchanged
    silent, _ = effects(torch.zeros(1, 10), [["norm"]])
    assert torch.equal(silent, torch.zeros(1, 10))
    loud, _ = effects(wav, [["gain", "20"]])  # sox samples are fixed point: clipped to [-1, 1]
    assert loud.abs().max() == 1.0


def test_pad_trim_reverse():
    wav = torch.arange(1, 11, dtype=torch.float32)[None] / 10
    out, _ = effects(wav, [["pad", "3s", "0.0005"]])  # 3 samples before, 8 samples (0.5 ms) after
    assert out.shape == (1, 21) and out[0, :3].abs().sum() == 0 and out[0, -8:].abs().sum() == 0
    assert torch.equal(out[:, 3:13], wav)
    out, _ = effects(wav, [["trim", "2s", "5s"]])
    assert torch.equal(out, wav[:, 2:7])
    out, _ = effects(wav, [["trim", "8s"]])
    assert torch.equal(out, wav[:, 8:])
    out, _ = effects(wav, [["reverse"]])
    assert torch.equal(out, wav.flip(1))
    long_wav = torch.ones(1, 2 * SR) * 0.1
    out, _ = effects(long_wav, [["pad", "1", "1"], ["trim", "1.5", "0:01"]])  # SUPERB QbE crop pattern
    assert out.shape == (1, SR) and out[0, : SR // 2].eq(0.1).all() and out[0, SR // 2:].eq(0.1).all()


def sox_effect(wav: np.ndarray, effect, tmp_path: Path) -> np.ndarray:
    """The sox command line's output for a mono float32 signal at SR (32-bit float WAV in and out)."""
    soundfile.write(tmp_path / "in.wav", wav, SR, subtype="FLOAT")
    subprocess.run(["sox", "-V1", str(tmp_path / "in.wav"), "-e", "floating-point", "-b", "32",
                    str(tmp_path / "out.wav"), *effect], check=True, capture_output=True)
    out, rate = soundfile.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert rate == SR
    return out[:, 0]


def silence_test_signal() -> np.ndarray:
    zeros = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    tone = lambda s: sine(s, 300.0, 0.5)  # noqa: E731
    parts = [zeros(0.3), tone(0.5), zeros(0.05), tone(0.4), zeros(0.3), tone(0.05), zeros(0.3), tone(0.5), zeros(0.2)]
    return np.concatenate(parts)


SILENCE_CHAINS = [["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"],  # ASV's
                  ["silence", "1", "0.1", "1%"],  # a leading trim only
                  ["silence", "1", "0.05", "-40d", "1", "0.1", "-40d"]]  # stop at the first long silence


def test_silence_on_the_asv_chain():
    """ASV's 'silence 1 0.1 0.1% -1 0.1 0.1%': leading/middle silences > 0.1 s and bursts < 0.1 s go."""
    wav = torch.from_numpy(silence_test_signal())[None]
    out, sr = effects(wav, [SILENCE_CHAINS[0]])
    assert sr == SR
    first = torch.from_numpy(sine(0.5, 300.0, 0.5))
    assert torch.equal(out[0, :7999], first[1:])  # leading 0.3 s of zeros (and the zero sample) removed
    # the 0.05 s pause is kept, the 0.05 s burst between long silences is dropped
    assert torch.equal(out[0, 7999:7999 + 800], torch.zeros(800))
    everything_silent, _ = effects(torch.zeros(1, SR), [["silence", "1", "0.1", "0.1%"]])
    assert everything_silent.shape == (1, 0)


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs the sox command line")
def test_silence_gives_what_the_sox_command_gives(tmp_path):
    """The same samples as the sox command line on the same input, for each chain and for all-silent input."""
    signal = silence_test_signal()
    for effect in SILENCE_CHAINS:
        out, _ = effects(torch.from_numpy(signal)[None], [effect])
        reference = sox_effect(signal, effect, tmp_path)
        assert 0 < len(reference) < len(signal) and out.shape == (1, len(reference)), (effect, out.shape)
        # sox computes in 32-bit fixed point: float32 in and out round-trips to within 2^-25
        assert np.abs(out[0].numpy() - reference).max() <= 6e-8, effect
    silent = np.zeros(SR, np.float32)
    out, _ = effects(torch.from_numpy(silent)[None], [SILENCE_CHAINS[1]])
    assert out.shape == (1, len(sox_effect(silent, SILENCE_CHAINS[1], tmp_path)))


def test_dtype_and_channel_order_are_kept():
    ints = torch.tensor([[1000, -2000, 3000, 32767]], dtype=torch.int16)
    out, _ = effects(ints, [["gain", "-6.0206"]])  # halves
    assert out.dtype == torch.int16 and out.tolist() == [[500, -1000, 1500, 16384]]
    time_major = torch.from_numpy(stereo(100))
    out, _ = compat.apply_effects_tensor(time_major, SR, [["channels", "1"]], channels_first=False)
    assert out.shape == (100, 1) and torch.allclose(out[:, 0], time_major.mean(1))


def test_apply_effects_file_on_real_files(tmp_path):
    soundfile.write(tmp_path / "a.flac", stereo(4000, 8000), 8000, subtype="PCM_16")
    wav, sr = compat.apply_effects_file(tmp_path / "a.flac", [["channels", "1"], ["rate", "16000"], ["norm"]])
    assert sr == 16000 and wav.shape == (1, 8000) and wav.dtype == torch.float32
    assert wav.abs().max().item() == pytest.approx(1.0, rel=1e-6)
    soundfile.write(tmp_path / "i.wav", np.array([[1000], [-3000]], np.int16), SR, subtype="PCM_16")
    wav, _ = compat.apply_effects_file(tmp_path / "i.wav", [["gain", "-6.0206"]], normalize=False, channels_first=False)
    assert wav.dtype == torch.int16 and wav.tolist() == [[500], [-1500]]


def test_unsupported_effects_raise_clear_errors():
    wav = torch.zeros(1, 100)
    with pytest.raises(NotImplementedError, match=r"sox effect 'vad' is not implemented.*supported: channels"):
        effects(wav, [["vad", "-T", "0.25"]])
    with pytest.raises(NotImplementedError, match="gain -e"):
        effects(wav, [["gain", "-e"]])
    with pytest.raises(NotImplementedError, match="silence -l"):
        effects(wav, [["silence", "-l", "1", "0.1", "1%"]])
    with pytest.raises(NotImplementedError, match="channels 3"):
        effects(torch.zeros(2, 10), [["channels", "3"]])
    with pytest.raises(ValueError, match="bad sox time"):
        effects(wav, [["trim", "abc"]])
    # The effects s3prl's code uses (channels, rate, gain, norm, pad, silence) and two more; each one listed works.
    assert compat.effect_names() == ["channels", "gain", "norm", "pad", "rate", "reverse", "silence", "trim"]
    examples = {"channels": ["1"], "gain": ["-3"], "norm": [], "pad": ["0.01"], "rate": ["8000"], "reverse": [],
                "silence": ["1", "0.01", "1%"], "trim": ["0", "0.002"]}
    loud = torch.from_numpy(sine(0.05))[None]
    for name in compat.effect_names():
        out, _ = effects(loud, [[name, *examples[name]]])
        assert out.numel() > 0, name


def test_distributed_sampler_wrapper_shards_the_wrapped_sampler():
    drawn = [5, 6, 7, 8, 9]
    shards = [list(compat.DistributedSamplerWrapper(drawn, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert shards == [[5, 7, 9], [6, 8, 5]]  # rank 1 is padded to equal length, as DistributedSampler does
