"""A compute budget: expected / deterministic MACs of gated models, the MACs budget of Step 1."""

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ALL_GATES, tiny_config
from dphubert.bin import distill_prune
from dphubert.bin import prune as prune_cli
from dphubert.distill import LagrangianRegularizer, LayerDistillTask, LayerProjections, gated_student, load_config
from dphubert.distill.sparsity import MACS_SECONDS
from dphubert.distill.tasks import loss_weights
from dphubert.models import Wav2Vec2Model, load_model, save_model
from dphubert.models.macs import count_macs
from test_distill import make_data_dir

VARIANTS = [("hubert", False), ("wavlm", False), ("hubert", True), ("wavlm", True)]


def _gated(model_type, large):
    model = Wav2Vec2Model(tiny_config(model_type, large, **ALL_GATES))
    for gate in model.gates().values():
        gate.log_alpha.data.normal_(1.0, 2.5)  # a mix of pruned, soft and kept units
    return model


@pytest.mark.parametrize("model_type,large", VARIANTS)
def test_deterministic_macs_equal_the_pruned_models_count(model_type, large):
    model = _gated(model_type, large)
    layers = model.encoder.transformer.layers
    layers[1].attention.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # a dropped attention block
    layers[2].feed_forward.hard_concrete_for_layer.log_alpha.data.fill_(-20)  # a dropped FFN block
    layers[0].feed_forward.hard_concrete_for_intermediate.log_alpha.data.fill_(-20)  # an FFN with no unit left
    for seconds in (10.0, 1.3):
        pruned = model.prune()
        assert model.deterministic_macs(seconds) == count_macs(pruned, seconds)["total"]
    assert model.deterministic_macs() < count_macs(model)["total"]  # count_macs: the gated model as it runs


@pytest.mark.parametrize("model_type,large", VARIANTS)
def test_expected_macs_is_differentiable_in_every_gate(model_type, large):
    model = _gated(model_type, large)
    expected = model.expected_macs(10.0)
    expected.backward()
    for name, gate in model.gates().items():
        grad = gate.log_alpha.grad
        assert grad is not None and torch.isfinite(grad).all() and (grad > 0).all(), name
    # Every gate fully open: the full model's count; fully closed: only the ungated parts and one conv channel.
    with torch.no_grad():
        for gate in model.gates().values():
            gate.log_alpha.fill_(30.0)
    assert float(model.expected_macs(10.0).detach()) == pytest.approx(count_macs(model, 10.0)["total"], rel=1e-6)
    assert model.deterministic_macs(10.0) == count_macs(model, 10.0)["total"]


def test_attention_macs_grow_with_frames_squared():
    """Heads cost more per head on long inputs: the expected count keeps the T^2 terms."""
    model = _gated("hubert", False)
    heads = [layer.attention.hard_concrete_for_heads for layer in model.encoder.transformer.layers]

    def head_grad(seconds):
        model.zero_grad()
        model.expected_macs(seconds).backward()
        return float(heads[0].log_alpha.grad.sum())

    frames = {s: count_macs(model, s)["frames"] for s in (1.0, 4.0)}
    ratio = head_grad(4.0) / head_grad(1.0)
    linear = frames[4.0] / frames[1.0]
    assert ratio > 1.05 * linear  # more than linear in the frames


# ----- Step 1 with a MACs budget ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("macs_budget")
    torch.manual_seed(0)
    save_model(Wav2Vec2Model(tiny_config("hubert")), root / "teacher.pt")
    short = make_data_dir(root / "short", [float(x) for x in np.random.default_rng(0).uniform(0.25, 0.3, 16)], seed=7)
    return {"root": root, "teacher": root / "teacher.pt", "short": short}


def _cli(module, argv):
    return module.main([str(a) for a in argv])


def test_regularizer_constrains_params_and_macs_each_with_its_target():
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    student = gated_student(teacher, ["conv", "head", "interm"])
    teacher_macs = count_macs(teacher, MACS_SECONDS)["total"]
    reg = LagrangianRegularizer(teacher.num_params(), 0.4, 10, budget="params+macs", teacher_macs=teacher_macs,
                                macs_target_sparsity=0.6)
    with torch.no_grad():
        reg.lambda1.fill_(0.3)
        reg.lambda2_macs.fill_(0.2)
    out = reg(student, step=5)
    s_params = 1 - float(student.expected_num_params().detach()) / teacher.num_params()
    s_macs = 1 - float(student.expected_macs(MACS_SECONDS).detach()) / teacher_macs
    assert float(out["expected_macs_sparsity"]) == pytest.approx(s_macs, rel=1e-5)
    assert float(out["target_sparsity"]) == pytest.approx(0.2)
    assert float(out["target_macs_sparsity"]) == pytest.approx(0.3)
    assert float(out["reg"].detach()) == pytest.approx(0.3 * (s_params - 0.2) + 0.2 * (s_macs - 0.3) ** 2, rel=1e-4)
    task = LayerDistillTask(student, LayerProjections([0, 3], [[0], [3]], 48, 48), loss_weights(
        load_config("distill_prune")), reg)
    groups = {g["name"]: g for g in task.param_groups(load_config("distill_prune"))}
    assert len(groups["lambda"]["params"]) == 4 and groups["lambda"]["maximize"]
    macs_only = LagrangianRegularizer(teacher.num_params(), 0.5, 10, budget="macs", teacher_macs=teacher_macs)
    out = macs_only(student, step=10)
    assert "target_sparsity" not in out and float(out["target_macs_sparsity"]) == pytest.approx(0.5)
    assert "expected_sparsity" in out  # the params sparsity is reported whatever the budget


