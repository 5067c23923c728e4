"""Models trained with several seeds: per-task mean and spread, and comparisons that count both sources of noise.

A model evaluated as ``<family>_seed<N>`` (the recipe's ``--seeds "1 2 3"`` names them ``dphubert_seed1``, ...)
belongs to the family ``<family>``. Per family and task: the mean over seeds, the sample standard deviation, the
minimum and maximum. Two families trained on the same data are compared on the same test utterances:

- difference ``D`` = mean over A's seeds - mean over B's seeds (positive: A better where higher is better);
- its variance from training, ``s_A^2 / n_A + s_B^2 / n_B`` (the seeds' sample variances), and from the test set,
  the variance of ``D`` over a bootstrap of the test utterances (the same draw for every model: the pairing);
- the 95% interval ``D +- t * sqrt(both)``, ``t`` with Welch-Satterthwaite's degrees of freedom of the seed term
  (few seeds: a wide interval, as it must be). An interval that holds 0 is a tie.

With one seed on either side the training spread is not measured: the interval is the test set's alone, and the
report says so. Families compared: ``dphubert`` with ``distilhubert`` and, in a sweep, ``<tag>`` with
``<tag>_distilhubert``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .intervals import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, item_scores
from .tasks import TASKS

_SEEDED = re.compile(r"^(?P<family>.+)_seed(?P<seed>\d+)$")


def families(names: Sequence[str]) -> Dict[str, List[Tuple[int, str]]]:
    """``{family: [(seed, model name), ...]}`` of the seeded model names (sorted by seed)."""
    found: Dict[str, List[Tuple[int, str]]] = {}
    for name in names:
        match = _SEEDED.match(name)
        if match:
            found.setdefault(match["family"], []).append((int(match["seed"]), name))
    return {family: sorted(members) for family, members in found.items()}


def baseline_of(family: str) -> str:
    return "distilhubert" if family == "dphubert" else f"{family}_distilhubert"


def spread(values: Sequence[float]) -> Dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else None,
            "min": float(array.min()), "max": float(array.max()), "n_seeds": int(array.size)}


def compare(scores_a: Sequence[Mapping[str, Tuple[float, float]]], scores_b: Sequence[Mapping[str, Tuple[float, float]]],
            higher_better: bool, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, object]:
    """Family A vs family B on one task; each a list (one per seed) of ``{utterance: (numerator, denominator)}``.

    Returns ``{"difference", "ci95", "verdict" ("better" / "worse" / "tie": A vs B), "seed_variance",
    "test_variance", "df", "n_test"}``; values in the metric's percent."""
    items = sorted(set.intersection(*(set(s) for s in list(scores_a) + list(scores_b))))
    if not items:
        raise ValueError("the models share no test utterance")

    def arrays(scores):
        return [np.array([[s[i][0], s[i][1]] for i in items], dtype=np.float64) for s in scores]

    a, b = arrays(scores_a), arrays(scores_b)

    def metric(x: np.ndarray) -> float:
        return 100.0 * x[:, 0].sum() / max(x[:, 1].sum(), 1e-12)

    values_a, values_b = [metric(x) for x in a], [metric(x) for x in b]
    difference = float(np.mean(values_a) - np.mean(values_b))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(items), size=(samples, len(items)))

    def resampled(x: np.ndarray) -> np.ndarray:
        return 100.0 * x[picks, 0].sum(1) / np.maximum(x[picks, 1].sum(1), 1e-12)

    replicate = np.mean([resampled(x) for x in a], axis=0) - np.mean([resampled(x) for x in b], axis=0)
    test_variance = float(replicate.var(ddof=1))
    seed_terms = [np.var(v, ddof=1) / len(v) if len(v) > 1 else None for v in (values_a, values_b)]
    seeds_measured = all(term is not None for term in seed_terms)
    seed_variance = float(sum(seed_terms)) if seeds_measured else None
    total = test_variance + (seed_variance or 0.0)
    if seeds_measured and seed_variance > 0:
        denominator = sum(term * term / (len(v) - 1) for term, v in zip(seed_terms, (values_a, values_b)))
        df = total * total / denominator
        from scipy.stats import t as student_t

        quantile = float(student_t.ppf(0.975, df))
    else:
        df, quantile = math.inf, 1.959963984540054
    half = quantile * math.sqrt(total)
    low, high = difference - half, difference + half
    if low > 0 or high < 0:
        verdict = "better" if (difference > 0) == higher_better else "worse"
    else:
        verdict = "tie"
    return {"difference": difference, "ci95": [low, high], "verdict": verdict, "seed_variance": seed_variance,
            "test_variance": test_variance, "df": df, "n_test": len(items), "seeds_measured": seeds_measured}


