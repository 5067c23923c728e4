"""Tests of dphubert.distill and its CLIs (distill_prune, final_distill, distilhubert, dump_teacher).

Everything runs on real files: a tiny teacher written with save_model, generated audio written as PCM wav files in
Kaldi data dirs, kaldiio dumps, and the CLIs run in-process (``main(argv)``) or as subprocesses (the kill/resume
and torchrun DDP tests, and the end-to-end chain).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import yaml

from conftest import tiny_config
from dphubert.bin import distilhubert, distill_prune, final_distill
from dphubert.data import AudioDataset, CropCollator
from dphubert.distill import (DistillConfigError, LagrangianRegularizer, LayerDistillTask, LayerProjections,
                              TeacherFeatureReader, default_distill_layers, distill_loss, dump_teacher_features,
                              gated_student, layer_loss, load_config, min_num_params, plan_distilhubert)
from dphubert.distill.errors import DistillError, TeacherMismatchError
from dphubert.distill.students import distilhubert_student
from dphubert.distill.tasks import loss_weights
from dphubert.distill.teacher import DumpedTeacher, OnlineTeacher, frame_stride
from dphubert.models import Wav2Vec2Model, base_config, load_model, save_model

SR = 16000
ROOT = Path(__file__).resolve().parents[1]
# Small batches of short audio: a tiny-model step takes a few tens of milliseconds.
FAST = ["--min-seconds", "0.2", "--max-seconds", "1.0", "--batch-seconds", "1.6", "--num-workers", "0",
        "--num-buckets", "2", "--warmup-steps", "2", "--log-interval", "5"]


# ----- fixtures ------------------------------------------------------------------------------------------------
def write_wav(path: Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
    soundfile.write(path, x.astype(np.float32), SR, subtype="PCM_16")


def make_data_dir(root: Path, seconds: list, seed: int = 0) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sec in enumerate(seconds):
        utt = f"utt{i:02d}"
        write_wav(audio / f"{utt}.wav", sec, seed * 1000 + i)
        lines.append(f"{utt} {audio / f'{utt}.wav'}\n")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "wav.scp").write_text("".join(lines))
    return data


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny HuBERT teacher file; data dirs of varied lengths, of equal lengths (no cropping) and of short clips."""
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    save_model(teacher, root / "teacher.pt")
    rng = np.random.default_rng(0)
    varied = make_data_dir(root / "varied", [float(x) for x in rng.uniform(0.5, 1.0, 12)], seed=1)
    equal = make_data_dir(root / "equal", [0.75] * 12, seed=2)
    short = make_data_dir(root / "short", [float(x) for x in np.random.default_rng(0).uniform(0.25, 0.3, 16)], seed=7)
    return {"root": root, "teacher": root / "teacher.pt", "varied": varied, "equal": equal, "short": short}


def run_cli(module, argv):
    """Run a CLI's main in-process; returns its exit status."""
    return module.main([str(a) for a in argv])


def model_tensors(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["state_dict"].items()}
    out.update({f"proj.{k}": v for k, v in (ckpt.get("distill_linear_projs") or {}).items()})
    out.update({f"head.{k}": v for k, v in (ckpt.get("distill_heads") or {}).items()})
    return out


def write_pruned_student(teacher_path: Path, out: Path, layers=(0, 1, 2, 3)) -> Path:
    """A Step-1 output as bin.prune writes it: the pruned model with its projections and distill metadata."""
    teacher = load_model(teacher_path)
    student = gated_student(teacher, ["conv", "head", "interm"])
    task = LayerDistillTask(student, LayerProjections(list(layers), [[0], list(layers[1:])], 48, 48),
                            loss_weights(load_config("final_distill")))
    extra = {k: v for k, v in task.model_file().items() if k in ("distill_linear_projs", "distill")}
    save_model(student.prune(), out, extra)
    return out


# ----- losses, projections, regulariser --------------------------------------------------------------------------
def test_layer_loss_values():
    x = torch.randn(2, 7, 5)
    loss, terms = layer_loss(x, x.clone())
    assert float(terms["l1"]) == 0.0 and float(terms["cos"]) == pytest.approx(1.0, abs=1e-6)
    assert float(loss) == pytest.approx(-1.0, abs=1e-6)
    loss, _ = layer_loss(x, x.clone(), cos_type="log_sig")
    assert float(loss) == pytest.approx(-float(torch.nn.functional.logsigmoid(torch.tensor(1.0))), abs=1e-6)
    y = torch.randn(2, 7, 5)
    expected = (x - y).abs().mean() - torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()
    assert float(layer_loss(x, y)[0]) == pytest.approx(float(expected), rel=1e-6)
    # Layers are averaged with equal weights.
    total, terms = distill_loss([x, y], [y, y], [0, 4])
    assert float(total) == pytest.approx((float(layer_loss(x, y)[0]) + float(layer_loss(y, y)[0])) / 2, rel=1e-6)
    assert set(terms) >= {"l1", "cos", "layer0", "layer4"}


def test_default_layers_scale_with_depth():
    assert default_distill_layers(12) == [0, 4, 8, 12]
    assert default_distill_layers(24) == [0, 8, 16, 24]
    assert default_distill_layers(3) == [0, 1, 2, 3]


def test_projections_identity_and_model_file_round_trip():
    proj = LayerProjections([0, 4, 8, 12], [[0], [4, 8, 12]], 6, 6)
    states = [torch.randn(2, 3, 6) for _ in range(13)]
    for out, layer in zip(proj(states), [0, 4, 8, 12]):
        assert torch.equal(out, states[layer])  # identity init, zero bias
    with torch.no_grad():
        proj.projs[1].weight.add_(0.5)
    state = proj.per_layer_state_dict()  # the released files' layout: one entry per layer, shared ones repeated
    assert sorted(state) == sorted(f"{k}.{p}" for k in range(4) for p in ("weight", "bias"))
    assert torch.equal(state["1.weight"], state["3.weight"]) and not torch.equal(state["0.weight"], state["1.weight"])
    rebuilt = LayerProjections.from_per_layer_state(state, num_layers=12)  # groups inferred from equal weights
    assert rebuilt.groups == [[0], [4, 8, 12]]
    for a, b in zip(rebuilt(states), proj(states)):
        assert torch.equal(a, b)


