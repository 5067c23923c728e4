"""Run s3prl 0.4.18 on torchaudio >= 2.9: replacements for the torchaudio APIs it still calls.

torchaudio 2.9 removed its sox/soundfile backends: ``set_audio_backend``, ``info`` and the
``sox_effects`` module are gone, and ``load``/``save`` only delegate to torchcodec (which
needs FFmpeg). s3prl calls these at import time (``s3prl.hub`` fails with
``AttributeError: module 'torchaudio' has no attribute 'set_audio_backend'``) and in its
downstream datasets. ``apply()`` installs soundfile/torch based replacements, and only for
APIs that are missing or broken; working torchaudio functions (``functional.resample``,
``transforms``, ``compliance.kaldi``, ...) stay untouched.

Usage::

    from dphubert.s3prl import compat
    compat.apply()        # before the first `import s3prl...`; safe to call again
    import s3prl.hub

``apply()`` must run before s3prl modules that do ``from torchaudio import load`` or
``from torchaudio.sox_effects import apply_effects_file`` are imported: they bind the name
at import time. It patches the running interpreter only: fork-started workers (the default
DataLoader workers on Linux) inherit it, freshly started ones (spawn, joblib's loky) must
call ``apply()`` themselves.

=============================== ======================================== ==========================================
API (on ``torchaudio``)          why it is patched                        s3prl modules that use it
=============================== ======================================== ==========================================
``set_audio_backend(name)``      removed in 2.9; s3prl calls it at import  ``upstream/byol_s/byol_a/common.py`` (so
                                 time. Replaced by a no-op.                ``s3prl.hub`` and ``s3prl.nn``),
                                                                           ``dataio/dataset/load_audio.py``,
                                                                           ``dataset/common_pipes.py``,
                                                                           ``util/audio_info.py``,
                                                                           ``run_downstream.py``,
                                                                           ``upstream/{apc,npc,decoar*,ssast}/audio.py``
``info(path)``                   removed in 2.9. soundfile based, returns  ``util/audio_info.py``,
                                 ``AudioMetaData`` like the old API.       ``problem/common/superb_ks.py``,
                                                                           ``problem/common/hear_*.py``
``load(path, ...)``              needs torchcodec + FFmpeg since 2.9;      ``downstream/{voxceleb1,fluent_commands,asr,
                                 patched only when torchcodec is not       emotion,ctc,audio_snips,atis,mosei,...}``,
                                 usable. soundfile based, old contract     ``downstream/sv_voxceleb1`` (``from
                                 (frame_offset, num_frames, normalize,     torchaudio import load``),
                                 channels_first).                          ``downstream/runner.py``,
                                                                           ``dataset/common_pipes.py``
``save(path, src, sr, ...)``     as ``load``.                              ``util/pseudo_data.py``,
                                                                           ``problem/common/{example,_hear_util}.py``
``sox_effects`` (module:         removed in 2.9. Registered in             ``downstream/{speech_commands,sv_voxceleb1,
``apply_effects_tensor``,        ``sys.modules``; implements the effects   quesst14_dtw,mos_prediction,sws2013,
``apply_effects_file``,          s3prl's task code uses (see               quesst14_embedding,voxceleb2_*}``,
``effect_names``)                ``SUPPORTED_EFFECTS``).                   ``dataio/dataset/load_audio.py``,
                                                                           ``dataset/common_pipes.py``,
                                                                           ``upstream/mos_prediction/expert.py``
``catalyst.data.sampler``        not torchaudio: pip's catalyst (<= 21.5   ``downstream/speech_commands/expert.py``
(module, only                    installable; later releases have          (KS; used only in distributed training)
``DistributedSamplerWrapper``)   metadata pip >= 24.1 rejects) fails on
                                 Python >= 3.10. Registered only when no
                                 ``catalyst`` is installed.
=============================== ======================================== ==========================================

Not patched: ``torchaudio.load_wav`` (removed back in torchaudio 0.9; only reached by the
feature-extraction paths of old upstreams such as apc/npc/decoar, never by SUPERB with a
waveform upstream). s3prl imports no ``torchaudio.backend`` module path.

Supported sox effects (as used by s3prl; anything else raises ``NotImplementedError``):
``channels N`` (mean to mono or duplicate mono), ``rate R``, ``gain [-n] [dB]``,
``norm [dB]``, ``pad START [END]``, ``trim START [LENGTH]``, ``reverse`` and
``silence ABOVE [DUR THR [BELOW DUR THR]]`` (BELOW in {1, -1}; 20 ms RMS window as in SoX).
``vad`` (used only by the sws2013 / quesst14_embedding tasks) is not implemented.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
import torchaudio

_APPLIED: Optional[List[str]] = None


# ----------------------------------------------------------------------------- audio I/O


class AudioReadError(RuntimeError):
    """An audio file exists but soundfile cannot decode it."""


@dataclass
class AudioMetaData:
    """What the old ``torchaudio.info`` returned."""

    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


# soundfile subtype -> (old torchaudio encoding name, bits_per_sample; 0 for lossy codecs)
_SUBTYPE_TO_ENCODING = {
    "PCM_S8": ("PCM_S", 8),
    "PCM_U8": ("PCM_U", 8),
    "PCM_16": ("PCM_S", 16),
    "PCM_24": ("PCM_S", 24),
    "PCM_32": ("PCM_S", 32),
    "FLOAT": ("PCM_F", 32),
    "DOUBLE": ("PCM_F", 64),
    "ULAW": ("ULAW", 8),
    "ALAW": ("ALAW", 8),
    "VORBIS": ("VORBIS", 0),
    "OPUS": ("OPUS", 0),
    "MPEG_LAYER_III": ("MP3", 0),
}

# integer WAV subtypes that load(normalize=False) returns as integer tensors
_INT_WAV_DTYPES = {
    "PCM_U8": torch.uint8,
    "PCM_16": torch.int16,
    "PCM_24": torch.int32,  # torch has no int24: full int32 range, as old torchaudio did
    "PCM_32": torch.int32,
}


def _is_path(uri) -> bool:
    return isinstance(uri, (str, os.PathLike))


def _open(uri) -> soundfile.SoundFile:
    """Open ``uri`` (path or file object) for reading, with a clear error."""
    if _is_path(uri):
        uri = os.fspath(uri)
        if not os.path.isfile(uri):
            raise FileNotFoundError(f"audio file not found: {uri}")
    try:
        return soundfile.SoundFile(uri)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioReadError(
            f"cannot decode audio {uri}: {err}; convert it to wav or flac (e.g. with sox or ffmpeg)"
        ) from err


def info(uri, format: Optional[str] = None, buffer_size: int = 4096, backend: Optional[str] = None) -> AudioMetaData:
    """Metadata of an audio file, like the removed ``torchaudio.info`` (format/buffer_size/backend ignored)."""
    with _open(uri) as sf:
        encoding, bits = _SUBTYPE_TO_ENCODING.get(sf.subtype, ("UNKNOWN", 0))
        if sf.format == "FLAC":
            encoding = "FLAC"
        return AudioMetaData(sf.samplerate, sf.frames, sf.channels, bits, encoding)


def load(
    uri,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: Optional[str] = None,
    buffer_size: int = 4096,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, int]:
    """Read audio like the pre-2.9 ``torchaudio.load``: ``(Tensor [C, T], sample_rate)``.

    ``normalize=True`` gives float32 in [-1, 1]. ``normalize=False`` gives the native integer
    dtype for integer WAV (uint8 / int16 / int32, 24-bit as int32) and float32 otherwise.
    ``num_frames=-1`` reads to the end; an offset past the end gives zero frames.
    ``format``, ``buffer_size`` and ``backend`` are accepted for compatibility and ignored.
    """
    if frame_offset < 0:
        raise ValueError(f"frame_offset must be >= 0, got {frame_offset}")
    if num_frames == 0 or num_frames < -1:
        raise ValueError(f"num_frames must be -1 (all) or > 0, got {num_frames}")
    with _open(uri) as sf:
        int_dtype = _INT_WAV_DTYPES.get(sf.subtype) if sf.format == "WAV" and not normalize else None
        # 8-bit unsigned is read as int16 (soundfile has no uint8 read) and shifted back below
        read_dtype = {None: "float32", torch.int16: "int16", torch.int32: "int32", torch.uint8: "int16"}[int_dtype]
        if frame_offset >= sf.frames:
            data = np.zeros((0, sf.channels), dtype=read_dtype)
        else:
            sf.seek(frame_offset)
            data = sf.read(frames=num_frames, dtype=read_dtype, always_2d=True)
        sample_rate = sf.samplerate
    if int_dtype is torch.uint8:
        data = ((data.astype(np.int32) >> 8) + 128).astype(np.uint8)
    if channels_first:
        data = data.T
    return torch.from_numpy(np.ascontiguousarray(data)), sample_rate


def _container(uri, format: Optional[str]) -> str:
    """Upper-case soundfile container name from ``format`` or the file extension."""
    name = format or (os.path.splitext(os.fspath(uri))[1].lstrip(".") if _is_path(uri) else "")
    if not name:
        raise ValueError(f"cannot tell the audio format of {uri}: give a .wav/.flac/.ogg extension or format=")
    name = name.upper()
    return "OGG" if name in ("OGG", "VORBIS") else name


def _save_subtype(container: str, dtype: torch.dtype, encoding: Optional[str], bits: Optional[int]) -> Optional[str]:
    """soundfile subtype for ``save``, following the old sox_io defaults."""
    if container == "OGG":
        return "VORBIS"
    if container == "FLAC":
        flac = {8: "PCM_S8", 16: "PCM_16", 24: "PCM_24"}
        if (bits or 24) not in flac:
            raise ValueError(f"flac supports bits_per_sample 8, 16 or 24, got {bits}")
        return flac[bits or 24]
    if container != "WAV":
        return None  # soundfile's default for that container
    if encoding is None:
        if bits is None:
            encoding = {torch.uint8: "PCM_U", torch.int16: "PCM_S", torch.int32: "PCM_S"}.get(dtype, "PCM_F")
        elif bits == 8:
            encoding = "PCM_U"
        elif bits == 64 or (bits == 32 and dtype.is_floating_point):
            encoding = "PCM_F"
        else:
            encoding = "PCM_S"
    if bits is None:
        if encoding in ("PCM_U", "ULAW", "ALAW"):
            bits = 8
        elif encoding == "PCM_S":
            bits = {torch.int16: 16}.get(dtype, 32)
        else:
            bits = 32
    subtypes = {
        ("PCM_U", 8): "PCM_U8",
        ("PCM_S", 16): "PCM_16",
        ("PCM_S", 24): "PCM_24",
        ("PCM_S", 32): "PCM_32",
        ("PCM_F", 32): "FLOAT",
        ("PCM_F", 64): "DOUBLE",
        ("ULAW", 8): "ULAW",
        ("ALAW", 8): "ALAW",
    }
    if (encoding, bits) not in subtypes:
        raise ValueError(f"unsupported wav encoding {encoding} with bits_per_sample {bits}")
    return subtypes[(encoding, bits)]


def save(
    uri,
    src: torch.Tensor,
    sample_rate: int,
    channels_first: bool = True,
    compression: Optional[float] = None,
    format: Optional[str] = None,
    encoding: Optional[str] = None,
    bits_per_sample: Optional[int] = None,
    buffer_size: int = 4096,
    backend: Optional[str] = None,
) -> None:
    """Write audio like the pre-2.9 ``torchaudio.save`` (wav, flac, ogg; 1-D = mono).

    WAV defaults follow the tensor dtype (float32 -> 32-bit float, int16 -> 16-bit, ...);
    FLAC defaults to 24 bit. Float samples outside [-1, 1] are clipped for integer formats.
    ``compression``, ``buffer_size`` and ``backend`` are accepted and ignored.
    """
    if src.dim() not in (1, 2):
        raise ValueError(f"save expects a 1-D or 2-D tensor, got shape {tuple(src.shape)} for {uri}")
    wav = src.detach().cpu()
    wav = wav.unsqueeze(0 if channels_first else 1) if wav.dim() == 1 else wav
    data = (wav.t() if channels_first else wav).numpy()  # soundfile wants [T, C]
    container = _container(uri, format)
    subtype = _save_subtype(container, src.dtype, encoding, bits_per_sample)
    if src.dtype == torch.uint8:
        data = (data.astype(np.int16) - 128) << 8
    elif src.dtype.is_floating_point and subtype not in ("FLOAT", "DOUBLE"):
        data = np.clip(data, -1.0, 1.0)
    elif src.dtype not in (torch.int16, torch.int32, torch.float32, torch.float64):
        raise ValueError(f"save cannot write dtype {src.dtype} to {uri}; use float32, int16, int32 or uint8")
    try:
        target = os.fspath(uri) if _is_path(uri) else uri
        soundfile.write(target, np.ascontiguousarray(data), sample_rate, subtype=subtype, format=container)
    except (soundfile.LibsndfileError, ValueError, TypeError) as err:
        raise ValueError(f"cannot write audio {uri} as {container}/{subtype}: {err}") from err


def set_audio_backend(backend: Optional[str] = None) -> None:
    """No-op: torchaudio >= 2.9 has no selectable backends and our replacements use soundfile."""


# ----------------------------------------------------------------------------- sox effects


def _parse_time(spec: str, sample_rate: int) -> int:
    """SoX time spec -> samples: ``1.5`` / ``1:02.5`` (seconds) or ``8000s`` (samples)."""
    try:
        if spec.endswith("s"):
            return int(spec[:-1])
        seconds = 0.0
        for part in spec.split(":"):
            seconds = seconds * 60 + float(part)
        return int(round(seconds * sample_rate))
    except ValueError:
        raise ValueError(f"bad sox time '{spec}': use seconds (1.5, 1:02.5) or samples (8000s)") from None


def _parse_threshold(spec: str) -> float:
    """SoX silence threshold -> linear amplitude: ``0.1%`` or ``-60d``."""
    if spec.endswith("%"):
        return float(spec[:-1]) / 100.0
    if spec.endswith("d"):
        return 10.0 ** (float(spec[:-1]) / 20.0)
    raise NotImplementedError(f"sox silence threshold '{spec}': give it with '%' or 'd' (dB)")


def _db_to_gain(db: str) -> float:
    return 10.0 ** (float(db) / 20.0)


def _normalize_peak(wav: torch.Tensor, db: str = "0") -> torch.Tensor:
    peak = wav.abs().max() if wav.numel() else wav.new_zeros(())
    return wav if peak == 0 else wav * (_db_to_gain(db) / peak)


def _effect_channels(wav, sr, args):
    if len(args) != 1:
        raise ValueError(f"sox 'channels' needs one channel count, got {args}")
    target = int(args[0])
    if target == wav.size(0):
        return wav, sr
    if target == 1:
        return wav.mean(dim=0, keepdim=True), sr  # sox mixes down by averaging
    if wav.size(0) == 1:
        return wav.expand(target, -1).clone(), sr
    raise NotImplementedError(f"sox 'channels {target}' from {wav.size(0)} channels: only to 1 or from 1")


def _effect_rate(wav, sr, args):
    values = [a for a in args if not a.startswith("-")]  # quality flags (-h, -v, ...) do not change the length
    if len(values) != 1:
        raise ValueError(f"sox 'rate' needs one sample rate, got {args}")
    value = values[0].lower()
    new_sr = int(round(float(value[:-1]) * 1000)) if value.endswith("k") else int(round(float(value)))
    if new_sr == sr:
        return wav, sr
    return torchaudio.functional.resample(wav, sr, new_sr), new_sr


def _effect_gain(wav, sr, args):
    options = [a for a in args if a.startswith("-") and not _is_number(a)]
    values = [a for a in args if a not in options]
    unsupported = [o for o in options if o != "-n"]
    if unsupported or len(values) > 1:
        raise NotImplementedError(f"sox 'gain {' '.join(args)}': only 'gain [-n] [dB]' is implemented")
    if "-n" in options:
        return _normalize_peak(wav, values[0] if values else "0"), sr
    return wav * _db_to_gain(values[0] if values else "0"), sr


def _effect_norm(wav, sr, args):
    if len(args) > 1:
        raise NotImplementedError(f"sox 'norm {' '.join(args)}': only 'norm [dB]' is implemented")
    return _normalize_peak(wav, args[0] if args else "0"), sr


def _effect_pad(wav, sr, args):
    if len(args) > 2 or any("@" in a for a in args):
        raise NotImplementedError(f"sox 'pad {' '.join(args)}': only 'pad START [END]' is implemented")
    start = _parse_time(args[0], sr) if args else 0
    end = _parse_time(args[1], sr) if len(args) > 1 else 0
    return torch.nn.functional.pad(wav, (start, end)), sr


def _effect_trim(wav, sr, args):
    if not 1 <= len(args) <= 2 or any(a.startswith(("=", "-")) for a in args):
        raise NotImplementedError(f"sox 'trim {' '.join(args)}': only 'trim START [LENGTH]' is implemented")
    start = _parse_time(args[0], sr)
    stop = start + _parse_time(args[1], sr) if len(args) > 1 else wav.size(1)
    return wav[:, start:stop], sr


def _effect_reverse(wav, sr, args):
    if args:
        raise ValueError(f"sox 'reverse' takes no arguments, got {args}")
    return wav.flip(1), sr


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _loud_mask(wav: torch.Tensor, sr: int, threshold: float) -> torch.Tensor:
    """Per frame: is the RMS over the trailing 20 ms (all channels, zeros before start) >= threshold?"""
    window = max(1, sr // 50)
    energy = wav.double().pow(2).sum(dim=0)
    cumulative = torch.cat([energy.new_zeros(1), energy.cumsum(0)])
    index = torch.arange(1, energy.numel() + 1)
    window_sum = cumulative[index] - cumulative[(index - window).clamp(min=0)]
    rms = (window_sum.clamp(min=0) / (window * wav.size(0))).sqrt()
    return rms >= threshold


def _runs(mask: torch.Tensor) -> List[Tuple[bool, int, int]]:
    """(value, start, end) of each run of equal values."""
    if mask.numel() == 0:
        return []
    change = (torch.nonzero(mask[1:] != mask[:-1]).flatten() + 1).tolist()
    starts, ends = [0] + change, change + [mask.numel()]
    return [(bool(mask[start]), start, end) for start, end in zip(starts, ends)]


def _find_run(runs, position: int, value: bool, min_length: int) -> Optional[Tuple[int, int]]:
    """(start, end) of the first run of ``value`` lasting >= min_length frames from ``position`` on."""
    for run_value, start, end in runs:
        start = max(start, position)
        if run_value == value and end > start and end - start >= min_length:
            return start, end
    return None


def _effect_silence(wav, sr, args):
    """SoX ``silence``: drop leading silence until DUR of sound; then drop silences longer than DUR.

    A sound burst shorter than the 'above' duration counts as silence. With BELOW = -1 the
    search restarts after each removed silence (silences are removed from the middle too);
    with BELOW = 1 everything after the first long silence is dropped.
    """
    if not args:
        raise ValueError("sox 'silence' needs at least above-periods, e.g. silence 1 0.1 0.1%")
    if args[0] == "-l":
        raise NotImplementedError("sox 'silence -l' (leave silence) is not implemented")
    above_periods = int(args[0])
    rest = list(args[1:])
    if above_periods not in (0, 1):
        raise NotImplementedError(f"sox 'silence' with above-periods {above_periods}: only 0 or 1 is implemented")
    start_len, start_thr = 0, 0.0
    if above_periods:
        if len(rest) < 2:
            raise ValueError(f"sox 'silence {' '.join(args)}': above-periods needs a duration and a threshold")
        start_len, start_thr = _parse_time(rest[0], sr), _parse_threshold(rest[1])
        rest = rest[2:]
    below_periods, stop_len, stop_thr = 0, 0, 0.0
    if rest:
        if len(rest) != 3:
            raise ValueError(f"sox 'silence {' '.join(args)}': below-periods needs a duration and a threshold")
        below_periods, stop_len, stop_thr = int(rest[0]), _parse_time(rest[1], sr), _parse_threshold(rest[2])
        if below_periods not in (0, 1, -1):
            raise NotImplementedError(f"sox 'silence' with below-periods {below_periods}: only 1 or -1")

    start_runs = _runs(_loud_mask(wav, sr, start_thr)) if above_periods else []
    stop_runs = _runs(_loud_mask(wav, sr, stop_thr)) if below_periods else []
    keep = torch.zeros(wav.size(1), dtype=torch.bool)
    position, trimming = 0, bool(above_periods)
    while position < wav.size(1):
        if trimming:  # drop everything before the first run of start_len loud frames
            sound = _find_run(start_runs, position, True, start_len)
            if sound is None:
                break
            position, trimming = sound[0], False
        # copy until a run of stop_len quiet frames (shorter pauses are kept)
        pause = _find_run(stop_runs, position, False, stop_len) if below_periods else None
        if pause is None:
            keep[position:] = True
            break
        keep[position : pause[0]] = True
        position = pause[1]
        if below_periods == 1:
            break
        trimming = bool(above_periods)
    return wav[:, keep], sr


_EFFECTS: Dict[str, Callable] = {
    "channels": _effect_channels,
    "rate": _effect_rate,
    "gain": _effect_gain,
    "norm": _effect_norm,
    "pad": _effect_pad,
    "trim": _effect_trim,
    "reverse": _effect_reverse,
    "silence": _effect_silence,
}
SUPPORTED_EFFECTS = tuple(sorted(_EFFECTS))


def effect_names() -> List[str]:
    """Names of the sox effects this replacement implements."""
    return list(SUPPORTED_EFFECTS)


def _to_float(wav: torch.Tensor) -> torch.Tensor:
    """Integer PCM tensor -> float32 in [-1, 1] (float input is returned as is)."""
    if wav.is_floating_point():
        return wav
    if wav.dtype == torch.uint8:
        return (wav.float() - 128.0) / 128.0
    scale = {torch.int16: 32768.0, torch.int32: 2147483648.0}.get(wav.dtype)
    if scale is None:
        raise TypeError(f"sox effects support float, int16, int32 and uint8 tensors, got {wav.dtype}")
    return wav.float() / scale


def _from_float(wav: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``_to_float``: back to the caller's dtype."""
    if dtype.is_floating_point:
        return wav.to(dtype)
    if dtype == torch.uint8:
        return (wav * 128.0 + 128.0).round().clamp(0, 255).to(dtype)
    info_ = torch.iinfo(dtype)
    return (wav.double() * -float(info_.min)).round().clamp(info_.min, info_.max).to(dtype)


