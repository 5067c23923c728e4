"""Writers that lay the rendered demo utterances out as Kaldi data dirs and as the
corpora s3prl's downstream tasks read (Speech Commands v0.01, Fluent Speech Commands,
VoxCeleb1, LibriSpeech + the SUPERB ASR / PR side files).

Audio of the s3prl layouts is hard-linked to the canonical 16 kHz wav files (copied
when links are impossible); the LibriSpeech copies are FLAC, written by the renderer.
"""

import csv
import hashlib
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import soundfile as sf
import yaml

SAMPLE_RATE = 16000
SC_TRAIN_DIR = "speech_commands_v0.01"
SC_TEST_DIR = "speech_commands_test_set_v0.01"
FSC_DIR = "fluent_speech_commands_dataset"
VOX_DIR = "VoxCeleb1"
LIBRI_DIR = "LibriSpeech"
SUPERB_DIR = "superb"
SC_TARGET_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
BACKGROUND_NOISE_GAIN = 0.3  # the unit-RMS noise bank at about -10 dBFS
LIBRI_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
FSC_SPLITS = {"train": "train", "dev": "valid", "test": "test"}
SID_SPLIT_CODES = {"train": 1, "dev": 2, "test": 3}
VOX_UTTS_PER_VIDEO = 5
PATHS_FILE = "s3prl_paths.yaml"
# every directory/file name this module (and the renderer) creates under --out-audio
AUDIO_OUTPUTS = ("wav", SC_TRAIN_DIR, SC_TEST_DIR, FSC_DIR, VOX_DIR, LIBRI_DIR, SUPERB_DIR, PATHS_FILE)


def link_or_copy(src, dst):
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_lines(path, lines):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _c_sorted(lines):
    # LC_ALL=C order is the order of the UTF-8 bytes
    return sorted(lines, key=lambda s: s.encode("utf-8"))


# ---------------------------------------------------------------- Kaldi data dirs

def write_kaldi_dir(data_dir, utts):
    """wav.scp, text, utt2spk, spk2utt, utt2num_samples, phones, spk2gender and
    utt2category (keyword/silence/command/sentence), all LC_ALL=C sorted."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts, key=lambda u: u.utt_id.encode())
    _write_lines(data_dir / "wav.scp", [f"{u.utt_id} {u.wav_path}" for u in utts])
    _write_lines(data_dir / "text", [f"{u.utt_id} {u.text.upper()}".rstrip() for u in utts])
    _write_lines(data_dir / "utt2spk", [f"{u.utt_id} {u.speaker.name}" for u in utts])
    _write_lines(data_dir / "utt2num_samples", [f"{u.utt_id} {u.num_samples}" for u in utts])
    _write_lines(data_dir / "utt2category", [f"{u.utt_id} {u.kind}" for u in utts])
    _write_lines(data_dir / "phones", [f"{u.utt_id} {' '.join(u.phones)}" for u in utts if u.phones])
    spk2utt = defaultdict(list)
    genders = {}
    for u in utts:
        spk2utt[u.speaker.name].append(u.utt_id)
        genders[u.speaker.name] = u.speaker.gender
    _write_lines(data_dir / "spk2utt", _c_sorted(f"{s} {' '.join(us)}" for s, us in spk2utt.items()))
    _write_lines(data_dir / "spk2gender", _c_sorted(f"{s} {g}" for s, g in genders.items()))


def write_kaldi_dirs(out_data, utts):
    """data/{train,dev,test}: every utterance in its speaker's partition."""
    for partition in ("train", "dev", "test"):
        write_kaldi_dir(Path(out_data) / partition, [u for u in utts if u.partition == partition and not u.sid_only])


# ---------------------------------------------------------------- Speech Commands

def sc_percentage(speaker_hash, max_per_class=2 ** 27 - 1):
    """The validation/testing bucket Speech Commands (and s3prl's split_dataset)
    derive from the part of a file name before `_nohash_`."""
    hashed = int(hashlib.sha1(speaker_hash.encode("utf-8")).hexdigest(), 16)
    return (hashed % (max_per_class + 1)) * (100.0 / max_per_class)


def sc_speaker_hash(speaker, seed):
    """An 8-hex-digit speaker id whose hash bucket puts the speaker in its partition
    (dev: < 10, test: 10..20, train: >= 20), as s3prl's split_dataset computes it."""
    wanted = {"dev": (0, 10), "test": (10, 20), "train": (20, 101)}[speaker.partition]
    for attempt in range(100000):
        candidate = hashlib.sha1(f"{seed}-{speaker.name}-{attempt}".encode()).hexdigest()[:8]
        if wanted[0] <= sc_percentage(candidate) < wanted[1]:
            return candidate
    raise RuntimeError(f"no Speech Commands speaker hash found for {speaker.name}")