def test_regularizer_formula_and_ascent_group(work):
    teacher = load_model(work["teacher"])
    student = gated_student(teacher, ["conv", "head", "interm"])
    reg = LagrangianRegularizer(teacher.num_params(), 0.5, warmup_steps=10)
    with torch.no_grad():
        reg.lambda1.fill_(0.3)
        reg.lambda2.fill_(0.2)
    out = reg(student, step=4)
    s_hat = 1 - float(student.expected_num_params().detach()) / teacher.num_params()
    t = 0.5 * 4 / 10
    assert float(out["target_sparsity"]) == pytest.approx(t)
    assert float(out["reg"].detach()) == pytest.approx(0.3 * (s_hat - t) + 0.2 * (s_hat - t) ** 2, rel=1e-5)
    task = LayerDistillTask(student, LayerProjections([0, 3], [[0], [3]], 48, 48), loss_weights(
        load_config("distill_prune")), reg)
    groups = {g["name"]: g for g in task.param_groups(load_config("distill_prune"))}
    assert groups["lambda"]["maximize"] and groups["lambda"]["lr"] == 0.02 and groups["log_alpha"]["lr"] == 0.02
    assert groups["main"]["lr"] == 2e-4 and groups["log_alpha"]["weight_decay"] == 0.0


def test_min_num_params_is_the_smallest_prunable_model(work):
    """With every gated unit off (one conv channel kept per layer), pruning gives exactly min_num_params."""
    teacher = load_model(work["teacher"])
    for units in (["conv", "head", "interm"], ["conv", "head", "attlayer", "interm", "ffnlayer"]):
        student = gated_student(teacher, units)
        with torch.no_grad():
            for name, gate in student.gates().items():
                gate.log_alpha.fill_(-30.0)
                if "feature_extractor" in name:
                    gate.log_alpha[0] = 30.0
        assert student.prune().num_params() == min_num_params(student)