def apply_effects_tensor(
    tensor: torch.Tensor, sample_rate: int, effects: Sequence[Sequence[str]], channels_first: bool = True
) -> Tuple[torch.Tensor, int]:
    """Apply a SoX effect chain to a 2-D tensor, like the removed ``torchaudio.sox_effects`` one.

    Returns ``(tensor, sample_rate)`` with the input's dtype and channel order. As in SoX, whose
    samples are fixed point, the result is clipped to [-1, 1].
    """
    if tensor.dim() != 2:
        raise ValueError(f"apply_effects_tensor expects a 2-D tensor, got shape {tuple(tensor.shape)}")
    wav = _to_float(tensor if channels_first else tensor.t())
    for effect in effects:
        if not effect:
            raise ValueError("empty sox effect in the effects list")
        name, args = str(effect[0]), [str(a) for a in effect[1:]]
        if name not in _EFFECTS:
            raise NotImplementedError(
                f"sox effect '{name}' is not implemented by dphubert.s3prl.compat "
                f"(supported: {', '.join(SUPPORTED_EFFECTS)})"
            )
        wav, sample_rate = _EFFECTS[name](wav, sample_rate, args)
    wav = _from_float(wav.clamp(-1.0, 1.0), tensor.dtype)
    return (wav if channels_first else wav.t()).contiguous(), sample_rate


