"""SUPERB results: parse s3prl's output, and write ``results.json``, ``RESULTS.md`` and ``results.png``.

``results.json``::

    {"settings": {"mode": "quick", ...},
     "models": {"dphubert": {"path": ..., "params": 1234567, "macs": 3.2e9, "macs_seconds": 10.0}},
     "tasks": {"ks": {"title": "KS", "metrics": [{"name": "Acc", "higher_better": true}, ...]}},
     "results": {"dphubert": {"ks": {"Acc": 93.1, "n_test": 1000, "ci95": [91.4, 94.5], "seconds": 41.2}}, ...},
     "failures": {"dphubert": {"pr": "one line"}}}

``n_test`` and ``ci95`` (the 95% interval of the task's headline metric, see ``intervals``) are there when s3prl
wrote per-utterance test files for the task. RESULTS.md is a table like the paper's Table 1 (a row per model
with params and MACs, a column per task with its metric and direction, ``value +- half-width`` of the
interval); the best value of each column is bold. The text ranks the models per task, names which differences
lie beyond the intervals (the two intervals do not overlap) and which are ties, and gives the teacher's
margin over FBANK.
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .errors import SuperbError
from .intervals import beyond, half_width
from .seeds import markdown as seed_lines
from .tasks import TASKS, Task


def parse_metrics(task: Task, text: str, source: str = "s3prl output") -> Dict[str, float]:
    """All of the task's metrics printed in ``text``; the headline metric must be there."""
    values = {}
    for metric in task.metrics:
        value = metric.find(text)
        if value is not None:
            values[metric.name] = value
    if task.metric.name not in values:
        raise SuperbError(f"{task.title}: no {task.metric.name} in {source} (expected a line matching "
                          f"'{task.metric.pattern}'); see the log")
    return values


