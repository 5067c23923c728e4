"""Test-set size and a 95% interval of a task's headline metric, from s3prl's per-utterance output files.

After ``run_downstream -m evaluate -t test`` s3prl's task experts leave, in the experiment dir:

- KS (speech_commands), SID (voxceleb1): ``test_predict.txt`` and ``test_truth.txt``, lines ``<file> <label>``;
- ER (emotion): ``test_<fold>_predict.txt`` and ``test_<fold>_truth.txt``, the same lines;
- IC (fluent_commands): ``test_predict.csv`` and ``test_truth.csv``, lines ``<file>,<action>,<object>,<location>``
  (an utterance counts as right when all three slots are, as s3prl's accuracy does);
- PR (ctc): ``test-hyp.ark`` and ``test-ref.ark``, lines ``<file> <token> <token> ...``; s3prl's PER is the
  edit distance summed over utterances divided by the summed reference length (tokens split on ' ');
- ASR: ``test-clean-noLM-hyp.ark`` / ``-ref.ark`` (``-LM-`` with a language model), words, the same WER.

Accuracies get a Wilson score interval on (right, n); PER and WER a percentile bootstrap over utterances (the
ratio of summed errors to summed reference lengths, recomputed on utterances drawn with replacement, a fixed
seed). Tasks without per-utterance files (QbE, SF, ASV, SD) get none: their values are printed without one.
"""

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def wilson(right: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval of a proportion, as fractions in [0, 1]."""
    if n <= 0:
        raise ValueError("no test utterances")
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_rate(errors: Sequence[float], lengths: Sequence[float], samples: int = BOOTSTRAP_SAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """2.5 and 97.5 percentiles of sum(errors) / sum(lengths) over utterances drawn with replacement."""
    errors, lengths = np.asarray(errors, dtype=np.float64), np.asarray(lengths, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no test utterances")
    rng = np.random.default_rng(seed)
    rates = np.empty(samples)
    for start in range(0, samples, 250):  # (250, n) index blocks keep the memory small for large test sets
        picks = rng.integers(0, errors.size, size=(min(250, samples - start), errors.size))
        rates[start:start + len(picks)] = errors[picks].sum(1) / np.maximum(lengths[picks].sum(1), 1e-12)
    low, high = np.percentile(rates, [2.5, 97.5])
    return float(low), float(high)


def _read_pairs(path: Path, sep: Optional[str]) -> Dict[str, str]:
    """``{file: rest of the line}`` of an s3prl prediction/truth file (split at the first ``sep``)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line:
            continue
        name, _, rest = line.partition(" " if sep is None else sep)
        pairs[name] = rest
    return pairs


# The test-split prediction/truth files of s3prl's classification experts (file names, field separator).
CLASSIFICATION_FILES = {"ks": ("test_predict.txt", "test_truth.txt", None),
                        "sid": ("test_predict.txt", "test_truth.txt", None),
                        "ic": ("test_predict.csv", "test_truth.csv", ",")}


def _correct(expdir: Path, predict: str, truth: str, sep: Optional[str] = None) -> Optional[Dict[str, bool]]:
    """``{file: prediction is right}`` from one predict/truth file pair, or None without them."""
    predict_path, truth_path = expdir / predict, expdir / truth
    if not (predict_path.is_file() and truth_path.is_file()):
        return None
    predicted, truths = _read_pairs(predict_path, sep), _read_pairs(truth_path, sep)
    return {name: predicted.get(name) == label for name, label in truths.items()}


def _classification(expdir: Path, predict: str, truth: str, sep: Optional[str] = None) -> Optional[Tuple[int, int]]:
    correct = _correct(expdir, predict, truth, sep)
    return None if correct is None else (sum(correct.values()), len(correct))


def _edit_distance(a: List[str], b: List[str]) -> int:
    try:
        import editdistance  # what s3prl's metric uses

        return int(editdistance.eval(a, b))
    except ImportError:
        previous = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            current = [i]
            for j, y in enumerate(b, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
            previous = current
        return previous[-1]


def utterance_errors(expdir: Path, hyp: str, ref: str) -> Optional[Tuple[List[int], List[int]]]:
    """Per-utterance (edit errors, reference tokens) from s3prl's hyp/ref ark files, split as s3prl splits."""
    hyp_path, ref_path = expdir / hyp, expdir / ref
    if not (hyp_path.is_file() and ref_path.is_file()):
        return None
    hyps, refs = _read_pairs(hyp_path, None), _read_pairs(ref_path, None)
    errors, lengths = [], []
    for name, reference in refs.items():
        tokens = reference.split(" ")
        errors.append(_edit_distance(hyps.get(name, "").split(" "), tokens))
        lengths.append(len(tokens))
    return errors, lengths


def _er_counts(expdir: Path) -> Optional[Tuple[int, int]]:
    """ER: the counts over every test fold file of the experiment dir (one fold per run)."""
    right = n = 0
    for predict in sorted(expdir.glob("test_fold*_predict.txt")):
        counts = _classification(expdir, predict.name, predict.name.replace("_predict", "_truth"))
        if counts:
            right, n = right + counts[0], n + counts[1]
    return (right, n) if n else None


def interval(task_name: str, expdir: Path) -> Optional[Dict[str, object]]:
    """``{"n_test": n, "ci95": [low, high]}`` (in the metric's percent) for one experiment dir, or None."""
    expdir = Path(expdir)
    counts = None
    if task_name in CLASSIFICATION_FILES:
        counts = _classification(expdir, *CLASSIFICATION_FILES[task_name])
    elif task_name == "er":
        counts = _er_counts(expdir)
    elif task_name in ("pr", "asr"):
        split = "test" if task_name == "pr" else "test-clean"
        found = None
        for hyp, ref in ((f"{split}-hyp.ark", f"{split}-ref.ark"), (f"{split}-noLM-hyp.ark", f"{split}-noLM-ref.ark"),
                         (f"{split}-LM-hyp.ark", f"{split}-LM-ref.ark")):
            found = found or utterance_errors(expdir, hyp, ref)
        if not found or not found[0]:
            return None
        low, high = bootstrap_rate(*found)
        return {"n_test": len(found[0]), "ci95": [100.0 * low, 100.0 * high],
                "rate_from_files": 100.0 * sum(found[0]) / max(1, sum(found[1]))}
    if not counts or not counts[1]:
        return None
    low, high = wilson(*counts)
    return {"n_test": counts[1], "ci95": [100.0 * low, 100.0 * high],
            "rate_from_files": 100.0 * counts[0] / counts[1]}


def correct_per_utterance(expdir: Path, task_name: str) -> Optional[Dict[str, bool]]:
    """``{file: prediction is right}`` of a KS, SID or IC experiment dir, or None without its files."""
    files = CLASSIFICATION_FILES.get(task_name)
    return None if files is None else _correct(Path(expdir), *files)


def paired_difference(a: Mapping[str, bool], b: Mapping[str, bool], samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> Tuple[float, Tuple[float, float]]:
    """Accuracy of ``b`` minus that of ``a`` on the same utterances (percent) and its 95% percentile bootstrap
    interval over utterances drawn with replacement. Pairing cancels the utterances both get right or both get
    wrong, so the interval is much tighter than two independent Wilson intervals (which would be read as a tie)."""
    if set(a) != set(b) or not a:
        raise ValueError("the two results must cover the same, non-empty set of utterances")
    names = sorted(a)
    diff = np.array([float(b[n]) - float(a[n]) for n in names])
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, diff.size, diff.size)].mean() for _ in range(samples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return 100.0 * float(diff.mean()), (100.0 * float(low), 100.0 * float(high))


def item_scores(task_name: str, expdir: Path) -> Optional[Dict[str, Tuple[float, float]]]:
    """``{test file: (numerator, denominator)}`` of the task's headline metric, so that the metric of any set of
    utterances is ``100 * sum(numerators) / sum(denominators)``: (right, 1) for KS, SID and IC, (edit errors,
    reference tokens) for PR and ASR; None without per-utterance files."""
    expdir = Path(expdir)
    if task_name in CLASSIFICATION_FILES:
        correct = correct_per_utterance(expdir, task_name)
        return None if correct is None else {name: (float(ok), 1.0) for name, ok in correct.items()}
    if task_name in ("pr", "asr"):
        split = "test" if task_name == "pr" else "test-clean"
        for hyp, ref in ((f"{split}-hyp.ark", f"{split}-ref.ark"), (f"{split}-noLM-hyp.ark", f"{split}-noLM-ref.ark"),
                         (f"{split}-LM-hyp.ark", f"{split}-LM-ref.ark")):
            hyp_path, ref_path = expdir / hyp, expdir / ref
            if hyp_path.is_file() and ref_path.is_file():
                names = list(_read_pairs(ref_path, None))
                errors, lengths = utterance_errors(expdir, hyp, ref)
                return {name: (float(e), float(n)) for name, e, n in zip(names, errors, lengths)}
    return None


def half_width(value: float, ci95: Sequence[float]) -> float:
    """The ``+-`` printed next to ``value``: the larger distance to an end of its interval."""
    return max(value - ci95[0], ci95[1] - value)


def beyond(a: Sequence[float], b: Sequence[float]) -> bool:
    """Two intervals that do not overlap: a difference beyond the noise of either test result."""
    return a[0] > b[1] or b[0] > a[1]