def apply_effects_file(
    path,
    effects: Sequence[Sequence[str]],
    normalize: bool = True,
    channels_first: bool = True,
    format: Optional[str] = None,
) -> Tuple[torch.Tensor, int]:
    """Load ``path`` (like ``load``) and apply a SoX effect chain, like the removed torchaudio function."""
    wav, sample_rate = load(path, normalize=normalize)
    wav, sample_rate = apply_effects_tensor(wav, sample_rate, effects)
    return (wav if channels_first else wav.t()).contiguous(), sample_rate


# ----------------------------------------------------------------------------- catalyst stand-in


class DistributedSamplerWrapper(torch.utils.data.DistributedSampler):
    """Shard what ``sampler`` draws across DDP ranks (stands in for catalyst's class of that name)."""

    def __init__(self, sampler, num_replicas=None, rank=None, shuffle=True):
        # DistributedSampler only takes len() of its dataset: the wrapped sampler's length
        super().__init__(sampler, num_replicas=num_replicas, rank=rank, shuffle=shuffle)
        self.sampler = sampler

    def __iter__(self):
        drawn = list(self.sampler)
        return iter([drawn[position] for position in super().__iter__()])


def _stand_in_module(name: str, doc: str) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def _install_catalyst_sampler() -> None:
    """Register ``catalyst.data.sampler`` with only ``DistributedSamplerWrapper`` in it."""
    doc = "dphubert.s3prl.compat stand-in: catalyst is not installed; only data.sampler.DistributedSamplerWrapper."
    package, data, sampler = (_stand_in_module(n, doc) for n in ("catalyst", "catalyst.data", "catalyst.data.sampler"))
    sampler.DistributedSamplerWrapper = DistributedSamplerWrapper
    package.data, data.sampler = data, sampler
    sys.modules.update({m.__name__: m for m in (package, data, sampler)})


