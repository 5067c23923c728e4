"""Recipe stage 5: every model x task through s3prl (train, then evaluate on the test split), then the report.

Layout under ``out``::

    corpora/<task>/                 side files made from the corpora (shared by the models)
    <model>/<task>/                 s3prl's experiment dir: superb_config.yaml, train.log, evaluate.log,
                                    checkpoints, result.json and the .done marker of a finished pair
    <model>/er/fold<k>/             ER: one experiment per test fold (the task's value is their mean)
    fbank/<task>/                   the FBANK baseline: s3prl's own ``fbank`` upstream (memoised in quick mode:
                                    ``fbank_cached``), same path and settings
    results.json  RESULTS.md  results.png

A pair with a ``.done`` marker is not rerun (``force=True`` reruns everything); a pair without one, or whose
marker holds another sha1 of the model file (the model was retrained since), is started from scratch. A pair
that fails is reported (one line, in RESULTS.md too) and the others still run. With ``StageOptions.jobs > 1``
the pairs run in that many spawned worker processes (each with its own s3prl import and feature cache); the
results are the same as one after the other (s3prl seeds every run).

Models named ``<family>_seed<N>`` (the recipe's ``--seeds``) are also summarised per family: mean and spread
over seeds, and DPHuBERT vs the DistilHuBERT baseline with an interval over both seeds and test utterances
(``seeds``; results.json's ``seeds`` entry, RESULTS.md's "Over training seeds").

Every pair's result.json also holds ``n_test`` and ``ci95`` (the 95% interval of the headline metric, from
s3prl's per-utterance test outputs; see ``intervals``) where the task's expert writes those files.
"""

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from . import corpora as corpora_mod
from . import results as results_mod
from . import feature_cache, intervals, running, seeds
from .configs import quick_subsets, resolve_config, set_dotted, write_config
from .errors import SuperbError
from .subsets import subset_view
from .tasks import TASKS, Task

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
    jobs: int = 1                      # model x task pairs run at once, each in its own process
    num_threads: int = 0               # torch threads of each such process (0: torch's default)
    fbank: bool = True                 # add the FBANK baseline row (s3prl's ``fbank`` upstream)

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
    digest: str = ""                   # sha1 of the model file: a pair's .done marker holds it
    upstream: Optional[str] = None     # s3prl upstream of a model without a file (fbank); None: ours


FBANK = "fbank"


def fbank_macs(seconds: float) -> float:
    """Multiply-accumulates of s3prl's ``fbank`` upstream (Kaldi fbank, 80 bins, 25/10 ms, deltas, CMVN).

    Per 10 ms frame: a 512-point real FFT (~4 N/2 log2 N = 9216), the power spectrum (2 x 257), the 80 x 257 mel
    matrix (20560), deltas and delta-deltas (2 x 80 x 5 x 2) and CMVN (240): about 31k, so ~0.03 GMACs in 10 s.
    """
    per_frame = 4 * 256 * 9 + 2 * 257 + 80 * 257 + 2 * 80 * 5 * 2 + 240
    return per_frame * seconds * 100.0


def fbank_info() -> ModelInfo:
    import s3prl

    return ModelInfo(FBANK, "", 0, fbank_macs(10.0), digest=f"s3prl-fbank-{getattr(s3prl, '__version__', '?')}",
                     upstream=FBANK)


def file_digest(path: str) -> str:
    sha1 = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha1.update(block)
    return sha1.hexdigest()


