"""Side files s3prl's SUPERB tasks read but the corpora do not ship; each is made once per output dir.

- ASR: ``len_for_bucket/<split>.csv`` (``file_path`` relative to the LibriSpeech root, ``length`` in samples,
  longest first) and a fairseq-style ``char.dict`` (``<char> <count>``, ``|`` = word boundary).
- PR: LibriPhone ``{train,dev,test}.csv`` (``id, wav_path, length, transcription``) and ``phoneme.txt``
  (the phonemes of the lexicon); utterances with a word missing from the lexicon are left out (counted).
- ER: IEMOCAP ``Session<k>/{train,test}_meta_data.json`` (test = session k; labels neu/hap(+exc)/ang/sad).
- ASV: the training speaker list, a small dev trial list, and s3prl's own utterance-length cache
  (``s3prl/downstream/sv_voxceleb1/.wav_lengths/Voxceleb1_length.pt``): s3prl would build it with joblib
  worker processes that lack our torchaudio compatibility layer, and it keys the cache by a constant name,
  so a cache from another corpus would be used silently. We rebuild it whenever the corpus changes.
"""

import csv
import json
import random
import re
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import soundfile
from tqdm import tqdm

from .errors import SuperbError

IEMOCAP_LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
IEMOCAP_MERGE = {"exc": "hap"}
ASV_DEV_TRIALS = 2000


def _done(out: Path, stamp: str) -> bool:
    marker = out / ".done"
    return marker.exists() and marker.read_text() == stamp


def _mark(out: Path, stamp: str) -> None:
    (out / ".done").write_text(stamp)


def _librispeech_utts(libri: Path, split: str):
    """(utt id, flac path, words) of one LibriSpeech split, from its ``*.trans.txt`` files."""
    trans_files = sorted((libri / split).glob("*/*/*.trans.txt"))
    if not trans_files:
        raise SuperbError(f"no *.trans.txt under {libri / split}; is LIBRISPEECH the LibriSpeech root?")
    for trans in trans_files:
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, words = line.strip().partition(" ")
            if utt:
                yield utt, trans.parent / f"{utt}.flac", words.upper()


def _num_samples(path: Path) -> int:
    try:
        return soundfile.info(str(path)).frames
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise SuperbError(f"cannot read audio {path}: {e}; re-extract the corpus") from None


# ----------------------------------------------------------------------------- ASR


def asr_files(libri: Path, splits: Sequence[str], out: Path) -> Dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{libri.resolve()} {' '.join(splits)}"
    bucket_dir, dict_path = out / "len_for_bucket", out / "char.dict"
    if not _done(out, stamp):
        bucket_dir.mkdir(exist_ok=True)
        chars = Counter()
        for split in splits:
            rows = []
            for utt, flac, words in tqdm(list(_librispeech_utts(libri, split)), desc=f"ASR lengths {split}"):
                rows.append((str(flac.relative_to(libri)), _num_samples(flac)))
                if split == splits[0]:
                    chars.update(words.replace(" ", "|") + "|")
            rows.sort(key=lambda r: -r[1])
            with open(bucket_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["", "file_path", "length", "label"])
                writer.writerows([i, path, length, ""] for i, (path, length) in enumerate(rows))
        ordered = sorted(chars.items(), key=lambda item: (-item[1], item[0]))
        dict_path.write_text("".join(f"{c} {n}\n" for c, n in ordered), encoding="utf-8")
        _mark(out, stamp)
    return {"ASR_BUCKET_DIR": str(bucket_dir), "ASR_DICT": str(dict_path)}


# ----------------------------------------------------------------------------- PR


def read_lexicon(paths: Iterable[Path]) -> Dict[str, List[str]]:
    """word -> phonemes; the first pronunciation of a word wins (as s3prl does)."""
    lexicon: Dict[str, List[str]] = {}
    for path in paths:
        if not Path(path).is_file():
            raise SuperbError(f"PR: lexicon {path} not found; fix LIBRISPEECH_LEXICON in db.sh")
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            word, *phones = line.split()
            if phones:
                lexicon.setdefault(word.upper(), phones)
    if not lexicon:
        raise SuperbError(f"PR: the lexicon files {[str(p) for p in paths]} hold no 'WORD PH1 PH2 ...' line")
    return lexicon


def libriphone_files(libri: Path, lexicons: Sequence[Path], out: Path) -> Dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{libri.resolve()} {' '.join(str(p) for p in lexicons)}"
    if not _done(out, stamp):
        lexicon = read_lexicon(lexicons)
        for split, name in (("train-clean-100", "train"), ("dev-clean", "dev"), ("test-clean", "test")):
            rows, skipped = [], 0
            for utt, flac, words in tqdm(list(_librispeech_utts(libri, split)), desc=f"PR lists {split}"):
                if all(w in lexicon for w in words.split()):
                    rows.append([utt, str(flac), _num_samples(flac), words])
                else:
                    skipped += 1
            if skipped:
                print(f"PR: {skipped} {split} utterances have words missing from the lexicon; left out",
                      file=sys.stderr)
            with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "wav_path", "length", "transcription"])
                writer.writerows(rows)
        phones = sorted({p for seq in lexicon.values() for p in seq})
        (out / "phoneme.txt").write_text("".join(f"{p}\n" for p in phones), encoding="utf-8")
        _mark(out, stamp)
    return {"LIBRIPHONE_CSV_DIR": str(out), "LIBRIPHONE_LEXICONS": [str(p) for p in lexicons],
            "LIBRIPHONE_VOCAB": str(out / "phoneme.txt")}


