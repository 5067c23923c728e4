"""The Step-1 "layer 0" target option ``layer0``: ``transformer_input`` (our hidden state 0, what
``extract_features`` returns by default: after the positional conv and, post-LN, the encoder LayerNorm, HF/s3prl's
state 0) or ``projection`` (distill_prune's default, as in the paper's code: the feature-projection output before
the positional conv; docs/method.md, "What layer 0 is"; final_distill follows its Step-1 file unless set), for the
student, the online teacher and the teacher dump."""

import argparse

import pytest
import soundfile
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_config
from test_distill import FAST, make_data_dir
from dphubert.bin import distill_prune, final_distill
from dphubert.distill import (LayerDistillTask, LayerProjections, TeacherFeatureReader, distill_loss,
                              dump_teacher_features, gated_student, load_config)
from dphubert.distill.errors import DistillError, TeacherMismatchError
from dphubert.distill.tasks import loss_weights
from dphubert.distill.teacher import OnlineTeacher
from dphubert.models import Wav2Vec2Model, save_model
from dphubert.models.components import lengths_to_padding_mask


def projection_output(model, waveforms, lengths=None):
    """The feature projection of the CNN output, computed directly from the modules (padded frames zeroed)."""
    if model.normalize_waveform:  # Large models: each waveform normalised over its valid samples
        valid = waveforms.size(1) if lengths is None else lengths
        waveforms = torch.stack([F.pad(F.layer_norm(w[:n], (int(n),)), (0, w.size(0) - int(n)))
                                 for w, n in zip(waveforms, torch.as_tensor(valid).expand(len(waveforms)))])
    with torch.no_grad():
        features, frames = model.feature_extractor(waveforms, lengths)
        out = model.encoder.feature_projection(features)
    if frames is not None:
        out = out.masked_fill(lengths_to_padding_mask(frames, out.size(1))[..., None], 0.0)
    return out


@pytest.mark.parametrize("kind,large", [("hubert", False), ("wavlm", True)])
def test_extract_features_can_return_the_projection_as_state_0(kind, large):
    model = Wav2Vec2Model(tiny_config(kind, large=large)).eval()
    x, lengths = torch.randn(2, 4000), torch.tensor([4000, 3100])
    with torch.no_grad():
        default, frames = model.extract_features(x, lengths)
        paper, _ = model.extract_features(x, lengths, layer0="projection")
    assert torch.allclose(paper[0], projection_output(model, x, lengths), atol=1e-6)
    assert (paper[0][1, frames[1]:] == 0).all()
    assert (default[0] - paper[0]).abs().max() > 1e-2  # a different target indeed
    for a, b in zip(default[1:], paper[1:]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="layer0 must be one of"):
        model.extract_features(x, layer0="cnn")


def test_task_online_teacher_and_final_distill_follow_layer0(tmp_path):
    teacher = Wav2Vec2Model(tiny_config("hubert")).eval()
    student = gated_student(teacher, ["head", "interm"]).eval()
    x = torch.randn(2, 4000)
    frames = 99
    layers = [0, 3]
    targets = OnlineTeacher(teacher, layers, "projection")(None, x, frames)
    with torch.no_grad():
        default_states, _ = teacher.extract_features(x)
    assert torch.allclose(targets[0], projection_output(teacher, x), atol=1e-6)
    assert torch.equal(targets[1], default_states[3])

    weights = loss_weights(load_config("distill_prune"))
    task = LayerDistillTask(student, LayerProjections(layers, [[0], [3]], 48, 48), weights, layer0="projection").eval()
    with torch.no_grad():
        out = task(x, targets, 0)
        student_states, _ = student.extract_features(x)
    # identity projections: the loss compares the student's own projection output with the teacher's
    expected, _ = distill_loss([projection_output(student, x), student_states[3]], targets, layers, **weights)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert task.describe()["layer0"] == "projection"
    assert "layer0" not in LayerDistillTask(student, task.projections, weights).describe()  # old checkpoints resume

    # Step 2 distils the layer 0 of Step 1 (the file's distill.layer0) unless layer0 is set.
    file = task.model_file()
    save_model(student.prune(), tmp_path / "pruned.pt", {k: file[k] for k in ("distill_linear_projs", "distill")})
    args = argparse.Namespace(student=tmp_path / "pruned.pt", teacher="teacher.pt", trust_checkpoint=False)
    assert final_distill.build_task(load_config("final_distill"), teacher, args).layer0 == "projection"
    cfg = load_config("final_distill", overrides={"layer0": "transformer_input"})
    assert final_distill.build_task(cfg, teacher, args).layer0 == "transformer_input"


