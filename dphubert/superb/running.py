"""Run s3prl's own ``run_downstream`` (``s3prl/run_downstream.py`` ``main()``) in this process, set up for us.

``setup()`` (once per process, before s3prl's modules are imported):
- the torchaudio compatibility layer and the ``dphubert_local`` upstream (``dphubert.s3prl.expert.register``),
  and ``dphubert_cached`` (the same with memoised features, ``feature_cache``);
- the LibriPhone dataset that the pip s3prl lacks (``ctc_corpora.install``);
- while ``run_downstream`` runs, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: s3prl's ``torch.load`` of its own
  downstream checkpoints (``-e``, ``-i``) holds an ``argparse.Namespace``, which torch >= 2.6 refuses by default.
  The variable only changes calls that do not pass ``weights_only`` (ours always do); those checkpoints are the
  ones s3prl wrote for this experiment.

``with_config(argv, corpora, full)`` adds what run_downstream needs to work from any directory: without ``-c``
(its default is ``./downstream/<d>/config.yaml``, relative to an s3prl checkout) our shipped config of the
downstream is resolved with the corpus paths and written to ``<expdir>/superb_config.yaml``; and
``--device cpu`` when no GPU is visible (its default is ``cuda``).

``run_downstream(argv, log=path)`` runs main() with ``sys.argv`` set to argv, printing to the console and
appending everything s3prl prints to ``log``; it returns that text (the metrics are parsed from it). Many runs
can share one process (the stage does: s3prl's imports take 5-20 s), so each run also
- keeps s3prl's SID file-list cache in its own experiment dir (s3prl puts it in site-packages, shared by all);
- skips s3prl's ``hack_isinstance()`` outside DDP and restores ``builtins.isinstance`` afterwards (each call
  wraps it once more, slowing every later isinstance call in the process);
- replaces three s3prl helpers whose backward is quadratic in the batch size by bit-identical linear ones
  (``linear_backward``: half of a quick KS run's time on CPU with FBANK features, a third with the demo teacher's).
``setup()`` also defers ESPnet's import that ``s3prl.hub`` triggers (``defer_espnet_hubert``).
"""

import builtins
import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from .errors import SuperbError
from .tasks import task_for_downstream

_READY = False
_S3PRL_HACK_ISINSTANCE = None
WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def setup() -> None:
    global _READY
    if _READY:
        return
    from dphubert.s3prl.expert import register

    from . import ctc_corpora

    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*")  # s3prl's imports, not ours
    # s3prl's main() calls logging.basicConfig(); a handler bound to whatever sys.stderr was then would write
    # into the first run's (closed) log, so log to the *current* sys.stderr instead.
    logging.basicConfig(level=logging.INFO, handlers=[_CurrentStderrHandler()])
    defer_espnet_hubert()
    register()
    import s3prl.hub
    import s3prl.run_downstream

    global _S3PRL_HACK_ISINSTANCE
    _S3PRL_HACK_ISINSTANCE = s3prl.run_downstream.hack_isinstance

    from . import feature_cache

    setattr(s3prl.hub, feature_cache.UPSTREAM_NAME, feature_cache.dphubert_cached)
    setattr(s3prl.hub, feature_cache.FBANK_UPSTREAM_NAME, feature_cache.fbank_cached)
    ctc_corpora.install()
    _READY = True


ESPNET_HUBERT_EXPERT = "s3prl.upstream.espnet_hubert.expert"


def defer_espnet_hubert() -> None:
    """Import ESPnet only when the ``espnet_hubert`` upstream is used, not whenever ``s3prl.hub`` is imported.

    s3prl.hub imports every upstream's hubconf, and espnet_hubert's expert imports ``espnet2.tasks.hubert``,
    which takes 10-20 s on a small CPU, in every run_downstream process. A stand-in module whose
    ``UpstreamExpert`` imports the real one when an instance is made keeps that upstream fully usable.
    """
    if ESPNET_HUBERT_EXPERT in sys.modules:
        return
    import importlib
    import types

    class UpstreamExpert:
        def __new__(cls, *args, **kwargs):
            if sys.modules.get(ESPNET_HUBERT_EXPERT) is stand_in:
                del sys.modules[ESPNET_HUBERT_EXPERT]
            real = importlib.import_module(ESPNET_HUBERT_EXPERT)
            return real.UpstreamExpert(*args, **kwargs)

    stand_in = types.ModuleType(ESPNET_HUBERT_EXPERT)
    stand_in.UpstreamExpert = UpstreamExpert
    sys.modules[ESPNET_HUBERT_EXPERT] = stand_in


class _CurrentStderrHandler(logging.StreamHandler):
    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _has(argv: Sequence[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f + "=") for f in flags if f.startswith("--")) for a in argv)


