"""Audio building blocks of the demo corpus: espeak-ng calls, speed change, noise.

Used by synth_corpus.py; every function is deterministic given its inputs (random draws
come from the numpy Generator passed in).
"""

import io
import subprocess
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22050  # espeak-ng always writes 22.05 kHz mono 16-bit
TARGET_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "hum", "babble")
STRESS_MARKS = str.maketrans("", "", "ˈˌ")


class SynthesisError(RuntimeError):
    """espeak-ng failed or produced no audio for a text."""


def espeak_synthesize(text, voice, pitch=50, rate=175, amplitude=100):
    """Speak `text` with espeak-ng; returns float32 samples at ESPEAK_RATE."""
    cmd = [ESPEAK, "-v", voice, "-p", str(pitch), "-s", str(rate), "-a", str(amplitude),
           "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise SynthesisError(
            f"espeak-ng produced no audio for {text!r} with voice {voice} "
            f"(rc={proc.returncode}: {proc.stderr.decode(errors='replace').strip()}); "
            "check that `espeak-ng -v {voice} \"hello\"` works (apt-get install -y espeak-ng)")
    wav, rate_read = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if rate_read != ESPEAK_RATE:
        raise SynthesisError(f"espeak-ng wrote {rate_read} Hz audio for {text!r}, expected {ESPEAK_RATE}")
    return wav


def espeak_phonemes(texts, voice):
    """IPA phonemes espeak-ng uses to say each of `texts` with `voice`, stress marks
    removed; one espeak-ng process reads all texts, one per line."""
    cmd = [ESPEAK, "-q", "--ipa", "--sep= ", "-v", voice]
    proc = subprocess.run(cmd, input="".join(t + "\n" for t in texts), capture_output=True,
                          check=False, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(texts):
        raise SynthesisError(
            f"espeak-ng -v {voice} --ipa returned {len(lines)} lines for {len(texts)} texts "
            f"(rc={proc.returncode}: {proc.stderr.strip()}); texts must be single lines of words")
    result = []
    for text, line in zip(texts, lines):
        # espeak marks a language switch as "(fr)"; it is not a phoneme
        phones = [t for t in line.translate(STRESS_MARKS).split() if not (t.startswith("(") and t.endswith(")"))]
        if not phones:
            raise SynthesisError(f"espeak-ng returned no phonemes for {text!r} with voice {voice}")
        result.append(phones)
    return result


def change_speed_and_resample(wav, speed, rate_in=ESPEAK_RATE, rate_out=TARGET_RATE):
    """Play `wav` `speed` times faster (tempo and pitch, like Kaldi speed perturbation)
    and resample it from rate_in to rate_out. `speed` is used to 2 decimals."""
    speed_percent = int(round(speed * 100))
    if speed_percent != 100:
        g = gcd(100, speed_percent)
        wav = resample_poly(wav, 100 // g, speed_percent // g)
    g = gcd(rate_out, rate_in)
    return resample_poly(wav, rate_out // g, rate_in // g).astype(np.float32)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _spectrally_shaped_noise(n, rng, exponent):
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    # flat below 20 Hz: sub-audio rumble would take the power without masking speech
    freqs = np.maximum(np.fft.rfftfreq(n, d=1.0 / TARGET_RATE), 20.0)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
    return noise / rms(noise)


def _hum_noise(n, rng):
    """Mains hum (50 or 60 Hz with harmonics) over a weak broadband floor."""
    t = np.arange(n) / TARGET_RATE
    base = rng.choice([50.0, 60.0])
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
              for k in range(1, 8))
    floor = _spectrally_shaped_noise(n, rng, 1.0)
    noise = hum / rms(hum) + 0.5 * floor
    return noise / rms(noise)


def _babble_noise(n, rng, babble_voices):
    """Several espeak voices reading word lists at once, each at a random offset."""
    words = ("house table window river garden letter morning yellow travel number "
             "market station evening paper music kitchen winter doctor summer").split()
    noise = np.zeros(n, dtype=np.float64)
    for voice in babble_voices:
        text = " ".join(rng.permutation(words))
        talker = change_speed_and_resample(espeak_synthesize(text, voice), 1.0)
        talker = np.tile(talker, int(np.ceil(n / len(talker))) + 1)
        start = int(rng.integers(0, len(talker) - n))
        noise += talker[start:start + n] / rms(talker)
    return noise / rms(noise)


def make_noise_bank(seconds, seed, babble_voices):
    """One unit-RMS float32 noise signal per kind in NOISE_KINDS, `seconds` long."""
    rng = np.random.default_rng([seed, 7919])
    n = int(seconds * TARGET_RATE)
    bank = {
        "white": _spectrally_shaped_noise(n, rng, 0.0),
        "pink": _spectrally_shaped_noise(n, rng, 1.0),
        "brown": _spectrally_shaped_noise(n, rng, 2.0),
        "hum": _hum_noise(n, rng),
        "babble": _babble_noise(n, rng, babble_voices),
    }
    return {kind: signal.astype(np.float32) for kind, signal in bank.items()}


def noise_segment(bank_signal, n, rng):
    """A random stretch of `n` samples from a (looped) noise signal."""
    reps = int(np.ceil(n / len(bank_signal))) + 1
    looped = np.tile(bank_signal, reps) if reps > 1 else bank_signal
    start = int(rng.integers(0, len(looped) - n + 1))
    return looped[start:start + n]


def add_noise(speech, noise, snr_db, speech_power_ref=None):
    """speech + noise scaled so that 10*log10(P_speech / P_noise) == snr_db.

    P_speech is measured on `speech_power_ref` when given (the unpadded speech), so the
    silence added around an utterance does not lower the SNR it gets."""
    ref = speech if speech_power_ref is None else speech_power_ref
    noise_rms = rms(ref) / (10.0 ** (snr_db / 20.0))
    return speech + noise * (noise_rms / rms(noise))


def place_in_window(speech, length, offset):
    """`speech` inside a zero signal of `length` samples starting at `offset`,
    cut around its loudest part when it is longer than the window."""
    if len(speech) > length:
        energy = np.convolve(np.square(speech), np.ones(length // 4), mode="same")
        centre = int(np.argmax(energy))
        start = int(np.clip(centre - length // 2, 0, len(speech) - length))
        return speech[start:start + length].copy()
    out = np.zeros(length, dtype=np.float32)
    offset = int(np.clip(offset, 0, length - len(speech)))
    out[offset:offset + len(speech)] = speech
    return out


def to_pcm16_range(wav, peak=0.95):
    """Scale `wav` down if its peak exceeds `peak` (keeps 16-bit writes from clipping)."""
    top = float(np.max(np.abs(wav))) if len(wav) else 0.0
    return (wav * (peak / top) if top > peak else wav).astype(np.float32)