def describe_models(models: Mapping[str, str], fbank: bool = False) -> Dict[str, ModelInfo]:
    """Load every model once (a non-model file fails here, before any training); params and MACs.

    ``fbank``: the FBANK baseline first, as in SUPERB's tables (no parameters; its MACs estimated).
    """
    if fbank and FBANK in models:
        raise SuperbError(f"--models names '{FBANK}', the name of the FBANK baseline row; rename that model "
                          f"(or pass --no-fbank)")
    try:
        from dphubert.models.macs import count_macs
    except ImportError:  # MACs are optional in the report
        count_macs = None
    infos = {FBANK: fbank_info()} if fbank else {}
    for name, path in models.items():
        model = running.check_model(path)
        macs = float(count_macs(model, seconds=10.0)["total"]) if count_macs else None
        infos[name] = ModelInfo(name, str(Path(path).resolve()), model.num_params(), macs,
                                digest=file_digest(path))
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
    cached = options.upstream == feature_cache.UPSTREAM_NAME
    if model.upstream == FBANK:
        upstream = ["-u", feature_cache.FBANK_UPSTREAM_NAME if cached else FBANK]
    else:
        upstream = ["-u", options.upstream, "-k", model.path]
    start = time.time()
    cache_before = feature_cache.current()
    hits_before, misses_before = (cache_before.hits, cache_before.misses) if cache_before else (0, 0)
    if task.trains:
        running.run_downstream(running.with_config(
            ["-m", "train", *upstream, "-d", task.downstream, "-p", str(expdir),
             "-c", str(config_path), *common], {}), log=expdir / "train.log", quiet=options.quiet)
        evaluate = ["-m", "evaluate", "-e", str(evaluation_checkpoint(task, expdir)), "-t", task.eval_split]
    else:
        evaluate = ["-m", "evaluate", *upstream, "-d", task.downstream,
                    "-p", str(expdir), "-c", str(config_path), "-t", task.eval_split, *common]
    text = running.run_downstream(running.with_config(evaluate, {}), log=expdir / "evaluate.log",
                                  quiet=options.quiet)
    if task.name == "qbe":
        text += _score_qbe(expdir, variables)
    values = results_mod.parse_metrics(task, text, source=str(expdir / "evaluate.log"))
    values.update(test_interval(task, expdir, values))
    values["seconds"] = round(time.time() - start, 1)
    cache = feature_cache.current()
    if cached and cache is not None:
        if cache is not cache_before:
            hits_before = misses_before = 0  # the cache was made for this model during this pair
        values["feature_cache_hits"] = cache.hits - hits_before
        values["feature_cache_misses"] = cache.misses - misses_before
    results_mod.write_json(expdir / "result.json", values)
    (expdir / DONE).write_text(model.digest + "\n")
    return values


def test_interval(task: Task, expdir: Path, values: Mapping[str, float]) -> Dict[str, object]:
    """``n_test`` and ``ci95`` from s3prl's per-utterance test files, when they give back s3prl's own value."""
    found = intervals.interval(task.name, expdir)
    if not found:
        return {}
    if abs(found.pop("rate_from_files") - values[task.metric.name]) > 0.01:  # not this run's files
        return {}
    return found


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
    infos = describe_models(models, fbank=options.fbank)
    feature_cache.set_budget(options.cache_mb)
    variables = {}
    for task in tasks:
        log(f"[superb] {task.title}: checking the corpus and preparing its side files")
        variables[task.name] = corpora_mod.prepare(task, corpora, out / "corpora" / task.name)
        if not options.full:
            variables[task.name] = subset_view(task.name, variables[task.name], quick_subsets(task),
                                               out / "corpora" / task.name / "quick")

    pairs = [(name, task, fold) for name in infos for task in tasks for fold in _folds(task, options)]
    outcomes = _run_pairs(pairs, infos, variables, out, options, log)
    results: Dict[str, Dict[str, dict]] = {name: {} for name in infos}
    failures: Dict[str, Dict[str, str]] = {name: {} for name in infos}
    for name in infos:
        for task in tasks:
            fold_outcomes = [outcomes[(name, task.name, fold)] for fold in _folds(task, options)]
            failed = [o for o in fold_outcomes if isinstance(o, str)]
            if failed:
                failures[name][task.name] = failed[0]
            else:
                results[name][task.name] = _mean(fold_outcomes)
    data = {
        "settings": {"mode": "full" if options.full else "quick", "overrides": list(options.overrides),
                     "er_folds": list(options.er_folds), "seed": options.seed},
        "models": {n: {"path": i.path or f"s3prl upstream {i.upstream}", "params": i.params, "macs": i.macs,
                       "macs_seconds": i.macs_seconds} for n, i in infos.items()},
        "tasks": {t.name: {"title": t.title, "description": t.description, "downstream": t.downstream,
                           "metrics": [{"name": m.name, "higher_better": m.higher_better} for m in t.metrics]}
                  for t in tasks},
        "results": results,
        "failures": {n: f for n, f in failures.items() if f},
    }
    over_seeds = seeds.summarize(results, [t.name for t in tasks],
                                 lambda model, task: _pair_dir(out, model, TASKS[task], None))
    if over_seeds:
        data["seeds"] = over_seeds
    write_report(data, out)
    return data


