"""The egs/demo corpus synthesiser (egs/demo/local/data.sh + synth_corpus.py).

One tiny corpus (--minutes 3, 20 speakers) is made with data.sh; the tests check the Kaldi
dirs, the audio (16 kHz, noisy, deterministic) and that s3prl's own task code
(speech_commands, fluent_commands, voxceleb1, asr) reads the layouts it writes.
"""

import csv
import hashlib
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "egs" / "demo" / "local"
SYNTH = LOCAL / "synth_corpus.py"
DATA_SH = LOCAL / "data.sh"
EXTRA = "ks=7,ic=5,sid=24,pr=4"  # extra test utterances (the demo asks for ks=1000,... : narrow intervals)
TINY = ["--minutes", "3", "--num-speakers", "20", "--seed", "7", "--nj", "2", "--extra-test", EXTRA]
SPLITS = ("train", "dev", "test")


def _venv_env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(audio dir, data dir, s3prl paths) of a tiny corpus made with data.sh."""
    root = tmp_path_factory.mktemp("demo")
    audio, data = root / "downloads", root / "data"
    proc = subprocess.run(
        ["bash", str(DATA_SH), "--minutes", "3", "--num-speakers", "20", "--seed", "7", "--nj", "2",
         "--extra-test", EXTRA, "--out-audio", str(audio), "--out-data", str(data)],
        capture_output=True, text=True, timeout=60, env=_venv_env(), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = yaml.safe_load((audio / "s3prl_paths.yaml").read_text())
    return audio, data, paths


def read_table(path):
    """Kaldi 'key value...' file -> dict (value '' for key-only lines)."""
    table = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        table[key] = value
    return table


def c_sorted(path):
    keys = [line.split(" ")[0].encode() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return keys == sorted(keys)


@pytest.fixture(scope="module")
def s3prl_ready():
    """s3prl's downstream code needs the torchaudio compatibility layer on torchaudio >= 2.9."""
    from dphubert.s3prl.compat import apply
    apply()


# ---------------------------------------------------------------- Kaldi dirs and audio

def test_kaldi_dirs_are_consistent(corpus):
    _, data, _ = corpus
    for split in SPLITS:
        d = data / split
        wav_scp, text, utt2spk = read_table(d / "wav.scp"), read_table(d / "text"), read_table(d / "utt2spk")
        num_samples, category = read_table(d / "utt2num_samples"), read_table(d / "utt2category")
        phones, spk2utt = read_table(d / "phones"), read_table(d / "spk2utt")
        assert wav_scp and set(wav_scp) == set(text) == set(utt2spk) == set(num_samples) == set(category)
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2num_samples", "phones", "spk2gender"):
            assert c_sorted(d / name), f"{split}/{name} is not LC_ALL=C sorted"
        assert {u for s, us in spk2utt.items() for u in us.split()} == set(utt2spk)
        assert all(utt2spk[u] == s for s, us in spk2utt.items() for u in us.split())
        assert all(u.startswith(utt2spk[u] + "-") for u in utt2spk)
        # phones for every spoken utterance, none for noise-only clips
        assert set(phones) == {u for u, c in category.items() if c != "silence"}
        assert all(text[u] == "" for u, c in category.items() if c == "silence")
        assert all(text[u] and text[u] == text[u].upper() for u, c in category.items() if c != "silence")
        for utt in sorted(wav_scp)[::7]:
            info = sf.info(wav_scp[utt])
            assert Path(wav_scp[utt]).is_absolute()
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == int(num_samples[utt])
        keyword_clips = [u for u, c in category.items() if c in ("keyword", "silence")]
        assert keyword_clips and all(num_samples[u] == "16000" for u in keyword_clips)


def test_speakers_splits_and_kinds(corpus):
    _, data, _ = corpus
    speakers = {split: set(read_table(data / split / "spk2utt")) for split in SPLITS}
    assert len(set().union(*speakers.values())) >= 20
    assert all(speakers[split] for split in SPLITS)
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"]), "partitions must be speaker-disjoint"
    kinds = Counter(read_table(data / "train" / "utt2category").values())
    assert set(kinds) == {"keyword", "silence", "command", "sentence"}
    genders = set(read_table(data / "train" / "spk2gender").values())
    assert genders == {"m", "f"}
    total_minutes = sum(int(n) for split in SPLITS
                        for n in read_table(data / split / "utt2num_samples").values()) / 16000 / 60
    assert 2.5 < total_minutes < 8


