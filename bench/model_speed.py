"""Speed of the encoder on this machine, as ratios measured in one run (machines are noisy).

    python bench/model_speed.py [--batch 2] [--seconds 4] [--repeats 5] [--threads N]

Prints:
1. our forward vs torchaudio's ``hubert_base`` forward with the same weights (eval, no grad);
2. a gated training step (CNN-channel, head and FFN-unit gates + the expected-parameter term) vs an ungated one.
Each pair is timed interleaved (A, B, A, B, ...) and the medians are compared.
"""

import argparse

import torch
import torchaudio

from dphubert.models import Wav2Vec2Model, base_config
from timing import interleaved  # bench/timing.py (this directory is on sys.path)


def torchaudio_copy(model: Wav2Vec2Model) -> torch.nn.Module:
    reference = torchaudio.models.hubert_base()
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0")
        state[key.replace("conv.weight_v", "conv.parametrizations.weight.original1")] = value
    reference.load_state_dict(state)
    return reference.eval()


def train_step(model, x, with_params_term):
    states, _ = model.extract_features(x)
    loss = sum(s.float().pow(2).mean() for s in states[1::4])
    if with_params_term:
        loss = loss + model.expected_num_params() * 1e-9
    loss.backward()
    model.zero_grad(set_to_none=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, int(args.seconds * 16000))
    print(f"input {args.batch} x {args.seconds:g} s, {torch.get_num_threads()} threads, torch {torch.__version__}")

    ours = Wav2Vec2Model(base_config("hubert", encoder_layer_drop=0.0)).eval()
    reference = torchaudio_copy(ours)
    with torch.inference_mode():
        ours_out = ours.extract_features(x)[0][-1]
        ref_out = reference.extract_features(x)[0][-1]
        print(f"max |ours - torchaudio| on the last layer: {(ours_out - ref_out).abs().max().item():.2e}")
        t_ours, t_ref = interleaved([lambda: ours.extract_features(x), lambda: reference.extract_features(x)],
                                    args.repeats)
    print(f"forward: ours {t_ours:.3f} s, torchaudio {t_ref:.3f} s, ratio {t_ours / t_ref:.3f}x "
          f"(below 1.0x: ours is faster)")

    ungated = Wav2Vec2Model(base_config("hubert", encoder_layer_drop=0.0)).train()
    gated = Wav2Vec2Model(base_config("hubert", encoder_layer_drop=0.0, extractor_prune_conv_channels=True,
                                      encoder_prune_attention_heads=True,
                                      encoder_prune_feed_forward_intermediate=True)).train()
    t_gated, t_plain = interleaved([lambda: train_step(gated, x, True), lambda: train_step(ungated, x, False)],
                                   args.repeats)
    print(f"train step: gated {t_gated:.3f} s, ungated {t_plain:.3f} s, ratio {t_gated / t_plain:.3f}x "
          f"(the cost of the gates)")


if __name__ == "__main__":
    main()