def test_dump_records_layer0_and_training_refuses_a_mismatch(tmp_path, capsys):
    assert load_config("distill_prune")["layer0"] == "projection"  # the paper's (a demo tie: docs/experiments.md)
    teacher = Wav2Vec2Model(tiny_config("hubert")).eval()
    save_model(teacher, tmp_path / "teacher.pt")
    data = make_data_dir(tmp_path / "d", [0.5, 0.6, 0.55, 0.65], seed=3)
    dump = tmp_path / "dump"
    dump_teacher_features(teacher, data, [0, 3], dump, progress=False, layer0="projection")
    assert yaml.safe_load((dump / "meta.yaml").read_text())["layer0"] == "projection"
    reader = TeacherFeatureReader(dump)
    wav = torch.from_numpy(soundfile.read(tmp_path / "d" / "audio" / "utt00.wav", dtype="float32")[0])
    assert torch.allclose(torch.from_numpy(reader.read("utt00", 0)).float(), projection_output(teacher, wav[None])[0],
                          atol=1e-2, rtol=1e-2)  # float16
    with pytest.raises(TeacherMismatchError, match="dumped layer 0 is projection .* layer0=transformer_input"):
        reader.check_compatible([0, 3], 48, 40, ["utt00"], "transformer_input")
    reader.check_compatible([3], 48, 40, ["utt00"], "transformer_input")  # layer 0 not distilled: no matter
    with pytest.raises(DistillError, match="layer0=projection but this run has layer0=transformer_input"):
        dump_teacher_features(teacher, data, [0, 3], dump, progress=False)

    common = ["--teacher", tmp_path / "teacher.pt", "--data", data, "--teacher-feats", dump, "--distill-layers",
              "[0, 3]", "--max-steps", "2", "--save-interval", "2", "--target-sparsity", "0.3", *FAST]
    assert distill_prune.main([str(a) for a in [*common, "--exp", tmp_path / "a", "--layer0", "transformer_input"]]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (besides progress bars)
    assert len(err) == 1 and "dumped layer 0 is projection" in err[0] and "--layer0 transformer_input" in err[0]
    assert distill_prune.main([str(a) for a in [*common, "--exp", tmp_path / "b"]]) == 0  # the default: projection
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert last["distill"]["layer0"] == "projection"
    assert distill_prune.main([str(a) for a in [*common, "--exp", tmp_path / "c", "--layer0", "cnn"]]) == 1
    assert "key 'layer0' must be one of ['transformer_input', 'projection']" in capsys.readouterr().err


def test_dump_teacher_takes_layers_and_layer0_from_the_step1_config(tmp_path, capsys):
    from dphubert.bin import dump_teacher

    save_model(Wav2Vec2Model(tiny_config("hubert", encoder_num_layers=6)), tmp_path / "teacher.pt")
    data = make_data_dir(tmp_path / "d", [0.5, 0.6], seed=4)
    config = tmp_path / "distill_prune.yaml"
    config.write_text("distill_layers: null\nlayer0: projection\n")
    base = ["--teacher", str(tmp_path / "teacher.pt"), "--data", str(data), "--config", str(config)]
    assert dump_teacher.main([*base, "--out", str(tmp_path / "a")]) == 0
    meta = yaml.safe_load((tmp_path / "a" / "meta.yaml").read_text())
    assert meta["layers"] == [0, 2, 4, 6] and meta["layer0"] == "projection"
    capsys.readouterr()

    # An explicit choice that disagrees with the config stops before anything is written.
    assert dump_teacher.main([*base, "--layers", "0,2", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "--layers 0,2 lacks layers [4, 6]: " in err and "distils layers [0, 2, 4, 6] of this 6-layer teacher" in err
    assert dump_teacher.main([*base, "--layer0", "transformer_input", "--out", str(tmp_path / "b")]) == 1
    assert "--layer0 transformer_input but " in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert dump_teacher.main([*base, "--layers", "0,1,2,4,6", "--out", str(tmp_path / "c")]) == 0  # more is fine
    assert yaml.safe_load((tmp_path / "c" / "meta.yaml").read_text())["layers"] == [0, 1, 2, 4, 6]