def test_macs_budget_reaches_its_target_and_prunes_to_the_deterministic_count(work, tmp_path):
    """A tiny run with --budget macs: the expected MACs sparsity settles within 0.01 of the target after the
    warmup; the pruned model's counted MACs equal the gates' deterministic ones; summary.json has both sparsities."""
    target, exp = 0.3, tmp_path / "exp"
    status = _cli(distill_prune, ["--teacher", work["teacher"], "--data", work["short"], "--exp", exp,
                                  "--min-seconds", 0.2, "--max-seconds", 0.3, "--batch-seconds", 0.3,
                                  "--num-workers", 0, "--num-buckets", 1, "--max-steps", 500, "--warmup-steps", 10,
                                  "--lr", "1e-3", "--reg-lr", 0.05, "--budget", "macs", "--target-sparsity", target,
                                  "--sparsity-warmup-steps", 150, "--log-interval", 20, "--save-interval", 10000])
    assert status == 0
    history = torch.load(exp / "checkpoints" / "ckpt_step00000500.pt", weights_only=True)["history"]
    settled = [h for h in history if h["step"] >= 360]
    assert len(settled) == 8 and all(abs(h["expected_macs_sparsity"] - target) < 0.01 for h in settled)
    assert all(h["target_macs_sparsity"] == pytest.approx(target) for h in settled)
    assert "target_sparsity" not in history[-1] and 0 < history[-1]["expected_sparsity"] < target  # params: free
    teacher = load_model(work["teacher"])
    gated = load_model(exp / "last.pt")
    assert 1 - float(gated.expected_macs().detach()) / count_macs(teacher)["total"] == pytest.approx(target, abs=0.01)
    assert count_macs(gated.prune())["total"] == gated.deterministic_macs()
    tags = set(EventAccumulator(str(exp / "tensorboard")).Reload().Tags()["scalars"])
    assert {"train/expected_macs_sparsity", "train/target_macs_sparsity", "train/expected_sparsity",
            "train/expected_gmacs"} <= tags
    assert (exp / "training.png").stat().st_size > 10000

    assert prune_cli.main(["--ckpt", str(exp / "last.pt"), "--out", str(exp / "pruned.pt")]) == 0  # no --teacher
    summary = json.loads((exp / "summary.json").read_text())
    pruned = load_model(exp / "pruned.pt")
    assert summary["teacher_macs"] == count_macs(teacher)["total"]
    assert summary["macs_sparsity"] == pytest.approx(1 - count_macs(pruned)["total"] / summary["teacher_macs"])
    assert summary["sparsity"] == pytest.approx(1 - pruned.num_params() / teacher.num_params())


@pytest.mark.parametrize("options,message", [
    (["--budget", "flops"], "key 'budget' must be one of ['params', 'macs', 'params+macs'], got 'flops'"),
    (["--target-sparsity", 1.2], "key 'target_sparsity' must be in (0, 1)"),
    (["--budget", "macs", "--target-sparsity", 0], "key 'target_sparsity' must be in (0, 1)"),
    (["--budget", "macs", "--target-sparsity", 0.999], "target_sparsity 0.999 (budget macs) is above the maximum"),
    (["--budget", "params+macs", "--target-sparsity", 0.3, "--macs-target-sparsity", 0.9999],
     "macs_target_sparsity 0.9999 (budget params+macs) is above the maximum"),
    (["--budget", "params+macs"], "key 'macs_target_sparsity' is None with budget params+macs"),
    (["--macs-target-sparsity", 0.5], "key 'macs_target_sparsity' is 0.5 with budget params"),
])
def test_bad_budget_input_is_one_line(work, tmp_path, capsys, options, message):
    status = _cli(distill_prune, ["--teacher", work["teacher"], "--data", work["short"], "--exp", tmp_path / "e",
                                  "--min-seconds", 0.2, "--max-seconds", 0.3, "--batch-seconds", 0.3, *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "e" / "checkpoints").exists()