def write_speech_commands(out_audio, utts, noise_bank, seed):
    """Train root: one folder per word + _background_noise_ + validation/testing lists;
    test root: the test speakers' clips in the 12 class folders s3prl reads."""
    train_root = Path(out_audio) / SC_TRAIN_DIR
    test_root = Path(out_audio) / SC_TEST_DIR
    by_speaker = defaultdict(list)
    for u in utts:
        if u.kind in ("keyword", "silence"):
            by_speaker[u.speaker].append(u)
    lists = {"dev": [], "test": []}
    for speaker, clips in by_speaker.items():
        speaker_hash = sc_speaker_hash(speaker, seed)
        for number, u in enumerate(sorted(clips, key=lambda u: u.utt_id)):
            file_name = f"{speaker_hash}_nohash_{number}.wav"
            if u.kind == "keyword":
                link_or_copy(u.wav_path, train_root / u.keyword / file_name)
                if u.partition in lists:
                    lists[u.partition].append(f"{u.keyword}/{file_name}")
            if u.partition == "test":
                label = ("_silence_" if u.kind == "silence"
                         else u.keyword if u.keyword in SC_TARGET_WORDS else "_unknown_")
                link_or_copy(u.wav_path, test_root / label / file_name)
    noise_dir = train_root / "_background_noise_"
    noise_dir.mkdir(parents=True, exist_ok=True)
    # One-second files: s3prl's _silence_ class crops a random second out of a noise file at every draw; from a
    # one-second file that crop is the file itself, so a frozen upstream's memoised features are reused
    # (stage 5's feature cache) instead of recomputed for a new crop in nearly every batch.
    for kind, signal in noise_bank.items():
        for number in range(len(signal) // SAMPLE_RATE):
            second = signal[number * SAMPLE_RATE:(number + 1) * SAMPLE_RATE]
            sf.write(noise_dir / f"{kind}_noise_{number:03d}.wav", BACKGROUND_NOISE_GAIN * second, SAMPLE_RATE,
                     subtype="PCM_16")
    _write_lines(train_root / "validation_list.txt", sorted(lists["dev"]))
    _write_lines(train_root / "testing_list.txt", sorted(lists["test"]))
    return train_root, test_root


# ---------------------------------------------------------------- Fluent Speech Commands

def write_fluent_commands(out_audio, utts):
    """data/{train,valid,test}_data.csv + wavs/speakers/<speaker>/<utt>.wav."""
    root = Path(out_audio) / FSC_DIR
    rows = {split: [] for split in FSC_SPLITS.values()}
    for u in sorted((u for u in utts if u.kind == "command" and not u.sid_only), key=lambda u: u.utt_id):
        rel = f"wavs/speakers/{u.speaker.name}/{u.utt_id}.wav"
        link_or_copy(u.wav_path, root / rel)
        rows[FSC_SPLITS[u.partition]].append(
            [rel, u.speaker.name, u.text[:1].upper() + u.text[1:], u.intent.action, u.intent.object, u.intent.location])
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with open(root / "data" / f"{split}_data.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows([i, *row] for i, row in enumerate(split_rows))
    return root


# ---------------------------------------------------------------- VoxCeleb1 (SID)

def vox_speaker_id(speaker):
    # s3prl's label is int(id[2:]) - 10001, so ids must run from id10001 upwards
    return f"id{10001 + speaker.index}"


def _video_id(speaker_name, number, seed):
    digest = hashlib.sha1(f"{seed}-{speaker_name}-video{number}".encode()).hexdigest()
    return digest[:11]


def write_voxceleb1(out_audio, utts, seed):
    """<root>/{dev,test}/wav/idNNNNN/<video>/<nnnnn>.wav and <root>/iden_split.txt
    (1 train, 2 dev, 3 test). Test-partition speakers go under test/wav, like
    VoxCeleb1's verification test speakers; s3prl globs both."""
    root = Path(out_audio) / VOX_DIR
    by_speaker = defaultdict(list)
    for u in utts:
        if u.sid_split:
            by_speaker[u.speaker].append(u)
    lines = []
    for speaker in sorted(by_speaker, key=lambda s: s.index):
        part = "test" if speaker.partition == "test" else "dev"
        for i, u in enumerate(sorted(by_speaker[speaker], key=lambda u: u.utt_id)):
            video = _video_id(speaker.name, i // VOX_UTTS_PER_VIDEO, seed)
            rel = f"{vox_speaker_id(speaker)}/{video}/{i % VOX_UTTS_PER_VIDEO + 1:05d}.wav"
            link_or_copy(u.wav_path, root / part / "wav" / rel)
            lines.append(f"{SID_SPLIT_CODES[u.sid_split]} {rel}")
    _write_lines(root / "iden_split.txt", lines)
    return root


# ---------------------------------------------------------------- LibriSpeech (ASR / PR)

def libri_ids(speaker):
    """(speaker number, chapter number) of a demo speaker in the LibriSpeech layout."""
    return 101 + speaker.index, 1001 + speaker.index


def assign_librispeech_paths(out_audio, utts):
    """Sets `flac_path` on every sentence: <root>/<split>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac."""
    root = Path(out_audio) / LIBRI_DIR
    counters = Counter()
    for u in sorted((u for u in utts if u.kind == "sentence"), key=lambda u: u.utt_id):
        spk, chapter = libri_ids(u.speaker)
        number = counters[u.speaker.name]
        counters[u.speaker.name] += 1
        u.flac_path = str(root / LIBRI_SPLITS[u.partition] / str(spk) / str(chapter)
                          / f"{spk}-{chapter}-{number:04d}.flac")


def write_librispeech(out_audio, utts):
    """Transcript files next to the FLAC files, plus the SUPERB side files:
    superb/asr/len_for_bucket/<split>.csv and char.dict (s3prl `asr` task) and
    superb/pr/{train,dev,test}.csv, lexicon.txt, phoneme.txt (s3prl `ctc` libriphone).
    Returns the dict of paths a downstream config needs."""
    root = Path(out_audio) / LIBRI_DIR
    superb = Path(out_audio) / SUPERB_DIR
    sentences = sorted((u for u in utts if u.kind == "sentence"), key=lambda u: u.flac_path)
    trans = defaultdict(list)
    buckets = defaultdict(list)
    pr_rows = defaultdict(list)
    chars = Counter()
    phone_set = set()
    for u in sentences:
        flac = Path(u.flac_path)
        words = u.text.upper()
        trans[flac.parent].append(f"{flac.stem} {words}")
        split = LIBRI_SPLITS[u.partition]
        buckets[split].append((str(flac.relative_to(root)), u.num_samples))
        pr_rows[u.partition].append([flac.stem, str(flac), u.num_samples, " ".join(u.phones)])
        chars.update(words.replace(" ", "|"))
        phone_set.update(u.phones)
    for chapter_dir, lines in trans.items():
        spk, chapter = chapter_dir.parent.name, chapter_dir.name
        _write_lines(chapter_dir / f"{spk}-{chapter}.trans.txt", lines)

    bucket_dir = superb / "asr" / "len_for_bucket"
    bucket_dir.mkdir(parents=True, exist_ok=True)
    for split, entries in buckets.items():
        with open(bucket_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["", "file_path", "length", "label"])
            ordered = sorted(entries, key=lambda e: -e[1])
            writer.writerows([i, path, length, ""] for i, (path, length) in enumerate(ordered))
    # fairseq dictionary format: "<symbol> <count>", most frequent first; "|" is the word boundary
    _write_lines(superb / "asr" / "char.dict", [f"{c} {n}" for c, n in sorted(chars.items(), key=lambda x: (-x[1], x[0]))])

    pr_dir = superb / "pr"
    pr_dir.mkdir(parents=True, exist_ok=True)
    for partition, rows in pr_rows.items():
        with open(pr_dir / f"{partition}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "wav_path", "length", "transcription"])
            writer.writerows(rows)
    phones = _c_sorted(phone_set)
    # the transcriptions already are phone sequences, so the lexicon maps each phone to itself
    _write_lines(pr_dir / "lexicon.txt", [f"{p} {p}" for p in phones])
    _write_lines(pr_dir / "phoneme.txt", phones)
    return root


def write_paths_file(out_audio, out_data):
    """s3prl_paths.yaml: the config keys each s3prl downstream task needs for this corpus."""
    a = Path(out_audio).resolve()
    paths = {
        "speech_commands": {"speech_commands_root": f"{a / SC_TRAIN_DIR}/",
                            "speech_commands_test_root": f"{a / SC_TEST_DIR}/"},
        "fluent_commands": {"file_path": str(a / FSC_DIR)},
        "voxceleb1": {"file_path": str(a / VOX_DIR), "meta_data": str(a / VOX_DIR / "iden_split.txt")},
        "asr": {"libri_root": str(a / LIBRI_DIR), "bucket_file": str(a / SUPERB_DIR / "asr" / "len_for_bucket"),
                "dict_path": str(a / SUPERB_DIR / "asr" / "char.dict"),
                "train": [LIBRI_SPLITS["train"]], "dev-clean": [LIBRI_SPLITS["dev"]],
                "test-clean": [LIBRI_SPLITS["test"]]},
        "ctc_libriphone": {"corpus": {"name": "libriphone", "csv_dir": str(a / SUPERB_DIR / "pr"),
                                      "lexicon": [str(a / SUPERB_DIR / "pr" / "lexicon.txt")],
                                      "train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                           "text": {"mode": "word", "vocab_file": str(a / SUPERB_DIR / "pr" / "phoneme.txt")}},
        "kaldi": {split: str(Path(out_data).resolve() / split) for split in ("train", "dev", "test")},
    }
    with open(a / PATHS_FILE, "w", encoding="utf-8") as f:
        f.write("# Paths of the demo corpus for s3prl downstream configs (written by synth_corpus.py)\n")
        yaml.safe_dump(paths, f, sort_keys=False, allow_unicode=True)
    return paths
