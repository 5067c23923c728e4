"""Models trained with several seeds: the per-family summary and the comparison over seeds and test utterances.

The per-utterance files are written by s3prl's own KS and PR experts (their ``log_records``), as in
test_superb_intervals.py; the expected numbers are computed here from the formulas of the docs, independently.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import t as student_t

from dphubert.superb import results, seeds
from dphubert.superb.tasks import TASKS


class _Logger:
    def add_scalar(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def experts():
    from dphubert.superb import running

    running.setup()
    import s3prl.downstream.ctc.expert as ctc
    import s3prl.downstream.speech_commands.expert as speech_commands

    return {"ks": speech_commands, "pr": ctc}


def write_ks(module, expdir, truth, right, capsys) -> float:
    """s3prl's speech_commands expert writes test_predict.txt / test_truth.txt; returns the accuracy it prints."""
    classes = module.CLASSES
    predict = np.where(right, truth, (truth + 1) % len(classes))
    records = {"loss": [0.5], "acc": [float(r) for r in right],
               "filename": [f"word{t}/spk{i:04d}_nohash_0.wav" for i, t in enumerate(truth)],
               "predict": [classes[p] for p in predict], "truth": [classes[t] for t in truth]}
    expdir.mkdir(parents=True, exist_ok=True)
    module.DownstreamExpert.log_records(SimpleNamespace(expdir=str(expdir), best_score=0.0), "test", records,
                                        _Logger(), 100)
    return 100 * float(capsys.readouterr().out.split("test acc: ")[1].split()[0])


def correct(rng, n, p):
    return rng.random(n) < p


def test_comparison_matches_the_formula():
    """D = mean_A - mean_B; variance = seeds' s^2/n per side + the test set's (paired, over utterances);
    the interval uses Student's t with Welch-Satterthwaite's degrees of freedom of the seed term."""
    rng = np.random.default_rng(0)
    n = 1000
    base = rng.random(n)
    a = [base < p for p in (0.60, 0.63, 0.61)]  # correlated across models: the same hard utterances
    b = [base < p for p in (0.55, 0.52, 0.56)]
    as_scores = [{f"u{i}": (float(x[i]), 1.0) for i in range(n)} for x in a]
    bs_scores = [{f"u{i}": (float(x[i]), 1.0) for i in range(n)} for x in b]
    got = seeds.compare(as_scores, bs_scores, higher_better=True)

    acc_a, acc_b = [100 * x.mean() for x in a], [100 * x.mean() for x in b]
    difference = np.mean(acc_a) - np.mean(acc_b)
    va, vb = np.var(acc_a, ddof=1) / 3, np.var(acc_b, ddof=1) / 3
    per_item = 100 * (np.mean(a, axis=0) - np.mean(b, axis=0))
    test_variance = np.var(per_item, ddof=1) / n  # the bootstrap estimates this
    df = (va + vb + test_variance) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = student_t.ppf(0.975, df) * np.sqrt(va + vb + test_variance)
    assert got["difference"] == pytest.approx(difference)
    assert got["seed_variance"] == pytest.approx(va + vb)
    assert got["test_variance"] == pytest.approx(test_variance, rel=0.15)
    assert got["ci95"] == pytest.approx([difference - half, difference + half], rel=0.05)
    assert got["verdict"] == "better" and got["n_test"] == n and got["seeds_measured"]


def test_seed_spread_turns_a_test_set_difference_into_a_tie():
    """The same mean difference, significant on the test set alone, is a tie when the seeds disagree."""
    rng = np.random.default_rng(1)
    n = 1000
    base = rng.random(n)

    def scores(ps):
        return [{f"u{i}": (float(base[i] < p), 1.0) for i in range(n)} for p in ps]

    steady = seeds.compare(scores([0.62, 0.63, 0.61]), scores([0.58, 0.57, 0.59]), True)
    spread = seeds.compare(scores([0.72, 0.52, 0.62]), scores([0.48, 0.68, 0.58]), True)
    assert steady["verdict"] == "better" and spread["verdict"] == "tie"
    assert steady["difference"] == pytest.approx(spread["difference"], abs=0.3)
    one_seed = seeds.compare(scores([0.62]), scores([0.58]), True)
    assert not one_seed["seeds_measured"] and one_seed["seed_variance"] is None
    # lower is better (an error rate): fewer errors is "better"
    errors = seeds.compare(scores([0.38, 0.37, 0.39]), scores([0.42, 0.43, 0.41]), higher_better=False)
    assert errors["difference"] < 0 and errors["verdict"] == "better"


def test_stage5_summary_and_report_from_s3prl_files(experts, tmp_path, capsys):
    rng = np.random.default_rng(2)
    n = 300
    truth = rng.integers(0, 12, n)
    base = rng.random(n)
    accuracy = {"dphubert_seed1": 0.70, "dphubert_seed2": 0.72, "dphubert_seed3": 0.69,
                "distilhubert_seed1": 0.50, "distilhubert_seed2": 0.53, "distilhubert_seed3": 0.51,
                "teacher": 0.8}
    res = {}
    for model, p in accuracy.items():
        res[model] = {"ks": {"Acc": write_ks(experts["ks"], tmp_path / model / "ks", truth, base < p, capsys)}}
    summary = seeds.summarize(res, ["ks"], lambda model, task: tmp_path / model / task)
    family = summary["families"]["dphubert"]["ks"]
    values = [res[f"dphubert_seed{s}"]["ks"]["Acc"] for s in (1, 2, 3)]
    assert family["mean"] == pytest.approx(np.mean(values)) and family["std"] == pytest.approx(np.std(values, ddof=1))
    assert family["seeds"] == [1, 2, 3] and family["n_seeds"] == 3
    assert "teacher" not in summary["families"]
    comparison = summary["comparisons"]["dphubert vs distilhubert"]["ks"]
    assert comparison["verdict"] == "better" and comparison["n_test"] == n

    data = {"settings": {"mode": "quick"}, "tasks": {"ks": {}}, "results": res, "seeds": summary,
            "models": {m: {"params": 1000, "macs": 1e9, "macs_seconds": 10.0} for m in res}}
    text = results.markdown(data)
    assert "## Over training seeds" in text and "| dphubert | 3 |" in text
    assert f"- KS: {comparison['difference']:+.2f}" in text and "**better**" in text

    # Files of another run (their accuracy is not the reported one) are not compared.
    res["distilhubert_seed2"]["ks"]["Acc"] += 5.0
    assert "dphubert vs distilhubert" not in seeds.summarize(res, ["ks"], lambda m, t: tmp_path / m / t)["comparisons"]


def test_families_and_baselines_by_name():
    names = ["teacher", "fbank", "dphubert_seed2", "dphubert_seed1", "demo_params0.75_seed1",
             "demo_params0.75_distilhubert_seed1", "dphubert"]
    assert seeds.families(names) == {"dphubert": [(1, "dphubert_seed1"), (2, "dphubert_seed2")],
                                     "demo_params0.75": [(1, "demo_params0.75_seed1")],
                                     "demo_params0.75_distilhubert": [(1, "demo_params0.75_distilhubert_seed1")]}
    assert seeds.baseline_of("dphubert") == "distilhubert"
    assert seeds.baseline_of("demo_params0.75") == "demo_params0.75_distilhubert"
    assert TASKS["pr"].metric.higher_better is False
