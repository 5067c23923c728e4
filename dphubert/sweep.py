"""Target sweeps: parse ``--targets "params:0.5 macs:0.75"``, and the Pareto report of a finished sweep.

A sweep item is ``<budget>:<target>`` with budget ``params`` or ``macs`` (distill_prune's ``--budget``), or
``params+macs:<params target>,<MACs target>``. Each item gets its own experiment ``exp/<prefix>_<budget><target>``
(e.g. ``exp/demo_macs0.75``) and the distill_prune options that set it.

The report (``exp/<sweep>/PARETO.md`` and ``pareto.png``) puts every model of the sweep -- the teacher, each
target's DPHuBERT model, each target's DistilHuBERT-style baseline (trained to the same parameter count) and
FBANK when stage 5 evaluated it -- on each task's headline metric against parameters, MACs (10 s of audio) and the
CPU latency measured here (one forward of ``latency_seconds`` of audio, medians of interleaved repeats, so that
the ratios to the teacher hold on a busy machine; cached in ``latency.json`` while the model files stay the same).
With the recipe's ``--seeds`` every seed's run is a point, and the report adds stage 5's summary over seeds (each
family's mean and spread, DPHuBERT vs its baseline over seeds and test utterances).
Metric values and their 95% intervals come from stage 5's ``results.json`` (``results[model][task]["ci95"]`` where
it has them); a comparison inside the intervals is a tie.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dphubert.superb.seeds import markdown as seed_lines

BUDGETS = ("params", "macs", "params+macs")
_TARGET = re.compile(r"^[0-9]*\.?[0-9]+$")


class SweepError(ValueError):
    """A sweep item that does not parse, or a sweep whose files are missing; one line naming what and the fix."""


@dataclass(frozen=True)
class Target:
    budget: str
    values: Tuple[float, ...]  # one target per quantity of the budget (params+macs: params, then MACs)

    @property
    def name(self) -> str:
        """``macs0.75``, ``params0.5_macs0.7``: the experiment-tag suffix."""
        return "_".join(f"{q}{v:g}" for q, v in zip(self.budget.split("+"), self.values))

    @property
    def label(self) -> str:
        return f"{self.budget}:{','.join(f'{v:g}' for v in self.values)}"

    def distill_prune_options(self) -> List[str]:
        options = ["--budget", self.budget, "--target-sparsity", f"{self.values[0]:g}"]
        if len(self.values) == 2:
            options += ["--macs-target-sparsity", f"{self.values[1]:g}"]
        return options


def parse_targets(text: str, option: str = "--targets") -> List[Target]:
    """``"params:0.5 macs:0.75"`` -> targets; anything else is a SweepError naming the item and the form."""
    items = text.split()
    if not items:
        raise SweepError(f"{option} is empty; give items like \"params:0.5 macs:0.75\"")
    targets: List[Target] = []
    for item in items:
        budget, colon, values = item.partition(":")
        if not colon or not values:
            raise SweepError(f"{option} item '{item}': expected <budget>:<target>, e.g. params:0.5 or macs:0.75")
        if budget not in BUDGETS:
            raise SweepError(f"{option} item '{item}': unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
        parts = values.split(",")
        wanted = len(budget.split("+"))
        if len(parts) != wanted:
            form = "params+macs:<params target>,<MACs target>" if wanted == 2 else f"{budget}:<target>"
            raise SweepError(f"{option} item '{item}': budget {budget} takes {wanted} target(s), as {form}")
        numbers = []
        for part in parts:
            if not _TARGET.match(part) or not 0.0 < float(part) < 1.0:
                raise SweepError(f"{option} item '{item}': target '{part}' must be a number in (0, 1), the "
                                 f"fraction of the teacher's {budget} to remove")
            numbers.append(float(part))
        target = Target(budget, tuple(numbers))
        if target in targets:
            raise SweepError(f"{option} item '{item}' is given twice; drop one")
        targets.append(target)
    return targets


def target_tag(prefix: str, target: Target) -> str:
    return f"{prefix}_{target.name}"


# ----- the report ----------------------------------------------------------------------------------------------
@dataclass
class Point:
    """One model of the sweep: what it is, its costs and its metrics (``{task: (value, (low, high) or None)}``)."""
    name: str
    kind: str                       # teacher, dphubert, distilhubert or fbank
    path: Optional[str] = None      # model file (None for FBANK)
    target: Optional[Target] = None
    params: Optional[int] = None
    macs: Optional[float] = None
    latency: Optional[float] = None  # seconds per forward, measured in this report's run
    metrics: Dict[str, Tuple[float, Optional[Tuple[float, float]]]] = field(default_factory=dict)


def sweep_points(prefix: str, targets: Sequence[Target], teacher: Path, exp_root: Path,
                 seeds: Sequence[int] = ()) -> List[Point]:
    """The teacher and, per target (and seed) that finished stage 4, its DPHuBERT model and (if trained) its
    baseline; with ``seeds`` the runs are ``exp/<tag>_seed<N>`` and the models ``<tag>_seed<N>``,
    ``<tag>_distilhubert_seed<N>``."""
    points = [Point("teacher", "teacher", str(teacher))]
    for target in targets:
        tag = target_tag(prefix, target)
        for suffix in [f"_seed{s}" for s in seeds] or [""]:
            final = exp_root / f"{tag}{suffix}" / "final" / "model.pt"
            if final.is_file():
                points.append(Point(f"{tag}{suffix}", "dphubert", str(final), target))
            baseline = exp_root / f"{tag}{suffix}" / "distilhubert" / "model.pt"
            if baseline.is_file():
                points.append(Point(f"{tag}_distilhubert{suffix}", "distilhubert", str(baseline), target))
    return points


def attach_costs(points: Sequence[Point], seconds: float = 10.0) -> None:
    from dphubert.models import load_model
    from dphubert.models.macs import count_macs

    for point in points:
        if point.path is not None:
            model = load_model(point.path)
            point.params, point.macs = model.num_params(), float(count_macs(model, seconds)["total"])


def attach_results(points: List[Point], results: Mapping) -> Dict[str, dict]:
    """Metrics from stage 5's results.json (its model names are the points' names); adds FBANK if it is there.

    Returns the task descriptions (``results["tasks"]``)."""
    for name, info in results.get("models", {}).items():
        if name.lower() == "fbank" and all(p.kind != "fbank" for p in points):
            points.append(Point(name, "fbank", params=info.get("params"), macs=info.get("macs")))
    tasks = results.get("tasks", {})
    for point in points:
        for task, values in results.get("results", {}).get(point.name, {}).items():
            if task not in tasks:
                continue
            metric = tasks[task]["metrics"][0]["name"]
            if metric in values:
                interval = values.get("ci95")
                point.metrics[task] = (float(values[metric]), tuple(interval) if interval else None)
    return tasks


def measure_latency(points: Sequence[Point], cache: Path, seconds: float = 4.0, repeats: int = 3,
                    threads: int = 1, log=print) -> None:
    """CPU seconds per forward of each model file (interleaved repeats, medians); reuses ``cache`` while every
    file and setting is the same (a model retrained since is measured again, with all the others)."""
    import torch

    from dphubert.models import load_model

    files = [p for p in points if p.path is not None]
    stamp = {"seconds": seconds, "repeats": repeats, "threads": threads,
             "files": {p.name: _file_stamp(p.path) for p in files}}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            for point in files:
                point.latency = cached["latency"][point.name]
            log(f"[sweep] latency: reusing {cache} (same model files)")
            return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = [load_model(p.path).eval() for p in files]
        x = torch.randn(1, int(seconds * 16000), generator=torch.Generator().manual_seed(0))
        times: List[List[float]] = [[] for _ in models]
        with torch.inference_mode():
            for model in models:  # warm-up
                model.extract_features(x)
            for _ in range(repeats):
                for i, model in enumerate(models):
                    start = time.perf_counter()
                    model.extract_features(x)
                    times[i].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    for point, measured in zip(files, times):
        point.latency = statistics.median(measured)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"stamp": stamp, "latency": {p.name: p.latency for p in files}}, indent=1) + "\n")
    log(f"[sweep] latency of {len(files)} models measured ({repeats} interleaved repeats of {seconds:g} s, "
        f"{threads} thread(s)) -> {cache}")


def _file_stamp(path: str) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}@{stat.st_mtime_ns}"


COST_TIE = 0.01  # costs within 1% of each other count as equal (a baseline is sized to just under its target)


def pareto_front(points: Sequence[Point], task: str, cost: str, higher_better: bool) -> List[str]:
    """Names of the models on the front (in the order given). From the cheapest up, a model joins when its metric is
    better than that of every cheaper model already on the front, beyond the 95% intervals where both have one,
    and no model of the same cost is better than it. A model tied with a cheaper front member stays off, and ties
    do not chain (a model that clearly beats the cheapest member is not dropped because it ties a dropped one in
    between). FBANK is a reference, not a candidate."""
    scored = [p for p in points if task in p.metrics and getattr(p, cost) is not None and p.kind != "fbank"]

    def better(a: Point, b: Point) -> bool:  # a's metric better than b's (beyond the intervals where known)
        (va, ia), (vb, ib) = a.metrics[task], b.metrics[task]
        if ia and ib:
            return ia[0] > ib[1] if higher_better else ia[1] < ib[0]
        return va > vb if higher_better else va < vb

    def same_cost(a: Point, b: Point) -> bool:
        return abs(getattr(a, cost) - getattr(b, cost)) <= COST_TIE * max(getattr(a, cost), getattr(b, cost))

    front: List[Point] = []
    for p in sorted(scored, key=lambda q: getattr(q, cost)):
        cheaper = [q for q in front if not same_cost(q, p)]
        if all(better(p, q) for q in cheaper) and not any(better(q, p) for q in scored if same_cost(q, p)):
            front.append(p)
    return [p.name for p in scored if p in front]  # in the table's order


COSTS = (("params", "parameters (M)", 1e6), ("macs", "GMACs per 10 s", 1e9), ("latency", "CPU latency (ms)", 1e-3))


def _fmt_metric(value: Tuple[float, Optional[Tuple[float, float]]]) -> str:
    v, interval = value
    if interval:
        return f"{v:.2f} ± {(interval[1] - interval[0]) / 2:.2f}"
    return f"{v:.2f}"


def markdown(points: Sequence[Point], tasks: Mapping[str, dict], latency_seconds: float,
             mode: Optional[str] = None, over_seeds: Optional[Mapping] = None) -> str:
    """PARETO.md; ``over_seeds``: stage 5's summary of the seeded runs (results.json's ``seeds``)."""
    teacher = next(p for p in points if p.kind == "teacher")
    task_names = [t for t in tasks if any(t in p.metrics for p in points)]
    header = ["model", "budget:target", "params (M)", "params sparsity", "GMACs (10 s)", "MACs sparsity",
              f"CPU latency (ms, {latency_seconds:g} s)", "latency / teacher"]
    for task in task_names:
        metric = tasks[task]["metrics"][0]
        arrow = "↑" if metric["higher_better"] else "↓"
        header.append(f"{tasks[task].get('title', task)} {metric['name']} {arrow}")
    lines = ["# Pareto report of a target sweep", ""]
    if mode:
        lines.append(f"SUPERB mode of stage 5: **{mode}**" + (" (quick settings: a smoke test, not comparable with "
                                                             "SUPERB)" if mode == "quick" else "") + ".")
    lines += ["Every model of the sweep: the teacher, each target's DPHuBERT model (exp/<tag>/final/model.pt), its "
              "DistilHuBERT-style baseline of the same parameter count, FBANK where stage 5 evaluated it. "
              "Sparsities are against the teacher; MACs are counted for 10 s of audio (dphubert.models.macs); the "
              "latency is one CPU forward measured in one run, interleaved (compare ratios, not absolute times). "
              "Metrics: stage 5's test-set values, ± the half-width of the 95% interval where results.json has one.",
              "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in points:
        target = "-" if p.target is None else p.target.label if p.kind == "dphubert" else f"size of {p.target.label}"
        row = [p.name, target,
               _num(p.params, 1e6), _sparsity(p.params, teacher.params), _num(p.macs, 1e9),
               _sparsity(p.macs, teacher.macs), _num(p.latency, 1e-3, ".0f"),
               f"{p.latency / teacher.latency:.2f}" if p.latency and teacher.latency else "-"]
        row += [_fmt_metric(p.metrics[t]) if t in p.metrics else "-" for t in task_names]
        lines.append("| " + " | ".join(row) + " |")
    if task_names:
        lines += ["", "## Pareto fronts", "",
                  "Per task and cost: from the cheapest up, a model is on the front when it is "
                  "better than every cheaper model on the front beyond both 95% intervals (a difference inside them "
                  "is a tie; costs within 1% count as equal; FBANK is only a reference):", ""]
        for task in task_names:
            higher = tasks[task]["metrics"][0]["higher_better"]
            for cost, label, _ in COSTS:
                front = pareto_front(points, task, cost, higher)
                if front:
                    lines.append(f"- {tasks[task].get('title', task)} vs {label.split(' (')[0]}: {', '.join(front)}")
        lines += seed_lines(over_seeds, task_names)
    else:
        lines += ["", "No SUPERB results yet (stage 5 did not run): costs only."]
    lines += ["", "Files: pareto.png (each task's metric against params, MACs and latency), latency.json, "
              "superb/ (stage 5 of the sweep).", ""]
    return "\n".join(lines)


def _num(value, scale, fmt=".2f") -> str:
    return "-" if value is None else f"{value / scale:{fmt}}"


def _sparsity(value, reference) -> str:
    return "-" if value is None or not reference else f"{1 - value / reference:.3f}"


_STYLE = {"params": ("#4c72b0", "o", "DPHuBERT, params budget"), "macs": ("#dd8452", "s", "DPHuBERT, MACs budget"),
          "params+macs": ("#8172b2", "D", "DPHuBERT, params+MACs budget")}


def plot(points: Sequence[Point], tasks: Mapping[str, dict], path: Path) -> Optional[Path]:
    """One row per task, one column per cost; teacher and FBANK as reference lines, intervals as error bars."""
    task_names = [t for t in tasks if any(t in p.metrics for p in points)]
    if not task_names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(task_names), len(COSTS), figsize=(4.2 * len(COSTS), 3.3 * len(task_names)),
                             squeeze=False)
    for row, task in zip(axes, task_names):
        metric = tasks[task]["metrics"][0]
        for ax, (cost, label, scale) in zip(row, COSTS):
            groups: Dict[str, List[Point]] = {}
            for p in points:
                if task in p.metrics:
                    key = p.target.budget if p.kind == "dphubert" else p.kind
                    groups.setdefault(key, []).append(p)
            for key, members in groups.items():
                if key == "fbank":
                    value = members[0].metrics[task][0]
                    ax.axhline(value, color="#777777", linestyle=":", label=f"FBANK {value:.1f}")
                    continue
                placed = sorted((p for p in members if getattr(p, cost) is not None), key=lambda p: getattr(p, cost))
                if not placed:
                    continue
                xs = [getattr(p, cost) / scale for p in placed]
                ys = [p.metrics[task][0] for p in placed]
                errors = [[_below(p, task) for p in placed], [_above(p, task) for p in placed]]
                if key == "teacher":
                    color, marker, name = "black", "*", "teacher"
                    ax.axhline(ys[0], color="black", linewidth=0.6, alpha=0.4)
                elif key == "distilhubert":
                    color, marker, name = "#55a868", "^", "DistilHuBERT-style (same params)"
                else:
                    color, marker, name = _STYLE[key]
                ax.errorbar(xs, ys, yerr=errors, color=color, marker=marker, linestyle="-" if len(xs) > 1 else "",
                            capsize=3, markersize=8 if key == "teacher" else 6, label=name)
            ax.set_xlabel(label)
            ax.set_ylabel(f"{tasks[task].get('title', task)} {metric['name']} "
                          f"({'higher' if metric['higher_better'] else 'lower'} is better)", fontsize=8)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, loc="best")
    fig.suptitle("Target sweep: metric against cost (bars: 95% intervals where known)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _below(p: Point, task: str) -> float:
    value, interval = p.metrics[task]
    return max(value - interval[0], 0.0) if interval else 0.0


def _above(p: Point, task: str) -> float:
    value, interval = p.metrics[task]
    return max(interval[1] - value, 0.0) if interval else 0.0


def write_report(prefix: str, targets: Sequence[Target], teacher: Path, out: Path, exp_root: Path,
                 results: Optional[Path] = None, latency_seconds: float = 4.0, latency_repeats: int = 3,
                 log=print, seeds: Sequence[int] = ()) -> List[Point]:
    """PARETO.md, pareto.png and latency.json in ``out``; returns the points."""
    if not Path(teacher).is_file():
        raise SweepError(f"{teacher}: the teacher model file is missing; run stage 0 first")
    points = sweep_points(prefix, targets, Path(teacher), Path(exp_root), seeds)
    missing = [target_tag(prefix, t) for t in targets if not any(p.target == t for p in points)]
    if missing:
        log(f"[sweep] not finished (no final/model.pt), left out of the report: {', '.join(missing)}")
    attach_costs(points)
    data = {}
    if results is not None and Path(results).is_file():
        data = json.loads(Path(results).read_text())
    tasks = attach_results(points, data)
    measure_latency(points, Path(out) / "latency.json", latency_seconds, latency_repeats, log=log)
    Path(out).mkdir(parents=True, exist_ok=True)
    text = markdown(points, tasks, latency_seconds, data.get("settings", {}).get("mode"), data.get("seeds"))
    (Path(out) / "PARETO.md").write_text(text, encoding="utf-8")
    png = plot(points, tasks, Path(out) / "pareto.png")
    log(f"[sweep] wrote {Path(out) / 'PARETO.md'}" + (f" and {png}" if png else " (no SUPERB results: no plot)"))
    return points