def test_extra_test_utterances_land_in_the_test_sets_only(corpus):
    """--extra-test: KS/IC/PR test sets of the test speakers grow; SID extras only in VoxCeleb1's test split."""
    sys.path.insert(0, str(LOCAL))
    from demo_grammar import load_grammar
    from demo_plan import plan_corpus

    grammar = load_grammar(LOCAL / "grammar.yaml")
    _, plain = plan_corpus(grammar, 20, 3, 7)
    _, grown = plan_corpus(grammar, 20, 3, 7, {"ks": 7, "ic": 5, "sid": 24, "pr": 4})
    assert [(u.utt_id, u.text, u.sid_split) for u in grown[:len(plain)]] == \
        [(u.utt_id, u.text, u.sid_split) for u in plain]  # the rest of the plan is unchanged
    extras = grown[len(plain):]
    assert len(extras) == 7 + 5 + 24 + 4
    assert all(u.partition == "test" for u in extras if not u.sid_only)
    sid_extras = [u for u in extras if u.sid_only]
    assert len(sid_extras) == 24 and {u.sid_split for u in sid_extras} == {"test"}
    assert len({u.speaker.name for u in sid_extras}) == 20  # every speaker, round robin

    audio, data, _ = corpus
    plain_test = sum(u.partition == "test" for u in plain)
    assert len(read_table(data / "test" / "wav.scp")) == plain_test + 7 + 5 + 4
    sid_test = [line for line in (audio / "VoxCeleb1" / "iden_split.txt").read_text().splitlines()
                if line.startswith("3 ")]
    assert len(sid_test) == sum(u.sid_split == "test" for u in plain) + 24
    fsc_test = list(csv.reader(open(audio / "fluent_speech_commands_dataset" / "data" / "test_data.csv")))[1:]
    assert len(fsc_test) == sum(u.kind == "command" and u.partition == "test" for u in plain) + 5
    train_commands = [u for u in read_table(data / "train" / "utt2category").values() if u == "command"]
    assert len(train_commands) == sum(u.kind == "command" and u.partition == "train" for u in plain)


def _outside_peak_share(x):
    """Share of the power outside the strongest spectral line (about 0 for a pure tone)."""
    power = np.abs(np.fft.rfft(x)) ** 2
    peak = int(np.argmax(power))
    return 1.0 - power[max(0, peak - 2):peak + 3].sum() / power.sum()


def test_noise_is_present_and_not_a_tone(corpus):
    _, data, _ = corpus
    wav_scp = {**read_table(data / "train" / "wav.scp"), **read_table(data / "dev" / "wav.scp")}
    category = {**read_table(data / "train" / "utt2category"), **read_table(data / "dev" / "utt2category")}
    silences = [u for u, c in category.items() if c == "silence"]
    assert silences
    for utt in silences:
        x, _ = sf.read(wav_scp[utt])
        assert np.sqrt(np.mean(x ** 2)) > 1e-4
        assert _outside_peak_share(x) > 0.2
    # SNR promised 5-25 dB: noise power from the lead (>= 0.1 s of noise only), speech + noise power inside the
    # pads (each at most 0.4 s), so the estimate sees speech alone; 1.5 dB allowed for the estimate's own error.
    snrs = []
    for utt in [u for u, c in category.items() if c in ("command", "sentence")]:
        x, _ = sf.read(wav_scp[utt])
        noise_power = np.mean(x[:1600] ** 2)
        assert noise_power > 1e-9, f"{utt}: no noise before the speech"
        inner = x[6400:-6400]
        if len(inner) >= 3200:
            snrs.append(10 * np.log10(max(np.mean(inner ** 2) - noise_power, 1e-12) / noise_power))
    assert len(snrs) >= 20
    assert 3.5 < min(snrs) and max(snrs) < 26.5, (min(snrs), max(snrs))
    assert np.percentile(snrs, 10) < 9 and np.percentile(snrs, 90) > 21  # spread over the range, not one value


