"""Recipe stage 5: every model x task through s3prl (train, then evaluate on the test split), then the report.

Layout under ``out``::

    corpora/<task>/                 side files made from the corpora (shared by the models)
    <model>/<task>/                 s3prl's experiment dir: superb_config.yaml, train.log, evaluate.log,
                                    checkpoints, result.json and the .done marker of a finished pair
    <model>/er/fold<k>/             ER: one experiment per test fold (the task's value is their mean)
    results.json  RESULTS.md  results.png

A pair with a ``.done`` marker is not rerun (``force=True`` reruns everything); a pair without one is started
from scratch. A pair that fails is reported (one line, in RESULTS.md too) and the others still run.
"""

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from . import corpora as corpora_mod
from . import results as results_mod
from . import feature_cache, running
from .configs import quick_subsets, resolve_config, set_dotted, write_config
from .errors import SuperbError
from .subsets import subset_view
from .tasks import Task

DONE = ".done"


@dataclass
class StageOptions:
    full: bool = False
    overrides: Sequence[str] = ()      # key.path=value for every task's config
    er_folds: Sequence[int] = (1,)
    force: bool = False
    seed: int = 1337
    quiet: bool = True                 # s3prl's own output goes to the logs only
    cache_features: Optional[bool] = None  # memoise upstream features (None: in quick mode only)
    cache_mb: int = 3000

    @property
    def upstream(self) -> str:
        cached = (not self.full) if self.cache_features is None else self.cache_features
        return "dphubert_cached" if cached else "dphubert_local"


@dataclass
class ModelInfo:
    name: str
    path: str
    params: int
    macs: Optional[float]
    macs_seconds: float = 10.0


def describe_models(models: Mapping[str, str]) -> Dict[str, ModelInfo]:
    """Load every model once (a non-model file fails here, before any training); params and MACs."""
    try:
        from dphubert.models.macs import count_macs
    except ImportError:  # MACs are optional in the report
        count_macs = None
    infos = {}
    for name, path in models.items():
        model = running.check_model(path)
        macs = float(count_macs(model, seconds=10.0)["total"]) if count_macs else None
        infos[name] = ModelInfo(name, str(Path(path).resolve()), model.num_params(), macs)
    return infos


def _latest_states(expdir: Path) -> Optional[Path]:
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    return states[-1] if states else None


def evaluation_checkpoint(task: Task, expdir: Path) -> Path:
    """The task's best-on-dev checkpoint, else the last one (also what tasks without a dev criterion use)."""
    if task.best_ckpt and (expdir / task.best_ckpt).exists():
        return expdir / task.best_ckpt
    last = _latest_states(expdir)
    if last is None:
        raise SuperbError(f"{task.title}: training wrote no checkpoint in {expdir}; see {expdir}/train.log")
    return last


