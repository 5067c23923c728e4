"""95% intervals of SUPERB results from s3prl's per-utterance test files, and how RESULTS.md reports them.

The fixture files are written by s3prl's own task experts (their ``log_records``, the code that writes them
after ``run_downstream -m evaluate``), fed with records as their ``forward`` collects them.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from dphubert.superb import intervals, results
from dphubert.superb.tasks import TASKS


class _Logger:
    def add_scalar(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def s3prl_experts():
    from dphubert.superb import running

    running.setup()  # the torchaudio compatibility layer s3prl's imports need
    import s3prl.downstream.ctc.expert as ctc
    import s3prl.downstream.fluent_commands.expert as fluent
    import s3prl.downstream.speech_commands.expert as speech_commands
    import s3prl.downstream.voxceleb1.expert as voxceleb1

    return {"ks": speech_commands, "ic": fluent, "sid": voxceleb1, "pr": ctc}


def _log(module, expdir, records, **attributes):
    """s3prl's DownstreamExpert.log_records for the test split, on an expert holding only what it reads."""
    expert = SimpleNamespace(expdir=str(expdir), best_score=0.0, **attributes)
    module.DownstreamExpert.log_records(expert, "test", records, _Logger(), 100)


def test_wilson_matches_the_textbook_values():
    low, high = intervals.wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), abs=1e-6)
    low, high = intervals.wilson(500, 1000)  # p = 0.5, n = 1000: +-3.1 points
    assert (low, high) == pytest.approx((0.46907, 0.53093), abs=1e-4)


def test_ks_and_sid_intervals_from_s3prl_files(s3prl_experts, tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.integers(0, 12, n)
    predict = np.where(rng.random(n) < 0.6, truth, (truth + 1) % 12)
    classes = s3prl_experts["ks"].CLASSES
    records = {"loss": [0.5], "acc": [float(p == t) for p, t in zip(predict, truth)],
               "filename": [f"word{t}/spk{i:04d}_nohash_0.wav" for i, t in enumerate(truth)],
               "predict": [classes[p] for p in predict], "truth": [classes[t] for t in truth]}
    _log(s3prl_experts["ks"], tmp_path, records)
    printed = float(capsys.readouterr().out.split("test acc: ")[1].split()[0])
    found = intervals.interval("ks", tmp_path)
    right = int((predict == truth).sum())
    assert found["n_test"] == n and found["rate_from_files"] == pytest.approx(100 * printed)
    assert found["ci95"] == pytest.approx([100 * x for x in intervals.wilson(right, n)])
    assert found["ci95"][0] < 100 * printed < found["ci95"][1]

    sid = tmp_path / "sid"
    sid.mkdir()
    speakers = [f"id1{k:04d}" for k in range(30)]
    sid_truth = rng.integers(0, 30, 90)
    sid_pred = np.where(rng.random(90) < 0.3, sid_truth, (sid_truth + 7) % 30)
    _log(s3prl_experts["sid"], sid, {"acc": [float(p == t) for p, t in zip(sid_pred, sid_truth)], "loss": [1.0],
                                      "filename": [f"{speakers[t]}/vid/{i:05d}.wav" for i, t in enumerate(sid_truth)],
                                      "predict_speaker": [speakers[p] for p in sid_pred],
                                      "truth_speaker": [speakers[t] for t in sid_truth]})
    found = intervals.interval("sid", sid)
    assert found["n_test"] == 90 and found["rate_from_files"] == pytest.approx(100 * np.mean(sid_pred == sid_truth))


def test_ic_counts_an_utterance_right_only_with_all_three_slots(s3prl_experts, tmp_path):
    truth = [("activate", "lights", "kitchen"), ("increase", "volume", "none"), ("bring", "shoes", "none")] * 20
    predict = [t if i % 3 else (t[0], t[1], "washroom") for i, t in enumerate(truth)]  # a third: one slot wrong
    _log(s3prl_experts["ic"], tmp_path, {"acc": [float(p == t) for p, t in zip(predict, truth)], "intent_loss": [0.1],
                                         "filename": [f"wavs/speakers/s{i}/{i}.wav" for i in range(60)],
                                         "predict": predict, "truth": truth})
    found = intervals.interval("ic", tmp_path)
    assert found["n_test"] == 60 and found["rate_from_files"] == pytest.approx(100 * 40 / 60)


def test_pr_bootstrap_reproduces_s3prls_per_and_brackets_it(s3prl_experts, tmp_path, capsys):
    rng = np.random.default_rng(1)
    phones = "AA AE AH B D EH F G IY K L M N P R S T UW V Z".split()
    hyps, refs = [], []
    for i in range(120):
        ref = list(rng.choice(phones, rng.integers(8, 30)))
        hyp = [p for p in ref if rng.random() > 0.3] + list(rng.choice(phones, rng.integers(0, 3)))
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp) if i != 5 else "")  # an empty hypothesis, as CTC gives early in training
    _log(s3prl_experts["pr"], tmp_path, {"loss": [2.0], "hypothesis": hyps, "groundtruth": refs,
                                         "filename": [f"103-1240-{i:04d}" for i in range(120)]},
         metrics=["per"], metric_higher_better=False, save_best_on=["dev"], corpus={"name": "libriphone"},
         _get_task_name=lambda: "ctc-libriphone")
    printed = float(capsys.readouterr().out.split("test per: ")[1].split()[0])
    found = intervals.interval("pr", tmp_path)
    assert found["n_test"] == 120
    assert found["rate_from_files"] == pytest.approx(100 * printed)  # s3prl's own PER from the ark files
    low, high = found["ci95"]
    assert low < 100 * printed < high and 2 < high - low < 20
    assert intervals.interval("pr", tmp_path) == found  # the bootstrap is seeded
    # the same utterances four times over: the interval shrinks by about half
    errors, lengths = intervals.utterance_errors(tmp_path, "test-hyp.ark", "test-ref.ark")
    low4, high4 = intervals.bootstrap_rate(errors * 4, lengths * 4)
    assert 0.35 < (high4 - low4) / ((high - low) / 100) < 0.65