# ----- config ----------------------------------------------------------------------------------------------------
def test_unknown_yaml_key_is_one_clear_error(work, tmp_path, capsys):
    conf = tmp_path / "bad.yaml"
    conf.write_text("lr: 1.0e-4\ntarget_sparsty: 0.5\n")
    with pytest.raises(DistillConfigError, match=r"bad\.yaml: unknown key 'target_sparsty'"):
        load_config("distill_prune", conf)
    status = run_cli(distill_prune, ["--config", conf, "--teacher", work["teacher"], "--data", work["varied"],
                                     "--exp", tmp_path / "exp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and "unknown key 'target_sparsty'" in err[-1] and str(conf) in err[-1]
    assert "Traceback" not in "".join(err)
    conf.write_text("max_steps: many\n")
    with pytest.raises(DistillConfigError, match="key 'max_steps' must be int"):
        load_config("final_distill", conf)
    # PyYAML reads 1e-4 (no dot) as a string; numbers are accepted anyway.
    assert load_config("final_distill", None, {"lr": "1e-4"})["lr"] == 1e-4


PACKAGED_CONF = ROOT / "dphubert" / "distill" / "conf"
RECIPE_CONFS = sorted(p for p in ROOT.glob("egs/*/conf/**/*.yaml") if "exp" not in p.parts)
PAPER = {  # docs/method.md (Step 1, Step 2) and the DistilHuBERT paper (200k steps, lr 2e-4, warmup 7%)
    "distill_prune": dict(max_steps=50000, lr=2e-4, warmup_steps=15000, reg_lr=0.02, target_sparsity=0.75,
                          sparsity_warmup_steps=5000, grad_clip=10.0, weight_decay=0.0, accum_grad=None,
                          prune_units=["conv", "head", "interm"], cos_type="raw", l1_weight=1.0, cos_weight=1.0,
                          l2_weight=0.0, distill_layers=None),
    "final_distill": dict(max_steps=25000, lr=1e-4, warmup_steps=5000, grad_clip=10.0, weight_decay=0.0,
                          cos_type="raw", l1_weight=1.0, cos_weight=1.0, l2_weight=0.0),
    "distilhubert": dict(max_steps=200000, lr=2e-4, warmup_steps=14000, cos_type="log_sig", num_layers=None),
}


def _shipped(path: Path):
    """(method, the file's own mapping, the config load_config makes of it)."""
    method = path.stem
    raw = yaml.safe_load(path.read_text())
    return method, raw, load_config(method, path)


@pytest.mark.parametrize("path", [PACKAGED_CONF / f"{m}.yaml" for m in PAPER]
                         + [p for p in RECIPE_CONFS if p.parent.name in ("hubert_base", "hubert_large",
                                                                            "wavlm_base_plus")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_full_size_configs_have_the_papers_values(path):
    method, raw, cfg = _shipped(path)
    assert set(raw) == set(load_config(method)), "a shipped config lists every key of its method"
    for key, value in raw.items():
        assert cfg[key] == value, key  # the file's values, not the Python defaults
    for key, value in PAPER[method].items():
        if value is not None or key == "distill_layers":
            assert cfg[key] == value, f"{path.name}: {key}"
    # The paper's batch: ~160 s of audio per GPU (Large: 80 s x 2 accumulated batches).
    assert cfg["batch_seconds"] * cfg["accum_grad"] == 160.0
    assert (cfg["min_seconds"], cfg["max_seconds"]) == (2.0, 15.6)


@pytest.mark.parametrize("path", [p for p in RECIPE_CONFS if p.stem in PAPER or p.stem.startswith("pretrain_hubert")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_config_loads_through_its_cli_loader(path, tmp_path):
    if path.stem.startswith("pretrain_hubert"):
        # The way dphubert.pretrain.run resolves it: the file, then the command line's overrides (none here).
        from dphubert.bin.pretrain_hubert import get_parser
        from dphubert.distill.config import overrides_from_args
        raw = yaml.safe_load(path.read_text())
        args = get_parser().parse_args(["--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
        cfg = load_config("pretrain_hubert", args.config, overrides_from_args(args, "pretrain_hubert"))
        assert raw and all(cfg[key] == value for key, value in raw.items())
        return
    method, raw, cfg = _shipped(path)
    assert set(raw) == set(load_config(method))
    assert all(cfg[key] == value for key, value in raw.items())
    if method == "distill_prune":
        assert cfg["prune_units"] == ["conv", "head", "interm"] and 0.0 < cfg["target_sparsity"] < 1.0


def test_recipes_ship_configs_for_every_setup():
    names = {str(p.relative_to(ROOT)) for p in RECIPE_CONFS}
    for setup in ("hubert_base", "hubert_large", "wavlm_base_plus"):
        for method in PAPER:
            assert f"egs/librispeech/conf/{setup}/{method}.yaml" in names
    assert {f"egs/demo/conf/{m}.yaml" for m in PAPER} <= names


def test_target_sparsity_above_maximum_fails_at_start(work, tmp_path, capsys):
    teacher = load_model(work["teacher"])
    maximum = 1 - min_num_params(gated_student(teacher, ["conv", "head", "interm"])) / teacher.num_params()
    status = run_cli(distill_prune, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", tmp_path / "e",
                                     "--target-sparsity", 0.95, *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and "target_sparsity 0.95 is above the maximum" in err and f"{maximum:.4f}" in err
    assert not (tmp_path / "e" / "checkpoints").exists()


# ----- Step 1: sparsity control, pruning, loss -------------------------------------------------------------------
def test_distill_prune_reaches_target_and_prunes_to_it(work, tmp_path):
    """Expected sparsity settles at the target; the pruned model has (1 - target) x teacher params within 0.5%.

    The paper's units and reg lr; 1500 one-utterance steps of 0.3 s stand for its 50k (the Lagrangian overshoots
    after the target's warmup and settles within a few hundred steps).
    """
    target, exp = 0.2, tmp_path / "exp"
    status = run_cli(distill_prune, ["--teacher", work["teacher"], "--data", work["short"], "--exp", exp,
                                     "--min-seconds", 0.2, "--max-seconds", 0.3, "--batch-seconds", 0.3,
                                     "--num-workers", 0, "--num-buckets", 1, "--max-steps", 1500, "--warmup-steps", 10,
                                     "--lr", "1e-3", "--reg-lr", 0.02, "--target-sparsity", target,
                                     "--sparsity-warmup-steps", 500, "--prune-units", "[conv, head, interm]",
                                     "--log-interval", 20, "--save-interval", 10000])
    assert status == 0
    gated = load_model(exp / "last.pt")
    teacher_params = load_model(work["teacher"]).num_params()
    assert 1 - float(gated.expected_num_params().detach()) / teacher_params == pytest.approx(target, abs=0.01)
    pruned = gated.prune()
    assert pruned.num_params() == gated.deterministic_num_params()
    assert pruned.num_params() == pytest.approx((1 - target) * teacher_params, rel=0.005)
    history = torch.load(exp / "checkpoints" / "ckpt_step00001500.pt", weights_only=True)["history"]
    settled = [h for h in history if h["step"] >= 1000]
    assert len(settled) == 26 and all(abs(h["expected_sparsity"] - target) < 0.01 for h in settled)
    assert all(h["target_sparsity"] == pytest.approx(target) for h in settled)
    assert history[-1]["distill"] < history[0]["distill"]  # the distillation loss went down


def test_distillation_loss_goes_down_without_pruning(work, tmp_path):
    """DistilHuBERT baseline from scratch heads: the loss drops clearly within 30 steps."""
    exp = tmp_path / "exp"
    assert run_cli(distilhubert, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", exp, *FAST,
                                  "--max-steps", 30, "--lr", "2e-3", "--num-layers", 1]) == 0
    history = torch.load(sorted((exp / "checkpoints").glob("*.pt"))[-1], weights_only=True)["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1


# ----- resuming --------------------------------------------------------------------------------------------------
def test_kill_and_resume_gives_identical_weights(work, tmp_path, capsys):
    args = ["--teacher", work["teacher"], "--data", work["varied"], *FAST, "--max-steps", 12, "--save-interval", 5,
            "--target-sparsity", 0.3, "--sparsity-warmup-steps", 6, "--reg-lr", 0.05]
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "straight"]) == 0
    # Killed abruptly after step 8 (checkpoint at 5), with a loader worker this time: the order must not depend on it.
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dphubert.bin.distill_prune", *map(str, args), "--exp", str(killed),
           "--num-workers", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, DPHUBERT_CRASH_AFTER_STEP="8"), capture_output=True,
                          text=True)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert not (killed / "last.pt").exists()
    assert [p.name for p in (killed / "checkpoints").glob("*.pt")] == ["ckpt_step00000005.pt"]
    # Without --resume the experiment is protected.
    assert run_cli(distill_prune, [*args, "--exp", killed, "--num-workers", 1]) == 1
    # A resume toward another target is refused, naming the change.
    assert run_cli(distill_prune, [*args, "--exp", killed, "--resume", "--target-sparsity", 0.4]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "target_sparsity: 0.3 -> 0.4" in err[-1] and "--exp" in err[-1] and "Traceback" not in "".join(err)
    assert run_cli(distill_prune, [*args, "--exp", killed, "--num-workers", 1, "--resume"]) == 0
    straight, resumed = model_tensors(tmp_path / "straight" / "last.pt"), model_tensors(killed / "last.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # A finished run resumed again changes nothing.
    assert run_cli(distill_prune, [*args, "--exp", killed, "--num-workers", 1, "--resume"]) == 0
    for key, value in model_tensors(killed / "last.pt").items():
        assert torch.equal(value, straight[key])


@pytest.mark.parametrize("module", [final_distill, distilhubert], ids=["final_distill", "distilhubert"])
def test_step2_and_baseline_kill_and_resume_give_identical_weights(module, work, tmp_path, capsys):
    """As Step 1: killed after step 7 (checkpoint at 4) and resumed == uninterrupted; a resume with another
    teacher or another distillation target is refused in one line naming old -> new."""
    name = module.__name__.rsplit(".", 1)[1]
    extra = (["--student", write_pruned_student(work["teacher"], tmp_path / "pruned.pt")] if name == "final_distill"
             else ["--num-layers", 1])
    args = ["--teacher", work["teacher"], "--data", work["varied"], *FAST, "--max-steps", 10, "--save-interval", 4,
            "--lr", "1e-3", *extra]
    killed = tmp_path / "killed"
    crashing = subprocess.Popen([sys.executable, "-m", f"dphubert.bin.{name}", *map(str, args), "--exp", str(killed)],
                                cwd=ROOT, env=dict(os.environ, DPHUBERT_CRASH_AFTER_STEP="7"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert run_cli(module, [*args, "--exp", tmp_path / "straight"]) == 0
    _, stderr = crashing.communicate(timeout=300)
    assert crashing.returncode == 75, stderr[-2000:]
    assert [p.name for p in (killed / "checkpoints").glob("*.pt")] == ["ckpt_step00000004.pt"]
    capsys.readouterr()

    other = tmp_path / "other_teacher.pt"
    save_model(Wav2Vec2Model(tiny_config("hubert")), other)  # same shapes, other weights
    swapped = [str(other) if a == work["teacher"] else a for a in args]
    assert run_cli(module, [*swapped, "--exp", killed, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"another teacher ({work['teacher']} [" in err and f"-> {other} [" in err and "--teacher" in err
    old, new = ("raw", "log_sig") if name == "final_distill" else ("log_sig", "raw")
    assert run_cli(module, [*args, "--exp", killed, "--resume", "--cos-type", new]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cos_type: '{old}' -> '{new}'" in err, err

    assert run_cli(module, [*args, "--exp", killed, "--resume"]) == 0
    straight, resumed = model_tensors(tmp_path / "straight" / "last.pt"), model_tensors(killed / "last.pt")
    assert straight.keys() == resumed.keys() and any(k.startswith(("proj.", "head.")) for k in straight)
    start = load_model(tmp_path / "pruned.pt" if name == "final_distill" else work["teacher"]).state_dict()
    assert any(not torch.equal(straight[f"model.{k}"], v) for k, v in start.items() if f"model.{k}" in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def _resume_from_first_checkpoint(exp: Path, copy: Path) -> None:
    """``exp`` as a run killed right after its first checkpoint would have left it."""
    shutil.copytree(exp, copy)
    for later in sorted((copy / "checkpoints").glob("*.pt"))[1:]:
        later.unlink()
    (copy / "last.pt").unlink()


def test_amp_on_cpu_bf16_resumes_exactly_fp16_refused_and_scaler_state_restored(work, tmp_path, capsys, monkeypatch):
    args = ["--teacher", work["teacher"], "--data", work["varied"], *FAST, "--max-steps", 10, "--save-interval", 4,
            "--target-sparsity", 0.3, "--sparsity-warmup-steps", 6, "--reg-lr", 0.05, "--device", "cpu"]
    # fp16 needs CUDA: one line with the fix, before any step.
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "fp16", "--amp", "fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "amp fp16 needs a CUDA device" in err[-1] and "--amp bf16" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "fp16" / "checkpoints").exists()

    # bf16 autocast on CPU: runs, changes the numbers, and a resume from a checkpoint ends bit for bit equal.
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "bf16", "--amp", "bf16"]) == 0
    _resume_from_first_checkpoint(tmp_path / "bf16", tmp_path / "bf16_resumed")
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "bf16_resumed", "--amp", "bf16", "--resume"]) == 0
    straight = model_tensors(tmp_path / "bf16" / "last.pt")
    for key, value in model_tensors(tmp_path / "bf16_resumed" / "last.pt").items():
        assert torch.equal(value, straight[key]), key

    # fp16's GradScaler on CPU (as far as CPU allows: a real, enabled GradScaler around fp32 math, growing its
    # scale every 3 steps): its state is saved in every checkpoint and restored on resume.
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: real_scaler("cpu", init_scale=1024.0, growth_interval=3))
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "scaled"]) == 0
    first = torch.load(tmp_path / "scaled" / "checkpoints" / "ckpt_step00000004.pt", weights_only=True)["scaler"]
    assert (first["scale"], first["_growth_tracker"]) == (2048.0, 1)  # grown once at step 3
    _resume_from_first_checkpoint(tmp_path / "scaled", tmp_path / "scaled_resumed")
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "scaled_resumed", "--resume"]) == 0
    ends = [torch.load(tmp_path / d / "checkpoints" / "ckpt_step00000010.pt", weights_only=True)
            for d in ("scaled", "scaled_resumed")]
    assert ends[0]["scaler"] == ends[1]["scaler"] and ends[0]["scaler"]["scale"] == 8192.0  # steps 3, 6, 9
    scaled = model_tensors(tmp_path / "scaled" / "last.pt")
    for key, value in model_tensors(tmp_path / "scaled_resumed" / "last.pt").items():
        assert torch.equal(value, scaled[key]), key
    assert any(not torch.equal(scaled[k], straight[k]) for k in straight), "bf16 autocast had no effect"


# ----- DDP ---------------------------------------------------------------------------------------------------------
def test_two_process_ddp_matches_one_process(work, tmp_path):
    """torchrun, 2 gloo processes x 1 batch == 1 process accumulating the same 2 batches."""
    common = ["--teacher", work["teacher"], "--data", work["equal"], *FAST, "--max-steps", 5, "--lr", "1e-3",
              "--target-sparsity", 0.3, "--sparsity-warmup-steps", 3, "--reg-lr", 0.05, "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dphubert.bin.distill_prune", *map(str, common), "--exp", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = [sys.executable, "-m", "dphubert.bin.distill_prune", *map(str, common), "--exp", str(tmp_path / "one"),
              "--accum-grad", "2"]
    proc = subprocess.run(single, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, one = model_tensors(tmp_path / "ddp" / "last.pt"), model_tensors(tmp_path / "one" / "last.pt")
    start = load_model(work["teacher"]).state_dict()
    moved = max(float((one[f"model.{k}"] - v).abs().max()) for k, v in start.items())
    assert moved > 1e-3  # training changed the weights
    for key in one:
        assert torch.allclose(ddp[key], one[key], atol=1e-5, rtol=1e-4), key
    ckpt = torch.load(next((tmp_path / "ddp" / "checkpoints").glob("*.pt")), weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["sampler"]["world_size"] == 2


WORKER_SCRIPT = """
import atexit, logging, sys
import torch.distributed as dist
from dphubert.distill.cli import run_cli
from dphubert.distill.errors import DistillError
dist.init_process_group("gloo", init_method="file://{store}", rank=0, world_size=1)
atexit.register(lambda: print("interpreter finalised"))
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
def main(argv):
    print("work done", end="")  # a pipe: block-buffered, lost unless flushed before the process ends
    logging.getLogger("worker").info("logged")
    if argv:
        raise DistillError("bad input")
status = run_cli(main, sys.argv[1:], "prog")
print("run_cli returned", status)
"""


@pytest.mark.parametrize("argv, status", [([], 0), (["fail"], 1)])
def test_a_torchrun_worker_ends_in_run_cli_with_its_output_and_status(tmp_path, argv, status):
    """A worker of a process group ends inside run_cli, skipping the interpreter's finalisation (where gloo's
    threads can abort the process: distributed.exit_worker), with its output flushed and its exit status."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT.format(store=tmp_path / "store"))
    proc = subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert proc.stdout == "work done"  # flushed; neither run_cli's return nor atexit handlers ran
    assert "INFO:worker:logged" in proc.stderr
    assert ("prog: error: bad input" in proc.stderr) == (status == 1)


# ----- teacher targets: online vs dumped -------------------------------------------------------------------------
def test_dumped_features_give_the_online_loss(work, tmp_path):
    teacher = load_model(work["teacher"])
    layers = [0, 1, 2, 3]
    counts = dump_teacher_features(teacher, work["equal"], layers, tmp_path / "dump", progress=False)
    assert counts == {"written": 12, "skipped_done": 0, "bad": 0}
    reader = TeacherFeatureReader(tmp_path / "dump")
    assert reader.read("utt00", 2).dtype == np.float16
    dataset = AudioDataset(work["equal"], 0.2, 1.0)
    batch = CropCollator(frame_stride(teacher), seed=0).collate([dataset[i] for i in range(4)], 0, 0)
    assert batch["offsets"].tolist() == [0, 0, 0, 0]  # equal lengths: nothing cropped
    task = LayerDistillTask(gated_student(teacher, ["conv", "head", "interm"]),
                            LayerProjections(layers, [[0], [1, 2, 3]], 48, 48), loss_weights(load_config("final_distill")))
    task.eval()
    frames = task.num_frames(batch["waveforms"].size(1))
    with torch.no_grad():
        online = task(batch["waveforms"], OnlineTeacher(teacher, layers)(batch, batch["waveforms"], frames), 0)
        dumped = task(batch["waveforms"], DumpedTeacher(reader, layers)(batch, batch["waveforms"], frames), 0)
    assert float(dumped["loss"]) == pytest.approx(float(online["loss"]), rel=1e-3)
    # A cropped item takes the frames at offset // stride of its whole-utterance targets.
    varied = AudioDataset(work["varied"], 0.2, 1.0)
    counts = dump_teacher_features(teacher, work["varied"], layers, tmp_path / "dump_v", progress=False)
    batch = CropCollator(frame_stride(teacher), seed=3).collate([varied[i] for i in range(6)], 0, 0)
    assert batch["offsets"].any()
    frames = task.num_frames(batch["waveforms"].size(1))
    targets = DumpedTeacher(TeacherFeatureReader(tmp_path / "dump_v"), layers)(batch, batch["waveforms"], frames)
    for row, (utt, offset) in enumerate(zip(batch["utt_ids"], batch["offsets"].tolist())):
        full, _ = teacher.extract_features(varied[varied.utt_ids.index(utt)][1][None])
        first = offset // frame_stride(teacher)
        expected = full[2][0, first:first + frames]
        assert torch.allclose(targets[2][row], expected, atol=2e-2, rtol=1e-2)


def test_dump_resumes_after_a_kill(work, tmp_path):
    teacher = load_model(work["teacher"])
    out = tmp_path / "dump"
    dump_teacher_features(teacher, work["varied"], [0, 3], out, progress=False)
    scp = (out / "feats.scp").read_text().splitlines(keepends=True)
    assert len(scp) == 24 and scp[0].startswith("utt00-L0 ")
    # Simulate a kill: the last utterance half listed with a torn line, garbage at the end of the ark.
    (out / "feats.scp").write_text("".join(scp[:-1]) + scp[-1][:7])
    with open(out / "feats.ark", "ab") as ark:
        ark.write(b"\x00garbage")
    counts = dump_teacher_features(teacher, work["varied"], [0, 3], out, progress=False)
    assert counts == {"written": 1, "skipped_done": 11, "bad": 0}
    index = kaldiio.load_scp(str(out / "feats.scp"))
    assert len(index) == 24
    data = AudioDataset(work["varied"], 0.2, 1.0)
    with torch.no_grad():
        states, _ = teacher.extract_features(data[11][1][None])
    np.testing.assert_allclose(index["utt11-L3"], states[3][0].numpy(), atol=2e-2, rtol=1e-2)
    # The same dump with other layers is refused.
    with pytest.raises(DistillError, match=r"an existing dump has layers=\[0, 3\] but this run has layers=\[0, 2\]; "
                                           r"use another --out or delete"):
        dump_teacher_features(teacher, work["varied"], [0, 2], out, progress=False)


def test_dumped_feature_mismatches_name_both_shapes(work, tmp_path):
    teacher = load_model(work["teacher"])
    dump_teacher_features(teacher, work["equal"], [0, 3], tmp_path / "dump", progress=False)
    reader = TeacherFeatureReader(tmp_path / "dump")
    with pytest.raises(TeacherMismatchError, match=r"dumped features are \(frames, 48\).*gives \(frames, 64\)"):
        reader.check_compatible([0, 3], 64, 40, ["utt00"])
    with pytest.raises(TeacherMismatchError, match=r"lack \[1\]"):
        reader.check_compatible([0, 1, 3], 48, 40, ["utt00"])
    with pytest.raises(TeacherMismatchError, match="1 training utterance"):
        reader.check_compatible([0, 3], 48, 40, ["utt00", "other"])
    # Features from shorter audio than the batch: both shapes in the message.
    batch = {"utt_ids": ["utt00"], "offsets": torch.tensor([0])}
    frames = reader.read("utt00", 0).shape[0]
    with pytest.raises(TeacherMismatchError, match=rf"shape \({frames}, 48\).*\(>= {frames + 5}, 48\)"):
        DumpedTeacher(reader, [0, 3])(batch, torch.zeros(1, 1), frames + 5)


# ----- bad input ---------------------------------------------------------------------------------------------------
def test_bad_audio_fails_or_is_skipped(work, tmp_path, capsys):
    data = make_data_dir(tmp_path / "bad", [0.7] * 6, seed=5)
    (tmp_path / "bad" / "audio" / "empty.wav").write_bytes(b"")
    soundfile.write(tmp_path / "bad" / "audio" / "silent0.wav", np.zeros(0, np.float32), SR)
    with open(data / "wav.scp", "a") as f:
        f.write(f"zz_corrupt {tmp_path / 'bad' / 'audio' / 'empty.wav'}\n")
        f.write(f"zz_empty {tmp_path / 'bad' / 'audio' / 'silent0.wav'}\n")
    args = ["--teacher", work["teacher"], "--data", data, *FAST, "--max-steps", 2, "--target-sparsity", 0.2]
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "fail"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "zz_corrupt" in err and "empty.wav" in err and "--skip-bad-audio" in err
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "skip", "--skip-bad-audio"]) == 0
    skipped = (tmp_path / "skip" / "skipped.txt").read_text()
    assert "zz_corrupt" in skipped and "zz_empty" in skipped and "silent0.wav" in skipped


def test_training_cli_resamples_and_downmixes_when_asked(work, tmp_path, capsys):
    """44.1 kHz stereo audio: refused naming the CLI's flags (not Python arguments), trained on with both flags."""
    rng = np.random.default_rng(7)
    (tmp_path / "audio").mkdir()
    lines = []
    for i in range(4):
        path = tmp_path / "audio" / f"u{i}.wav"
        soundfile.write(path, rng.normal(0, 0.1, (int(44100 * 0.6), 2)).astype(np.float32), 44100)
        lines.append(f"u{i} {path}\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(lines))
    args = ["--teacher", work["teacher"], "--data", data, *FAST, "--max-steps", 1, "--target-sparsity", 0.2]
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "refused"]) == 1
    err = capsys.readouterr().err
    assert "pass --downmix" in err and "downmix=True" not in err and "--skip-bad-audio" in err
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "stereo", "--downmix"]) == 1
    err = capsys.readouterr().err
    assert "44100 Hz, expected 16000 Hz" in err and "pass --resample" in err
    assert run_cli(distill_prune, [*args, "--exp", tmp_path / "ok", "--downmix", "--resample"]) == 0


def test_inf_weights_are_never_saved(work, tmp_path, capsys, monkeypatch):
    """An update that leaves a weight inf while its loss was finite: the save of that step is refused and the
    error names the checkpoint before it (whose weights are finite)."""
    step = torch.optim.AdamW.step
    calls = []

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    exp = tmp_path / "exp"
    status = run_cli(distill_prune, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", exp, *FAST,
                                     "--max-steps", 6, "--save-interval", 1, "--target-sparsity", 0.2])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and "step 2: the weights are not finite" in err, err
    assert str(exp / "checkpoints" / "ckpt_step00000001.pt") in err
    assert [p.name for p in (exp / "checkpoints").glob("ckpt_step*.pt")] == ["ckpt_step00000001.pt"]


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(work, tmp_path, capsys):
    exp = tmp_path / "exp"
    status = run_cli(distill_prune, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", exp, *FAST,
                                     "--max-steps", 20, "--save-interval", 1, "--lr", "1e30", "--target-sparsity", 0.2])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and "the loss is not finite" in err
    step = int(err.split("step ")[1].split(":")[0])
    last_good = exp / "checkpoints" / f"ckpt_step{step - 1:08d}.pt"
    assert str(last_good) in err
    ckpt = torch.load(last_good, weights_only=True)
    assert ckpt["step"] == step - 1 and not (exp / "last.pt").exists()
    assert not list((exp / "checkpoints").glob(f"ckpt_step{step:08d}.pt"))


def test_teacher_student_mismatch_names_both_shapes(work, tmp_path, capsys):
    teacher = load_model(work["teacher"])
    student = gated_student(teacher, ["conv", "interm"])
    proj = LayerProjections([0, 1, 2, 3], [[0], [1, 2, 3]], 48, 48)
    task = LayerDistillTask(student, proj, loss_weights(load_config("final_distill")))
    pruned = tmp_path / "pruned.pt"
    extra = {k: v for k, v in task.model_file().items() if k in ("distill_linear_projs", "distill")}
    save_model(student.prune(), pruned, extra)
    wide = Wav2Vec2Model(tiny_config("hubert", encoder_embed_dim=64))
    save_model(wide, tmp_path / "wide.pt")
    status = run_cli(final_distill, ["--student", pruned, "--teacher", tmp_path / "wide.pt", "--data", work["varied"],
                                     "--exp", tmp_path / "exp", *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and "(frames, 48)" in err and "(frames, 64)" in err
    # A gated (unpruned) student is refused with the fix.
    save_model(student, tmp_path / "gated.pt", extra)
    assert run_cli(final_distill, ["--student", tmp_path / "gated.pt", "--teacher", work["teacher"], "--data",
                                   work["varied"], "--exp", tmp_path / "exp2", *FAST]) == 1
    assert "dphubert.bin.prune" in capsys.readouterr().err


# ----- DistilHuBERT sizing -----------------------------------------------------------------------------------------
def test_distilhubert_student_matches_a_parameter_budget(work):
    with torch.device("meta"):
        base = Wav2Vec2Model(base_config("hubert"))
    # DPHuBERT's released size: two full Base layers, DistilHuBERT's own shape.
    assert plan_distilhubert(base, 23_585_946) == (2, None)
    teacher = load_model(work["teacher"])
    for target in (30_000, 45_000, 60_000):
        layers, width = plan_distilhubert(teacher, target)
        student = distilhubert_student(teacher, layers, width)
        assert student.num_params() == pytest.approx(target, rel=0.01)
        assert student.num_params() <= target
    # The student's first layers start as the teacher's (FFN: its first units).
    student = distilhubert_student(teacher, 2, 40)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["encoder.transformer.layers.1.attention.q_proj.weight"],
                       t["encoder.transformer.layers.1.attention.q_proj.weight"])
    key = "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"
    assert torch.equal(s[key], t[key][:40])


def test_baseline_too_small_to_match_names_the_recipe_fix(work, tmp_path, capsys):
    """A DPHuBERT student smaller than the teacher's CNN + one layer cannot get a same-size baseline."""
    small = Wav2Vec2Model(tiny_config("hubert", encoder_num_layers=1, encoder_ff_interm_features=4,
                                      extractor_conv_layer_config=[[4, 10, 5], [4, 3, 2], [4, 3, 2], [4, 2, 2]]))
    save_model(small, tmp_path / "pruned.pt")
    status = run_cli(distilhubert, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", tmp_path / "exp",
                                    *FAST, "--match", tmp_path / "pruned.pt"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # (after the INFO line of the command)
    assert status == 1 and error.startswith("python -m dphubert.bin.distilhubert: error: ")
    assert str(tmp_path / "pruned.pt") in error and "--baseline auto" in error and "smallest 1-layer" in error
    assert not (tmp_path / "exp" / "NOT_BUILT.txt").exists()

    # --if-possible (the recipe's --baseline auto): no training, the reason in NOT_BUILT.txt, exit status 0
    status = run_cli(distilhubert, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", tmp_path / "exp",
                                    *FAST, "--match", tmp_path / "pruned.pt", "--if-possible"])
    assert status == 0 and not (tmp_path / "exp" / "last.pt").exists()
    reason = (tmp_path / "exp" / "NOT_BUILT.txt").read_text()
    assert "smallest 1-layer" in reason and "--baseline" not in reason  # the reason, not the recipe advice
    # a size that fits, into the same dir: trained, and the stale NOT_BUILT.txt is gone
    save_model(Wav2Vec2Model(tiny_config("hubert", encoder_num_layers=2)), tmp_path / "two_layers.pt")
    status = run_cli(distilhubert, ["--teacher", work["teacher"], "--data", work["varied"], "--exp", tmp_path / "exp",
                                    *FAST, "--max-steps", 2, "--match", tmp_path / "two_layers.pt", "--if-possible"])
    assert status == 0 and (tmp_path / "exp" / "last.pt").exists()
    assert not (tmp_path / "exp" / "NOT_BUILT.txt").exists()


# ----- the CLIs end to end -----------------------------------------------------------------------------------------
def _run(*args):
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_chain_end_to_end(work, tmp_path):
    """dump_teacher -> distill_prune (dumped targets, validation) -> prune -> final_distill -> distilhubert --match."""
    teacher, data = work["teacher"], work["varied"]
    _run("dphubert.bin.dump_teacher", "--teacher", teacher, "--data", data, "--layers", "0,1,2,3",
         "--out", tmp_path / "dump")
    exp = tmp_path / "exp"
    _run("dphubert.bin.distill_prune", "--teacher", teacher, "--data", data, "--valid", work["equal"], "--exp", exp,
         "--teacher-feats", tmp_path / "dump", *FAST, "--max-steps", 6, "--valid-interval", 3,
         "--target-sparsity", 0.3, "--sparsity-warmup-steps", 3)
    for name in ("last.pt", "config.yaml", "train.log", "training.png"):
        assert (exp / name).is_file(), name
    assert list((exp / "tensorboard").glob("events.out.tfevents*"))
    assert "valid:" in (exp / "train.log").read_text()
    resolved = yaml.safe_load((exp / "config.yaml").read_text())
    assert resolved["max_steps"] == 6 and load_config("distill_prune", exp / "config.yaml")["target_sparsity"] == 0.3
    ckpt = torch.load(exp / "last.pt", weights_only=True)
    assert ckpt["distill"]["layers"] == [0, 1, 2, 3] and ckpt["distill"]["groups"] == [[0], [1, 2, 3]]
    assert load_model(exp / "last.pt").gates()

    _run("dphubert.bin.prune", "--ckpt", exp / "last.pt", "--out", exp / "pruned.pt", "--teacher", teacher)
    _run("dphubert.bin.final_distill", "--student", exp / "pruned.pt", "--teacher", teacher, "--data", data,
         "--exp", exp / "final", *FAST, "--max-steps", 4)
    final = torch.load(exp / "final" / "last.pt", weights_only=True)
    assert final["distill_linear_projs"].keys() == ckpt["distill_linear_projs"].keys()
    pruned = load_model(exp / "pruned.pt")
    assert load_model(exp / "final" / "last.pt").config == pruned.config

    proc = _run("dphubert.bin.distilhubert", "--teacher", teacher, "--data", data, "--exp", tmp_path / "distil",
                *FAST, "--max-steps", 3, "--match", exp / "pruned.pt")
    assert f"target of {pruned.num_params():,}" in proc.stderr
    baseline = load_model(tmp_path / "distil" / "last.pt")  # a normal model file; heads kept aside
    assert baseline.num_params() == pytest.approx(pruned.num_params(), rel=0.01)
    assert "distill_heads" in torch.load(tmp_path / "distil" / "last.pt", weights_only=True)


@pytest.mark.parametrize("model_type,large", [("wavlm", False), ("hubert", True)], ids=["wavlm", "pre_ln_large"])
def test_wavlm_and_pre_ln_teachers_through_every_step(model_type, large, work, tmp_path, capsys):
    """Step 1 -> prune -> Step 2 -> package with a WavLM teacher and a pre-LN (Large-style: layer-norm CNN,
    layer_norm_first) teacher, all through the CLIs; the packaged files give Step 2's hidden states."""
    from dphubert.bin import package, prune
    from dphubert.models.release import release_checkpoint

    teacher = Wav2Vec2Model(tiny_config(model_type, large))
    assert teacher.config["encoder_layer_norm_first"] == large
    save_model(teacher, tmp_path / "teacher.pt")
    common = ["--teacher", tmp_path / "teacher.pt", "--data", work["varied"], *FAST]
    exp = tmp_path / "exp"
    assert run_cli(distill_prune, [*common, "--exp", exp, "--max-steps", 6, "--target-sparsity", 0.3,
                                   "--sparsity-warmup-steps", 3, "--reg-lr", 0.2,
                                   "--prune-units", "[conv, head, attlayer, interm, ffnlayer]"]) == 0
    gated = load_model(exp / "last.pt")
    assert gated.gates() and gated.config["model_type"] == model_type
    assert prune.main(["--ckpt", str(exp / "last.pt"), "--out", str(exp / "pruned.pt"),
                       "--teacher", str(tmp_path / "teacher.pt")]) == 0
    pruned = load_model(exp / "pruned.pt")
    selection = json.loads((exp / "summary.json").read_text())["selection"]
    assert selection["rule"] == "budget" and pruned.num_params() == selection["kept"]["params"]
    assert 0.3 <= 1 - pruned.num_params() / teacher.num_params() <= 0.305  # the target, whatever Step 1 reached
    assert run_cli(final_distill, [*common, "--student", exp / "pruned.pt", "--exp", exp / "final",
                                   "--max-steps", 4]) == 0
    final = exp / "final"
    capsys.readouterr()
    assert package.main(["--model", str(final / "last.pt"), "--out", str(final / "model.pt"), "--teacher",
                         str(tmp_path / "teacher.pt"), "--release-out", str(final / "model_release.pth")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {final / 'model.pt'}, {final / 'summary.json'}" in out

    trained, packaged = load_model(final / "last.pt").eval(), load_model(final / "model.pt").eval()
    assert packaged.config == trained.config == pruned.config
    x = torch.randn(1, 6000)
    with torch.no_grad():
        for a, b in zip(trained.extract_features(x)[0], packaged.extract_features(x)[0]):
            assert torch.equal(a, b)
    saved = torch.load(final / "model.pt", weights_only=True)
    step2 = torch.load(final / "last.pt", weights_only=True)
    assert saved["teacher_num_params"] == teacher.num_params()
    assert saved["distill_linear_projs"].keys() == step2["distill_linear_projs"].keys()
    summary = yaml.safe_load((final / "summary.json").read_text())  # JSON is YAML
    assert summary["params"] == pruned.num_params() and summary["model_type"] == model_type
    assert summary["sparsity"] == pytest.approx(1 - pruned.num_params() / teacher.num_params())
    release = torch.load(final / "model_release.pth", weights_only=True)
    expected = release_checkpoint(trained, step2["distill_linear_projs"])
    assert release["config"] == expected["config"] and release["state_dict"].keys() == expected["state_dict"].keys()
    assert ("encoder_remaining_heads" in release["config"]) == (model_type == "wavlm")
    assert release["config"]["encoder_layer_norm_first"] == large
    reloaded = load_model(final / "model_release.pth").eval()
    with torch.no_grad():
        for a, b in zip(trained.extract_features(x)[0], reloaded.extract_features(x)[0]):
            assert torch.allclose(a, b, atol=1e-6)


def test_package_refuses_gated_models_and_unwritable_outputs(work, tmp_path, capsys):
    from dphubert.bin import package

    gated = gated_student(load_model(work["teacher"]), ["conv", "head", "interm"])
    save_model(gated, tmp_path / "gated.pt")
    assert package.main(["--model", str(tmp_path / "gated.pt"), "--out", str(tmp_path / "model.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "still has pruning gates" in err[0] and "dphubert.bin.prune --ckpt" in err[0]
    assert not (tmp_path / "model.pt").exists()
    pruned = write_pruned_student(work["teacher"], tmp_path / "pruned.pt")
    (tmp_path / "file").write_text("")
    assert package.main(["--model", str(pruned), "--out", str(tmp_path / "file" / "model.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write it" in err[0] and "choose another --out" in err[0]
    # Without --teacher the sparsity is unknown (the pruned file has no teacher count): null, not a guess.
    assert package.main(["--model", str(pruned), "--out", str(tmp_path / "ok" / "model.pt")]) == 0
    summary = yaml.safe_load((tmp_path / "ok" / "summary.json").read_text())
    assert summary["sparsity"] is None and summary["params"] == load_model(pruned).num_params()


def test_device_cuda_without_cuda_is_one_line_in_every_cli(work, tmp_path, monkeypatch, capsys):
    """(distill_prune: test_multinode.py.) The other training CLIs and dump_teacher, before any work."""
    from dphubert.bin import dump_teacher

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pruned = write_pruned_student(work["teacher"], tmp_path / "pruned.pt")
    base = ["--teacher", str(work["teacher"]), "--data", str(work["varied"]), "--device", "cuda"]
    cases = {final_distill: [*base, "--student", str(pruned), "--exp", str(tmp_path / "f")],
             distilhubert: [*base, "--exp", str(tmp_path / "d")],
             dump_teacher: [*base, "--out", str(tmp_path / "dump")]}
    for module, argv in cases.items():
        assert module.main(argv) == 1
        prog = f"python -m {module.__name__}"
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"{prog}: error: --device cuda: no CUDA device is available; use --device cpu")
    assert not (tmp_path / "dump").exists() and not (tmp_path / "f" / "checkpoints").exists()


def test_clis_have_usage_help():
    for module in ("distill_prune", "final_distill", "distilhubert", "dump_teacher"):
        proc = _run(f"dphubert.bin.{module}", "--help")
        assert "Usage" in proc.stdout and "--teacher" in proc.stdout


def test_steps_1_and_2_run_without_layerdrop_unless_asked(tmp_path):
    """The paper's distillation forward runs every layer: the teacher's encoder_layer_drop is not copied."""
    from dphubert.bin import final_distill
    from dphubert.distill.students import gated_student

    teacher = Wav2Vec2Model(tiny_config("hubert", encoder_layer_drop=0.05))
    student = gated_student(teacher, ["head", "interm"])
    assert student.config["encoder_layer_drop"] == 0.0 and student.encoder.transformer.layer_drop == 0.0
    assert gated_student(teacher, ["head"], {"encoder_layer_drop": 0.05}).config["encoder_layer_drop"] == 0.05
    # Step 2: a pruned file that still says 0.05 (e.g. pruned from an older Step 1) trains without it too.
    pruned = Wav2Vec2Model(tiny_config("hubert", encoder_layer_drop=0.05))
    save_model(pruned, tmp_path / "pruned.pt", extra={"distill_linear_projs": {
        f"{k}.{p}": (torch.eye(48) if p == "weight" else torch.zeros(48)) for k in range(4) for p in ("weight", "bias")}})
    save_model(teacher, tmp_path / "teacher.pt")
    args = final_distill.get_parser().parse_args(["--teacher", str(tmp_path / "teacher.pt"), "--data", "x", "--exp",
                                                   "y", "--student", str(tmp_path / "pruned.pt")])
    cfg = load_config("final_distill")
    task = final_distill.build_task(cfg, teacher, args)
    assert task.student.config["encoder_layer_drop"] == 0.0
    cfg["student_overrides"] = {"encoder_layer_drop": 0.1}
    assert final_distill.build_task(cfg, teacher, args).student.encoder.transformer.layer_drop == 0.1