def _score_qbe(expdir: Path, variables: Mapping[str, object]) -> str:
    """QUESST 2014's own scoring script over s3prl's benchmark.stdlist.xml (prints maxTWV)."""
    scoring = Path(str(variables["QUESST14"])) / "scoring"
    proc = subprocess.run(["bash", "score-TWV-Cnxe.sh", str(expdir.resolve()), "groundtruth_quesst14_eval", "-10"],
                          cwd=scoring, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    for extra in expdir.glob("score*.out"):
        text += extra.read_text(errors="replace")
    return text


def run_pair(model: ModelInfo, task: Task, variables: Mapping[str, object], expdir: Path,
             options: StageOptions, fold: Optional[int] = None) -> Dict[str, float]:
    """Train + evaluate one model on one task (one ER fold); returns its metrics and writes result.json."""
    if expdir.exists():
        shutil.rmtree(expdir)  # an unfinished earlier attempt
    expdir.mkdir(parents=True)
    config = resolve_config(task, variables, full=options.full, overrides=options.overrides)
    if fold is not None:
        set_dotted(config, "downstream_expert.datarc.test_fold", f"fold{fold}")
    config_path = write_config(config, expdir / "superb_config.yaml")
    common = ["--seed", str(options.seed)]
    start = time.time()
    cache_before = feature_cache.current()
    hits_before, misses_before = (cache_before.hits, cache_before.misses) if cache_before else (0, 0)
    if task.trains:
        running.run_downstream(running.with_config(
            ["-m", "train", "-u", options.upstream, "-k", model.path, "-d", task.downstream, "-p", str(expdir),
             "-c", str(config_path), *common], {}), log=expdir / "train.log", quiet=options.quiet)
        evaluate = ["-m", "evaluate", "-e", str(evaluation_checkpoint(task, expdir)), "-t", task.eval_split]
    else:
        evaluate = ["-m", "evaluate", "-u", options.upstream, "-k", model.path, "-d", task.downstream,
                    "-p", str(expdir), "-c", str(config_path), "-t", task.eval_split, *common]
    text = running.run_downstream(running.with_config(evaluate, {}), log=expdir / "evaluate.log",
                                  quiet=options.quiet)
    if task.name == "qbe":
        text += _score_qbe(expdir, variables)
    values = results_mod.parse_metrics(task, text, source=str(expdir / "evaluate.log"))
    values["seconds"] = round(time.time() - start, 1)
    cache = feature_cache.current()
    if options.upstream == feature_cache.UPSTREAM_NAME and cache is not None:
        if cache is not cache_before:
            hits_before = misses_before = 0  # the cache was made for this model during this pair
        values["feature_cache_hits"] = cache.hits - hits_before
        values["feature_cache_misses"] = cache.misses - misses_before
    results_mod.write_json(expdir / "result.json", values)
    (expdir / DONE).touch()
    return values


def _folds(task: Task, options: StageOptions) -> List[Optional[int]]:
    return list(options.er_folds) if task.name == "er" else [None]


def _pair_dir(out: Path, model: str, task: Task, fold: Optional[int]) -> Path:
    base = out / model / task.name
    return base / f"fold{fold}" if fold is not None else base


def run_stage(models: Mapping[str, str], tasks: Sequence[Task], out: Path, corpora: Mapping[str, str],
              options: StageOptions, log=print) -> dict:
    """Every model x task; returns the results.json dict (also written, with RESULTS.md and results.png)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems = [reason for task in tasks if (reason := corpora_mod.missing_corpus(task, corpora))]
    if problems:
        raise SuperbError(problems[0])
    infos = describe_models(models)
    feature_cache.set_budget(options.cache_mb)
    variables = {}
    for task in tasks:
        log(f"[superb] {task.title}: checking the corpus and preparing its side files")
        variables[task.name] = corpora_mod.prepare(task, corpora, out / "corpora" / task.name)
        if not options.full:
            variables[task.name] = subset_view(task.name, variables[task.name], quick_subsets(task),
                                               out / "corpora" / task.name / "quick")

    results: Dict[str, Dict[str, dict]] = {name: {} for name in models}
    failures: Dict[str, Dict[str, str]] = {name: {} for name in models}
    for name, info in infos.items():
        for task in tasks:
            fold_values = []
            for fold in _folds(task, options):
                expdir = _pair_dir(out, name, task, fold)
                label = f"{name} x {task.title}" + (f" fold{fold}" if fold else "")
                if (expdir / DONE).exists() and not options.force:
                    fold_values.append(json.loads((expdir / "result.json").read_text()))
                    log(f"[superb] {label}: done before ({expdir}/{DONE}); skipped")
                    continue
                log(f"[superb] {label}: training and evaluating (log: {expdir}/train.log)")
                try:
                    fold_values.append(run_pair(info, task, variables[task.name], expdir, options, fold))
                except SuperbError as e:
                    failures[name][task.name] = str(e)
                except Exception as e:  # an s3prl failure in one pair must not lose the others
                    failures[name][task.name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" \
                                                f" (see {expdir}/train.log / evaluate.log)"
                if task.name in failures[name]:
                    log(f"[superb] {label}: FAILED: {failures[name][task.name]}")
                    break
                value = fold_values[-1]
                log(f"[superb] {label}: {task.metric.name} {value[task.metric.name]:.2f} "
                    f"({value.get('seconds', 0):.0f} s)")
            if task.name not in failures[name] and fold_values:
                results[name][task.name] = _mean(fold_values)
    data = {
        "settings": {"mode": "full" if options.full else "quick", "overrides": list(options.overrides),
                     "er_folds": list(options.er_folds), "seed": options.seed},
        "models": {n: {"path": i.path, "params": i.params, "macs": i.macs, "macs_seconds": i.macs_seconds}
                   for n, i in infos.items()},
        "tasks": {t.name: {"title": t.title, "description": t.description, "downstream": t.downstream,
                           "metrics": [{"name": m.name, "higher_better": m.higher_better} for m in t.metrics]}
                  for t in tasks},
        "results": results,
        "failures": {n: f for n, f in failures.items() if f},
    }
    write_report(data, out)
    return data


def _mean(values: List[Dict[str, float]]) -> Dict[str, float]:
    keys = [k for k in values[0] if all(k in v for v in values)]
    return {k: sum(v[k] for v in values) / len(values) for k in keys} if len(values) > 1 else dict(values[0])


def write_report(data: dict, out: Path) -> None:
    results_mod.write_json(out / "results.json", data)
    (out / "RESULTS.md").write_text(results_mod.markdown(data), encoding="utf-8")
    results_mod.bar_chart(data, out / "results.png")