def _label(name: str, task: Task, fold: Optional[int]) -> str:
    return f"{name} x {task.title}" + (f" fold{fold}" if fold else "")


def _try_pair(info: ModelInfo, task: Task, variables: Mapping[str, object], expdir: Path, options: StageOptions,
              fold: Optional[int]):
    """run_pair's metrics, or a one-line reason when it failed (one failed pair must not lose the others)."""
    try:
        return run_pair(info, task, variables, expdir, options, fold)
    except SuperbError as e:
        return str(e)
    except Exception as e:  # an s3prl failure
        first_line = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first_line} (see {expdir}/train.log / evaluate.log)"


def _start_worker(num_threads: int, cache_mb: int) -> None:
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
    feature_cache.set_budget(cache_mb)


def _run_pairs(pairs, infos: Mapping[str, ModelInfo], variables: Mapping[str, Mapping[str, object]], out: Path,
               options: StageOptions, log) -> Dict[tuple, object]:
    """{(model, task name, fold): metrics dict or failure reason}; pairs done before are read back.

    With ``options.jobs > 1`` the pairs run in that many worker processes (each pair is a small, mostly
    single-threaded job: on a CPU, two at once use two cores where one would leave a core idle).
    """
    outcomes: Dict[tuple, object] = {}
    pending = []
    for name, task, fold in pairs:
        expdir = _pair_dir(out, name, task, fold)
        done = expdir / DONE
        if done.exists() and not options.force and done.read_text().strip() == infos[name].digest:
            outcomes[(name, task.name, fold)] = json.loads((expdir / "result.json").read_text())
            log(f"[superb] {_label(name, task, fold)}: done before ({done}); skipped")
        else:
            if done.exists() and not options.force:
                log(f"[superb] {_label(name, task, fold)}: {infos[name].path} changed since it ran; running again")
            # Gone before any pair runs: a --force run killed midway must not leave old results marked done.
            done.unlink(missing_ok=True)
            pending.append((name, task, fold, expdir))

    def report(name, task, fold, outcome):
        outcomes[(name, task.name, fold)] = outcome
        if isinstance(outcome, str):
            log(f"[superb] {_label(name, task, fold)}: FAILED: {outcome}")
        else:
            log(f"[superb] {_label(name, task, fold)}: {task.metric.name} {outcome[task.metric.name]:.2f} "
                f"({outcome.get('seconds', 0):.0f} s)")

    if options.jobs <= 1 or len(pending) <= 1:
        for name, task, fold, expdir in pending:
            log(f"[superb] {_label(name, task, fold)}: training and evaluating (log: {expdir}/train.log)")
            report(name, task, fold, _try_pair(infos[name], task, variables[task.name], expdir, options, fold))
        return outcomes

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    log(f"[superb] {len(pending)} model x task runs in {options.jobs} parallel jobs "
        f"(logs: {out}/<model>/<task>/train.log)")
    context = multiprocessing.get_context("spawn")  # s3prl and torch state must not be forked
    with ProcessPoolExecutor(options.jobs, mp_context=context, initializer=_start_worker,
                             initargs=(options.num_threads, options.cache_mb)) as pool:
        futures = {pool.submit(_try_pair, infos[name], task, variables[task.name], expdir, options, fold):
                   (name, task, fold) for name, task, fold, expdir in pending}
        for future in as_completed(futures):
            name, task, fold = futures[future]
            try:
                outcome = future.result()
            except Exception as e:  # the worker process itself died (killed, out of memory)
                outcome = f"{type(e).__name__}: the worker process running it stopped"
            report(name, task, fold, outcome)
    return outcomes


def _mean(values: List[Dict[str, object]]) -> Dict[str, object]:
    """The folds' mean of every number; ``n_test`` summed. (Intervals of single folds do not combine into one of
    the mean: a multi-fold value has none.)"""
    if len(values) == 1:
        return dict(values[0])
    keys = [k for k in values[0] if all(k in v for v in values) and k != "ci95"]
    mean = {k: sum(v[k] for v in values) / len(values) for k in keys}
    if "n_test" in mean:
        mean["n_test"] = sum(v["n_test"] for v in values)
    return mean


def write_report(data: dict, out: Path) -> None:
    results_mod.write_json(out / "results.json", data)
    (out / "RESULTS.md").write_text(results_mod.markdown(data), encoding="utf-8")
    results_mod.bar_chart(data, out / "results.png")
