"""Tests of dphubert.data: data dirs, audio reading and checking, tsv lists, sampler, collator, loader.

Everything runs on real files written in tmp_path (soundfile wav/flac, kaldiio arks, sox pipes).
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from dphubert.data import (
    AudioDataset,
    AudioError,
    BucketBatchSampler,
    CropCollator,
    DataDirError,
    check_audio,
    compute_num_samples,
    datadir_to_tsv,
    load_data_dir,
    make_dataloader,
    probe_num_samples,
    read_audio,
    tsv_to_datadir,
    validate_audio,
    write_utt2num_samples,
)

SR = 16000


# ------------------------------------------------------------------------------------------------
# Helpers and fixtures


def pcm16_noise(num_samples: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Random float32 samples exactly representable in 16-bit PCM (so files round-trip exactly)."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(-8000, 8000, size=(num_samples, channels))
    samples = (ints / 32768.0).astype(np.float32)
    return samples[:, 0] if channels == 1 else samples


def write_audio(path: Path, seconds: float, rate: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    samples = pcm16_noise(int(round(seconds * rate)), channels, seed)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return samples


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def mixed_dir(tmp_path):
    """A data dir with one utterance of each source kind: wav, flac, sox pipe, kaldiio wav ark."""
    audio = tmp_path / "audio"
    audio.mkdir()
    expected = {
        "spk1-utt_wav": write_audio(audio / "a.wav", 3.0, seed=1),
        "spk1-utt_flac": write_audio(audio / "b.flac", 2.5, seed=2),
        "spk2-utt_pipe": write_audio(audio / "c.flac", 4.0, seed=3),
    }
    expected["spk2-utt_ark"] = pcm16_noise(2 * SR, seed=4)
    with kaldiio.WriteHelper(f"ark,scp:{audio}/d.ark,{audio}/d.scp") as writer:
        writer["spk2-utt_ark"] = (SR, (expected["spk2-utt_ark"] * 32768).astype(np.int16))
    ark_reference = (audio / "d.scp").read_text().split()[1]
    data = tmp_path / "data"
    data.mkdir()
    write_lines(  # deliberately unsorted
        data / "wav.scp",
        [
            f"spk2-utt_pipe sox {audio}/c.flac -t wav - |",
            f"spk1-utt_wav {audio}/a.wav",
            f"spk2-utt_ark {ark_reference}",
            f"spk1-utt_flac {audio}/b.flac",
        ],
    )
    write_lines(data / "text", [f"{utt} HELLO {utt.upper()}" for utt in expected if utt != "spk2-utt_ark"])
    with open(data / "text", "a") as f:
        f.write("spk2-utt_ark\n")  # an empty transcript is allowed
    write_lines(data / "utt2spk", [f"{utt} {utt.split('-')[0]}" for utt in expected])
    return data, expected


@pytest.fixture
def bad_audio_dir(tmp_path):
    """One good utterance and one of every kind of bad audio; returns (data dir, {utt: path})."""
    audio = tmp_path / "audio"
    audio.mkdir()
    write_audio(audio / "good.wav", 2.5)
    (audio / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(2000))
    (audio / "zero_bytes.flac").write_bytes(b"")
    soundfile.write(audio / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    write_audio(audio / "rate8k.wav", 2.5, rate=8000)
    write_audio(audio / "stereo.flac", 2.5, channels=2)
    paths = {
        "good": audio / "good.wav",
        "missing": audio / "missing.wav",
        "corrupt": audio / "corrupt.wav",
        "zero_bytes": audio / "zero_bytes.flac",
        "empty": audio / "empty.wav",
        "rate8k": audio / "rate8k.wav",
        "stereo": audio / "stereo.flac",
    }
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "wav.scp", [f"{utt} {path}" for utt, path in paths.items()])
    return data, paths


# ------------------------------------------------------------------------------------------------
# Data dirs


def test_load_data_dir_reads_files_and_sorts_ids(mixed_dir):
    data, expected = mixed_dir
    dd = load_data_dir(data)
    assert dd.utt_ids == ["spk1-utt_flac", "spk1-utt_wav", "spk2-utt_ark", "spk2-utt_pipe"]
    assert dd.text["spk1-utt_wav"] == "HELLO SPK1-UTT_WAV" and dd.text["spk2-utt_ark"] == ""
    assert dd.utt2spk["spk2-utt_pipe"] == "spk2"
    assert dd.segments is None and dd.utt2num_samples == {}


def test_read_audio_every_source_kind(mixed_dir):
    data, expected = mixed_dir
    dd = load_data_dir(data)
    for utt, samples in expected.items():
        waveform = read_audio(dd, utt)
        assert waveform.dtype == np.float32 and waveform.ndim == 1, utt
        np.testing.assert_array_equal(waveform, samples, err_msg=utt)


def test_segments_cut_plain_and_piped_recordings(tmp_path):
    recording = write_audio(tmp_path / "rec.flac", 6.0)
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "wav.scp", [f"rec {tmp_path}/rec.flac", f"recpipe sox {tmp_path}/rec.flac -t wav - |"])
    write_lines(
        data / "segments",
        ["seg_b rec 3.0 5.5", "seg_a rec 0.5 2.5", "seg_p recpipe 1.0 2.0", "seg_tail rec 5.0 -1"],
    )
    dd = load_data_dir(data)
    assert dd.utt_ids == ["seg_a", "seg_b", "seg_p", "seg_tail"]
    np.testing.assert_array_equal(read_audio(dd, "seg_a"), recording[8000:40000])
    np.testing.assert_array_equal(read_audio(dd, "seg_b"), recording[48000:88000])
    np.testing.assert_array_equal(read_audio(dd, "seg_p"), recording[16000:32000])
    np.testing.assert_array_equal(read_audio(dd, "seg_tail"), recording[80000:])
    counts, bad = compute_num_samples(dd, progress=False)
    assert counts == {"seg_a": 32000, "seg_b": 40000, "seg_p": 16000, "seg_tail": 16000} and bad == []


def test_segment_past_the_end_is_empty_audio(tmp_path):
    write_audio(tmp_path / "rec.wav", 1.0)
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "wav.scp", [f"rec {tmp_path}/rec.wav"])
    write_lines(data / "segments", ["late rec 2.0 3.0"])
    dd = load_data_dir(data)
    with pytest.raises(AudioError, match=r"utt late: its segment of .*rec\.wav has 0 samples"):
        read_audio(dd, "late")
    with pytest.raises(AudioError, match="0 samples"):
        probe_num_samples(dd, "late")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"wav.scp": ["a /x/a.wav", "b"]}, r"wav\.scp:2: malformed line 'b'"),
        ({"wav.scp": ["a /x/a.wav", "a /x/b.wav"]}, r"wav\.scp:2: duplicate id 'a'"),
        ({"wav.scp": ["", "  "]}, r"wav\.scp: empty data dir"),
        ({"text": ["a hello"]}, r"wav\.scp: not found"),
        ({"wav.scp": ["r /x/a.wav"], "segments": ["s r 1.0"]}, r"segments:1: malformed line 's r 1.0'"),
        ({"wav.scp": ["r /x/a.wav"], "segments": ["s r one 2"]}, r"segment 's': start/end must be seconds"),
        ({"wav.scp": ["r /x/a.wav"], "segments": ["s r 2.0 1.0"]}, r"segment 's': needs 0 <= start < end"),
        ({"wav.scp": ["r /x/a.wav"], "segments": ["s q 0 1"]}, r"recording 'q' is not in wav\.scp"),
        ({"wav.scp": ["a /x/a.wav"], "utt2num_samples": ["a 12.5"]}, r"utterance 'a': num_samples must be an integer"),
        ({"wav.scp": ["a /x/a.wav"], "utt2spk": ["a s1 s2"]}, r"utt2spk:1: malformed line 'a s1 s2'"),
    ],
)
def test_malformed_data_dir_names_file_and_line(tmp_path, files, message):
    for name, lines in files.items():
        write_lines(tmp_path / name, lines)
    with pytest.raises(DataDirError, match=message) as error:
        load_data_dir(tmp_path)
    assert "\n" not in str(error.value)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataDirError, match="data dir not found"):
        load_data_dir(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------
# Bad audio


@pytest.mark.parametrize(
    "utt, message",
    [
        ("missing", r"audio file not found: .*missing\.wav; fix the path in wav\.scp"),
        ("corrupt", r"cannot decode .*corrupt\.wav: .*re-encode or replace"),
        ("zero_bytes", r"cannot decode .*zero_bytes\.flac"),
        ("empty", r"empty\.wav has 0 samples"),
        ("rate8k", r"rate8k\.wav is 8000 Hz, expected 16000 Hz; .*sox in\.wav -r 16000 out\.wav.*resample=True"),
        ("stereo", r"stereo\.flac has 2 channels, expected mono; .*downmix=True"),
    ],
)
def test_bad_audio_gives_one_line_naming_utt_path_and_fix(bad_audio_dir, utt, message):
    data, _ = bad_audio_dir
    dd = load_data_dir(data)
    for reader in (read_audio, probe_num_samples):  # full decode and header-only probe agree
        with pytest.raises(AudioError, match=rf"^utt {utt}: .*{message}") as error:
            reader(dd, utt)
        assert "\n" not in str(error.value)


def test_resample_and_downmix_options(bad_audio_dir):
    data, paths = bad_audio_dir
    dd = load_data_dir(data)
    resampled = read_audio(dd, "rate8k", resample=True)
    assert resampled.dtype == np.float32 and len(resampled) == 2 * 20000
    assert probe_num_samples(dd, "rate8k", resample=True) == len(resampled)
    stereo, _ = soundfile.read(paths["stereo"], dtype="float32")
    np.testing.assert_allclose(read_audio(dd, "stereo", downmix=True), stereo.mean(axis=1), atol=1e-7)


def test_failing_pipe_command(tmp_path):
    write_lines(tmp_path / "wav.scp", [f"u1 sox {tmp_path}/nope.flac -t wav - |"])
    with pytest.raises(AudioError, match=r"^utt u1: command 'sox .*nope\.flac -t wav - \|' failed \(exit \d+\)"):
        read_audio(load_data_dir(tmp_path), "u1")


def test_ark_with_bad_offset(mixed_dir):
    data, _ = mixed_dir
    dd = load_data_dir(data)
    ark_path = dd.wav_scp["spk2-utt_ark"].rsplit(":", 1)[0]
    dd.wav_scp["spk2-utt_ark"] = f"{ark_path}:99999"
    with pytest.raises(AudioError, match=r"^utt spk2-utt_ark: cannot decode .*d\.ark:99999"):
        read_audio(dd, "spk2-utt_ark")


def test_write_utt2num_samples_and_validate(bad_audio_dir):
    data, _ = bad_audio_dir
    bad = write_utt2num_samples(data, nj=2)
    assert [utt for utt, _ in bad] == ["corrupt", "empty", "missing", "rate8k", "stereo", "zero_bytes"]
    assert (data / "utt2num_samples").read_text() == "good 40000\n"
    assert load_data_dir(data).utt2num_samples == {"good": 40000}
    assert [utt for utt, _ in validate_audio(load_data_dir(data), nj=2)] == [utt for utt, _ in bad]
    assert validate_audio(load_data_dir(data), resample=True, downmix=True)[-1][0] == "zero_bytes"
    assert len(validate_audio(load_data_dir(data), resample=True, downmix=True)) == 4


def test_utt2num_samples_of_mixed_sources(mixed_dir):
    data, expected = mixed_dir
    assert write_utt2num_samples(data) == []
    assert load_data_dir(data).utt2num_samples == {utt: len(samples) for utt, samples in expected.items()}


# ------------------------------------------------------------------------------------------------
# tsv lists and C sort order


def test_tsv_round_trip_and_c_sort_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    names = ["sub/b-1.flac", "a_1.wav", "a-1.wav", "B1.flac", "sub/Z.wav"]
    lengths = {}
    for seed, name in enumerate(names):
        lengths[name] = len(write_audio(root / name, 0.5 + 0.1 * seed, seed=seed))
    tsv = tmp_path / "in.tsv"
    write_lines(tsv, [str(root)] + [f"{name}\t{lengths[name]}" for name in names])

    dd = tsv_to_datadir(tsv, tmp_path / "data")
    for name in ("wav.scp", "utt2num_samples", "utt2spk", "spk2utt"):
        text = (tmp_path / "data" / name).read_text()
        sorted_by_sort = subprocess.run(
            ["sort"], input=text, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, check=True
        ).stdout
        assert text == sorted_by_sort, name
    assert dd.utt_ids == ["B1", "Z", "a-1", "a_1", "b-1"]
    assert dd.wav_scp["b-1"] == str(root / "sub/b-1.flac")
    assert dd.utt2num_samples["Z"] == lengths["sub/Z.wav"]
    np.testing.assert_array_equal(read_audio(dd, "a-1"), soundfile.read(root / "a-1.wav", dtype="float32")[0])

    out = tmp_path / "out.tsv"
    (tmp_path / "data" / "utt2num_samples").unlink()  # counts must then come from the headers
    datadir_to_tsv(load_data_dir(tmp_path / "data"), out)
    lines = out.read_text().splitlines()
    assert lines[0] == str(root)
    assert sorted(lines[1:]) == sorted(f"{name}\t{lengths[name]}" for name in names)


def test_tsv_with_repeated_file_names_uses_paths_as_ids(tmp_path):
    write_lines(tmp_path / "in.tsv", ["/corpus", "x/a.flac\t100", "y/a.flac\t200"])
    dd = tsv_to_datadir(tmp_path / "in.tsv", tmp_path / "data")
    assert dd.utt_ids == ["x-a", "y-a"] and dd.utt2num_samples == {"x-a": 100, "y-a": 200}


def test_bad_tsv_and_unconvertible_data_dir(tmp_path, mixed_dir):
    write_lines(tmp_path / "bad.tsv", ["/corpus", "x/a.flac 100"])
    with pytest.raises(DataDirError, match=r"bad\.tsv:2: malformed line"):
        tsv_to_datadir(tmp_path / "bad.tsv", tmp_path / "out")
    data, _ = mixed_dir
    with pytest.raises(DataDirError, match=r"utt spk2-utt_ark is a pipe or ark entry"):
        datadir_to_tsv(load_data_dir(data), tmp_path / "x.tsv")


# ------------------------------------------------------------------------------------------------
# Sampler


def random_lengths(count: int = 300, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(2 * SR, int(15.6 * SR), size=count).tolist()


def epoch_batches(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return [list(batch) for batch in sampler]


@pytest.mark.parametrize("num_buckets", [None, 7])
def test_sampler_covers_every_utterance_once_within_budget(num_buckets):
    lengths = random_lengths()
    sampler = BucketBatchSampler(lengths, max_batch_seconds=60, num_buckets=num_buckets, seed=3)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        kept = [len(batch) * min(lengths[i] for i in batch) for batch in batches]
        assert max(kept) <= 60 * SR
        assert sum(kept) / len(kept) > 0.6 * 60 * SR  # batches are filled, not trivially small
        # Grouping by length: the cropped-away audio is small.
        assert sum(kept) > 0.85 * sum(lengths)


def test_sampler_epochs_differ_and_are_deterministic():
    lengths = random_lengths()
    sampler = BucketBatchSampler(lengths, max_batch_seconds=60, num_buckets=5, seed=3)
    again = BucketBatchSampler(lengths, max_batch_seconds=60, num_buckets=5, seed=3)
    epochs = [epoch_batches(sampler, epoch) for epoch in range(4)]
    for epoch in range(4):
        assert epoch_batches(again, epoch) == epochs[epoch]
    for a in range(4):
        for b in range(a + 1, 4):
            assert epochs[a] != epochs[b]
            assert {tuple(x) for x in epochs[a]} != {tuple(x) for x in epochs[b]}  # compositions change too
    unsorted_buckets = BucketBatchSampler(lengths, max_batch_seconds=60, seed=3)
    assert epoch_batches(unsorted_buckets, 0) != epoch_batches(unsorted_buckets, 1)
    other_seed = BucketBatchSampler(lengths, max_batch_seconds=60, num_buckets=5, seed=4)
    assert epoch_batches(other_seed, 0) != epochs[0]


def test_sampler_without_shuffle_is_sorted_and_fixed():
    lengths = random_lengths(100)
    sampler = BucketBatchSampler(lengths, max_batch_seconds=60, shuffle=False)
    batches = epoch_batches(sampler, 0)
    assert [lengths[i] for batch in batches for i in batch] == sorted(lengths)
    assert epoch_batches(sampler, 1) == batches


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_ranks_equally(drop_last):
    lengths = random_lengths(301)
    world_size = 4
    global_batches = epoch_batches(BucketBatchSampler(lengths, 40, num_buckets=3, seed=9), epoch=2)
    assert len(global_batches) % world_size != 0  # the case that needs padding or dropping
    ranks = [
        BucketBatchSampler(lengths, 40, num_buckets=3, seed=9, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    per_rank = [epoch_batches(sampler, 2) for sampler in ranks]
    expected_len = len(global_batches) // world_size + (0 if drop_last else 1)
    assert [len(batches) for batches in per_rank] == [expected_len] * world_size
    assert [len(sampler) for sampler in ranks] == [expected_len] * world_size
    # Rank r takes global batches r, r+W, ...; padding repeats the first global batches.
    for step in range(expected_len):
        for rank in range(world_size):
            global_index = step * world_size + rank
            assert per_rank[rank][step] == global_batches[global_index % len(global_batches)]
    if drop_last:
        flat = [i for batches in per_rank for batch in batches for i in batch]
        assert len(flat) == len(set(flat))  # ranks are disjoint


def test_sampler_resumes_mid_epoch_exactly():
    lengths = random_lengths()
    sampler = BucketBatchSampler(lengths, 50, num_buckets=4, seed=5, rank=1, world_size=2)
    full = epoch_batches(sampler, 3)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state["epoch"] == 3 and state["position"] == 5
    assert [batch.step for batch in consumed] == [0, 1, 2, 3, 4]
    assert [batch.global_index for batch in consumed] == [1, 3, 5, 7, 9]

    resumed = BucketBatchSampler(lengths, 50, num_buckets=4, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(pickle.loads(pickle.dumps(state)))
    resumed.set_epoch(3)  # a trainer loop calls this again; the position must survive
    rest = list(resumed)
    assert [list(b) for b in rest] == full[5:]
    assert [b.step for b in rest] == list(range(5, len(full)))
    assert epoch_batches(resumed, 3) == full  # the position applies to one iteration only
    assert sampler.state_dict(consumed=2)["position"] == 2

    with pytest.raises(ValueError, match="world_size=2 but this sampler has world_size=1"):
        BucketBatchSampler(lengths, 50, num_buckets=4, seed=5).load_state_dict(state)


def test_sampler_rejects_budget_below_longest_utterance():
    with pytest.raises(ValueError, match=r"max_batch_seconds=10 is shorter than the longest utterance \(12\.00 s\)"):
        BucketBatchSampler([3 * SR, 12 * SR], max_batch_seconds=10)


def test_index_batch_pickles_with_its_position():
    sampler = BucketBatchSampler(random_lengths(20), 30, seed=1)
    batch = next(iter(sampler))
    copy = pickle.loads(pickle.dumps(batch))
    assert list(copy) == list(batch) and (copy.epoch, copy.step, copy.global_index) == (0, 0, 0)


# ------------------------------------------------------------------------------------------------
# Dataset, bad-audio policy, collator, loader


@pytest.fixture
def training_dir(tmp_path):
    """16 utterances of 2-6 s, plus one too short and one too long."""
    audio = tmp_path / "audio"
    audio.mkdir()
    lines = []
    rng = np.random.default_rng(0)
    for i in range(16):
        path = audio / f"u{i:02d}.flac"
        write_audio(path, float(rng.uniform(2.0, 6.0)), seed=i)
        lines.append(f"utt{i:02d} {path}")
    write_audio(audio / "short.wav", 1.0)
    write_audio(audio / "long.wav", 16.0)
    lines += [f"short {audio}/short.wav", f"long {audio}/long.wav"]
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "wav.scp", lines)
    return data


def test_dataset_filters_by_length_and_reads(training_dir):
    dataset = AudioDataset(training_dir, min_seconds=2.0, max_seconds=15.6)
    assert len(dataset) == 16 and dataset.num_too_short == 1 and dataset.num_too_long == 1
    utt, waveform = dataset[3]
    assert utt == "utt03" and waveform.dtype == torch.float32 and len(waveform) == dataset.lengths[3]
    assert dataset.utt_ids == sorted(dataset.utt_ids)


def test_dataset_takes_lengths_from_utt2num_samples(training_dir):
    write_utt2num_samples(training_dir)
    counts = load_data_dir(training_dir).utt2num_samples
    counts["utt05"] = 20 * SR  # pretend it is long: the file must not be probed again
    write_lines(training_dir / "utt2num_samples", [f"{utt} {count}" for utt, count in counts.items()])
    dataset = AudioDataset(training_dir)
    assert "utt05" not in dataset.utt_ids and dataset.num_too_long == 2


def test_check_audio_raises_or_skips(tmp_path, bad_audio_dir):
    data, paths = bad_audio_dir
    write_audio(paths["good"].parent / "good2.wav", 3.0)
    with open(data / "wav.scp", "a") as f:
        f.write(f"good2 {paths['good'].parent}/good2.wav\n")
    dataset = AudioDataset(data, min_seconds=0.5)
    with pytest.raises(AudioError, match=r"6 utterance\(s\) with bad audio \(fix them, .*skip_bad=True.*\); first: utt corrupt: cannot decode"):
        check_audio(dataset)

    skipped = tmp_path / "skipped.txt"
    bad = check_audio(dataset, skip_bad=True, skipped_path=skipped)
    assert len(bad) == 6 and dataset.utt_ids == ["good", "good2"] and len(dataset.lengths) == 2
    lines = skipped.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["corrupt", "empty", "missing", "rate8k", "stereo", "zero_bytes"]
    assert lines[3].startswith(f"rate8k {paths['rate8k']} utt rate8k: ") and "8000 Hz" in lines[3]
    assert check_audio(dataset) == []


def test_check_audio_probes_utterances_listed_in_utt2num_samples(bad_audio_dir):
    data, _ = bad_audio_dir
    # A stale utt2num_samples that claims every file is fine.
    write_lines(data / "utt2num_samples", [f"{utt} 40000" for utt in load_data_dir(data).utt_ids])
    dataset = AudioDataset(data)
    assert len(dataset) == 7
    with pytest.raises(AudioError, match=r"6 utterance\(s\) with bad audio"):
        check_audio(dataset)


def make_items(lengths: list[int]) -> list[tuple[str, torch.Tensor]]:
    return [(f"u{i}", torch.arange(length, dtype=torch.float32)) for i, length in enumerate(lengths)]


def test_crop_collator_offsets_lengths_and_content():
    items = make_items([50000, 33333, 64000, 33400])
    batch = CropCollator(crop_multiple=320, seed=1).collate(items, epoch=0, batch_index=0)
    assert batch["utt_ids"] == ["u0", "u1", "u2", "u3"]
    assert batch["waveforms"].shape == (4, 33333) and batch["waveforms"].dtype == torch.float32
    assert batch["offsets"].dtype == torch.long and batch["offsets"][1] == 0
    for row, (_, waveform) in enumerate(items):
        offset = int(batch["offsets"][row])
        assert offset % 320 == 0 and offset + 33333 <= len(waveform)
        torch.testing.assert_close(batch["waveforms"][row], waveform[offset : offset + 33333])


def test_crop_collator_randomness_is_keyed_by_seed_epoch_and_batch():
    items = make_items([16000, 160000, 200000])
    collator = CropCollator(seed=7)
    offsets = {
        (epoch, index): tuple(collator.collate(items, epoch, index)["offsets"].tolist())
        for epoch in range(3)
        for index in range(3)
    }
    assert len(set(offsets.values())) == 9  # every (epoch, batch) crops differently
    assert tuple(CropCollator(seed=7).collate(items, 1, 2)["offsets"].tolist()) == offsets[(1, 2)]
    assert tuple(CropCollator(seed=8).collate(items, 1, 2)["offsets"].tolist()) != offsets[(1, 2)]


def test_crop_offsets_keep_strided_frames_aligned():
    """Frames of a crop equal frames of the full utterance shifted by offset // 320 (HuBERT's CNN stride)."""
    torch.manual_seed(0)
    kernel = torch.randn(1, 1, 400)
    items = [("a", torch.randn(48000)), ("b", torch.randn(96000))]
    batch = CropCollator(seed=0).collate(items, 0, 0)
    full = torch.nn.functional.conv1d(items[1][1].view(1, 1, -1), kernel, stride=320)[0, 0]
    cropped = torch.nn.functional.conv1d(batch["waveforms"][1].view(1, 1, -1), kernel, stride=320)[0, 0]
    first = int(batch["offsets"][1]) // 320
    assert first > 0
    torch.testing.assert_close(cropped, full[first : first + len(cropped)])


