"""The SUPERB tasks: which s3prl downstream runs them, their shipped config, metric and corpus variables.

Task names are the paper's abbreviations in lower case: ``pr ks ic sid er asr qbe sf asv sd``.
The metric is read from what s3prl's ``run_downstream -m evaluate`` prints (``test acc: 0.93``, ...).
"""

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .errors import SuperbError


@dataclass(frozen=True)
class Metric:
    name: str            # as printed in RESULTS.md ("Acc", "PER", ...)
    pattern: str         # regex over s3prl's output; group 1 is the value
    higher_better: bool
    scale: float = 100.0  # s3prl prints fractions; the paper reports percentages (QbE's MTWV stays as is)

    def find(self, text: str) -> Optional[float]:
        """The last value printed (s3prl prints the final result last), or None."""
        values = re.findall(self.pattern, text, flags=re.MULTILINE)
        return float(values[-1]) * self.scale if values else None

    @property
    def label(self) -> str:
        return f"{self.name} {'↑' if self.higher_better else '↓'}"


@dataclass(frozen=True)
class Task:
    name: str                       # ks
    title: str                      # KS
    description: str
    downstream: str                 # s3prl's -d
    config: str                     # file under dphubert/superb/configs/
    corpus_vars: Tuple[str, ...]    # db.sh variables; the first one must be set
    metrics: Tuple[Metric, ...]     # the first is the task's headline metric
    eval_split: str = "test"        # run_downstream -t
    best_ckpt: Optional[str] = "dev-best.ckpt"  # what -m evaluate loads (None: the last states-*.ckpt)
    trains: bool = True             # QbE only runs evaluation (DTW on the features)

    @property
    def metric(self) -> Metric:
        return self.metrics[0]


def _accuracy(split: str = "test") -> Metric:
    return Metric("Acc", rf"^{split} acc: ([-+0-9.eE]+)\s*$", higher_better=True)


TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("pr", "PR", "phoneme recognition, LibriSpeech (CTC)", "ctc", "pr.yaml",
         ("LIBRIPHONE", "LIBRISPEECH", "LIBRISPEECH_LEXICON"),
         (Metric("PER", r"^test per: ([-+0-9.eE]+)\s*$", higher_better=False),)),
    Task("ks", "KS", "keyword spotting, Speech Commands v0.01", "speech_commands", "ks.yaml",
         ("SPEECH_COMMANDS", "SPEECH_COMMANDS_TEST"), (_accuracy(),)),
    Task("ic", "IC", "intent classification, Fluent Speech Commands", "fluent_commands", "ic.yaml",
         ("FLUENT_SPEECH_COMMANDS",), (_accuracy(),)),
    Task("sid", "SID", "speaker identification, VoxCeleb1", "voxceleb1", "sid.yaml",
         ("VOXCELEB1",), (_accuracy(),)),
    Task("er", "ER", "emotion recognition, IEMOCAP (test fold(s))", "emotion", "er.yaml",
         ("IEMOCAP",), (_accuracy(),)),
    Task("asr", "ASR", "speech recognition, LibriSpeech 100 h -> test-clean", "asr", "asr.yaml",
         ("LIBRISPEECH",), (Metric("WER", r"^test-clean wer: ([-+0-9.eE]+)\s*$", higher_better=False),),
         eval_split="test-clean", best_ckpt="dev-clean-best.ckpt"),
    Task("qbe", "QbE", "query-by-example spoken term detection, QUESST 2014 (DTW, no training)",
         "quesst14_dtw", "qbe.yaml", ("QUESST14",),
         (Metric("MTWV", r"maxTWV:?\s*([-+0-9.eE]+)", higher_better=True, scale=1.0),),
         best_ckpt=None, trains=False),
    Task("sf", "SF", "slot filling, SNIPS (CTC)", "ctc", "sf.yaml", ("SNIPS",),
         (Metric("F1", r"^test slot_type_f1: ([-+0-9.eE]+)\s*$", higher_better=True),
          Metric("CER", r"^test slot_value_cer: ([-+0-9.eE]+)\s*$", higher_better=False))),
    Task("asv", "ASV", "speaker verification, VoxCeleb1", "sv_voxceleb1", "asv.yaml", ("VOXCELEB1",),
         (Metric("EER", r"^sv-voxceleb1/test-EER: ([-+0-9.eE]+)\s*$", higher_better=False),), best_ckpt=None),
    Task("sd", "SD", "speaker diarization, LibriMix 2 speakers", "diarization", "sd.yaml", ("LIBRIMIX",),
         (Metric("DER", r"^mode test acc \S+ der ([-+0-9.eE]+)\s*$", higher_better=False),),
         best_ckpt="best-states-dev.ckpt"),
]}


def parse_tasks(spec: Iterable[str]) -> List[Task]:
    """``["ks ic", "pr"]`` or ``["ks,ic"]`` -> tasks in the given order (duplicates dropped)."""
    names: List[str] = []
    for item in spec:
        for name in re.split(r"[\s,]+", item.strip().lower()):
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SuperbError(f"unknown SUPERB task(s) {', '.join(unknown)}; choose from: {' '.join(TASKS)}")
    if not names:
        raise SuperbError(f"no SUPERB task given; choose from: {' '.join(TASKS)}")
    return [TASKS[n] for n in names]


def task_for_downstream(downstream: str) -> Optional[Task]:
    """The task our shipped config serves for an s3prl downstream name (``ctc`` -> PR)."""
    for task in TASKS.values():
        if task.downstream == downstream:
            return task
    return None
