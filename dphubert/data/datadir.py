"""Kaldi data directories: read them, read their audio, check it, convert to/from fairseq tsv lists.

A data dir holds ``wav.scp`` (required) and optionally ``segments``, ``text``, ``utt2spk`` and
``utt2num_samples``. ``wav.scp`` values may be

* a plain path to a wav/flac/... file readable by soundfile,
* a pipe command ending in ``|`` (``sox x.flac -t wav - |``, ``flac -c -d -s x.flac |``), run by the shell,
* a Kaldi ark reference ``path.ark:offset`` (as written by kaldiio), read with kaldiio.

Usage::

    dd = load_data_dir("data/train")
    wav = read_audio(dd, dd.utt_ids[0])            # float32, mono, 16 kHz
    bad = write_utt2num_samples("data/train", nj=4)  # [(utt, reason), ...] for unreadable audio
    tsv_to_datadir("train.tsv", "data/train")       # fairseq/torchaudio list -> data dir
    datadir_to_tsv(dd, "train.tsv")

Every file this module writes is sorted in C (byte) order of its keys, like ``LC_ALL=C sort``.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile
from tqdm import tqdm

from dphubert.user_options import fix_option

SAMPLE_RATE = 16000

# "path.ark:1234", optionally with a kaldiio slice "[a:b]".
_ARK_REFERENCE = re.compile(r"^.+:\d+(\[[-\d:,]*\])?$")


class DataDirError(ValueError):
    """A data dir file is missing or malformed; the message names the file (and line)."""


class AudioError(ValueError):
    """Audio of one utterance cannot be used; the message names the utt, the source and the fix."""


@dataclass(frozen=True)
class Segment:
    recording: str
    start: float  # seconds
    end: float  # seconds; -1 means "to the end of the recording" (Kaldi convention)


@dataclass
class DataDir:
    """The contents of a Kaldi data dir; ``utt_ids`` are sorted in C (byte) order."""

    path: Path
    wav_scp: dict[str, str]  # recording id -> wav.scp value
    segments: dict[str, Segment] | None = None  # utt id -> segment, when a segments file exists
    text: dict[str, str] = field(default_factory=dict)
    utt2spk: dict[str, str] = field(default_factory=dict)
    utt2num_samples: dict[str, int] = field(default_factory=dict)
    utt_ids: list[str] = field(default_factory=list)

    def source_of(self, utt_id: str) -> str:
        """The wav.scp value (path, pipe command or ark reference) that holds ``utt_id``."""
        recording = self.segments[utt_id].recording if self.segments is not None else utt_id
        return self.wav_scp[recording]


def c_sorted(keys: Iterable[str]) -> list[str]:
    """Sort like ``LC_ALL=C sort``: by the UTF-8 bytes of each key."""
    return sorted(keys, key=lambda key: key.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Reading and writing the text files of a data dir


def read_kaldi_map(path: str | Path, num_fields: int | None = None, allow_empty: bool = False) -> dict[str, str]:
    """Read ``key value...`` lines into {key: rest of line}. Blank lines are skipped.

    With ``num_fields`` set, each line must have exactly that many whitespace-separated fields;
    ``allow_empty`` accepts a key alone (an empty transcript in ``text``).
    """
    path = Path(path)
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 and not allow_empty:
                raise DataDirError(f"{path}:{line_number}: malformed line {line!r}: expected '<id> <value>'")
            key, value = parts[0], parts[1] if len(parts) == 2 else ""
            if num_fields is not None and len(line.split()) != num_fields:
                raise DataDirError(
                    f"{path}:{line_number}: malformed line {line!r}: expected {num_fields} fields"
                )
            if key in entries:
                raise DataDirError(f"{path}:{line_number}: duplicate id {key!r}")
            entries[key] = value
    return entries


def write_kaldi_map(path: str | Path, entries: dict[str, object]) -> None:
    """Write ``key value`` lines sorted in C order."""
    with open(path, "w", encoding="utf-8") as f:
        for key in c_sorted(entries):
            f.write(f"{key} {entries[key]}\n")


def _read_segments(path: Path, wav_scp: dict[str, str]) -> dict[str, Segment]:
    segments = {}
    for utt, value in read_kaldi_map(path, num_fields=4).items():
        recording, start, end = value.split()
        where = f"{path}: segment {utt!r}"
        try:
            segment = Segment(recording, float(start), float(end))
        except ValueError:
            raise DataDirError(f"{where}: start/end must be seconds, got {start!r} {end!r}") from None
        if segment.start < 0 or (segment.end != -1 and segment.end <= segment.start):
            raise DataDirError(f"{where}: needs 0 <= start < end (or end = -1), got {start} {end}")
        if recording not in wav_scp:
            raise DataDirError(f"{where}: recording {recording!r} is not in wav.scp")
        segments[utt] = segment
    return segments


def _read_num_samples(path: Path) -> dict[str, int]:
    counts = {}
    for utt, value in read_kaldi_map(path, num_fields=2).items():
        if not value.isdigit():
            raise DataDirError(f"{path}: utterance {utt!r}: num_samples must be an integer, got {value!r}")
        counts[utt] = int(value)
    return counts


def load_data_dir(path: str | Path) -> DataDir:
    """Load a Kaldi data dir; raises DataDirError for a missing/empty wav.scp or a malformed file."""
    path = Path(path)
    wav_scp_path = path / "wav.scp"
    if not path.is_dir():
        raise DataDirError(f"{path}: data dir not found (expected a directory with a wav.scp)")
    if not wav_scp_path.is_file():
        raise DataDirError(f"{wav_scp_path}: not found; every data dir needs a wav.scp ('<utt> <audio>' lines)")
    wav_scp = read_kaldi_map(wav_scp_path)
    if not wav_scp:
        raise DataDirError(f"{wav_scp_path}: empty data dir (no entries)")

    segments = None
    if (path / "segments").is_file():
        segments = _read_segments(path / "segments", wav_scp)
        if not segments:
            raise DataDirError(f"{path / 'segments'}: empty data dir (segments file has no entries)")

    def optional(name: str, reader: Callable[[Path], dict]) -> dict:
        return reader(path / name) if (path / name).is_file() else {}

    data_dir = DataDir(
        path=path,
        wav_scp=wav_scp,
        segments=segments,
        text=optional("text", lambda p: read_kaldi_map(p, allow_empty=True)),
        utt2spk=optional("utt2spk", lambda p: read_kaldi_map(p, num_fields=2)),
        utt2num_samples=optional("utt2num_samples", _read_num_samples),
    )
    data_dir.utt_ids = c_sorted(segments if segments is not None else wav_scp)
    return data_dir


# ----------------------------------------------------------------------------------------------
# Reading audio


def source_kind(source: str) -> str:
    """'pipe', 'ark' or 'file' for a wav.scp value."""
    if source.rstrip().endswith("|"):
        return "pipe"
    if not os.path.exists(source) and _ARK_REFERENCE.match(source):
        return "ark"
    return "file"


def _int_to_float(samples: np.ndarray) -> np.ndarray:
    """kaldiio returns raw PCM integers for wav arks; scale them to [-1, 1) like soundfile does."""
    if samples.dtype == np.uint8:  # 8-bit PCM is unsigned
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32, copy=False)


def _decode_fix() -> str:
    return f"re-encode or replace the file, or drop the utterance ({fix_option('skip_bad_audio')})"


def _one_line(error: Exception) -> str:
    if isinstance(error, soundfile.LibsndfileError):  # its str() repeats the path we already name
        return error.error_string.strip().rstrip(".")
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _run_pipe(utt_id: str, command: str) -> bytes:
    # Run the shell ourselves (not kaldiio) to see the exit status and stderr of a failing command.
    result = subprocess.run(command.rstrip()[:-1], shell=True, capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = stderr[-1] if stderr else "no error output"
        raise AudioError(
            f"utt {utt_id}: command '{command}' failed (exit {result.returncode}): {detail}; "
            f"fix the command in wav.scp"
        )
    return result.stdout


def _decode(utt_id: str, source: str, segment: Segment | None) -> tuple[np.ndarray, int]:
    """Decode one utterance to float32 (samples, channels) and its sample rate, segment cut."""
    kind = source_kind(source)
    try:
        if kind == "file":
            if not os.path.isfile(source):
                raise AudioError(f"utt {utt_id}: audio file not found: {source}; fix the path in wav.scp")
            with soundfile.SoundFile(source) as f:
                rate = f.samplerate
                start, stop = 0, f.frames
                if segment is not None:  # seek instead of decoding the whole recording
                    start, stop = _segment_bounds(segment, rate, f.frames)
                    f.seek(min(start, f.frames))
                samples = f.read(max(stop - start, 0), dtype="float32", always_2d=True)
            return samples, rate
        if kind == "pipe":
            samples, rate = soundfile.read(io.BytesIO(_run_pipe(utt_id, source)), dtype="float32", always_2d=True)
        else:
            samples, rate = _load_ark(utt_id, source)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise AudioError(f"utt {utt_id}: cannot decode {source}: {_one_line(error)}; {_decode_fix()}") from None
    if segment is not None:
        start, stop = _segment_bounds(segment, rate, len(samples))
        samples = samples[start:stop]
    return samples, rate


def _load_ark(utt_id: str, source: str) -> tuple[np.ndarray, int]:
    import kaldiio

    try:
        loaded = kaldiio.load_mat(source)
    except Exception as error:  # a bad offset or truncated ark surfaces as any of several errors
        raise AudioError(f"utt {utt_id}: cannot decode {source}: {_one_line(error)}; {_decode_fix()}") from None
    if not isinstance(loaded, tuple):
        raise AudioError(f"utt {utt_id}: {source} holds a feature matrix, not audio; point wav.scp at audio")
    rate, samples = loaded
    samples = _int_to_float(np.asarray(samples))
    return (samples[:, None] if samples.ndim == 1 else samples), rate


def _segment_bounds(segment: Segment, rate: int, num_frames: int) -> tuple[int, int]:
    start = int(round(segment.start * rate))
    stop = num_frames if segment.end == -1 else min(int(round(segment.end * rate)), num_frames)
    return start, stop


def _check_format(
    utt_id: str,
    source: str,
    num_frames: int,
    channels: int,
    rate: int,
    resample: bool,
    downmix: bool,
    in_segment: bool,
) -> None:
    """Raise AudioError for audio the models cannot take as it is (unless an option allows it)."""
    if num_frames == 0:
        where = "its segment of " if in_segment else ""
        raise AudioError(
            f"utt {utt_id}: {where}{source} has 0 samples; remove it from the data dir "
            f"or drop it with {fix_option('skip_bad_audio')}"
        )
    if channels != 1 and not downmix:
        raise AudioError(
            f"utt {utt_id}: {source} has {channels} channels, expected mono; convert it "
            f"(e.g. sox in.wav -c 1 out.wav) or pass {fix_option('downmix')} to average the channels"
        )
    if rate != SAMPLE_RATE and not resample:
        raise AudioError(
            f"utt {utt_id}: {source} is {rate} Hz, expected {SAMPLE_RATE} Hz; resample to 16 kHz "
            f"(e.g. sox in.wav -r 16000 out.wav) or pass {fix_option('resample')}"
        )


def read_audio(data_dir: DataDir, utt_id: str, resample: bool = False, downmix: bool = False) -> np.ndarray:
    """Read one utterance as a float32 mono 16 kHz 1-D array (cut to its segment if any).

    Raises AudioError (one line: utt, source, fix) for missing, corrupt, empty, non-16 kHz
    (unless ``resample``: torchaudio.functional.resample) or multi-channel (unless ``downmix``:
    channel average) audio.
    """
    source = data_dir.source_of(utt_id)
    segment = data_dir.segments[utt_id] if data_dir.segments is not None else None
    samples, rate = _decode(utt_id, source, segment)
    _check_format(utt_id, source, len(samples), samples.shape[1], rate, resample, downmix, segment is not None)

    waveform = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import torch
        import torchaudio.functional

        waveform = torchaudio.functional.resample(torch.from_numpy(waveform), rate, SAMPLE_RATE).numpy()
    if not np.isfinite(waveform).all():
        raise AudioError(f"utt {utt_id}: {source} contains NaN or Inf samples; re-encode or drop the file")
    return waveform


# ----------------------------------------------------------------------------------------------
# Checking audio and counting samples


def probe_num_samples(
    data_dir: DataDir, utt_id: str, full_read: bool = False, resample: bool = False, downmix: bool = False
) -> int:
    """Number of 16 kHz samples of one utterance; raises AudioError when it is unusable.

    Plain files are checked from their header only (fast: no decoding) unless ``full_read``;
    pipes and arks are always decoded.
    """
    source = data_dir.source_of(utt_id)
    if full_read or source_kind(source) != "file":
        return len(read_audio(data_dir, utt_id, resample=resample, downmix=downmix))
    if not os.path.isfile(source):
        raise AudioError(f"utt {utt_id}: audio file not found: {source}; fix the path in wav.scp")
    try:
        info = soundfile.info(source)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"utt {utt_id}: cannot decode {source}: {_one_line(error)}; {_decode_fix()}") from None
    frames = info.frames
    in_segment = data_dir.segments is not None
    if in_segment:
        start, stop = _segment_bounds(data_dir.segments[utt_id], info.samplerate, frames)
        frames = max(stop - start, 0)
    _check_format(utt_id, source, frames, info.channels, info.samplerate, resample, downmix, in_segment)
    if info.samplerate != SAMPLE_RATE:  # the length torchaudio's resample will produce
        frames = int(np.ceil(frames * SAMPLE_RATE / info.samplerate))
    return frames


def compute_num_samples(
    data_dir: DataDir,
    utt_ids: list[str] | None = None,
    nj: int = 1,
    full_read: bool = False,
    resample: bool = False,
    downmix: bool = False,
    progress: bool = True,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Count samples of many utterances with ``nj`` threads.

    Returns ({utt: num_samples} for good ones, [(utt, reason)] for bad ones, in utt order).
    """
    utt_ids = data_dir.utt_ids if utt_ids is None else utt_ids

    def probe(utt_id: str) -> tuple[str, int | None, str | None]:
        try:
            return utt_id, probe_num_samples(data_dir, utt_id, full_read, resample, downmix), None
        except AudioError as error:
            return utt_id, None, str(error)

    # Threads suffice: libsndfile calls and subprocesses release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        results = list(
            tqdm(
                pool.map(probe, utt_ids),
                total=len(utt_ids),
                desc=f"checking audio of {data_dir.path}",
                unit="utt",
                disable=not progress or not utt_ids,
                mininterval=2.0,
            )
        )
    counts = {utt: count for utt, count, _ in results if count is not None}
    bad = [(utt, reason) for utt, _, reason in results if reason is not None]
    return counts, bad


