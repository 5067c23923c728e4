"""Corpus locations for the SUPERB tasks: a recipe's ``db.sh`` (+ ``--corpus VAR=PATH``) -> config variables.

db.sh variables (shell assignments; relative paths are relative to db.sh's directory):

=========================  ====  ===========================================================================
variable                   task  what it points to
=========================  ====  ===========================================================================
SPEECH_COMMANDS            ks    Speech Commands v0.01 (``speech_commands_v0.01``: a folder per word,
                                 ``_background_noise_``, ``validation_list.txt``, ``testing_list.txt``)
SPEECH_COMMANDS_TEST       ks    its test set (``speech_commands_test_set_v0.01``); default: that folder
                                 next to SPEECH_COMMANDS
FLUENT_SPEECH_COMMANDS     ic    ``fluent_speech_commands_dataset`` (``data/{train,valid,test}_data.csv``,
                                 ``wavs/``)
VOXCELEB1                  sid,  VoxCeleb1 root with ``dev/wav/idNNNNN/...``, ``test/wav/...``,
                           asv   ``iden_split.txt`` (SID) and ``veri_test2.txt`` (ASV's cleaned trials)
LIBRISPEECH                asr,  LibriSpeech root (``train-clean-100/``, ``dev-clean/``, ``test-clean/``)
                           pr
LIBRIPHONE                 pr    prepared SUPERB PR files: ``{train,dev,test}.csv`` (columns ``wav_path``,
                                 ``transcription``), ``lexicon*.txt`` and ``phoneme.txt``; if empty they are
                                 made from LIBRISPEECH + LIBRISPEECH_LEXICON
LIBRISPEECH_LEXICON        pr    word -> phonemes lexicon file(s), space separated; if empty, s3prl's G2P
                                 lexicon is downloaded (needs internet)
IEMOCAP                    er    ``IEMOCAP_full_release`` (``Session1..5/``)
QUESST14                   qbe   ``quesst14Database`` (``Audio/``, ``dev_queries/``, ``eval_queries/``,
                                 ``scoring/``)
SNIPS                      sf    s3prl's SNIPS folder (``train/``, ``valid/``, ``test/``, ``character.txt``,
                                 ``slots.txt``)
LIBRIMIX                   sd    s3prl's Libri2Mix diarization data (``train/``, ``dev/``, ``test/`` Kaldi-style)
=========================  ====  ===========================================================================

``prepare(task, corpora, workdir)`` checks the task's corpus and makes the side files s3prl's task code wants
but the corpus does not ship (ASR bucket lists and char dictionary, LibriPhone csv files, IEMOCAP fold lists,
ASV trial lists), under ``workdir`` (shared by all models); it returns the variables of the task's config.
"""

import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from . import sidefiles
from .errors import SuperbError
from .tasks import Task

CORPUS_VARS = {
    "SPEECH_COMMANDS": "the Speech Commands v0.01 train set (speech_commands_v0.01)",
    "SPEECH_COMMANDS_TEST": "the Speech Commands v0.01 test set (speech_commands_test_set_v0.01)",
    "FLUENT_SPEECH_COMMANDS": "the Fluent Speech Commands dataset (fluent_speech_commands_dataset)",
    "VOXCELEB1": "the VoxCeleb1 root (dev/wav, test/wav, iden_split.txt, veri_test2.txt)",
    "LIBRISPEECH": "the LibriSpeech root (train-clean-100, dev-clean, test-clean)",
    "LIBRIPHONE": "prepared SUPERB PR files (train/dev/test.csv, lexicon*.txt, phoneme.txt)",
    "LIBRISPEECH_LEXICON": "word->phoneme lexicon file(s) for PR",
    "IEMOCAP": "IEMOCAP_full_release (Session1..5)",
    "QUESST14": "the QUESST 2014 database (quesst14Database)",
    "SNIPS": "s3prl's SNIPS slot-filling folder",
    "LIBRIMIX": "s3prl's Libri2Mix diarization data (train/dev/test)",
}
LIST_VARS = {"LIBRISPEECH_LEXICON"}  # space-separated lists of paths
SC_TEST_DIR = "speech_commands_test_set_v0.01"


# ----------------------------------------------------------------------------- db.sh