def summarize(results: Mapping[str, Mapping[str, dict]], task_names: Sequence[str],
              pair_dir) -> Dict[str, object]:
    """``{"families": {family: {task: spread}}, "comparisons": {"A vs B": {task: compare(...)}}}`` of the seeded
    models in ``results`` (results.json's ``results``); ``pair_dir(model, task)`` is a pair's s3prl experiment dir
    (its per-utterance test files). Empty when no model has a seed suffix."""
    groups = families(list(results))

    def scored(name: str, task: str) -> Optional[Dict[str, Tuple[float, float]]]:
        """The pair's per-utterance scores, when they give back the value s3prl reported for it."""
        value = results[name].get(task, {}).get(TASKS[task].metric.name)
        scores = None if value is None else item_scores(task, Path(pair_dir(name, task)))
        if not scores:
            return None
        numerator, denominator = (sum(x) for x in zip(*scores.values()))
        return scores if abs(100.0 * numerator / max(denominator, 1e-12) - value) <= 0.01 else None

    out: Dict[str, object] = {"families": {}, "comparisons": {}}
    for family, members in groups.items():
        per_task = {}
        for task in task_names:
            metric = TASKS[task].metric.name
            values = [results[name][task][metric] for _, name in members if metric in results[name].get(task, {})]
            if values:
                per_task[task] = dict(spread(values), seeds=[s for s, name in members
                                                             if metric in results[name].get(task, {})])
        out["families"][family] = per_task
    for family, members in groups.items():
        baseline = groups.get(baseline_of(family))
        if not baseline:
            continue
        per_task = {}
        for task in task_names:
            scores_a = [scored(name, task) for _, name in members]
            scores_b = [scored(name, task) for _, name in baseline]
            if any(s is None for s in scores_a + scores_b):
                continue
            per_task[task] = compare(scores_a, scores_b, TASKS[task].metric.higher_better)
        if per_task:
            out["comparisons"][f"{family} vs {baseline_of(family)}"] = per_task
    return out if groups else {}


def markdown(summary: Mapping[str, object], task_names: Sequence[str]) -> List[str]:
    """RESULTS.md lines: the families' means and spreads, and each comparison with its interval and verdict."""
    if not summary:
        return []
    titles = [TASKS[t].title for t in task_names]
    lines = ["", "## Over training seeds", "",
             "Mean over seeds, with the sample standard deviation and the range (min-max) of the seeds' values; "
             "the spread is that of training (all seeds are tested on the same utterances).", "",
             "| family | seeds | " + " | ".join(f"{title} {TASKS[t].metric.label}"
                                               for title, t in zip(titles, task_names)) + " |",
             "|" + "---|" * (len(task_names) + 2)]
    for family, per_task in summary["families"].items():
        cells = []
        n_seeds = max((s["n_seeds"] for s in per_task.values()), default=0)
        for task in task_names:
            s = per_task.get(task)
            if s is None:
                cells.append("-")
            elif s["std"] is None:
                cells.append(f"{s['mean']:.2f} (one seed)")
            else:
                cells.append(f"{s['mean']:.2f} +- {s['std']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
        lines.append(f"| {family} | {n_seeds} | " + " | ".join(cells) + " |")
    for name, per_task in summary["comparisons"].items():
        lines += ["", f"{name} (difference of the means, in points; 95% interval over seeds and test utterances; "
                      f"an interval that holds 0 is a tie):", ""]
        for task in task_names:
            c = per_task.get(task)
            if c is None:
                continue
            verdict = {"better": "better", "worse": "worse", "tie": "tie"}[c["verdict"]]
            basis = "seeds and test utterances" if c["seeds_measured"] else \
                "test utterances only: one seed, the spread between training runs is not measured"
            lines.append(f"- {TASKS[task].title}: {c['difference']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] "
                         f"(n={c['n_test']}; {basis}): **{verdict}**")
    return lines