def _fmt(value: Optional[float], task: Task, metric_name: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if metric_name == "MTWV" else f"{value:.2f}"


def best_models(results: Mapping[str, Mapping], task: Task, metric_name: str) -> List[str]:
    """The models with the best value of one metric (all of them on a tie)."""
    metric = next(m for m in task.metrics if m.name == metric_name)
    scored = {m: r[task.name][metric_name] for m, r in results.items()
              if task.name in r and metric_name in r[task.name]}
    if not scored:
        return []
    best = max(scored.values()) if metric.higher_better else min(scored.values())
    return [m for m, v in scored.items() if v == best]


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def markdown(data: dict) -> str:
    """RESULTS.md text from the results.json dict."""
    tasks = [TASKS[name] for name in data["tasks"]]
    models, results = data["models"], data["results"]
    failures = data.get("failures", {})
    settings = data["settings"]
    macs_seconds = next((m.get("macs_seconds") for m in models.values() if m.get("macs")), 10.0)
    header = ["model", "params (M)", f"GMACs ({macs_seconds:g} s)"]
    columns = []
    for task in tasks:
        sizes = _test_sizes(results, task)
        for metric in task.metrics:
            size = f" (n={sizes[0]})" if len(sizes) == 1 and metric is task.metric else ""
            header.append(f"{task.title} {metric.name}{'' if metric.name == 'MTWV' else '%'} "
                          f"{'↑' if metric.higher_better else '↓'}{size}")
            columns.append((task, metric.name))
    lines = [
        "# SUPERB results",
        "",
        f"Mode: **{settings['mode']}**. " + (
            "Quick settings (configs/quick.yaml: 150-1500 downstream steps, small batches, capped splits): a "
            "smoke test of the pipeline whose numbers are NOT comparable with SUPERB or the paper. Use --full for "
            "SUPERB's step counts." if settings["mode"] == "quick" else
            "SUPERB's downstream settings (shipped configs)."),
        "Upstream frozen; s3prl learns a weighted sum of all hidden states and the task head. "
        "Each value is s3prl's own test-set metric (run_downstream -m evaluate); bold = best in the column; "
        "`+- h`: half-width of the 95% interval over the n test utterances (Wilson for accuracies, a bootstrap "
        "over utterances for error rates). Two values whose intervals overlap are a tie.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name, info in models.items():
        row = [name, f"{info['params'] / 1e6:.2f}", f"{info['macs'] / 1e9:.2f}" if info.get("macs") else "n/a"]
        for task, metric_name in columns:
            result = results.get(name, {}).get(task.name, {})
            value = result.get(metric_name)
            if value is None and task.name in failures.get(name, {}):
                row.append("failed")
                continue
            text = _fmt(value, task, metric_name)
            if value is not None and name in best_models(results, task, metric_name):
                text = f"**{text}**"
            if value is not None and metric_name == task.metric.name and result.get("ci95"):
                text += f" +- {half_width(value, result['ci95']):.1f}"
                if len(_test_sizes(results, task)) > 1:  # the header cannot hold one n
                    text += f" (n={result.get('n_test')})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Who wins where", ""]
    for task in tasks:
        winners = best_models(results, task, task.metric.name)
        if not winners:
            lines.append(f"- {task.title}: no result")
            continue
        value = results[winners[0]][task.name][task.metric.name]
        ranking = sorted((m for m in results if task.name in results[m]),
                         key=lambda m: results[m][task.name][task.metric.name],
                         reverse=task.metric.higher_better)
        order = ""
        for i, m in enumerate(ranking):
            value_m = results[m][task.name][task.metric.name]
            if i:
                previous = results[ranking[i - 1]][task.name][task.metric.name]
                order += " = " if value_m == previous else ", "
            order += f"{m} {_fmt(value_m, task, task.metric.name)}"
        tie = " (tie)" if len(winners) > 1 else ""
        lines.append(f"- {task.title} ({task.metric.label}): best {', '.join(winners)}{tie} with "
                     f"{_fmt(value, task, task.metric.name)}; ranking (best first): {order}")
        lines += _significance(results, task, ranking)
    lines += _pairwise(data, tasks)
    lines += seed_lines(data.get("seeds"), [t.name for t in tasks])
    if any(failures.values()):
        lines += ["", "## Failed runs", ""]
        for name, per_task in failures.items():
            for task_name, reason in per_task.items():
                lines.append(f"- {name} x {TASKS[task_name].title}: {reason}")
    lines += ["", "Files: results.json (all numbers), results.png (bar chart), <model>/<task>/ (s3prl experiment "
              "dirs with train.log, evaluate.log, configs and checkpoints).", ""]
    return "\n".join(lines)


def _test_sizes(results: Mapping[str, Mapping], task: Task) -> List[int]:
    return sorted({r[task.name]["n_test"] for r in results.values() if r.get(task.name, {}).get("n_test")})


def _interval(results: Mapping[str, Mapping], model: str, task: Task) -> Optional[Sequence[float]]:
    return results.get(model, {}).get(task.name, {}).get("ci95")


def compare(results: Mapping[str, Mapping], a: str, b: str, task: Task) -> Optional[str]:
    """"better" / "worse" (a vs b, beyond both 95% intervals), "tie" (they overlap), None (a value missing).

    Without intervals (a task whose s3prl expert writes no per-utterance files) the raw values decide.
    """
    name = task.metric.name
    va = results.get(a, {}).get(task.name, {}).get(name)
    vb = results.get(b, {}).get(task.name, {}).get(name)
    if va is None or vb is None:
        return None
    ia, ib = _interval(results, a, task), _interval(results, b, task)
    if va == vb or (ia and ib and not beyond(ia, ib)):
        return "tie"
    return "better" if (va > vb) == task.metric.higher_better else "worse"


def _significance(results: Mapping[str, Mapping], task: Task, ranking: Sequence[str]) -> List[str]:
    """Which differences of one task lie beyond the 95% intervals, which are ties; the teacher vs FBANK."""
    if not all(_interval(results, m, task) for m in ranking) or len(ranking) < 2:
        return ([f"  - no 95% intervals for {task.title} (s3prl wrote no per-utterance test files): the ranking "
                 f"above does not say which differences are noise"] if len(ranking) > 1 else [])
    beyond_pairs, ties = [], []
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            outcome = compare(results, a, b, task)
            (ties if outcome == "tie" else beyond_pairs).append(
                f"{a} = {b}" if outcome == "tie" else f"{a} {'>' if outcome == 'better' else '<'} {b}")
    lines = [f"  - beyond the 95% intervals (a > b: a better): {', '.join(beyond_pairs) if beyond_pairs else 'none'}; "
             f"ties (intervals overlap): {', '.join(ties) if ties else 'none'}"]
    if "teacher" in ranking and "fbank" in ranking:
        name = task.metric.name
        teacher, fbank = results["teacher"][task.name][name], results["fbank"][task.name][name]
        margin = (teacher - fbank) if task.metric.higher_better else (fbank - teacher)
        outcome = compare(results, "teacher", "fbank", task)
        verdict = {"better": "beyond the intervals", "tie": "within the intervals: a tie",
                   "worse": "beyond the intervals, the teacher is WORSE than filterbanks"}[outcome]
        lines.append(f"  - teacher's margin over FBANK: {margin:+.1f} points ({verdict}; FBANK "
                     f"{_fmt(fbank, task, name)} +- {half_width(fbank, results['fbank'][task.name]['ci95']):.1f})")
    return lines


def _pairwise(data: dict, tasks: Sequence[Task]) -> List[str]:
    """'dphubert beats distilhubert on k of n tasks' lines (the paper's headline comparison), counting a
    difference inside the 95% intervals as a tie."""
    results = data["results"]
    names = list(data["models"])
    if "dphubert" not in names:
        return []
    lines = []
    for other in (n for n in names if n != "dphubert"):
        wins, losses, ties = [], [], []
        for task in tasks:
            outcome = compare(results, "dphubert", other, task)
            if outcome is not None:
                {"better": wins, "worse": losses, "tie": ties}[outcome].append(task.title)
        compared = len(wins) + len(losses) + len(ties)
        if compared:
            lines.append(f"- dphubert vs {other}: better on {len(wins)} of {compared} tasks"
                         f"{' (' + ', '.join(wins) + ')' if wins else ''}; worse on "
                         f"{', '.join(losses) if losses else 'none'}{'; tied on ' + ', '.join(ties) if ties else ''}"
                         f" (a difference inside the 95% intervals is a tie)")
    return [""] + lines if lines else []


def bar_chart(data: dict, path: Path) -> Path:
    """One panel per task (headline metric), one bar per model, values on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [TASKS[name] for name in data["tasks"]]
    models = list(data["models"])
    results = data["results"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 0.5, 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        metric = task.metric
        values = [results.get(m, {}).get(task.name, {}).get(metric.name) for m in models]
        winners = set(best_models(results, task, metric.name))
        errors = [[0.0, 0.0] for _ in models]
        for i, (m, v) in enumerate(zip(models, values)):
            ci = results.get(m, {}).get(task.name, {}).get("ci95") if v is not None else None
            if ci:
                errors[i] = [max(0.0, v - ci[0]), max(0.0, ci[1] - v)]
        bars = ax.bar(range(len(models)), [v if v is not None else 0 for v in values],
                      yerr=list(zip(*errors)), capsize=3,
                      color=[colors[i % len(colors)] for i in range(len(models))])
        for bar, model, value in zip(bars, models, values):
            label = "n/a" if value is None else _fmt(value, task, metric.name)
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8, fontweight="bold" if model in winners else "normal")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, fontsize=8)
        unit = "" if metric.name == "MTWV" else " (%)"
        ax.set_title(f"{task.title}: {metric.name}{unit}, {'higher' if metric.higher_better else 'lower'} "
                     f"is better", fontsize=9)
        ax.margins(y=0.15)
    fig.suptitle(f"SUPERB ({data['settings']['mode']} settings; whiskers: 95% intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
