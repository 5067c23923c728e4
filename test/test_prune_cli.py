"""MACs counting, the architecture summary/plot, and the prune CLI on real checkpoint files."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import ALL_GATES, tiny_config
from dphubert.bin import prune as prune_cli
from dphubert.models import Wav2Vec2Model, base_config, load_model, save_model
from dphubert.models.macs import count_macs
from dphubert.report import model_summary, plot_architecture, write_summary

REPO = Path(__file__).resolve().parents[1]


def set_gates(model: Wav2Vec2Model) -> Wav2Vec2Model:
    """Deterministic gate values: some heads, units, channels and whole blocks off, the rest on."""
    with torch.no_grad():
        for name, gate in model.gates().items():
            on = torch.full((gate.n,), 6.0)
            if gate.n > 1:
                on[::3] = -6.0  # a third of the units off
            if name.endswith("layers.1.attention.hard_concrete_for_layer") or \
                    name.endswith("layers.2.feed_forward.hard_concrete_for_layer"):
                on[:] = -6.0
            gate.log_alpha.copy_(on)
    return model.eval()


def gated_tiny(model_type="hubert", large=False, **gates):
    return set_gates(Wav2Vec2Model(tiny_config(model_type, large, **(gates or ALL_GATES))))


def brute_force_macs(model: Wav2Vec2Model, seconds: float) -> float:
    """Half the FLOPs torch counts for one forward (conv, matmul, attention via the math backend)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.extract_features(torch.randn(1, int(seconds * 16000)))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("model_type,large", [("hubert", False), ("wavlm", False), ("wav2vec2", True)])
def test_macs_match_flop_counter_gated_and_pruned(model_type, large):
    gated = gated_tiny(model_type, large)
    pruned = gated.prune()
    assert not pruned.config["encoder_use_attention"][1] and not pruned.config["encoder_use_feed_forward"][2]
    for model in (gated, pruned):
        macs = count_macs(model, seconds=1.3)
        assert macs["total"] == brute_force_macs(model, 1.3)
        assert macs["total"] == sum(macs[k] for k in ("cnn", "projection", "pos_conv", "attention", "ffn"))
    assert count_macs(pruned)["total"] < count_macs(gated)["total"]


def test_macs_of_hubert_base_by_hand():
    macs = count_macs(base_config("hubert"), seconds=10.0)
    frames, dim = 499, 768  # 160000 samples through the 7 conv layers
    assert macs["frames"] == frames
    assert macs["attention"] == 12 * (4 * frames * dim * dim + 2 * frames * frames * dim)
    assert macs["ffn"] == 12 * 2 * frames * dim * 3072
    assert macs["projection"] == frames * 512 * dim
    assert 7.0e10 < macs["total"] < 7.6e10  # ~7.4 GMACs per second of audio


