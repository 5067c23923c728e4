"""How an error message names the option that fixes it, in the words of where the user is.

The same check (a 44.1 kHz file, a stereo file, an unreadable file, dump layers that miss a distilled one) is
reached from three places, and each has its own spelling of the fix:

- the recipes' stage script (``egs/TEMPLATE/dphubert.sh``): a run.sh option, ``--resample true``; the script
  exports ``DPHUBERT_RECIPE=1`` for every command it runs, so the CLIs below it speak of its options;
- a command-line tool (``python -m dphubert.bin.<stage>``): its flag, ``--resample``; the CLIs run their work
  inside ``with cli_names():``;
- Python code: the keyword argument, ``resample=True`` (the default).

``fix_option("resample")`` returns the spelling for the current place.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

RECIPE_ENV = "DPHUBERT_RECIPE"

# key: (Python argument, CLI flag, recipe option)
_SPELLINGS = {
    "resample": ("resample=True", "--resample", "--resample true"),
    "downmix": ("downmix=True", "--downmix", "--downmix true"),
    "skip_bad_audio": ("check_audio(skip_bad=True)", "--skip-bad-audio", "--skip_bad_audio true"),
    "dump_layers": ("layers=[...]", "--layers", "--dump_layers"),
}

_place = "python"


@contextlib.contextmanager
def cli_names() -> Iterator[None]:
    """Inside it, messages name the CLI flags (unless the recipe runs the CLI, see the module docstring)."""
    global _place
    before, _place = _place, "cli"
    try:
        yield
    finally:
        _place = before


def in_recipe() -> bool:
    return os.environ.get(RECIPE_ENV, "") not in ("", "0")


def fix_option(key: str) -> str:
    """The option ``key`` as the user writes it here, e.g. ``--skip_bad_audio true (run.sh option)``."""
    python, cli, recipe = _SPELLINGS[key]
    if in_recipe():
        return f"{recipe} (a run.sh option)"
    return cli if _place == "cli" else python
