"""Run a Python module (or script) as ``__main__`` with the dphubert s3prl upstream registered first.

Usage:
    python -m dphubert.bin.run_with_upstream -m espnet2.bin.asr_train <its arguments>
    python -m dphubert.bin.run_with_upstream path/to/s3prl/run_downstream.py -m train -u dphubert_local ...

It applies the torchaudio compatibility layer and adds ``dphubert_local`` to ``s3prl.hub``
(``dphubert.s3prl.expert.register()``), then runs the target with ``runpy`` exactly as ``python -m MODULE`` /
``python SCRIPT`` would (``sys.argv[1:]`` = the target's arguments). That lets tools that look upstreams up
in ``s3prl.hub`` use our model files without editing site-packages:

- ESPnet recipes: ``asr.sh`` runs ``${python} -m espnet2.bin.asr_train ...``, so
  ``./asr.sh --python "python -m dphubert.bin.run_with_upstream" ...`` trains with an ASR config holding
  ``frontend: s3prl`` and ``frontend_conf: {frontend_conf: {upstream: dphubert_local, path_or_url: model.pt},
  multilayer_feature: true}`` (add ``freeze_param: [frontend.upstream]`` to keep it frozen).
- An s3prl checkout: ``cd s3prl/s3prl && python -m dphubert.bin.run_with_upstream run_downstream.py -m train
  -u dphubert_local -k model.pt -d speech_commands -n ks`` (its own configs, ``./downstream/...``).

The registration lives in this process (and in fork-started workers). Processes started with "spawn"
(e.g. ESPnet's multi-GPU ``--multiprocessing_distributed true``) do not inherit it: run one process per GPU
through this wrapper instead (e.g. torchrun / ``--ngpu 1`` jobs).
"""

import os
import runpy
import sys


USAGE = ("usage: python -m dphubert.bin.run_with_upstream (-m MODULE | SCRIPT.py) [ARGS ...]\n"
         "  e.g. python -m dphubert.bin.run_with_upstream -m espnet2.bin.asr_train --config conf/asr.yaml ...")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ if argv else USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    if argv[0] == "-m":
        if len(argv) < 2:
            print(f"run_with_upstream: error: -m needs a module name\n{USAGE}", file=sys.stderr)
            return 2
        module, rest = argv[1], argv[2:]
        target = None
    else:
        module, rest, target = None, argv[1:], argv[0]
        if not os.path.isfile(target):
            print(f"run_with_upstream: error: script {target} not found (use -m for a module)\n{USAGE}",
                  file=sys.stderr)
            return 2

    if module and not _importable(module):
        print(f"run_with_upstream: error: no module named {module}; is it installed in this Python "
              f"({sys.executable})?", file=sys.stderr)
        return 2

    from dphubert.s3prl.expert import register
    from dphubert.superb.running import defer_espnet_hubert

    defer_espnet_hubert()  # s3prl.hub would import ESPnet (10-20 s) even when the target does not need it
    register()
    if module:
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