# ----------------------------------------------------------------------------- installation


def _torchaudio_version() -> Tuple[int, int]:
    major, minor = torchaudio.__version__.split(".")[:2]
    return int(major), int(minor)


def torchcodec_usable() -> bool:
    """Can torchaudio >= 2.9's load/save work here (torchcodec importable with its FFmpeg libraries)?"""
    try:
        importlib.import_module("torchcodec.decoders")
        return True
    except Exception:  # ImportError, or OSError/RuntimeError when FFmpeg libraries are missing
        return False


def _sox_effects_module() -> types.ModuleType:
    module = _stand_in_module("torchaudio.sox_effects", "SoX effects replacement from dphubert.s3prl.compat.")
    module.apply_effects_tensor = apply_effects_tensor
    module.apply_effects_file = apply_effects_file
    module.effect_names = effect_names
    return module


def _sox_effects_missing() -> bool:
    try:
        importlib.import_module("torchaudio.sox_effects")
        return False
    except ImportError:
        return True


def apply() -> List[str]:
    """Install replacements for the torchaudio APIs s3prl needs that are missing or broken here.

    Idempotent. Returns the names patched (e.g. ``["set_audio_backend", "info", "load",
    "save", "sox_effects", "catalyst.data.sampler"]``); ``[]`` where nothing is missing.
    """
    global _APPLIED
    if _APPLIED is not None:
        return list(_APPLIED)
    patched = []
    for name, replacement in (("set_audio_backend", set_audio_backend), ("info", info)):
        if not hasattr(torchaudio, name):
            setattr(torchaudio, name, replacement)
            patched.append(name)
    if _torchaudio_version() >= (2, 9) and not torchcodec_usable():
        torchaudio.load, torchaudio.save = load, save
        patched += ["load", "save"]
    if _sox_effects_missing():
        module = _sox_effects_module()
        sys.modules["torchaudio.sox_effects"] = module
        torchaudio.sox_effects = module
        patched.append("sox_effects")
    if importlib.util.find_spec("catalyst") is None:
        _install_catalyst_sampler()
        patched.append("catalyst.data.sampler")
    _APPLIED = patched
    return list(patched)