def test_paired_difference_of_two_runs_on_the_same_utterances(s3prl_experts, tmp_path):
    """Two KS runs written by s3prl's own expert (its log_records), 1000 clips, the second flipping 40 right ones
    to wrong and 10 wrong ones to right: -3 points, beyond the paired interval though inside each run's Wilson
    interval (+-2.8); identical runs give exactly 0."""
    rng = np.random.default_rng(1)
    n, classes = 1000, s3prl_experts["ks"].CLASSES
    truth = rng.integers(0, 12, n)
    first = np.where(rng.random(n) < 0.7, truth, (truth + 1) % 12)
    right, wrong = np.flatnonzero(first == truth), np.flatnonzero(first != truth)
    second = first.copy()
    second[right[:40]] = (truth[right[:40]] + 2) % 12
    second[wrong[:10]] = truth[wrong[:10]]
    for name, predict in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        _log(s3prl_experts["ks"], tmp_path / name, {
            "loss": [0.5], "acc": [float(p == t) for p, t in zip(predict, truth)],
            "filename": [f"word{t}/spk{i:04d}_nohash_0.wav" for i, t in enumerate(truth)],
            "predict": [classes[p] for p in predict], "truth": [classes[t] for t in truth]})
    a, b = (intervals.correct_per_utterance(tmp_path / name, "ks") for name in "ab")
    assert len(a) == n and sum(a.values()) == len(right) and sum(b.values()) == len(right) - 30
    diff, (low, high) = intervals.paired_difference(a, b)
    assert diff == pytest.approx(-3.0)
    assert low < -3.0 < high < 0.0
    wilson_low, wilson_high = intervals.wilson(len(right), n)
    assert high - low < 0.6 * 100 * (wilson_high - wilson_low)
    assert intervals.paired_difference(a, a) == (0.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="same"):
        intervals.paired_difference(a, dict(list(b.items())[:10]))
    assert intervals.correct_per_utterance(tmp_path / "missing", "ks") is None
    assert intervals.correct_per_utterance(tmp_path / "a", "pr") is None


