"""The s3prl upstream: registration, contract, padding, released files, and ESPnet's S3prlFrontend."""

import torch
import pytest

from conftest import ALL_GATES, tiny_config
from dphubert.models import Wav2Vec2Model, save_model
from dphubert.s3prl.expert import UpstreamExpert, register


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    gated = Wav2Vec2Model(tiny_config("wavlm", **ALL_GATES)).eval()
    for gate in gated.gates().values():
        gate.log_alpha.data.normal_(1.5, 2.0)
    path = tmp_path_factory.mktemp("up") / "pruned.pt"
    save_model(gated.prune(), path)
    return path


def test_s3prl_upstream_contract_and_padding(model_file):
    register()
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("dphubert_local", path_or_url=str(model_file)).eval()
    expert = upstream.upstream
    assert expert.get_downsample_rates("hidden_states") == 40  # tiny CNN: 5 * 2 * 2 * 2
    wavs = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 12345, 8000])
    with torch.no_grad():
        states, state_lengths = upstream(wavs, lengths)
    assert len(states) == expert.model.num_layers + 1
    for h, n in zip(states, state_lengths):
        assert h.shape[0] == 3 and h.shape[2] == 48
        # s3prl's Featurizer tolerance: frames within a few of samples / downsample rate
        assert torch.all((n - lengths // 40).abs() <= 2)
    with torch.no_grad():
        for i in range(3):
            alone = expert([wavs[i, :lengths[i]]])["hidden_states"]
            for h, a in zip(states, alone):
                n = a.shape[1]
                assert (h[i, :n] - a[0]).abs().max() < 1e-4


def test_gated_model_is_refused(tmp_path):
    path = tmp_path / "gated.pt"
    save_model(Wav2Vec2Model(tiny_config("hubert", **ALL_GATES)), path)
    with pytest.raises(ValueError, match="prune it first"):
        UpstreamExpert(str(path))


def test_espnet_s3prl_frontend_uses_the_upstream(model_file):
    register()
    from espnet2.asr.frontend.s3prl import S3prlFrontend

    frontend = S3prlFrontend(fs=16000, frontend_conf={"upstream": "dphubert_local", "path_or_url": str(model_file)},
                             multilayer_feature=True)
    feats, feat_lengths = frontend(torch.randn(2, 16000), torch.tensor([16000, 9000]))
    assert feats.shape[0] == 2 and feats.shape[2] == frontend.output_size() == 48
    assert feat_lengths.tolist() == [400, 225]


def test_exported_onnx_file_is_the_dphubert_onnx_upstream(model_file, tmp_path):
    """The same model through onnxruntime (``dphubert_onnx``) gives s3prl what ``dphubert_local`` gives."""
    from dphubert.export import export_onnx
    from dphubert.models import load_model

    register()
    from s3prl.nn import S3PRLUpstream

    export_onnx(load_model(model_file), tmp_path / "m.onnx")
    onnx_upstream = S3PRLUpstream("dphubert_onnx", path_or_url=str(tmp_path / "m.onnx")).eval()
    local = S3PRLUpstream("dphubert_local", path_or_url=str(model_file)).eval()
    wavs = torch.randn(2, 9000)
    lengths = torch.tensor([9000, 6100])
    with torch.no_grad():
        (a, a_lengths), (b, b_lengths) = onnx_upstream(wavs, lengths), local(wavs, lengths)
    assert len(a) == len(b)
    for x, y, n in zip(a, b, b_lengths):
        for i in range(2):
            assert (x[i, :n[i]] - y[i, :n[i]]).abs().max() < 1e-4