def test_same_seed_gives_identical_files_other_seed_differs(corpus, tmp_path):
    audio, data, _ = corpus
    runs = {seed: subprocess.Popen([sys.executable, str(SYNTH), "--out-audio", str(tmp_path / f"a{seed}"),
                                    "--out-data", str(tmp_path / f"d{seed}"), *TINY, "--seed", seed, "--nj", "1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in ("7", "8")}
    for proc in runs.values():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]

    def sha1(path):
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()

    first = read_table(data / "train" / "wav.scp")
    second = read_table(tmp_path / "d7" / "train" / "wav.scp")
    assert list(first) == list(second)
    for utt in list(first)[::10]:
        assert sha1(first[utt]) == sha1(second[utt]), utt
    for name in ("text", "phones", "utt2num_samples"):
        assert (data / "dev" / name).read_bytes() == (tmp_path / "d7" / "dev" / name).read_bytes()
    assert (audio / "VoxCeleb1" / "iden_split.txt").read_bytes() == \
        (tmp_path / "a7" / "VoxCeleb1" / "iden_split.txt").read_bytes()
    # Another seed: other sentences, other audio (no file of it equals one of seed 7).
    other = read_table(tmp_path / "d8" / "train" / "wav.scp")
    assert read_table(tmp_path / "d8" / "train" / "text") != read_table(data / "train" / "text")
    seven = {sha1(path) for path in first.values()}
    assert not seven & {sha1(path) for path in list(other.values())[::5]}


def test_rerun_is_skipped_and_other_settings_need_force(corpus):
    audio, data, _ = corpus
    wav = next(iter(read_table(data / "train" / "wav.scp").values()))
    mtime = os.stat(wav).st_mtime_ns
    common = [sys.executable, str(SYNTH), "--out-audio", str(audio), "--out-data", str(data)]
    same = subprocess.run(common + TINY, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "already holds" in same.stdout
    assert os.stat(wav).st_mtime_ns == mtime
    other = subprocess.run(common + ["--minutes", "3", "--num-speakers", "20", "--seed", "8", "--extra-test", EXTRA],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 1
    assert other.stderr.strip().count("\n") == 0 and "--force" in other.stderr and "seed" in other.stderr


def test_bad_options_and_missing_espeak_give_one_line(tmp_path):
    bad = subprocess.run([sys.executable, str(SYNTH), "--out-audio", str(tmp_path / "a"),
                          "--out-data", str(tmp_path / "d"), "--num-speakers", "5"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "--num-speakers" in bad.stderr
    no_tools = subprocess.run(["/bin/bash", str(DATA_SH)], capture_output=True, text=True, timeout=30,
                              env={"PATH": str(tmp_path)}, cwd=tmp_path)
    assert no_tools.returncode == 1
    assert no_tools.stderr.strip().endswith("apt-get install -y espeak-ng sox")
    assert no_tools.stderr.strip().count("\n") == 0


# ---------------------------------------------------------------- s3prl's own task code

MODELRC = {"projector_dim": 8, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}}


def test_s3prl_speech_commands_reads_the_layout(corpus, s3prl_ready, tmp_path):
    from s3prl.downstream.speech_commands.dataset import CLASSES
    from s3prl.downstream.speech_commands.expert import DownstreamExpert

    audio, data, paths = corpus
    datarc = {**paths["speech_commands"], "batch_size": 2, "num_workers": 0}
    expert = DownstreamExpert(16, {"datarc": datarc, "modelrc": MODELRC}, str(tmp_path))
    # s3prl splits by the speaker hash in the file name: its dev set is our validation list
    listed = (audio / "speech_commands_v0.01" / "validation_list.txt").read_text().split()
    dev_files = [str(Path(p).relative_to(audio / "speech_commands_v0.01"))
                 for label, p in expert.dev_dataset.data if label != "_silence_"]
    assert sorted(dev_files) == sorted(listed)
    dev_speakers = set(read_table(data / "dev" / "spk2utt"))
    assert len(listed) == sum(c == "keyword" for u, c in read_table(data / "dev" / "utt2category").items())
    assert dev_speakers
    for dataset in (expert.train_dataset, expert.dev_dataset, expert.test_dataset):
        assert len(dataset) > 0
        wav, label, _ = dataset[0]
        assert wav.shape == (16000,) and 0 <= label < len(CLASSES)
    silence = [i for i, (label, _) in enumerate(expert.train_dataset.data) if label == "_silence_"]
    assert len(silence) == 5 * 60  # 5 noise kinds x 60 one-second files
    wav, label, _ = expert.train_dataset[silence[0]]
    assert wav.shape == (16000,) and CLASSES[label] == "_silence_"
    # s3prl crops a random second per draw; from a one-second file every draw is the same waveform, which is
    # what lets stage 5's feature cache reuse the silence class's features
    for index in silence[:3]:
        first, second = expert.train_dataset[index][0], expert.train_dataset[index][0]
        np.testing.assert_array_equal(first, second)
    wavs, labels, _ = next(iter(expert.get_dataloader("test")))
    assert len(wavs) == len(labels) > 0


def test_s3prl_fluent_commands_reads_the_layout(corpus, s3prl_ready, tmp_path):
    from s3prl.downstream.fluent_commands.expert import DownstreamExpert

    _, _, paths = corpus
    datarc = {**paths["fluent_commands"], "train_batch_size": 2, "eval_batch_size": 2, "num_workers": 0}
    expert = DownstreamExpert(16, {"datarc": datarc, "modelrc": MODELRC}, str(tmp_path))
    assert expert.values_per_slot == [6, 14, 4]  # actions, objects, locations of Fluent Speech Commands
    for dataset in (expert.train_dataset, expert.dev_dataset, expert.test_dataset):
        assert len(dataset) > 0
        for idx in range(len(dataset)):  # every dev/test label value must be known from train
            wav, label, _ = dataset[idx]
            assert wav.ndim == 1 and len(wav) > 16000 * 0.5 and label.shape == (3,)


def test_quick_sid_never_crops_the_demo_utterances(corpus):
    """s3prl crops SID training utterances longer than max_timestep at random (a new waveform per draw, which the
    feature cache cannot reuse); quick mode's limit must hold every demo utterance whole."""
    from dphubert.superb.configs import quick_overrides
    from dphubert.superb.tasks import TASKS

    audio, _, _ = corpus
    limit = quick_overrides(TASKS["sid"])["downstream_expert.datarc.max_timestep"]
    lengths = [sf.info(str(p)).frames for p in (audio / "VoxCeleb1").glob("*/wav/*/*/*.wav")]
    assert lengths and max(lengths) <= limit


def test_s3prl_voxceleb1_reads_the_layout(corpus, s3prl_ready, tmp_path, monkeypatch):
    import s3prl.downstream.voxceleb1.dataset as vox_dataset
    from s3prl.downstream.voxceleb1.expert import DownstreamExpert

    # s3prl caches the file lists inside its package; keep this run's cache private
    monkeypatch.setattr(vox_dataset, "CACHE_PATH", str(tmp_path / "cache") + "/")
    _, data, paths = corpus
    datarc = {**paths["voxceleb1"], "max_timestep": 48000, "train_batch_size": 2, "eval_batch_size": 2,
              "num_workers": 0}
    expert = DownstreamExpert(16, {"datarc": datarc, "modelrc": MODELRC}, str(tmp_path))
    n_speakers = len(set().union(*(read_table(data / s / "spk2utt") for s in SPLITS)))
    for dataset in (expert.train_dataset, expert.dev_dataset, expert.test_dataset):
        assert set(dataset.label) == set(range(n_speakers)), "every speaker in every SID split"
        wav, label, name = dataset[0]
        assert wav.ndim == 1 and len(wav) > 8000 and name.startswith("id1")


def test_s3prl_asr_reads_librispeech_layout(corpus, s3prl_ready):
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary

    _, data, paths = corpus
    asr = paths["asr"]
    dictionary = Dictionary.load(asr["dict_path"])
    sentences = sum(c == "sentence" for s in SPLITS for c in read_table(data / s / "utt2category").values())
    seen = 0
    for split in ("train", "dev-clean", "test-clean"):
        dataset = SequenceDataset(split, 1, dictionary, **asr)
        seen += len(dataset)
        wavs, labels, names = dataset[0]
        assert wavs[0].ndim == 1 and len(wavs[0]) > 16000
        assert dictionary.unk() not in labels[0].tolist()
    assert seen == sentences


def test_libriphone_files_match_kaldi_phones(corpus, s3prl_ready):
    # s3prl 0.4.18's wheel lacks downstream/ctc/corpus/libriphone.py; check the files with
    # its text encoder the way that dataset uses them (lexicon lookup per token).
    from s3prl.downstream.ctc.text import load_text_encoder

    _, data, paths = corpus
    pr = paths["ctc_libriphone"]
    encoder = load_text_encoder(**pr["text"])
    lexicon = dict(line.split(" ", 1) for line in Path(pr["corpus"]["lexicon"][0]).read_text().splitlines())
    kaldi_phones = defaultdict(list)
    for split in SPLITS:
        category = read_table(data / split / "utt2category")
        for utt, phones in read_table(data / split / "phones").items():
            if category[utt] == "sentence":
                kaldi_phones[split].append(phones)
    for split in SPLITS:
        with open(Path(pr["corpus"]["csv_dir"]) / pr["corpus"][split], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["transcription"] for r in rows) == sorted(kaldi_phones[split])
        for row in rows:
            assert Path(row["wav_path"]).is_file()
            ids = encoder.encode(" ".join(lexicon[p] for p in row["transcription"].split()))
            assert encoder.unk_idx not in ids