def download_g2p_lexicons() -> List[str]:
    """s3prl's LibriSpeech G2P lexicon files (downloaded once into s3prl's cache)."""
    from dphubert.s3prl import compat

    compat.apply()
    try:
        from s3prl.dataio.encoder.g2p import DEFAULT_LEXICON_URL
        from s3prl.util.download import _urls_to_filepaths

        return [str(p) for p in _urls_to_filepaths(*DEFAULT_LEXICON_URL)]
    except Exception as e:  # network errors come in many types
        raise SuperbError(f"PR: downloading s3prl's G2P lexicon failed ({type(e).__name__}); set "
                          f"LIBRISPEECH_LEXICON=/path/to/librispeech-lexicon.txt in db.sh") from None


# ----------------------------------------------------------------------------- ER


def iemocap_meta(root: Path, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    stamp = str(root.resolve())
    if not _done(out, stamp):
        line_re = re.compile(r"^\[\S+ - \S+\]\t(\S+)\t(\S+)\t")
        sessions, missing = {}, 0
        for n in range(1, 6):
            items = []
            for evaluation in sorted((root / f"Session{n}" / "dialog" / "EmoEvaluation").glob("*.txt")):
                for line in evaluation.read_text(encoding="utf-8", errors="replace").splitlines():
                    match = line_re.match(line)
                    if not match:
                        continue
                    utt, label = match.group(1), IEMOCAP_MERGE.get(match.group(2), match.group(2))
                    if label in IEMOCAP_LABELS:
                        path = f"Session{n}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav"
                        if not (root / path).is_file():  # as s3prl's IEMOCAP_preprocess.py: labels without audio
                            missing += 1
                            continue
                        # speaker = session + gender of the speaker ("Ses02F"), s3prl's convention
                        items.append({"path": path, "label": label, "speaker": utt.split("_", 1)[0]})
            if not items:
                raise SuperbError(f"ER: no labelled utterance in {root}/Session{n}/dialog/EmoEvaluation; "
                                  f"is IEMOCAP the IEMOCAP_full_release folder?")
            sessions[n] = items
        if missing:
            print(f"ER: {missing} labelled IEMOCAP utterances have no wav file under {root}; left out",
                  file=sys.stderr)
        for k in range(1, 6):
            fold = out / f"Session{k}"
            fold.mkdir(exist_ok=True)
            train = [item for n, items in sessions.items() if n != k for item in items]
            for name, data in (("train", train), ("test", sessions[k])):
                with open(fold / f"{name}_meta_data.json", "w", encoding="utf-8") as f:
                    json.dump({"labels": IEMOCAP_LABELS, "meta_data": data}, f, indent=1)
        _mark(out, stamp)
    return str(out)


# ----------------------------------------------------------------------------- ASV


def asv_lists(root: Path, out: Path) -> Dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    speakers_file, trials_file = out / "train_speakers.txt", out / "dev_trials.txt"
    stamp = str(root.resolve())
    if not _done(out, stamp):
        dev = root / "dev" / "wav"
        by_speaker = {spk.name: sorted(str(p.relative_to(dev)) for p in spk.glob("*/*.wav"))
                      for spk in sorted(dev.iterdir()) if spk.is_dir()}
        by_speaker = {s: files for s, files in by_speaker.items() if files}
        if len(by_speaker) < 2:
            raise SuperbError(f"ASV: {dev} needs at least 2 speaker folders (idNNNNN/<video>/<n>.wav)")
        speakers_file.write_text("".join(f"{s}\n" for s in by_speaker), encoding="utf-8")
        rng = random.Random(0)
        names = list(by_speaker)
        trials = []
        for _ in range(ASV_DEV_TRIALS // 2):
            spk = rng.choice(names)
            other = rng.choice([n for n in names if n != spk])
            trials.append(f"1 {rng.choice(by_speaker[spk])} {rng.choice(by_speaker[spk])}")
            trials.append(f"0 {rng.choice(by_speaker[spk])} {rng.choice(by_speaker[other])}")
        trials_file.write_text("".join(f"{t}\n" for t in trials), encoding="utf-8")
        _mark(out, stamp)
    return {"ASV_TRAIN_SPEAKERS": str(speakers_file), "ASV_DEV_TRIALS": str(trials_file)}


def _trimmed_length(path: str) -> int:
    from s3prl.downstream.sv_voxceleb1.dataset import EFFECTS
    from torchaudio.sox_effects import apply_effects_file

    wav, _ = apply_effects_file(path, EFFECTS)
    return wav.shape[-1]


def asv_length_cache(dev_wav: Path, jobs: int = 2) -> Path:
    """Write s3prl's sv_voxceleb1 length cache for ``dev_wav`` (lengths after its VAD effects)."""
    import torch

    from dphubert.s3prl import compat

    compat.apply()
    import s3prl.downstream.sv_voxceleb1.dataset as sv_dataset

    cache = Path(sv_dataset.__file__).parent / ".wav_lengths" / "Voxceleb1_length.pt"
    stamp = cache.with_suffix(".source")
    if cache.exists() and stamp.exists() and stamp.read_text() == str(dev_wav.resolve()):
        return cache
    paths = [str(p) for p in sv_dataset.find_files(str(dev_wav))]
    with Pool(jobs) as pool:  # fork: the workers inherit the compatibility layer
        lengths = list(tqdm(pool.imap(_trimmed_length, paths, chunksize=16), total=len(paths),
                            desc="ASV lengths"))
    cache.parent.mkdir(exist_ok=True)
    torch.save([[Path(p).parts[-3:] for p in paths], lengths], str(cache))
    stamp.write_text(str(dev_wav.resolve()))
    return cache