def validate_audio(data_dir: DataDir, nj: int = 1, full_read: bool = True, **read_options) -> list[tuple[str, str]]:
    """Decode every utterance (``full_read=False``: headers only) and return [(utt, reason)] for bad ones."""
    return compute_num_samples(data_dir, nj=nj, full_read=full_read, **read_options)[1]


def write_utt2num_samples(data_dir_path: str | Path, nj: int = 1, **probe_options) -> list[tuple[str, str]]:
    """Write ``<dir>/utt2num_samples`` for every usable utterance; return [(utt, reason)] for the rest."""
    data_dir = load_data_dir(data_dir_path)
    counts, bad = compute_num_samples(data_dir, nj=nj, **probe_options)
    write_kaldi_map(Path(data_dir_path) / "utt2num_samples", counts)
    return bad


# ----------------------------------------------------------------------------------------------
# fairseq / torchaudio tsv lists: first line the root dir, then "relpath<TAB>num_samples"


def tsv_to_datadir(tsv: str | Path, out_dir: str | Path) -> DataDir:
    """Make a data dir (wav.scp, utt2num_samples, utt2spk, spk2utt) from a tsv list.

    Utterance ids are the file names without extension (LibriSpeech style); when two files share
    a name, ids are the relative paths without extension with '/' replaced by '-'.
    """
    tsv = Path(tsv)
    with open(tsv, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise DataDirError(f"{tsv}:1: empty tsv list; the first line must be the audio root directory")
    root = Path(lines[0].strip())
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise DataDirError(f"{tsv}:{line_number}: malformed line {line!r}: expected 'relpath<TAB>num_samples'")
        rows.append((parts[0], int(parts[1])))
    if not rows:
        raise DataDirError(f"{tsv}: no audio entries after the root line")

    def id_from_stem(relpath: str) -> str:
        return Path(relpath).stem

    def id_from_path(relpath: str) -> str:
        return str(Path(relpath).with_suffix("")).replace("/", "-")

    make_id = id_from_stem
    if len({id_from_stem(relpath) for relpath, _ in rows}) < len(rows):
        make_id = id_from_path
    wav_scp, num_samples = {}, {}
    for relpath, count in rows:
        utt = make_id(relpath)
        if utt in wav_scp:
            raise DataDirError(f"{tsv}: file {relpath!r} is listed twice")
        if any(c.isspace() for c in str(root / relpath)):
            raise DataDirError(f"{tsv}: path {root / relpath!s} contains whitespace, which wav.scp cannot hold")
        wav_scp[utt] = str(root / relpath)
        num_samples[utt] = count

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(out_dir / "wav.scp", wav_scp)
    write_kaldi_map(out_dir / "utt2num_samples", num_samples)
    # Kaldi tools want a speaker map; without speaker info each utterance is its own speaker.
    write_kaldi_map(out_dir / "utt2spk", {utt: utt for utt in wav_scp})
    write_kaldi_map(out_dir / "spk2utt", {utt: utt for utt in wav_scp})
    return load_data_dir(out_dir)


def datadir_to_tsv(data_dir: DataDir, tsv: str | Path, root: str | Path | None = None, nj: int = 1) -> None:
    """Write a tsv list of a data dir whose wav.scp holds plain files and which has no segments.

    ``root`` defaults to the deepest directory common to all files. Sample counts come from
    utt2num_samples when present, else from the file headers.
    """
    if data_dir.segments is not None:
        raise DataDirError(
            f"{data_dir.path}/segments: tsv lists cannot express segments; cut the audio into files first"
        )
    for utt in data_dir.utt_ids:
        if source_kind(data_dir.wav_scp[utt]) != "file":
            raise DataDirError(
                f"{data_dir.path}/wav.scp: utt {utt} is a pipe or ark entry; tsv lists need plain files "
                f"(dump the audio to wav/flac first)"
            )
    paths = {utt: os.path.abspath(data_dir.wav_scp[utt]) for utt in data_dir.utt_ids}
    if root is None:
        root = os.path.commonpath([os.path.dirname(p) for p in paths.values()])
    root = os.path.abspath(root)
    missing = [utt for utt in data_dir.utt_ids if utt not in data_dir.utt2num_samples]
    counts = dict(data_dir.utt2num_samples)
    if missing:
        computed, bad = compute_num_samples(data_dir, missing, nj=nj)
        if bad:
            raise AudioError(f"{len(bad)} utterances have bad audio, first: {bad[0][1]}")
        counts.update(computed)
    with open(tsv, "w", encoding="utf-8") as f:
        f.write(root + "\n")
        for utt in data_dir.utt_ids:
            f.write(f"{os.path.relpath(paths[utt], root)}\t{counts[utt]}\n")
