"""The DistilHuBERT baseline against s3prl's own distiller code (installed: s3prl.upstream.distiller).

s3prl builds DistilHuBERT as ``DistillerModel(DistillerConfig(config["distiller"]))`` (upstream/distiller/model.py)
and initialises it from the teacher in ``DistillerForPretrain.__init__`` (pretrain/distiller/pretrain_expert.py:
the teacher's ``feature_extractor`` and ``post_extract_proj``, ``encoder.pos_conv`` and the first N
``encoder.layers``; the encoder's ``layer_norm`` and the output layer keep their initialisation). The same config
must give the same architecture and parameter count here, and for the same weights the same outputs: the feature
projection output (s3prl's ``feat_final``), every layer's hidden state and the heads' predictions.
"""

import re

import pytest
import torch

from conftest import tiny_config
from dphubert.convert.common import rename_keys
from dphubert.convert.fairseq import _RULES
from dphubert.distill.projections import PredictionHeads
from dphubert.distill.students import distilhubert_student
from dphubert.distill.tasks import DistilHubertTask
from dphubert.models import Wav2Vec2Model
from dphubert.s3prl import compat

compat.apply()
from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel  # noqa: E402

CONV = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 2, 2]]
PRED_LAYERS = [2, 3]


def s3prl_config(num_layers: int = 2) -> dict:
    """s3prl's config_model.yaml fields (pretrain/distiller), at the size of the tiny teacher."""
    return {"extractor_mode": "default", "extractor_conv_feature_layers": repr([tuple(c) for c in CONV]),
            "extractor_dropout": 0.0, "feature_grad_mult": 0.1, "conv_pos": 16, "conv_pos_groups": 4,
            "encoder_layers": num_layers, "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96,
            "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": False,
            "attention_type": "original", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
            "encoder_layerdrop": 0.0, "final_dim": 48, "out_layer_type": "expand-last", "n_tasks": len(PRED_LAYERS),
            "task_emb_type": "expand-last", "loss_type": "l1", "feat_pen_loss": 0.0, "cosine_loss": 1.0,
            "pred_layer_id": PRED_LAYERS, "init_teacher_conv_layers": True, "init_teacher_encoder_layers": True}


def teacher_model() -> Wav2Vec2Model:
    return Wav2Vec2Model(tiny_config(extractor_conv_layer_config=CONV, encoder_dropout=0.1,
                                     encoder_attention_dropout=0.1)).eval()


def ours(teacher: Wav2Vec2Model, num_layers: int = 2) -> DistilHubertTask:
    student = distilhubert_student(teacher, num_layers, None)
    heads = PredictionHeads(PRED_LAYERS, 48, 48, "mlp")
    return DistilHubertTask(student, heads, {}, feature_grad_mult=0.1)


def to_ours(state: dict) -> dict:
    """s3prl distiller names -> ours: the encoder as a fairseq HuBERT's; the output layer as our heads."""
    encoder = {k: v for k, v in state.items() if not k.startswith("output_layer.")}
    mapped = {f"student.{k}": v for k, v in rename_keys(encoder, _RULES).items()}
    mapped["heads.expand.weight"] = state["output_layer.0.weight"]
    mapped["heads.expand.bias"] = state["output_layer.0.bias"]
    for k in range(len(PRED_LAYERS)):  # SplitLinear: weight (heads, in, out), bias (1, 1, heads, out)
        mapped[f"heads.heads.{k}.weight"] = state["output_layer.2.weight"][k].T
        mapped[f"heads.heads.{k}.bias"] = state["output_layer.2.bias"][0, 0, k]
    return mapped


def weight_norm_as_ours(state: dict) -> dict:
    """torch's parametrised weight norm spells g / v as parametrizations.weight.original0 / 1."""
    return {re.sub(r"parametrizations\.weight\.original0", "weight_g",
                   re.sub(r"parametrizations\.weight\.original1", "weight_v", k)): v for k, v in state.items()}


def test_same_architecture_and_parameter_count():
    theirs = DistillerModel(DistillerConfig(s3prl_config()))
    task = ours(teacher_model())
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in task.parameters())
    mapped = to_ours(weight_norm_as_ours(theirs.state_dict()))
    own = task.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    assert not any("feature_projection.layer_norm" in k for k in own)  # s3prl's distiller has none
    assert task.student.config["encoder_layer_drop"] == 0.0
    assert task.student.config["encoder_dropout"] == task.student.config["encoder_attention_dropout"] == 0.1
    assert task.student.config["encoder_ff_interm_dropout"] == 0.1
    assert task.student.config["encoder_projection_dropout"] == 0.0


def test_same_outputs_for_the_same_weights():
    theirs = DistillerModel(DistillerConfig(s3prl_config())).eval()
    task = ours(teacher_model()).eval()
    task.load_state_dict(to_ours(weight_norm_as_ours(theirs.state_dict())))
    wave = 0.1 * torch.randn(2, 4000)
    with torch.no_grad():
        _, feat_final, pred, _, hiddens = theirs(wave, torch.ones_like(wave), get_hidden=True)
        states, _ = task.student.extract_features(wave, layer0="projection")
        preds = task.heads(states[-1])
    torch.testing.assert_close(states[0], feat_final, rtol=1e-5, atol=1e-5)
    for ours_state, their_state in zip(states[1:], hiddens):
        torch.testing.assert_close(ours_state, their_state, rtol=1e-5, atol=1e-5)
    for k, ours_pred in enumerate(preds):  # pred: (batch, heads, frames, dim)
        torch.testing.assert_close(ours_pred, pred[:, k], rtol=1e-5, atol=1e-5)


def test_initialised_from_the_teacher_as_s3prl_does():
    """Copied: CNN, projection, positional conv, first layers; fresh: the encoder LayerNorm (ones and zeros)."""
    teacher = teacher_model()
    with torch.no_grad():  # a teacher whose encoder LayerNorm is not the initial one
        teacher.encoder.transformer.layer_norm.weight.uniform_(0.5, 1.5)
    student = ours(teacher).student
    source = teacher.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith("encoder.transformer.layer_norm."):
            expected = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(value, expected), key
        else:
            assert torch.equal(value, source[key]), key


@pytest.mark.parametrize("factor", [0.1, 1.0])
def test_feature_grad_mult_scales_the_cnn_gradient(factor):
    """s3prl's GradMultiply on the CNN output: the CNN's gradient times feature_grad_mult, the rest unchanged."""
    teacher = teacher_model()
    wave = 0.1 * torch.randn(1, 4000)
    grads = {}
    for mult in (1.0, factor):
        student = ours(teacher).student.eval()
        states, _ = student.extract_features(wave, feature_grad_mult=mult)
        states[-1].pow(2).sum().backward()
        grads[mult] = (student.feature_extractor.conv_layers[1].conv.weight.grad.clone(),
                       student.encoder.feature_projection.projection.weight.grad.clone())
    torch.testing.assert_close(grads[factor][0], factor * grads[1.0][0])
    torch.testing.assert_close(grads[factor][1], grads[1.0][1])


def test_weight_decay_spares_only_the_biases():
    """s3prl's get_grouped_parameters: no decay for names with 'bias' (its 'LayerNorm.weight' matches nothing)."""
    task = ours(teacher_model())
    groups = task.param_groups({"lr": 2e-4, "weight_decay": 0.01})
    names = {id(p): n for n, p in task.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.01 for p in g["params"]}
    spared = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert spared == {n for n in names.values() if n.endswith(".bias")}
    assert "student.encoder.transformer.layers.0.layer_norm.weight" in decayed
    assert decayed | spared == set(names.values())
