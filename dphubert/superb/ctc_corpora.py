"""The LibriPhone dataset of s3prl's ``ctc`` downstream (SUPERB PR), which the pip package lacks.

s3prl 0.4.18's wheel ships ``s3prl/downstream/ctc/{data,expert,text,metric}.py`` but not the
``ctc/corpus/`` folder that ``data.py`` imports (``from .corpus.libriphone import LibriPhoneDataset``), so PR
fails with ``ModuleNotFoundError``. ``install()`` registers our implementation under that module name when
the import fails (an s3prl checkout that has the folder keeps its own).

Contract (what s3prl's ``ctc/data.py`` expects): ``LibriPhoneDataset(split_csv, tokenizer, bucket_size,
csv_dir=..., lexicon=[files], **corpus_config)``; items are ``(wav_path, token_ids)``, or a list of those
(a bucket of similar label lengths) when ``bucket_size > 1``.
The csv has the columns ``wav_path`` and ``transcription`` (words); words become phonemes through the
lexicon (first pronunciation of a word), phonemes become ids through the ``word``-mode tokenizer.
"""

import csv
import sys
import types
from pathlib import Path
from typing import Dict, List, Sequence

from torch.utils.data import Dataset

from .errors import SuperbError

MODULE = "s3prl.downstream.ctc.corpus"


def _read_lexicon(files: Sequence[str], vocab: Dict[str, int]) -> Dict[str, List[str]]:
    lexicon: Dict[str, List[str]] = {}
    for path in files:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            word, *phones = line.split()
            unknown = [p for p in phones if p not in vocab]
            if unknown:
                raise SuperbError(f"{path}:{number}: phoneme {unknown[0]} of '{word}' is not in the vocabulary "
                                  f"file (text.vocab_file); add it there")
            lexicon.setdefault(word, phones)
    return lexicon


class LibriPhoneDataset(Dataset):
    def __init__(self, split_csv: str, tokenizer, bucket_size: int, csv_dir: str, lexicon: Sequence[str],
                 ascending: bool = False, **kwargs):
        self.bucket_size = max(1, bucket_size)
        words_to_phones = _read_lexicon(lexicon, tokenizer._vocab2idx)
        csv_path = Path(csv_dir) / split_csv
        items = []
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                wav = Path(row["wav_path"])
                wav = wav if wav.is_absolute() else Path(csv_dir) / wav
                phones = []
                for word in row["transcription"].split():
                    if word not in words_to_phones:
                        raise SuperbError(f"{csv_path}: word '{word}' of {row['wav_path']} is not in the lexicon "
                                          f"{list(lexicon)}; add it or drop the utterance")
                    phones += words_to_phones[word]
                items.append((str(wav), tokenizer.encode(" ".join(phones))))
        if not items:
            raise SuperbError(f"{csv_path} lists no utterance")
        items.sort(key=lambda item: len(item[1]), reverse=not ascending)
        self.items = items

    def __len__(self) -> int:
        return (len(self.items) + self.bucket_size - 1) // self.bucket_size

    def __getitem__(self, index: int):
        if self.bucket_size == 1:
            return self.items[index]
        return self.items[index * self.bucket_size:(index + 1) * self.bucket_size]


def install() -> None:
    """Make ``s3prl.downstream.ctc.corpus.libriphone`` importable (idempotent; keeps a real one), and make the
    ctc expert honour ``corpus.num_workers`` on every loader (see ``_keep_corpus_options``)."""
    _register_libriphone()
    import s3prl.downstream.ctc.expert as expert

    if not getattr(expert.load_dataset, "keeps_corpus_options", False):
        expert.load_dataset = _keep_corpus_options(expert.load_dataset)


def _keep_corpus_options(load_dataset):
    """s3prl's ``ctc/data.py`` ``load_dataset`` pops ``num_workers`` from the expert's corpus config, so only the
    first loader gets the configured count and every later one (each train epoch, dev, test) gets 12 worker
    processes: slow on a small CPU, and the workers cannot import the LibriPhone module registered here when
    the run is itself in a spawned process. Passing a copy keeps the option for every call."""
    def load_with_copy(split, tokenizer, corpus):
        return load_dataset(split, tokenizer, dict(corpus))

    load_with_copy.keeps_corpus_options = True
    return load_with_copy


def _register_libriphone() -> None:
    import s3prl.downstream.ctc as ctc

    try:
        __import__(f"{MODULE}.libriphone")
        return
    except ModuleNotFoundError:
        pass
    package = sys.modules.get(MODULE) or types.ModuleType(MODULE)
    package.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    module = types.ModuleType(f"{MODULE}.libriphone")
    module.LibriPhoneDataset = LibriPhoneDataset
    package.libriphone = module
    sys.modules[MODULE] = package
    sys.modules[f"{MODULE}.libriphone"] = module
    ctc.corpus = package
