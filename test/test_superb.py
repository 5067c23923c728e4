"""SUPERB through s3prl: run_downstream train + evaluate on a tiny Speech Commands set, the stage report,
the pieces around them (db.sh, configs, metrics, feature cache, LibriPhone) and one-line errors."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import ALL_GATES, tiny_config
from dphubert.models import Wav2Vec2Model, save_model
from dphubert.superb import configs, corpora, results
from dphubert.superb.errors import SuperbError
from dphubert.superb.tasks import TASKS, parse_tasks

REPO = Path(__file__).resolve().parents[1]
SR = 16000
WORD_PITCH = {"yes": 300.0, "no": 650.0, "bird": 1000.0}  # bird is one of the _unknown_ words


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args, cwd, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _speaker(bucket: str, seed: int) -> str:
    """An 8-hex speaker id that Speech Commands' hash rule (as s3prl applies it) puts in ``bucket``."""
    low, high = {"dev": (0, 10), "test": (10, 20), "train": (20, 101)}[bucket]
    for attempt in range(10000):
        name = hashlib.sha1(f"{seed}-{attempt}".encode()).hexdigest()[:8]
        value = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 2 ** 27 * (100.0 / (2 ** 27 - 1))
        if low <= value < high:
            return name
    raise AssertionError("no speaker hash found")


