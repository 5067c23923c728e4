"""Smaller views of a task's corpus for the quick (demo) mode: at most N utterances per split.

A frozen upstream has to run once over every utterance a task reads, which dominates a quick run on a CPU;
``configs/quick.yaml`` (``subsets:``) caps each split. The choice is deterministic and evenly spaced over the
sorted list (so every word / speaker / intent keeps its share). The views live under the stage's
``corpora/<task>/quick/`` and point back to the original audio (symlinks or list files); nothing is copied.

Tasks with a view: ks, ic, sid, pr. Other tasks use their whole corpus in quick mode too.
"""

import csv
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from .errors import SuperbError


def evenly(items: Sequence, limit: int) -> List:
    """At most ``limit`` items, evenly spaced over ``items`` (all of them when there are not more)."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.resolve(), link)


def _ks(variables, limits, out):
    train, test = Path(variables["SPEECH_COMMANDS"]), Path(variables["SPEECH_COMMANDS_TEST"])
    view_train, view_test = out / "speech_commands_v0.01", out / "speech_commands_test_set_v0.01"
    words = sorted(d for d in train.iterdir() if d.is_dir() and d.name != "_background_noise_")
    files = [f for d in words for f in sorted(d.glob("*.wav"))]
    for f in evenly(files, limits.get("train")):  # train + dev: s3prl splits them by the speaker hash
        _link(f, view_train / f.parent.name / f.name)
    _link(train / "_background_noise_", view_train / "_background_noise_")
    tests = [f for d in sorted(test.iterdir()) if d.is_dir() for f in sorted(d.glob("*.wav"))]
    for f in evenly(tests, limits.get("test")):
        _link(f, view_test / f.parent.name / f.name)
    return {"SPEECH_COMMANDS": str(view_train), "SPEECH_COMMANDS_TEST": str(view_test)}


def _ic(variables, limits, out):
    root = Path(variables["FLUENT_SPEECH_COMMANDS"])
    view = out / "fluent_speech_commands_dataset"
    for split in ("train", "valid", "test"):
        with open(root / "data" / f"{split}_data.csv", newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
        (view / "data").mkdir(parents=True, exist_ok=True)
        with open(view / "data" / f"{split}_data.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *evenly(rows, limits.get(split))])
    _link(root / "wavs", view / "wavs")
    return {"FLUENT_SPEECH_COMMANDS": str(view)}


def _sid(variables, limits, out):
    lines = Path(variables["SID_META_DATA"]).read_text().splitlines()
    by_split: Dict[str, List[str]] = {}
    for line in lines:
        by_split.setdefault(line.split()[0], []).append(line)
    kept = []
    for code, name in (("1", "train"), ("2", "dev"), ("3", "test")):
        kept += evenly(sorted(by_split.get(code, []), key=lambda l: l.split()[1]), limits.get(name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "iden_split.txt").write_text("".join(f"{line}\n" for line in kept))
    return {"SID_META_DATA": str(out / "iden_split.txt")}


def _pr(variables, limits, out):
    csv_dir = Path(variables["LIBRIPHONE_CSV_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        with open(csv_dir / f"{split}.csv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
        for row in rows:  # the view lives elsewhere: make relative audio paths absolute
            if not Path(row["wav_path"]).is_absolute():
                row["wav_path"] = str(csv_dir / row["wav_path"])
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(evenly(rows, limits.get(split)))
    return {"LIBRIPHONE_CSV_DIR": str(out)}


VIEWS = {"ks": _ks, "ic": _ic, "sid": _sid, "pr": _pr}


def subset_view(task_name: str, variables: Mapping[str, object], limits: Mapping[str, int], out: Path
                ) -> Dict[str, object]:
    """``variables`` with the task's corpus replaced by a capped view under ``out`` (unchanged without one)."""
    if not limits or task_name not in VIEWS:
        return dict(variables)
    bad = {k: v for k, v in limits.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise SuperbError(f"quick.yaml subsets.{task_name}: limits must be positive integers, got {bad}")
    return {**variables, **VIEWS[task_name](variables, limits, Path(out))}