def _value(argv: Sequence[str], *flags: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a in flags and i + 1 < len(argv):
            return argv[i + 1]
        for f in flags:
            if f.startswith("--") and a.startswith(f + "="):
                return a.split("=", 1)[1]
    return None


def expdir_of(argv: Sequence[str]) -> Path:
    """The experiment dir run_downstream will use (-p, else result/downstream/<-n>)."""
    expdir = _value(argv, "-p", "--expdir")
    if expdir:
        return Path(expdir)
    name = _value(argv, "-n", "--expname")
    if not name:
        raise SuperbError("give the experiment dir: -p DIR (or -n NAME for result/downstream/NAME)")
    return Path("result/downstream") / name


def with_config(argv: Sequence[str], corpora: Mapping[str, str], full: bool = True,
                overrides: Sequence[str] = ()) -> List[str]:
    """run_downstream arguments with a resolved shipped config (when -c is absent) and ``--device``."""
    from . import corpora as corpora_mod
    from .configs import quick_subsets, resolve_config, write_config
    from .subsets import subset_view

    argv = list(argv)
    resumed = _has(argv, "-e", "--past_exp")
    downstream = _value(argv, "-d", "--downstream")
    if not resumed and not _has(argv, "-c", "--config"):
        if not downstream:
            raise SuperbError("give the downstream task: -d speech_commands (or -c your_config.yaml)")
        task = task_for_downstream(downstream)
        if task is None:
            raise SuperbError(f"no shipped config for downstream '{downstream}'; pass -c your_config.yaml")
        expdir = expdir_of(argv)
        variables = corpora_mod.prepare(task, corpora, expdir / "corpora")
        if not full:
            variables = subset_view(task.name, variables, quick_subsets(task), expdir / "corpora" / "quick")
        config = resolve_config(task, variables, full=full, overrides=overrides)
        argv += ["-c", str(write_config(config, expdir / "superb_config.yaml"))]
    if not _has(argv, "--device"):
        import torch

        if not torch.cuda.is_available():
            argv += ["--device", "cpu"]
    return argv


def _per_experiment_caches(argv: Sequence[str]) -> None:
    """Keep s3prl's SID file-list cache in the experiment dir.

    ``downstream/voxceleb1/dataset.py`` pickles its train/dev/test file lists to ``<site-packages>/s3prl/
    downstream/voxceleb1/.cache/{train,dev,test}.pkl`` and reuses them whatever the corpus or split file of a
    later run is: a run on another corpus (or a quick subset) would silently train on the old list.
    """
    if "-e" in argv or "--past_exp" in argv:
        past = Path(_value(argv, "-e", "--past_exp"))
        expdir = past if past.is_dir() else past.parent
    elif _has(argv, "-p", "--expdir", "-n", "--expname"):
        expdir = expdir_of(argv)
    else:
        return  # (e.g. -h) run_downstream itself says what is missing
    import s3prl.downstream.voxceleb1.dataset as sid_dataset

    sid_dataset.CACHE_PATH = str(expdir / "s3prl_cache") + os.sep


class _Tee(io.TextIOBase):
    """Writes to several streams (the console and a log file)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def run_downstream(argv: Sequence[str], log: Optional[Path] = None, quiet: bool = False) -> str:
    """s3prl's run_downstream main() with ``argv`` as given; returns what it printed (stdout and stderr)."""
    setup()
    import s3prl.run_downstream as s3prl_main

    from .linear_backward import install as install_linear_backward

    # main() calls hack_isinstance(), which wraps builtins.isinstance in a Python function (so that DDP does not
    # rebuild s3prl's defaultdict records) and never undoes it: every later isinstance call anywhere gets
    # slower, and each run in this process adds one more wrapper (after a dozen runs, everything crawls).
    # Without DDP it is not needed and is skipped; isinstance is restored after every run in any case.
    distributed = _has(argv, "--local_rank") or "LOCAL_RANK" in os.environ
    s3prl_main.hack_isinstance = _S3PRL_HACK_ISINSTANCE if distributed else (lambda: None)
    saved_isinstance = builtins.isinstance
    _per_experiment_caches(argv)
    install_linear_backward(_value(argv, "-d", "--downstream"))

    captured = io.StringIO()
    log_file = open(log, "a", encoding="utf-8") if log else None
    out_streams = [captured] + ([log_file] if log_file else []) + ([] if quiet else [sys.__stdout__])
    err_streams = [captured] + ([log_file] if log_file else []) + ([] if quiet else [sys.__stderr__])
    saved_argv, saved_env = sys.argv, os.environ.get(WEIGHTS_ONLY_ENV)
    sys.argv = ["run_downstream.py", *argv]
    os.environ[WEIGHTS_ONLY_ENV] = "1"  # only while s3prl runs (see the module docstring)
    try:
        if log_file:
            log_file.write(f"# run_downstream {' '.join(argv)}\n")
        with contextlib.redirect_stdout(_Tee(*out_streams)), contextlib.redirect_stderr(_Tee(*err_streams)):
            s3prl_main.main()
    finally:
        builtins.isinstance = saved_isinstance
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop(WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[WEIGHTS_ONLY_ENV] = saved_env
        if log_file:
            log_file.close()
    return captured.getvalue()


def check_model(path: str) -> "object":
    """Load a model file as the upstream will; a file that is not a (pruned) speech encoder -> SuperbError."""
    from dphubert.models.checkpoint import CheckpointError, load_model

    try:
        model = load_model(path)
    except CheckpointError as e:
        raise SuperbError(str(e)) from None
    if model.gates():
        raise SuperbError(f"{path}: this model still has pruning gates; prune it first "
                          f"(python -m dphubert.bin.prune --ckpt {path} --out pruned.pt)")
    return model