def _clip(word: str, rng, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    pitch = WORD_PITCH[word] * rng.uniform(0.95, 1.05)
    tone = 0.3 * np.sin(2 * np.pi * pitch * t) * np.hanning(len(t))
    return (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def make_speech_commands(root: Path) -> Path:
    """speech_commands_v0.01 (3 words, background noise, split by speaker hash) + its test set folder."""
    rng = np.random.default_rng(0)
    train, test = root / "speech_commands_v0.01", root / "speech_commands_test_set_v0.01"
    speakers = [(_speaker("train", i), "train") for i in range(4)] + [(_speaker("dev", 9), "dev")]
    for speaker, _ in speakers:
        for word in WORD_PITCH:
            for n in range(2):
                path = train / word / f"{speaker}_nohash_{n}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, _clip(word, rng), SR, subtype="PCM_16")
    (train / "_background_noise_").mkdir()
    for n in range(2):
        sf.write(train / "_background_noise_" / f"noise{n}.wav", 0.05 * rng.standard_normal(3 * SR), SR)
    tester = _speaker("test", 5)
    for label, word in (("yes", "yes"), ("no", "no"), ("_unknown_", "bird")):
        for n in range(2):
            path = test / label / f"{tester}_nohash_{n}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _clip(word, rng), SR, subtype="PCM_16")
    (test / "_silence_").mkdir()
    sf.write(test / "_silence_" / f"{tester}_nohash_0.wav", 0.05 * rng.standard_normal(SR), SR)
    return train


@pytest.fixture(scope="module")
def ks_setup(tmp_path_factory):
    """(work dir, db.sh, model a, model b) with a tiny Speech Commands layout."""
    root = tmp_path_factory.mktemp("superb")
    make_speech_commands(root / "corpus")
    (root / "db.sh").write_text("CORPUS=corpus\nSPEECH_COMMANDS=${CORPUS}/speech_commands_v0.01\n")
    torch.manual_seed(0)
    save_model(Wav2Vec2Model(tiny_config("hubert")).eval(), root / "a.pt")
    save_model(Wav2Vec2Model(tiny_config("hubert", encoder_num_layers=2)).eval(), root / "b.pt")
    return root


QUICK_KS = ["runner.total_steps=30", "runner.eval_step=15", "runner.save_step=30", "runner.log_step=15",
            "downstream_expert.datarc.batch_size=8"]


def test_run_downstream_train_then_evaluate_from_any_cwd(ks_setup, tmp_path):
    """python -m dphubert.bin.superb runs s3prl's run_downstream (train, then evaluate) with our upstream."""
    exp = tmp_path / "exp" / "ks"
    train = _run(["-m", "dphubert.bin.superb", "--db", str(ks_setup / "db.sh"), "--quick", "--set", *QUICK_KS,
                  "--", "-m", "train", "-u", "dphubert_local", "-k", str(ks_setup / "a.pt"), "-d", "speech_commands",
                  "-p", str(exp)], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    resolved = yaml.safe_load((exp / "superb_config.yaml").read_text())
    view = Path(resolved["downstream_expert"]["datarc"]["speech_commands_root"])  # --quick: a capped view
    assert view == exp / "corpora" / "quick" / "speech_commands_v0.01"
    assert sorted(p.resolve() for p in view.glob("*/*.wav")) == \
        sorted((ks_setup / "corpus" / "speech_commands_v0.01").glob("*/*.wav"))
    assert resolved["runner"]["total_steps"] == 30 and resolved["optimizer"]["lr"] == 1.0e-2  # quick + --set
    assert (exp / "states-30.ckpt").exists() and (exp / "dev-best.ckpt").exists()
    assert "dev acc:" in train.stdout

    evaluate = _run(["-m", "dphubert.bin.superb", "--", "-m", "evaluate", "-e", str(exp / "dev-best.ckpt"),
                     "-t", "test"], cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    accuracy = results.parse_metrics(TASKS["ks"], evaluate.stdout)["Acc"]
    predicted = dict(line.split() for line in (exp / "test_predict.txt").read_text().splitlines())
    truth = dict(line.split() for line in (exp / "test_truth.txt").read_text().splitlines())
    assert len(truth) == 7 and set(truth.values()) == {"yes", "no", "_unknown_", "_silence_"}
    assert accuracy == pytest.approx(100.0 * sum(predicted[k] == v for k, v in truth.items()) / len(truth))

    # the same head on the model exported to ONNX, by s3prl's own override (docs/deployment.md)
    onnx_file = tmp_path / "a.onnx"
    export = _run(["-m", "dphubert.bin.export", "--model", str(ks_setup / "a.pt"), "--format", "onnx",
                   "--out", str(onnx_file)], cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    onnx_exp = tmp_path / "exp" / "ks_onnx"
    override = f"args.upstream=dphubert_onnx,,args.upstream_ckpt={onnx_file},,args.expdir={onnx_exp}"
    evaluate = _run(["-m", "dphubert.bin.superb", "--", "-m", "evaluate", "-e", str(exp / "dev-best.ckpt"),
                     "-t", "test", "-o", override], cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    used = yaml.safe_load(next(onnx_exp.glob("args_*.yaml")).read_text())
    assert used["upstream"] == "dphubert_onnx" and used["upstream_ckpt"] == str(onnx_file)
    assert dict(line.split() for line in (onnx_exp / "test_predict.txt").read_text().splitlines()) == predicted


def test_superb_stage_writes_results_for_two_models(ks_setup, tmp_path):
    """Two models and the FBANK row (s3prl's fbank upstream), each value with n_test and its 95% interval."""
    from dphubert.superb import intervals

    out = tmp_path / "superb"
    student = tmp_path / "b.pt"
    shutil.copy(ks_setup / "b.pt", student)
    args = ["-m", "dphubert.bin.superb_stage", "--tasks", "ks", "--models", f"teacher={ks_setup / 'a.pt'}",
            f"dphubert={student}", "--out", str(out), "--db", str(ks_setup / "db.sh"),
            "--num-threads", "1", "--set", *QUICK_KS]
    first = _run(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["mode"] == "quick" and list(data["models"]) == ["fbank", "teacher", "dphubert"]
    assert data["models"]["teacher"]["params"] > data["models"]["dphubert"]["params"] > 0
    assert data["models"]["teacher"]["macs"] > data["models"]["dphubert"]["macs"] > data["models"]["fbank"]["macs"]
    assert data["models"]["fbank"]["params"] == 0
    assert "-u fbank_cached -d speech_commands" in (out / "fbank" / "ks" / "train.log").read_text()
    values = {}
    for name in ("fbank", "teacher", "dphubert"):
        pair = out / name / "ks"
        assert (pair / ".done").exists() and (pair / "dev-best.ckpt").exists()
        values[name] = json.loads((pair / "result.json").read_text())["Acc"]
        result = data["results"][name]["ks"]
        assert result["Acc"] == pytest.approx(values[name])
        # the value is s3prl's own: the accuracy of its test predictions; the interval is Wilson's on them
        predicted = (pair / "test_predict.txt").read_text().split()[1::2]
        truth = (pair / "test_truth.txt").read_text().split()[1::2]
        right = sum(p == t for p, t in zip(predicted, truth))
        assert values[name] == pytest.approx(100.0 * right / len(truth))
        assert result["n_test"] == len(truth) == 7
        assert result["ci95"] == pytest.approx([100 * x for x in intervals.wilson(right, 7)])
    table = (out / "RESULTS.md").read_text()
    assert "| model | params (M) | GMACs (10 s) | KS Acc% ↑ (n=7) |" in table
    best = max(values.values())
    for name, value in values.items():
        cell = f"**{value:.2f}**" if value == best else f"{value:.2f}"
        half = intervals.half_width(value, data["results"][name]["ks"]["ci95"])
        assert f"| {name} |" in table and f"| {cell} +- {half:.1f} |" in table
    assert "dphubert vs teacher:" in table and "quick" in table and "teacher's margin over FBANK" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _run(args, cwd=tmp_path)  # finished pairs are skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == 3 and "training" not in again.stdout

    torch.manual_seed(5)  # a retrained student (new weights, same path): its pair runs again, the others not
    save_model(Wav2Vec2Model(tiny_config("hubert", encoder_num_layers=2)).eval(), student)
    retrained = _run([*args, "--no-fbank"], cwd=tmp_path)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert "teacher x KS: done before" in retrained.stdout and "dphubert x KS: done before" not in retrained.stdout
    assert f"{student} changed since it ran" in retrained.stdout and "fbank" not in retrained.stdout
    assert list(json.loads((out / "results.json").read_text())["models"]) == ["teacher", "dphubert"]
    values["dphubert"] = json.loads((out / "dphubert" / "ks" / "result.json").read_text())["Acc"]
    del values["fbank"]

    # --jobs 2: both pairs again, at once in two worker processes; s3prl's seeding makes them repeat the values
    parallel = _run([*args, "--no-fbank", "--force", "--jobs", "2"], cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert "2 model x task runs in 2 parallel jobs" in parallel.stdout and "skipped" not in parallel.stdout
    data = json.loads((out / "results.json").read_text())
    assert {name: data["results"][name]["ks"]["Acc"] for name in values} == pytest.approx(values)


@pytest.mark.parametrize("case", ["unknown task", "no corpus", "missing dir", "not a model", "gated", "bad models",
                                  "fbank name"])
def test_bad_input_gives_one_line(case, ks_setup, tmp_path, capsys):
    from dphubert.bin import superb_stage

    model = str(ks_setup / "a.pt")
    db = tmp_path / "db.sh"
    db.write_text(f"SPEECH_COMMANDS={ks_setup / 'corpus' / 'speech_commands_v0.01'}\n")
    tasks, models = ["ks"], [f"a={model}"]
    expected = {"unknown task": "unknown SUPERB task(s) xx; choose from: pr ks ic sid er asr qbe sf asv sd",
                "no corpus": "IC needs the Fluent Speech Commands dataset (fluent_speech_commands_dataset): set "
                             "FLUENT_SPEECH_COMMANDS=/path in db.sh",
                "missing dir": "KS: SPEECH_COMMANDS=/nonexistent/sc does not exist; fix SPEECH_COMMANDS in db.sh",
                "not a model": "not a dphubert/DPHuBERT model file",
                "gated": "still has pruning gates; prune it first",
                "bad models": "bad --models entry",
                "fbank name": "--models names 'fbank', the name of the FBANK baseline row"}[case]
    if case == "unknown task":
        tasks = ["ks xx"]
    elif case == "no corpus":
        tasks = ["ks", "ic"]
    elif case == "missing dir":
        db.write_text("SPEECH_COMMANDS=/nonexistent/sc\n")
    elif case == "not a model":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
        models = [f"a={tmp_path / 'other.pt'}"]
    elif case == "gated":
        save_model(Wav2Vec2Model(tiny_config("hubert", **ALL_GATES)), tmp_path / "gated.pt")
        models = [f"a={tmp_path / 'gated.pt'}"]
    elif case == "bad models":
        models = [model]
    elif case == "fbank name":
        models = [f"fbank={model}"]
    code = superb_stage.main(["--tasks", *tasks, "--models", *models, "--out", str(tmp_path / "o"), "--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o" / "a").exists()  # nothing was trained


def test_cli_error_has_no_traceback(tmp_path):
    proc = _run(["-m", "dphubert.bin.superb_stage", "--tasks", "kws", "--models", "a=x.pt", "--out", "o"],
                cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "superb_stage: error: unknown SUPERB task(s) kws; choose from: pr ks ic sid er asr qbe sf asv sd"]


def test_db_sh_is_sourced_with_relative_paths_and_references(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "db.sh").write_text("DEMO=downloads/demo\nSPEECH_COMMANDS=${DEMO}/sc\nVOXCELEB1=/abs/vox\n"
                                  "LIBRISPEECH_LEXICON=\"a.txt /b.txt\"\nIEMOCAP=\nUNRELATED=1\n")
    values = corpora.corpus_paths(recipe / "db.sh", [f"VOXCELEB1={tmp_path}/v"])
    assert values == {"SPEECH_COMMANDS": str(recipe / "downloads/demo/sc"), "VOXCELEB1": f"{tmp_path}/v",
                      "LIBRISPEECH_LEXICON": f"{recipe / 'a.txt'} /b.txt"}
    with pytest.raises(SuperbError, match="bad --corpus 'SPEECH=x'"):
        corpora.corpus_paths(None, ["SPEECH=x"])
    (recipe / "bad.sh").write_text("exit 3\n")
    with pytest.raises(SuperbError, match="sourcing .*bad.sh failed"):
        corpora.read_db(recipe / "bad.sh")


def test_every_shipped_config_resolves(tmp_path):
    names = set()
    for task in TASKS.values():
        full = configs.load_yaml(configs.shipped_config_path(task))
        names |= configs.placeholders(full)
        variables = {name: f"/data/{name}" for name in configs.placeholders(full)}
        variables["LIBRIPHONE_LEXICONS"] = ["/data/lex1.txt", "/data/lex2.txt"]
        quick = configs.resolve_config(task, variables)
        assert not configs.placeholders(quick)
        if task.trains:
            assert quick["runner"]["total_steps"] < full["runner"]["total_steps"]
            assert configs.resolve_config(task, variables, full=True)["runner"] == full["runner"]
    assert names == {"SPEECH_COMMANDS", "SPEECH_COMMANDS_TEST", "FLUENT_SPEECH_COMMANDS", "VOXCELEB1",
                     "SID_META_DATA", "IEMOCAP", "IEMOCAP_META_DATA", "LIBRIPHONE_CSV_DIR", "LIBRIPHONE_LEXICONS",
                     "LIBRIPHONE_VOCAB", "LIBRISPEECH", "ASR_BUCKET_DIR", "ASR_DICT", "QUESST14", "SNIPS",
                     "ASV_TRAIN_SPEAKERS", "ASV_DEV_TRIALS", "ASV_TEST_TRIALS", "LIBRIMIX"}
    pr = configs.resolve_config(TASKS["pr"], {"LIBRIPHONE_CSV_DIR": "/c", "LIBRIPHONE_LEXICONS": ["/l"],
                                              "LIBRIPHONE_VOCAB": "/v"})
    assert pr["downstream_expert"]["corpus"]["lexicon"] == ["/l"]  # a list stays a list
    with pytest.raises(SuperbError, match=r"no value for \$\{SPEECH_COMMANDS_TEST\}; set SPEECH_COMMANDS_TEST"):
        configs.resolve_config(TASKS["ks"], {"SPEECH_COMMANDS": "/x"})


@pytest.mark.parametrize("task, text, expected", [
    ("ks", "dev acc: 0.5\ntest acc: 0.9375\n", {"Acc": 93.75}),
    ("pr", "test loss: 3.2\ntest per: 0.1234\n", {"PER": 12.34}),
    ("asr", "test-clean uer: 0.05\ntest-clean wer: 0.125\n", {"WER": 12.5}),
    ("asv", "sv-voxceleb1/test-EER: 0.0584\n", {"EER": 5.84}),
    ("sd", "mode test acc 0.91 der 0.0592\n", {"DER": 5.92}),
    ("sf", "test slot_type_f1: 0.8686\ntest slot_value_cer: 0.2826\n", {"F1": 86.86, "CER": 28.26}),
    ("qbe", "maxTWV: 0.0693 threshold: 1.2\n", {"MTWV": 0.0693}),
])
def test_metrics_are_read_from_s3prl_lines(task, text, expected):
    assert results.parse_metrics(TASKS[task], text) == pytest.approx(expected)
    with pytest.raises(SuperbError, match="no .* in s3prl output"):
        results.parse_metrics(TASKS[task], "dev acc: 0.5\n")


def test_report_bolds_the_best_per_column_and_names_winners(tmp_path):
    data = {"settings": {"mode": "full"},
            "models": {"teacher": {"params": 94.68e6, "macs": 1.67e12, "macs_seconds": 10.0},
                       "dphubert": {"params": 23.59e6, "macs": 6.5e11, "macs_seconds": 10.0},
                       "distilhubert": {"params": 23.49e6, "macs": None}},
            "tasks": {"ks": {}, "pr": {}},
            "results": {"teacher": {"ks": {"Acc": 96.30}, "pr": {"PER": 5.41}},
                        "dphubert": {"ks": {"Acc": 96.36}, "pr": {"PER": 9.67}},
                        "distilhubert": {"ks": {"Acc": 95.98}}},
            "failures": {"distilhubert": {"pr": "PR: something broke"}}}
    text = results.markdown(data)
    assert "| teacher | 94.68 | 1670.00 | 96.30 | **5.41** |" in text
    assert "| dphubert | 23.59 | 650.00 | **96.36** | 9.67 |" in text
    assert "| distilhubert | 23.49 | n/a | 95.98 | failed |" in text
    assert "- KS (Acc ↑): best dphubert with 96.36; ranking (best first): dphubert 96.36, teacher 96.30, " \
           "distilhubert 95.98" in text
    assert "- PR (PER ↓): best teacher with 5.41" in text
    assert "dphubert vs teacher: better on 1 of 2 tasks (KS); worse on PR" in text
    assert "- distilhubert x PR: PR: something broke" in text
    assert results.bar_chart(data, tmp_path / "r.png").stat().st_size > 1000
    data["results"]["distilhubert"]["ks"]["Acc"] = 96.36
    tied = results.markdown(data)
    assert "best dphubert, distilhubert (tie) with 96.36; ranking (best first): dphubert 96.36 = distilhubert 96.36, " \
           "teacher 96.30" in tied
    assert "| distilhubert | 23.49 | n/a | **96.36** | failed |" in tied


def test_parse_tasks_order_and_separators():
    assert [t.name for t in parse_tasks(["ks ic", "pr,ks"])] == ["ks", "ic", "pr"]


def test_feature_cache_gives_the_expert_states(ks_setup):
    from dphubert.s3prl.expert import UpstreamExpert
    from dphubert.superb import feature_cache

    plain = UpstreamExpert(str(ks_setup / "a.pt")).eval()
    cached = feature_cache.dphubert_cached(str(ks_setup / "a.pt")).eval()
    wavs = [torch.randn(16000), torch.randn(9000), torch.randn(12000), torch.randn(11500), torch.randn(15800)]
    with torch.no_grad():
        expected = plain(wavs)["hidden_states"]
        first = cached(wavs[:2])["hidden_states"]          # computes and stores 2 waveforms
        second = cached(wavs)["hidden_states"]             # 2 hits, 3 misses in 2 groups (12000 + 11500, 15800)
    assert (cached.cache.hits, cached.cache.misses) == (2, 5)
    lengths = plain.model.output_lengths(torch.tensor([len(w) for w in wavs]))
    for layer in range(len(expected)):
        assert second[layer].shape == expected[layer].shape
        for i, n in enumerate(lengths.tolist()):
            assert torch.allclose(second[layer][i, :n], expected[layer][i, :n], atol=1e-4)
            assert torch.all(second[layer][i, n:] == 0)
        assert torch.allclose(first[layer][0, :lengths[0]], expected[layer][0, :lengths[0]], atol=1e-4)


def test_similar_length_groups_bound_the_padding():
    from dphubert.superb.feature_cache import similar_length_groups

    assert similar_length_groups([16000] * 5) == [[0, 1, 2, 3, 4]]  # equal clips (KS): one batch
    lengths = [16000, 48000, 16500, 30000, 47000, 15800, 1000]
    groups = similar_length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups == [[1, 4], [3], [2, 0, 5], [6]]
    for group in groups:  # at most 10% of a group's samples are padding
        assert len(group) * max(lengths[i] for i in group) <= 1.1 * sum(lengths[i] for i in group)
    assert similar_length_groups([]) == []


def test_cached_fbank_is_s3prls_fbank():
    """The FBANK row's memoised upstream gives s3prl's own fbank features (80 log-mel + deltas, CMVN), exactly."""
    from dphubert.superb import feature_cache, running

    running.setup()
    import s3prl.hub

    plain = getattr(s3prl.hub, "fbank")().eval()
    cached = getattr(s3prl.hub, feature_cache.FBANK_UPSTREAM_NAME)(ckpt=None, model_config=None).eval()
    wavs = [0.1 * torch.randn(16000), 0.1 * torch.randn(9000)]
    with torch.no_grad():
        expected = plain(wavs)["hidden_states"]
        cached(wavs[:1])
        again = cached(wavs)["hidden_states"]
    assert (cached.cache.hits, cached.cache.misses) == (1, 2)
    assert len(again) == len(expected) == 1 and again[0].shape == expected[0].shape == (2, 98, 240)
    assert torch.equal(again[0], expected[0])


def test_libriphone_dataset_feeds_s3prl_ctc_loader(tmp_path):
    """Our LibriPhone (missing from pip's s3prl) through s3prl's own ctc data loader and tokenizer."""
    from dphubert.superb import running

    running.setup()
    from s3prl.downstream.ctc.data import load_dataset
    from s3prl.downstream.ctc.text import load_text_encoder

    rng = np.random.default_rng(0)
    rows = []
    for i, words in enumerate(["HELLO WORLD", "WORLD", "HELLO HELLO WORLD"]):
        path = tmp_path / f"u{i}.flac"
        sf.write(path, 0.1 * rng.standard_normal(SR // 2 + 800 * i), SR)
        rows.append([f"u{i}", str(path), SR // 2 + 800 * i, words])
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "wav_path", "length", "transcription"], *rows])
    (tmp_path / "lexicon.txt").write_text("HELLO HH AH L OW\nWORLD W ER L D\nHELLO HH EH L OW\n")
    (tmp_path / "phoneme.txt").write_text("AH\nD\nEH\nER\nHH\nL\nOW\nW\n")
    tokenizer = load_text_encoder(mode="word", vocab_file=str(tmp_path / "phoneme.txt"))
    corpus = {"name": "libriphone", "csv_dir": str(tmp_path), "lexicon": [str(tmp_path / "lexicon.txt")],
              "train": "train.csv", "dev": "train.csv", "bucketing": True, "batch_size": 2, "num_workers": 0}
    batches = list(load_dataset("train", tokenizer, dict(corpus)))
    seen = {}
    for wavs, labels, names in batches:
        for wav, label, name in zip(wavs, labels, names):
            seen[name] = (len(wav), tokenizer.decode(list(label)))
    assert seen == {"u0": (8800 - 800, "HH AH L OW W ER L D"), "u1": (8800, "W ER L D"),
                    "u2": (9600, "HH AH L OW HH AH L OW W ER L D")}
    assert len(batches) == 2  # 3 utterances in buckets of 2

    # Through the expert (as run_downstream calls it), every loader keeps num_workers: s3prl's load_dataset
    # pops it from the shared corpus dict, so without our wrapper the second loader had 12 worker processes.
    import s3prl.downstream.ctc.expert as ctc_expert

    shared = dict(corpus)
    loaders = [ctc_expert.load_dataset(split, tokenizer, shared) for split in ("train", "train", "dev")]
    assert [loader.num_workers for loader in loaders] == [0, 0, 0]
    assert shared["num_workers"] == 0


def _libri(root: Path, split: str, utts):
    """A LibriSpeech-style split: <split>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac + trans.txt."""
    rng = np.random.default_rng(1)
    chapter = root / split / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for n, (words, samples) in enumerate(utts):
        sf.write(chapter / f"19-198-{n:04d}.flac", 0.1 * rng.standard_normal(samples), SR)
        lines.append(f"19-198-{n:04d} {words}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_side_files_for_asr_and_pr(tmp_path):
    from dphubert.superb import sidefiles

    libri = tmp_path / "LibriSpeech"
    _libri(libri, "train-clean-100", [("HELLO WORLD", 8000), ("WORLD", 12000)])
    _libri(libri, "dev-clean", [("HELLO", 4000)])
    _libri(libri, "test-clean", [("HELLO THERE", 6000)])
    made = corpora.prepare(TASKS["asr"], {"LIBRISPEECH": str(libri)}, tmp_path / "asr")
    with open(Path(made["ASR_BUCKET_DIR"]) / "train-clean-100.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file_path"], int(r["length"])) for r in rows] == [
        ("train-clean-100/19/198/19-198-0001.flac", 12000), ("train-clean-100/19/198/19-198-0000.flac", 8000)]
    assert Path(made["ASR_DICT"]).read_text().splitlines()[:3] == ["L 4", "O 3", "| 3"]

    (tmp_path / "lex.txt").write_text("HELLO HH AH L OW\nWORLD W ER L D\n")
    pr = corpora.prepare(TASKS["pr"], {"LIBRISPEECH": str(libri), "LIBRISPEECH_LEXICON": str(tmp_path / "lex.txt")},
                         tmp_path / "pr")
    with open(Path(pr["LIBRIPHONE_CSV_DIR"]) / "test.csv") as f:
        assert list(csv.DictReader(f)) == []  # THERE is not in the lexicon: left out
    with open(Path(pr["LIBRIPHONE_CSV_DIR"]) / "train.csv") as f:
        assert [r["transcription"] for r in csv.DictReader(f)] == ["HELLO WORLD", "WORLD"]
    assert Path(pr["LIBRIPHONE_VOCAB"]).read_text().split() == ["AH", "D", "ER", "HH", "L", "OW", "W"]
    with pytest.raises(SuperbError, match="PR: lexicon .*missing.txt not found; fix LIBRISPEECH_LEXICON"):
        sidefiles.read_lexicon([tmp_path / "missing.txt"])

    # The files through s3prl's own readers: the ASR SequenceDataset with its fairseq Dictionary, and the
    # LibriPhone ctc loader with its tokenizer (as the asr / ctc experts build them).
    from dphubert.superb import running

    running.setup()
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary
    from s3prl.downstream.ctc.data import load_dataset
    from s3prl.downstream.ctc.text import load_text_encoder

    dictionary = Dictionary.load(made["ASR_DICT"])
    asr = SequenceDataset("train", 2, dictionary, str(libri), made["ASR_BUCKET_DIR"], train=["train-clean-100"])
    items = [item for index in range(len(asr)) for item in zip(*asr[index])]  # longest first, as listed
    assert [(name, len(wav), dictionary.string(label)) for wav, label, name in items] == [
        ("19-198-0001", 12000, "W O R L D |"), ("19-198-0000", 8000, "H E L L O | W O R L D |")]
    assert dictionary.unk() not in {int(t) for _, label, _ in items for t in label}
    tokenizer = load_text_encoder(mode="word", vocab_file=pr["LIBRIPHONE_VOCAB"])
    corpus = {"name": "libriphone", "csv_dir": pr["LIBRIPHONE_CSV_DIR"], "lexicon": pr["LIBRIPHONE_LEXICONS"],
              "train": "train.csv", "dev": "dev.csv", "bucketing": False, "batch_size": 1, "num_workers": 0}
    seen = {name: (len(wav), tokenizer.decode(list(label)))
            for wavs, labels, names in load_dataset("train", tokenizer, dict(corpus))
            for wav, label, name in zip(wavs, labels, names)}
    assert seen == {"19-198-0000": (8000, "HH AH L OW W ER L D"), "19-198-0001": (12000, "W ER L D")}


def _iemocap(root: Path) -> None:
    """IEMOCAP_full_release as it ships: EmoEvaluation label files and sentences/wav/<dialog>/<utt>.wav."""
    for n in range(1, 6):
        evaluation = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        evaluation.mkdir(parents=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for dialog, kinds in ((f"Ses0{n}F_impro01", ("neu", "exc", "fru", "sad")),
                              (f"Ses0{n}M_script02_1", ("ang", "hap", "xxx"))):
            wav_dir = root / f"Session{n}" / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True)
            for i, label in enumerate(kinds):
                utt = f"{dialog}_{'FM'[i % 2]}{i:03d}"
                lines.append(f"[{6.2 + i:.4f} - {8.2 + i:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
                if not (n == 3 and label == "sad"):  # a labelled turn without its wav file
                    sf.write(wav_dir / f"{utt}.wav", np.zeros(SR // 10, np.float32), SR, subtype="PCM_16")
            (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
            lines = []


def test_iemocap_folds_equal_s3prls_own_preprocessing(tmp_path, capsys):
    """Our fold files against s3prl's emotion/IEMOCAP_preprocess.py run on the same corpus, then read by s3prl."""
    from dphubert.superb import running

    running.setup()
    from s3prl.downstream.emotion import IEMOCAP_preprocess
    from s3prl.downstream.emotion.dataset import IEMOCAPDataset

    root = tmp_path / "IEMOCAP_full_release"
    _iemocap(root)
    made = corpora.prepare(TASKS["er"], {"IEMOCAP": str(root)}, tmp_path / "er")
    assert "ER: 1 labelled IEMOCAP utterances have no wav file" in capsys.readouterr().err
    IEMOCAP_preprocess.main(str(root))  # writes <root>/meta_data/Session<k>/{train,test}_meta_data.json

    def key(item):
        return item["path"]

    for k in range(1, 6):
        for name in ("train", "test"):
            ours = json.loads((Path(made["IEMOCAP_META_DATA"]) / f"Session{k}" / f"{name}_meta_data.json").read_text())
            theirs = json.loads((root / "meta_data" / f"Session{k}" / f"{name}_meta_data.json").read_text())
            assert ours["labels"] == theirs["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
            assert sorted(ours["meta_data"], key=key) == sorted(theirs["meta_data"], key=key), (k, name)
    test = json.loads((Path(made["IEMOCAP_META_DATA"]) / "Session2" / "test_meta_data.json").read_text())
    assert {m["speaker"] for m in test["meta_data"]} == {"Ses02F", "Ses02M"}
    assert len(test["meta_data"]) == 5  # neu, exc (as hap), sad, ang, hap; not fru or xxx
    dataset = IEMOCAPDataset(str(root), str(Path(made["IEMOCAP_META_DATA"]) / "Session3" / "test_meta_data.json"))
    assert len(dataset) == 4 and sorted(dataset[i][1] for i in range(4)) == [0, 1, 1, 2]


def test_quick_subsets_are_even_and_keep_every_split(tmp_path):
    from dphubert.superb.subsets import evenly, subset_view

    assert evenly(range(10), 4) == [0, 2, 5, 7] and evenly([1, 2], 5) == [1, 2]
    meta = tmp_path / "iden_split.txt"
    meta.write_text("".join(f"{1 + i % 3} id{10001 + i % 4}/v/{i:05d}.wav\n" for i in range(30)))
    view = subset_view("sid", {"SID_META_DATA": str(meta), "VOXCELEB1": "/v"}, {"train": 3, "test": 2},
                       tmp_path / "q")
    lines = Path(view["SID_META_DATA"]).read_text().splitlines()
    assert [line[0] for line in lines].count("1") == 3 and [line[0] for line in lines].count("3") == 2
    assert [line[0] for line in lines].count("2") == 10 and view["VOXCELEB1"] == "/v"  # no cap for dev
    assert subset_view("asr", {"LIBRISPEECH": "/l"}, {"train": 1}, tmp_path / "a") == {"LIBRISPEECH": "/l"}


def test_sid_file_lists_are_cached_per_experiment(tmp_path):
    """s3prl caches SID file lists in site-packages; each run must see the lists of its own split file."""
    from dphubert.superb import running

    running.setup()
    from s3prl.downstream.voxceleb1.dataset import SpeakerClassifiDataset

    root = tmp_path / "VoxCeleb1"
    lines = []
    for n in range(6):
        path = root / "dev" / "wav" / f"id1000{1 + n % 2}" / "vid" / f"{n:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(1600, dtype=np.float32), SR)
        lines.append(f"1 {path.relative_to(root / 'dev' / 'wav')}")
    sizes = []
    for name, kept in (("a", lines), ("b", lines[:2])):
        (tmp_path / f"{name}.txt").write_text("\n".join(kept) + "\n")
        running._per_experiment_caches(["-m", "train", "-p", str(tmp_path / name)])
        sizes.append(len(SpeakerClassifiDataset("train", root, str(tmp_path / f"{name}.txt"))))
        assert (tmp_path / name / "s3prl_cache" / "train.pkl").exists()
    assert sizes == [6, 2]


def test_runs_leave_builtins_isinstance_alone():
    """s3prl's main() wraps builtins.isinstance on every call; a process running many pairs must not pile them up."""
    import builtins

    from dphubert.superb import running

    before = builtins.isinstance
    for _ in range(2):
        with pytest.raises(SystemExit):
            running.run_downstream(["-h"], quiet=True)
        assert builtins.isinstance is before