def params_by_formula(cfg: dict) -> int:
    """docs/method.md's count with the pruned config's sizes (group-norm CNN, weight-normed positional conv)."""
    total, previous = 0, 1
    for i, (channels, kernel, _) in enumerate(cfg["extractor_conv_layer_config"]):
        total += previous * channels * kernel + (2 * channels if i == 0 else 0)  # GroupNorm of the first layer
        previous = channels
    dim, head_dim = cfg["encoder_embed_dim"], cfg["encoder_head_dim"]
    total += 2 * previous + (previous + 1) * dim  # feature projection with its LayerNorm
    kernel, groups = cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"]
    total += dim * (dim // groups) * kernel + kernel + dim  # weight_v, weight_g, bias
    for layer in range(cfg["encoder_num_layers"]):
        heads, units = cfg["encoder_num_heads"][layer], cfg["encoder_ff_interm_features"][layer]
        total += 4 * dim
        if cfg["encoder_use_attention"][layer]:
            total += (dim + 1) * heads * head_dim * 3 + (heads * head_dim + 1) * dim
        if cfg["encoder_use_feed_forward"][layer]:
            total += (dim + 1) * units + (units + 1) * dim
    return total + 2 * dim  # encoder LayerNorm


def test_summary_counts_params_and_macs_independently():
    gated = gated_tiny("hubert")
    pruned = gated.prune()
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    summary = model_summary(pruned, teacher_params=teacher.num_params(), original=gated)
    expected = params_by_formula(pruned.config)
    assert expected == 36_798 and summary["params"] == expected
    assert summary["sparsity"] == pytest.approx(1 - expected / 76_480)  # the tiny teacher by the same formula
    assert params_by_formula(dict(teacher.config, encoder_head_dim=12, encoder_num_heads=[4] * 3,
                                  encoder_ff_interm_features=[96] * 3, encoder_use_attention=[True] * 3,
                                  encoder_use_feed_forward=[True] * 3)) == 76_480
    assert summary["macs_seconds"] == 10.0 and summary["macs"]["total"] == brute_force_macs(pruned, 10.0)


def test_summary_and_plot_match_the_pruned_config(tmp_path):
    gated = gated_tiny("wavlm")
    pruned = gated.prune()
    teacher_params = Wav2Vec2Model(tiny_config("wavlm")).num_params()
    summary = model_summary(pruned, teacher_params=teacher_params, original=gated)
    cfg = pruned.config
    assert summary["params"] == gated.deterministic_num_params()
    assert summary["cnn_channels"] == [c[0] for c in cfg["extractor_conv_layer_config"]] == [21] * 4
    assert [layer["heads"] for layer in summary["layers"]] == [2, 0, 2]  # layer 2's attention is off
    assert [layer["attention"] for layer in summary["layers"]] == [True, False, True]
    assert [layer["ffn_units"] for layer in summary["layers"]] == [64, 64, 0]
    assert [layer["feed_forward"] for layer in summary["layers"]] == cfg["encoder_use_feed_forward"]
    assert summary["original"]["cnn_channels"] == [32] * 4
    write_summary(summary, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    plot_architecture(summary, tmp_path / "arch.png")
    image = matplotlib.image.imread(tmp_path / "arch.png")
    assert image.shape[0] >= 600 and image.shape[1] >= 600
    assert image[..., :3].std() > 0.05  # not a blank canvas


def write_gated_checkpoint(path: Path, **gates) -> Wav2Vec2Model:
    gated = gated_tiny("hubert", **gates)
    projections = {"0.weight": torch.randn(48, 48), "0.bias": torch.randn(48), "1.weight": torch.randn(48, 48)}
    save_model(gated, path, {"distill_linear_projs": projections, "distill": {"layers": [0, 2, 3], "step": 100}})
    return gated


def test_prune_cli_writes_model_summary_and_plot(tmp_path):
    gated = write_gated_checkpoint(tmp_path / "last.pt")
    teacher = Wav2Vec2Model(tiny_config("hubert"))
    save_model(teacher, tmp_path / "teacher.pt")
    out = tmp_path / "exp" / "pruned.pt"
    done = subprocess.run([sys.executable, "-m", "dphubert.bin.prune", "--ckpt", str(tmp_path / "last.pt"),
                           "--out", str(out), "--teacher", str(tmp_path / "teacher.pt")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pruned = load_model(out)
    assert pruned.num_params() == gated.deterministic_num_params() < gated.num_params()
    assert not pruned.gates()
    reference = gated.prune().state_dict()
    for key, value in pruned.state_dict().items():
        torch.testing.assert_close(value, reference[key])
    saved = torch.load(out, weights_only=True)
    before = torch.load(tmp_path / "last.pt", weights_only=True)
    for key, value in before["distill_linear_projs"].items():
        assert torch.equal(saved["distill_linear_projs"][key], value)
    assert saved["distill"] == before["distill"] and saved["teacher_num_params"] == teacher.num_params()

    summary = json.loads((out.parent / "summary.json").read_text())
    for key in ("params", "teacher_params", "sparsity", "macs", "layers", "cnn_channels", "pruning_output_gap",
                "gated_params", "original"):
        assert key in summary, key
    assert summary["params"] == pruned.num_params()
    assert summary["sparsity"] == pytest.approx(1 - pruned.num_params() / teacher.num_params())
    # the last CNN layer is gated: its LayerNorm makes pruning inexact, and the gap says so
    assert 0 < summary["pruning_output_gap"]["relative_l2_last"] < 1.0
    assert len(summary["pruning_output_gap"]["relative_l2_per_layer"]) == 4
    assert matplotlib.image.imread(out.parent / "architecture.png").shape[0] >= 600
    assert f"deterministic count {pruned.num_params():,}: match" in done.stdout
    assert "sparsity vs teacher" in done.stdout and "MACs for 10 s" in done.stdout


def test_pruning_without_cnn_gates_is_exact(tmp_path, capsys):
    gates = {k: v for k, v in ALL_GATES.items() if k != "extractor_prune_conv_channels"}
    write_gated_checkpoint(tmp_path / "last.pt", **gates)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["teacher_num_params"] = 200_000  # the teacher size may also come from the checkpoint
    torch.save(ckpt, tmp_path / "last.pt")
    assert prune_cli.main(["--ckpt", str(tmp_path / "last.pt"), "--out", str(tmp_path / "pruned.pt")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pruning_output_gap"]["relative_l2_last"] < 1e-5
    assert summary["teacher_params"] == 200_000
    assert "sparsity vs teacher (0.20M)" in capsys.readouterr().out


def test_bad_inputs_give_one_line(tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    save_model(Wav2Vec2Model(tiny_config("hubert")), tmp_path / "plain.pt")
    whole = (tmp_path / "plain.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[:len(whole) // 2])  # e.g. an interrupted copy
    cases = [("truncated.pt", "not a readable PyTorch checkpoint"), ("other.pt", "not a dphubert/DPHuBERT model"),
             ("missing.pt", "no such file"), ("plain.pt", "nothing to prune")]
    for name, expected in cases:
        out = tmp_path / f"out_{name}"
        assert prune_cli.main(["--ckpt", str(tmp_path / name), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0] and expected in err[0], err
        assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "dphubert.bin.prune", "--ckpt", str(tmp_path / "plain.pt"),
                           "--out", str(tmp_path / "x.pt")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "nothing to prune" in done.stderr
