"""The pruned model meets its size target whatever Step 1 reached (dphubert.models.selection, bin/prune)."""

import json

import pytest
import soundfile
import torch

from conftest import ALL_GATES, espeak_speech, tiny_config
from dphubert.bin import distill_prune, prune
from dphubert.distill.cli import run_cli
from dphubert.models import Wav2Vec2Model, load_model, save_model
from dphubert.models.macs import count_macs
from dphubert.models.selection import SelectionError, apply_selection, paper_counts, select_units, sizes_of

# The real CNN's 320x downsampling (50 frames per second), so that 10 s of MACs are spread like a real model's.
CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2
UNITS = {"conv": "extractor_prune_conv_channels", "head": "encoder_prune_attention_heads",
         "attlayer": "encoder_prune_attention_layer", "interm": "encoder_prune_feed_forward_intermediate",
         "ffnlayer": "encoder_prune_feed_forward_layer"}
SENTENCES = ["the quick brown fox jumps over the lazy dog", "seven silver swans swam south",
             "a cup of tea before the train leaves", "turn the lights off in the kitchen",
             "please call stella and ask her to bring these things", "she sells sea shells by the shore"]


def teacher_config(**gates):
    return tiny_config(extractor_conv_layer_config=CONV, encoder_ff_interm_features=192, **gates)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny teacher file and a data dir of real (espeak-ng) speech."""
    root = tmp_path_factory.mktemp("selection")
    torch.manual_seed(0)
    save_model(Wav2Vec2Model(teacher_config()), root / "teacher.pt")
    (root / "audio").mkdir()
    lines = []
    for i, text in enumerate(SENTENCES * 2):
        path = root / "audio" / f"utt{i:02d}.wav"
        soundfile.write(path, espeak_speech(text, voice="en-us" if i < 6 else "en-gb"), 16000, subtype="PCM_16")
        lines.append(f"utt{i:02d} {path}\n")
    (root / "data").mkdir()
    (root / "data" / "wav.scp").write_text("".join(lines))
    return root


def step1(work, exp, units, budget, target, steps=50, reg_lr=0.6):
    """A short Step 1 whose fast Lagrangian (reg_lr 0.6, a 5-step ramp) overshoots its target in expectation."""
    args = ["--teacher", work / "teacher.pt", "--data", work / "data", "--exp", exp, "--min-seconds", "0.5",
            "--max-seconds", "6.0", "--batch-seconds", "6.0", "--num-workers", "0", "--num-buckets", "2",
            "--max-steps", steps, "--warmup-steps", 2, "--log-interval", 10, "--sparsity-warmup-steps", 5,
            "--reg-lr", reg_lr, "--budget", budget, "--target-sparsity", target, "--prune-units", f"[{', '.join(units)}]"]
    assert run_cli(distill_prune.main, [str(a) for a in args], "distill_prune") == 0
    return load_model(exp / "last.pt").eval()


def sparsities(model, teacher):
    return (1 - model.num_params() / teacher.num_params(),
            1 - count_macs(model)["total"] / count_macs(teacher)["total"])


@pytest.mark.parametrize("budget,units", [
    ("params", ["conv", "head", "interm"]), ("macs", ["conv", "head", "interm"]),
    ("params", ["head", "attlayer", "interm", "ffnlayer"]), ("macs", ["conv", "head", "attlayer", "interm", "ffnlayer"]),
])
def test_pruned_model_lands_on_the_target_after_an_overshooting_step1(work, tmp_path, budget, units):
    target = 0.4
    gated = step1(work, tmp_path / "exp", units, budget, target)
    teacher = load_model(work / "teacher.pt")
    quantity = 0 if budget == "params" else 1
    expected = 1 - float(gated.expected_num_params().detach()) / teacher.num_params() if budget == "params" else \
        1 - float(gated.expected_macs().detach()) / count_macs(teacher)["total"]
    paper = sparsities(gated.prune(), teacher)[quantity]  # the paper's rule: what Step 1 reached
    assert expected > target + 0.02 and paper > target + 0.02, (expected, paper)  # it did overshoot

    assert prune.main(["--ckpt", str(tmp_path / "exp" / "last.pt"), "--out", str(tmp_path / "pruned.pt"),
                       "--teacher", str(work / "teacher.pt")]) == 0
    pruned = load_model(tmp_path / "pruned.pt")
    reached = sparsities(pruned, teacher)[quantity]
    assert target <= reached <= target + 0.005, reached
    summary = json.loads((tmp_path / "summary.json").read_text())["selection"]
    assert summary["rule"] == "budget" and summary["targets"] == {budget: target}
    assert summary["kept"][f"{budget}_sparsity"] == pytest.approx(reached)
    assert summary["paper_rule"][f"{budget}_sparsity"] == pytest.approx(paper)
    assert summary["changed_units"]["added"] > 0

    # The pruned file is the gated model with the selection's masks: exact where no LayerNorm follows a pruned
    # CNN layer (docs/method.md), and counted exactly either way.
    apply_selection(gated, summary["kept_units"])
    assert pruned.num_params() == gated.deterministic_num_params()
    assert count_macs(pruned)["total"] == gated.deterministic_macs()
    if "conv" not in units:
        wave = torch.from_numpy(espeak_speech("one two three")).unsqueeze(0)
        with torch.no_grad():
            for a, b in zip(gated.extract_features(wave)[0], pruned.extract_features(wave)[0]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_paper_selection_keeps_the_papers_rounding(work, tmp_path):
    gated = step1(work, tmp_path / "exp", ["conv", "head", "interm"], "params", 0.5, steps=12)
    reference = gated.prune().state_dict()
    assert prune.main(["--ckpt", str(tmp_path / "exp" / "last.pt"), "--out", str(tmp_path / "pruned.pt"),
                       "--selection", "paper"]) == 0
    pruned = load_model(tmp_path / "pruned.pt")
    assert all(torch.equal(value, reference[key]) for key, value in pruned.state_dict().items())
    summary = json.loads((tmp_path / "summary.json").read_text())["selection"]
    assert summary["rule"] == "paper" and summary["kept_units"] == summary["paper_rule"]["kept_units"]


def random_gated(model_type="hubert", std=3.0):
    torch.manual_seed(0)
    model = Wav2Vec2Model(tiny_config(model_type, extractor_conv_layer_config=CONV, encoder_ff_interm_features=192,
                                      **ALL_GATES)).eval()
    with torch.no_grad():
        for gate in model.gates().values():
            gate.log_alpha.normal_(0.0, std)
    return model


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
@pytest.mark.parametrize("targets", [{"params": 0.3}, {"params": 0.7}, {"macs": 0.4}, {"macs": 0.7},
                                     {"params": 0.7, "macs": 0.7}, {"params": 0.5, "macs": 0.5}])
def test_selection_meets_each_budget_and_keeps_each_gates_likeliest_units(model_type, targets):
    """From gates far from any target (random log_alpha), in both directions: over and under the paper's size."""
    model = random_gated(model_type)
    teacher = {"params": model.num_params(), "macs": count_macs(model)["total"]}
    selection = select_units(model, "budget", targets, teacher)
    for quantity, target in targets.items():
        reached = 1 - selection.sizes[quantity] / teacher[quantity]
        assert target <= reached <= target + 0.005, (quantity, reached)
    apply_selection(model, selection.kept)
    pruned = model.prune()
    assert pruned.num_params() == selection.sizes["params"] and count_macs(pruned)["total"] == selection.sizes["macs"]
    for name, gate in model.gates().items():  # the kept units are the gate's largest log_alpha
        mask = gate.deterministic_mask()
        kept, dropped = gate.log_alpha[mask > 0], gate.log_alpha[mask == 0]
        assert int((mask > 0).sum()) == selection.kept[name]
        assert not len(kept) or not len(dropped) or kept.min() >= dropped.max()


