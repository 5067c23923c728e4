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


# ----- stage 2 -> stage 3 with dumped teacher features, for every shipped setup -------------------------------------
# Tiny teachers with each setup's depth and kind; the shipped Step-1 YAMLs with only the run length and the data
# sizes replaced, so their distill_layers / layer0 / projection_groups are the ones under test.
SETUPS = {"hubert_base": ("hubert", False, 12), "wavlm_base_plus": ("wavlm", False, 12),
          "hubert_large": ("hubert", True, 24)}
SHORT = dict(min_seconds=0.2, max_seconds=1.0, batch_seconds=1.6, num_buckets=None, num_workers=0, max_steps=2,
             warmup_steps=1, sparsity_warmup_steps=1, target_sparsity=0.3, log_interval=1, save_interval=2,
             valid_interval=1000, valid_max_batches=1, accum_grad=1)


def setup_recipe(tmp_path: Path, setup: str) -> Path:
    """egs/librispeech after stages 0-1: the setup's teacher (tiny, same depth) and prepared data dirs."""
    import torch
    import yaml

    from conftest import tiny_config
    from dphubert.data import write_utt2num_samples
    from dphubert.models import Wav2Vec2Model, save_model

    recipe = recipe_copy(tmp_path / setup, "/nonexistent")
    kind, large, depth = SETUPS[setup]
    torch.manual_seed(0)
    teacher = Wav2Vec2Model(tiny_config(kind, large=large, encoder_num_layers=depth))
    (recipe / "exp" / setup).mkdir(parents=True)
    save_model(teacher, recipe / "exp" / setup / "teacher.pt")
    shipped = RECIPE / "conf" / setup / "distill_prune.yaml"
    cfg = yaml.safe_load(shipped.read_text())
    assert {"distill_layers", "layer0", "projection_groups"} <= set(cfg)
    cfg.update(SHORT)
    (recipe / "conf" / setup / "distill_prune.yaml").write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(1)
    for name, count in (("train960", 6), ("dev", 2)):
        data = recipe / "data" / name
        (data / "audio").mkdir(parents=True)
        lines = []
        for i in range(count):
            path = data / "audio" / f"u{i}.wav"
            sf.write(path, rng.normal(0, 0.1, int(16000 * rng.uniform(0.5, 0.9))).astype("float32"), 16000)
            lines.append(f"u{i} {path}\n")
        (data / "wav.scp").write_text("".join(lines))
        write_utt2num_samples(data)
    return recipe


def test_stage2_dumps_the_layers_step1_distils_for_every_setup(tmp_path):
    import torch
    import yaml

    recipes = {setup: setup_recipe(tmp_path, setup) for setup in SETUPS}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    stages = ["./run.sh", "--config", None, "--stage", "2", "--stop_stage", "3", "--dump_teacher", "true", "--nj", "1"]
    procs = {setup: subprocess.Popen([a or f"conf/{setup}.sh" for a in stages], cwd=recipe, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for setup, recipe in recipes.items()}  # the three run side by side
    expected = {"hubert_base": [0, 4, 8, 12], "wavlm_base_plus": [0, 4, 8, 12], "hubert_large": [0, 8, 16, 24]}
    for setup, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        recipe = recipes[setup]
        meta = yaml.safe_load((recipe / "dump" / "teacher" / "train960" / "meta.yaml").read_text())
        shipped = yaml.safe_load((RECIPE / "conf" / setup / "distill_prune.yaml").read_text())
        assert meta["layers"] == expected[setup] and meta["layer0"] == shipped["layer0"] == "projection", setup
        assert not (recipe / "dump" / "teacher" / "dev").exists()  # stage 3 validates with the online teacher
        tag = f"{setup}_sp0.75"
        assert "--teacher-feats dump/teacher/train960" in (recipe / "exp" / tag / "logs" / "distill_prune.log").read_text()
        pruned = torch.load(recipe / "exp" / tag / "pruned.pt", weights_only=True)
        assert pruned["distill"]["layers"] == expected[setup]

    # The HuBERT Large bug: layers of a 12-layer teacher asked for a 24-layer one stop before any audio is read.
    large = recipes["hubert_large"]
    shutil.rmtree(large / "dump")
    result = run(["./run.sh", "--config", "conf/hubert_large.sh", "--stage", "2", "--stop_stage", "2",
                  "--dump_teacher", "true", "--dump_layers", "0,4,8,12"], large)
    assert result.returncode != 0
    assert "--dump_layers (a run.sh option) 0,4,8,12 lacks layers [16, 24]" in result.stderr  # on the console too
    log = (large / "exp" / "hubert_large_sp0.75" / "logs" / "dump_teacher_train960.log").read_text()
    assert "--dump_layers (a run.sh option) 0,4,8,12 lacks layers [16, 24]" in log, log
    assert "Traceback" not in log and not (large / "dump").exists()


def test_audio_errors_name_the_option_of_where_the_user_is(tmp_path, capsys):
    """A 44.1 kHz file and an unreadable one: stage 1 names the run.sh options, prepare_data its own flags."""
    from dphubert.bin import prepare_data

    make_fake_librispeech(tmp_path / "LibriSpeech", subsets=["train-clean-100"])
    folder = tmp_path / "LibriSpeech" / "train-clean-100" / "100" / "7"
    sf.write(folder / "100-7-0008.flac", np.zeros(44100, "float32"), 44100)
    (folder / "100-7-0009.flac").write_bytes(b"not audio")
    with open(folder / "100-7.trans.txt", "a") as f:
        f.write("100-7-0008 LOUD\n100-7-0009 BROKEN\n")
    recipe = recipe_copy(tmp_path, str(tmp_path / "LibriSpeech"))
    stage1 = ["./run.sh", "--stage", "1", "--stop_stage", "1", "--nj", "1", "--train_set", "train100",
              "--valid_set", "train100", "--test_sets", "", "--local_data_opts", "--sets train100"]
    result = run(stage1, recipe)
    assert result.returncode != 0, result.stderr
    assert "44100 Hz, expected 16000 Hz" in result.stderr and "pass --resample true (a run.sh option)" in result.stderr
    assert "skip them with --skip_bad_audio true (a run.sh option)" in result.stderr
    assert "resample=True" not in result.stderr and "--skip-bad-audio" not in result.stderr

    result = run([*stage1, "--resample", "true", "--skip_bad_audio", "true"], recipe)
    assert result.returncode == 0, result.stderr
    skipped = (recipe / "data" / "train100" / "skipped_audio.txt").read_text().splitlines()
    assert [line.split()[0] for line in skipped] == ["100-7-0009"]
    counts = dict(line.split() for line in (recipe / "data" / "train100" / "utt2num_samples").read_text().splitlines())
    assert counts["100-7-0008"] == "16000" and "100-7-0009" not in counts
    assert "100-7-0009" not in (recipe / "data" / "train100" / "wav.scp").read_text()  # left out of the dir

    # The same data dir through the CLI: its own flags.
    assert prepare_data.main(["--data", str(recipe / "data" / "train100"), "--nj", "1"]) == 1
    err = capsys.readouterr().err
    assert "pass --resample" in err and "or skip them with --skip-bad-audio" in err and "run.sh" not in err