def test_tasks_without_files_have_no_interval(tmp_path):
    assert intervals.interval("ks", tmp_path) is None and intervals.interval("asv", tmp_path) is None


def _data(fbank_ks, teacher_ks):
    def acc(value, n=1000):
        right = round(value * n / 100)
        return {"Acc": 100 * right / n, "n_test": n, "ci95": [100 * x for x in intervals.wilson(right, n)]}

    return {"settings": {"mode": "quick"},
            "models": {"fbank": {"params": 0, "macs": 3.1e7, "macs_seconds": 10.0},
                       "teacher": {"params": 3.6e6, "macs": 2e9, "macs_seconds": 10.0},
                       "dphubert": {"params": 0.76e6, "macs": 5e8, "macs_seconds": 10.0},
                       "distilhubert": {"params": 0.76e6, "macs": 5e8, "macs_seconds": 10.0}},
            "tasks": {"ks": {}, "pr": {}},
            "results": {"fbank": {"ks": acc(fbank_ks), "pr": {"PER": 57.9, "n_test": 250, "ci95": [56.2, 59.6]}},
                        "teacher": {"ks": acc(teacher_ks), "pr": {"PER": 48.6, "n_test": 250, "ci95": [47.1, 50.1]}},
                        "dphubert": {"ks": acc(55.1), "pr": {"PER": 47.0, "n_test": 250, "ci95": [45.3, 48.7]}},
                        "distilhubert": {"ks": acc(46.5), "pr": {"PER": 48.4, "n_test": 250, "ci95": [46.8, 50.0]}}},
            "failures": {}}


def test_report_prints_intervals_beyond_pairs_ties_and_the_fbank_margin():
    data = _data(fbank_ks=7.3, teacher_ks=52.0)
    text = results.markdown(data)
    assert "| model | params (M) | GMACs (10 s) | KS Acc% ↑ (n=1000) | PR PER% ↓ (n=250) |" in text
    half = intervals.half_width(52.0, data["results"]["teacher"]["ks"]["ci95"])
    assert f"| teacher | 3.60 | 2.00 | 52.00 +- {half:.1f} | 48.60 +- 1.5 |" in text
    assert "| fbank | 0.00 | 0.03 |" in text and "| dphubert | 0.76 | 0.50 | **55.10** +- " in text
    assert "teacher's margin over FBANK: +44.7 points (beyond the intervals" in text
    assert "teacher's margin over FBANK: +9.3 points (beyond the intervals" in text  # PR, lower is better
    assert "dphubert = teacher" in text and "dphubert > distilhubert" in text  # KS: 55.1 vs 52.0 overlap
    assert "dphubert = distilhubert, dphubert = teacher, distilhubert = teacher" in text  # PR: all overlap
    assert "dphubert vs distilhubert: better on 1 of 2 tasks (KS); worse on none; tied on PR" in text
    assert "dphubert vs teacher: better on 0 of 2 tasks; worse on none; tied on KS, PR" in text

    close = results.markdown(_data(fbank_ks=48.0, teacher_ks=52.0))
    assert "teacher's margin over FBANK: +4.0 points (within the intervals: a tie" in close
    worse = results.markdown(_data(fbank_ks=60.0, teacher_ks=52.0))
    assert "teacher's margin over FBANK: -8.0 points (beyond the intervals, the teacher is WORSE" in worse


def test_bar_chart_draws_whiskers(tmp_path):
    assert results.bar_chart(_data(7.3, 52.0), tmp_path / "r.png").stat().st_size > 1000


def test_every_interval_task_is_a_known_task():
    for name in ("ks", "ic", "sid", "er", "pr", "asr"):
        assert name in TASKS