def test_selection_starts_from_the_paper_rule_and_changes_nothing_it_need_not():
    model = random_gated()
    teacher = {"params": model.num_params(), "macs": count_macs(model)["total"]}
    paper = paper_counts(model)
    reached = 1 - sizes_of(model, paper)["params"] / teacher["params"]
    # A target just below what the paper's rule reaches: only units are added, none removed.
    selection = select_units(model, "budget", {"params": reached - 0.02}, teacher)
    assert selection.changed_units()["removed"] == 0 and selection.changed_units()["added"] > 0
    assert all(selection.kept[g] >= paper[g] for g in paper)


def test_unreachable_target_names_the_smallest_size(work, tmp_path):
    model = random_gated()
    teacher = {"params": model.num_params(), "macs": count_macs(model)["total"]}
    with pytest.raises(SelectionError, match=r"sparsity at most 0\.\d{4}"):
        select_units(model, "budget", {"params": 0.999}, teacher)
    step1(work, tmp_path / "exp", ["head", "interm"], "params", 0.3, steps=4)
    out = tmp_path / "pruned.pt"
    code = prune.main(["--ckpt", str(tmp_path / "exp" / "last.pt"), "--out", str(out), "--target-sparsity", "0.95"])
    assert code == 1 and not out.exists()


def test_prune_cli_target_options(work, tmp_path, capsys):
    step1(work, tmp_path / "exp", ["head", "interm"], "params", 0.3, steps=4)
    last = str(tmp_path / "exp" / "last.pt")
    assert prune.main(["--ckpt", last, "--out", str(tmp_path / "a.pt"), "--target-sparsity", "0.4"]) == 0
    teacher = load_model(work / "teacher.pt")
    assert 0.4 <= sparsities(load_model(tmp_path / "a.pt"), teacher)[0] <= 0.405
    capsys.readouterr()
    assert prune.main(["--ckpt", last, "--out", str(tmp_path / "b.pt"), "--macs-target-sparsity", "0.4"]) == 1
    assert "--macs-target-sparsity is for --budget params+macs" in capsys.readouterr().err
    assert prune.main(["--ckpt", last, "--out", str(tmp_path / "c.pt"), "--budget", "params+macs",
                       "--target-sparsity", "0.4"]) == 1
    assert "pass --macs-target-sparsity" in capsys.readouterr().err
    assert prune.main(["--ckpt", last, "--out", str(tmp_path / "d.pt"), "--target-sparsity", "1.5"]) == 1
    assert "must be in (0, 1)" in capsys.readouterr().err