def read_db(db: Path) -> Dict[str, str]:
    """The corpus variables a db.sh sets (sourced by bash, as the recipe does), relative paths made absolute."""
    db = Path(db)
    if not db.is_file():
        raise SuperbError(f"db file {db} not found; run from the recipe dir or pass --db path/to/db.sh")
    names = list(CORPUS_VARS)
    script = 'source "$1" >/dev/null || exit 3; shift; for v in "$@"; do printf "%s=%s\\0" "$v" "${!v-}"; done'
    proc = subprocess.run(["bash", "-c", script, "db.sh", str(db.resolve()), *names], cwd=db.resolve().parent,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        raise SuperbError(f"sourcing {db} failed: {first}")
    values = {}
    for item in proc.stdout.split("\0"):
        name, sep, value = item.partition("=")
        if sep and value.strip():
            values[name] = _absolute(name, value.strip(), db.resolve().parent)
    return values


def _absolute(name: str, value: str, base: Path) -> str:
    parts = value.split() if name in LIST_VARS else [value]
    return " ".join(str(p) if Path(p).is_absolute() else str((base / p).resolve()) for p in parts)


def parse_corpus_args(items: Iterable[str]) -> Dict[str, str]:
    """``["LIBRISPEECH=/data/LibriSpeech", ...]`` -> dict; names must be known corpus variables."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in CORPUS_VARS:
            raise SuperbError(f"bad --corpus '{item}': use VAR=PATH with VAR one of {' '.join(CORPUS_VARS)}")
        values[name] = _absolute(name, value, Path.cwd()) if value else ""
    return values


def corpus_paths(db: Optional[Path], overrides: Iterable[str] = ()) -> Dict[str, str]:
    """db.sh values (when a db file is given), then ``--corpus`` values on top."""
    values = read_db(db) if db else {}
    values.update({k: v for k, v in parse_corpus_args(overrides).items()})
    return {k: v for k, v in values.items() if v}


# ----------------------------------------------------------------------------- checks


def _need(corpora: Mapping[str, str], name: str, task: Task) -> Path:
    value = corpora.get(name)
    if not value:
        raise SuperbError(f"{task.title} needs {CORPUS_VARS[name]}: set {name}=/path in db.sh "
                          f"(or --corpus {name}=/path)")
    path = Path(value)
    if not path.exists():
        raise SuperbError(f"{task.title}: {name}={value} does not exist; fix {name} in db.sh")
    return path


def _need_file(path: Path, name: str, task: Task, what: str) -> Path:
    if not path.exists():
        raise SuperbError(f"{task.title}: {path} is missing ({what}); check {name} in db.sh")
    return path


# ----------------------------------------------------------------------------- per task


def _ks(task, corpora, workdir):
    train = _need(corpora, "SPEECH_COMMANDS", task)
    test = Path(corpora.get("SPEECH_COMMANDS_TEST") or train.parent / SC_TEST_DIR)
    if not test.is_dir():
        raise SuperbError(f"KS needs the Speech Commands test set: {test} does not exist; set "
                          f"SPEECH_COMMANDS_TEST=/path/to/{SC_TEST_DIR} in db.sh")
    _need_file(train / "_background_noise_", "SPEECH_COMMANDS", task, "the _silence_ class is cut from it")
    return {"SPEECH_COMMANDS": str(train).rstrip("/"), "SPEECH_COMMANDS_TEST": str(test).rstrip("/")}


def _ic(task, corpora, workdir):
    root = _need(corpora, "FLUENT_SPEECH_COMMANDS", task)
    for split in ("train", "valid", "test"):
        _need_file(root / "data" / f"{split}_data.csv", "FLUENT_SPEECH_COMMANDS", task, "a split list")
    return {"FLUENT_SPEECH_COMMANDS": str(root)}


def _sid(task, corpora, workdir):
    root = _need(corpora, "VOXCELEB1", task)
    meta = _need_file(root / "iden_split.txt", "VOXCELEB1", task,
                      "the official identification split; download it with VoxCeleb1")
    return {"VOXCELEB1": str(root), "SID_META_DATA": str(meta)}


def _asv(task, corpora, workdir):
    root = _need(corpora, "VOXCELEB1", task)
    _need_file(root / "dev" / "wav", "VOXCELEB1", task, "the training speakers")
    trials = next((root / n for n in ("veri_test2.txt", "veri_test.txt") if (root / n).exists()), None)
    if trials is None:
        raise SuperbError(f"ASV: {root}/veri_test2.txt is missing (VoxCeleb1's cleaned trial list); "
                          f"download it into VOXCELEB1")
    made = sidefiles.asv_lists(root, Path(workdir) / "asv")
    sidefiles.asv_length_cache(root / "dev" / "wav")
    return {"VOXCELEB1": str(root), "ASV_TEST_TRIALS": str(trials), **made}


def _pr(task, corpora, workdir):
    if corpora.get("LIBRIPHONE"):
        root = _need(corpora, "LIBRIPHONE", task)
        for name in ("train.csv", "dev.csv", "test.csv", "phoneme.txt"):
            _need_file(root / name, "LIBRIPHONE", task, "a SUPERB PR file")
        lexicons = sorted(str(p) for p in root.glob("lexicon*.txt"))
        if not lexicons:
            raise SuperbError(f"PR: no lexicon*.txt in LIBRIPHONE={root}; add the word->phonemes lexicon there")
        return {"LIBRIPHONE_CSV_DIR": str(root), "LIBRIPHONE_LEXICONS": lexicons,
                "LIBRIPHONE_VOCAB": str(root / "phoneme.txt")}
    if not corpora.get("LIBRISPEECH"):
        raise SuperbError("PR needs LIBRIPHONE (prepared SUPERB PR files) or LIBRISPEECH (+ LIBRISPEECH_LEXICON): "
                          "set one in db.sh")
    libri = _need(corpora, "LIBRISPEECH", task)
    lexicons = corpora.get("LIBRISPEECH_LEXICON", "").split() or sidefiles.download_g2p_lexicons()
    return sidefiles.libriphone_files(libri, [Path(p) for p in lexicons], Path(workdir) / "libriphone")


def _asr(task, corpora, workdir):
    libri = _need(corpora, "LIBRISPEECH", task)
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        _need_file(libri / split, "LIBRISPEECH", task, "a LibriSpeech split")
    made = sidefiles.asr_files(libri, ("train-clean-100", "dev-clean", "test-clean"), Path(workdir) / "asr")
    return {"LIBRISPEECH": str(libri), **made}


def _er(task, corpora, workdir):
    root = _need(corpora, "IEMOCAP", task)
    for n in range(1, 6):
        _need_file(root / f"Session{n}", "IEMOCAP", task, "an IEMOCAP session")
    return {"IEMOCAP": str(root), "IEMOCAP_META_DATA": sidefiles.iemocap_meta(root, Path(workdir) / "iemocap")}


def _qbe(task, corpora, workdir):
    root = _need(corpora, "QUESST14", task)
    for name in ("Audio", "dev_queries", "eval_queries", "scoring"):
        _need_file(root / name, "QUESST14", task, "part of the QUESST 2014 database")
    return {"QUESST14": str(root)}


def _sf(task, corpora, workdir):
    root = _need(corpora, "SNIPS", task)
    import importlib.util

    try:
        found = importlib.util.find_spec("s3prl.downstream.ctc.corpus.snips") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise SuperbError("SF: the pip s3prl lacks s3prl/downstream/ctc/corpus/snips.py; install s3prl from its git "
                          "repository (pip install -e <s3prl checkout>) to run SF")
    for name in ("train", "valid", "test", "character.txt", "slots.txt"):
        _need_file(root / name, "SNIPS", task, "part of s3prl's SNIPS folder")
    return {"SNIPS": str(root)}


def _sd(task, corpora, workdir):
    root = _need(corpora, "LIBRIMIX", task)
    for split in ("train", "dev", "test"):
        _need_file(root / split / "wav.scp", "LIBRIMIX", task, "s3prl's diarization data")
    return {"LIBRIMIX": str(root)}


PREPARE: Dict[str, Callable] = {"ks": _ks, "ic": _ic, "sid": _sid, "asv": _asv, "pr": _pr, "asr": _asr,
                                "er": _er, "qbe": _qbe, "sf": _sf, "sd": _sd}


def prepare(task: Task, corpora: Mapping[str, str], workdir: Path) -> Dict[str, object]:
    """Check the task's corpus, make its side files under ``workdir``; the variables of its config."""
    os.makedirs(workdir, exist_ok=True)
    return PREPARE[task.name](task, corpora, workdir)


def missing_corpus(task: Task, corpora: Mapping[str, str]) -> Optional[str]:
    """A one-line reason when the task's corpus is not configured (without making any file), else None."""
    try:
        if task.name == "pr" and not corpora.get("LIBRIPHONE"):
            _need(corpora, "LIBRISPEECH", task) if corpora.get("LIBRISPEECH") else _pr(task, corpora, None)
        else:
            _need(corpora, task.corpus_vars[0], task)
    except SuperbError as e:
        return str(e)
    return None


def known_variables() -> List[str]:
    return list(CORPUS_VARS)