def test_dataloader_epoch_and_exact_resume(training_dir):
    dataset = AudioDataset(training_dir)
    check_audio(dataset)
    collator = CropCollator(seed=11)

    def new_sampler():
        return BucketBatchSampler(dataset.lengths, max_batch_seconds=12, num_buckets=2, seed=11)

    sampler = new_sampler()
    loader = make_dataloader(dataset, sampler, collator, num_workers=2)
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(sampler) >= 4
    assert sorted(utt for batch in batches for utt in batch["utt_ids"]) == dataset.utt_ids
    assert [batch["step"] for batch in batches] == list(range(len(batches)))
    assert all(batch["epoch"] == 1 for batch in batches)
    for batch in batches:
        waveforms = batch["waveforms"]
        assert waveforms.shape[0] == len(batch["utt_ids"])
        assert waveforms.shape[1] == min(dataset.lengths[dataset.utt_ids.index(u)] for u in batch["utt_ids"])
        assert waveforms.shape[0] * waveforms.shape[1] <= 12 * SR

    # Resume after 2 trained batches (workers drew more ahead; consumed= says what was used).
    state = sampler.state_dict(consumed=batches[1]["step"] + 1)
    resumed_sampler = new_sampler()
    resumed_sampler.load_state_dict(state)
    resumed_sampler.set_epoch(1)
    resumed = list(make_dataloader(dataset, resumed_sampler, CropCollator(seed=11), num_workers=0))
    assert len(resumed) == len(batches) - 2
    for original, again in zip(batches[2:], resumed):
        assert original["utt_ids"] == again["utt_ids"]
        assert torch.equal(original["offsets"], again["offsets"])
        assert torch.equal(original["waveforms"], again["waveforms"])

    sampler.set_epoch(2)
    next_epoch = list(loader)
    assert [b["utt_ids"] for b in next_epoch] != [b["utt_ids"] for b in batches]
