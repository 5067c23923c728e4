"""egs/librispeech: local/data.sh and stage 1 on a small fake LibriSpeech tree of real flac files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "librispeech"
SUBSETS = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
           "test-other"]


def make_fake_librispeech(root: Path, subsets=SUBSETS, seconds=0.6):
    rng = np.random.default_rng(0)
    for s, subset in enumerate(subsets):
        for speaker in (100 + s * 10, 101 + s * 10):
            chapter = 7
            folder = root / subset / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for i in range(2):
                utt = f"{speaker}-{chapter}-{i:04d}"
                sf.write(folder / f"{utt}.flac", rng.normal(0, 0.1, int(16000 * seconds)).astype("float32"), 16000)
                lines.append(f"{utt} HELLO WORLD {i}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def recipe_copy(tmp_path: Path, librispeech: str) -> Path:
    """A copy of egs/librispeech (links to the real utils and stage script) with its own db.sh."""
    recipe = tmp_path / "librispeech"
    shutil.copytree(RECIPE, recipe, symlinks=False, ignore=shutil.ignore_patterns("utils", "dphubert.sh", "data",
                                                                                  "exp", "dump"))
    os.symlink(REPO / "egs" / "TEMPLATE" / "utils", recipe / "utils")
    os.symlink(REPO / "egs" / "TEMPLATE" / "dphubert.sh", recipe / "dphubert.sh")
    (recipe / "db.sh").write_text(f"LIBRISPEECH={librispeech}\nTEACHER=\nTEACHER_FORMAT=hf\n")
    return recipe


def run(cmd, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_data_sh_builds_all_sets_and_stage1_checks_audio(tmp_path):
    make_fake_librispeech(tmp_path / "LibriSpeech")
    recipe = recipe_copy(tmp_path, str(tmp_path / "LibriSpeech"))
    result = run(["./run.sh", "--stage", "1", "--stop_stage", "1", "--nj", "1"], recipe)
    assert result.returncode == 0, result.stderr
    data = recipe / "data"
    counts = {name: len((data / name / "wav.scp").read_text().splitlines())
              for name in ("train960", "train100", "dev", "test_clean", "test_other")}
    assert counts == {"train960": 12, "train100": 4, "dev": 8, "test_clean": 4, "test_other": 4}
    utt2spk = (data / "train100" / "utt2spk").read_text().splitlines()
    assert utt2spk[0] == "100-7-0000 100-7"
    text = (data / "dev" / "text").read_text().splitlines()
    assert text[0] == "130-7-0000 HELLO WORLD 0"
    samples = (data / "train960" / "utt2num_samples").read_text().split()
    assert samples[1] == "9600"
    assert (data / ".done.1").exists()
    # A rerun skips the finished stage.
    again = run(["./run.sh", "--stage", "1", "--stop_stage", "1"], recipe)
    assert again.returncode == 0 and "skipped" in again.stderr


def test_empty_corpus_path_is_one_clear_line(tmp_path):
    recipe = recipe_copy(tmp_path, "")
    result = run(["./run.sh", "--stage", "1", "--stop_stage", "1"], recipe)
    assert result.returncode != 0
    assert "LIBRISPEECH is empty: set it in db.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_subset_is_named(tmp_path):
    make_fake_librispeech(tmp_path / "LibriSpeech", subsets=["train-clean-100", "dev-clean"])
    recipe = recipe_copy(tmp_path, str(tmp_path / "LibriSpeech"))
    result = run(["local/data.sh", "--sets", "train100,dev"], recipe)
    assert result.returncode != 0
    assert "dev-other is missing" in result.stderr and "Traceback" not in result.stderr
    result = run(["local/data.sh", "--sets", "train100"], recipe)
    assert result.returncode == 0, result.stderr


def test_unknown_stage_option_fails_clearly(tmp_path):
    recipe = recipe_copy(tmp_path, "")
    result = run(["./run.sh", "--stagee", "3"], recipe)
    assert result.returncode != 0
    assert "stagee" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("setup", ["hubert_base", "wavlm_base_plus", "hubert_large"])
def test_setups_name_existing_configs(setup):
    text = (RECIPE / "conf" / f"{setup}.sh").read_text()
    for line in text.splitlines():
        if line.endswith(".yaml"):
            assert (RECIPE / line.split("=", 1)[1]).is_file(), line
