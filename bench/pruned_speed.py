"""Does a pruned model run as fast as its MACs say? Forward time of pruned HuBERT-Base-shaped models vs the unpruned
one, as ratios measured in one run (machines are noisy).

    python bench/pruned_speed.py [--params-target 0.75] [--macs-target 0.75] [--batch 1] [--seconds 4]
                                 [--repeats 5] [--threads N] [--summary exp/<tag>/summary.json ...]
    python bench/pruned_speed.py --device cuda --dtype bf16 --batch 8 --seconds 10     # on a GPU

Models: HuBERT Base (12 x 768, 3072 FFN units, 7 x 512 CNN) and copies pruned to ``--params-target`` (1 - params /
Base's) and to ``--macs-target`` (1 - MACs / Base's, for the bench's input). Their per-layer kept fractions follow
a profile: each ``--summary`` (the ``summary.json`` that ``dphubert.bin.prune`` writes beside a pruned model, with
its ``original`` sizes) gives one, its fractions of heads per layer, FFN units per layer and CNN channels per conv
layer applied to Base's sizes; without one, the built-in profile: the CNN fractions of the demo's 0.76-sparse
student (126/75/81/80/97/115/128 of 128 channels) and heads and FFN units falling linearly from all kept in
layer 1 to 40% in layer 12 (an assumption: pruned models keep more of their lower layers). A profile is scaled by
one factor (fractions clipped to [1 unit, all]) until the model meets the target. Weights are random (the speed
of a dense model does not depend on their values).

Prints per model: params, MACs, the forward time (median of interleaved repeats, eval, inference mode), the
speed-up ``t_full / t_pruned``, the MACs ratio ``macs_full / macs_pruned`` and their quotient, the fraction of the
MACs reduction the forward time realises (1.0: time follows MACs exactly; MACs are the cost that a target
controls only if time follows them).
"""

import argparse
import json
import time
from typing import Dict, List

import torch

from dphubert.models import Wav2Vec2Model, base_config
from dphubert.models.macs import count_macs
from timing import interleaved  # bench/timing.py (this directory is on sys.path)

DEMO_CNN_KEPT = [126 / 128, 75 / 128, 81 / 128, 80 / 128, 97 / 128, 115 / 128, 128 / 128]


def builtin_profile(num_layers: int) -> Dict[str, List[float]]:
    falling = [1.0 - 0.6 * i / max(num_layers - 1, 1) for i in range(num_layers)]
    return {"cnn": list(DEMO_CNN_KEPT), "heads": falling, "ffn": list(falling), "name": "built-in (see --help)"}


def profile_from_summary(path: str) -> Dict[str, List[float]]:
    summary = json.loads(open(path, encoding="utf-8").read())
    if "original" not in summary:
        raise SystemExit(f"{path}: no 'original' sizes (write it with python -m dphubert.bin.prune); "
                         f"pass the summary.json beside a pruned.pt")
    kept, full = summary, summary["original"]
    return {"cnn": [k / f for k, f in zip(kept["cnn_channels"], full["cnn_channels"])],
            "heads": [k["heads"] / max(f["heads"], 1) for k, f in zip(kept["layers"], full["layers"])],
            "ffn": [k["ffn_units"] / max(f["ffn_units"], 1) for k, f in zip(kept["layers"], full["layers"])],
            "name": path}


def scaled_config(full: dict, profile: Dict[str, List[float]], factor: float) -> dict:
    """Base's config with every size multiplied by ``factor`` x its profile fraction (at least 1, at most all)."""
    def size(n: int, fraction: float) -> int:
        return max(1, min(n, int(round(n * min(1.0, factor * fraction)))))

    def resized(sizes: List[int], fractions: List[float]) -> List[int]:
        # A profile of another depth (e.g. the demo's 4 layers) is stretched over Base's 12.
        return [size(n, fractions[i * len(fractions) // len(sizes)]) for i, n in enumerate(sizes)]

    cfg = json.loads(json.dumps(full))
    convs = cfg["extractor_conv_layer_config"]
    for conv, channels in zip(convs, resized([c[0] for c in convs], profile["cnn"])):
        conv[0] = channels
    cfg["encoder_num_heads"] = resized(cfg["encoder_num_heads"], profile["heads"])
    cfg["encoder_ff_interm_features"] = resized(cfg["encoder_ff_interm_features"], profile["ffn"])
    return cfg


def measure(cfg: dict, quantity: str, seconds: float) -> float:
    if quantity == "params":
        with torch.device("meta"):
            return Wav2Vec2Model(cfg).num_params()
    return count_macs(cfg, seconds)["total"]


def pruned_to(full: dict, profile, quantity: str, target: float, seconds: float) -> dict:
    """Bisection on the profile's factor until ``1 - quantity / full's`` is just above ``target``."""
    reference = measure(full, quantity, seconds)
    low, high = 0.0, 1.0 / max(min(min(v) for k, v in profile.items() if k != "name"), 1e-3)
    for _ in range(40):
        mid = (low + high) / 2
        sparsity = 1 - measure(scaled_config(full, profile, mid), quantity, seconds) / reference
        low, high = (mid, high) if sparsity > target else (low, mid)
    return scaled_config(full, profile, low)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-target", type=float, default=0.75)
    parser.add_argument("--macs-target", type=float, default=0.75)
    parser.add_argument("--summary", nargs="*", default=[], help="summary.json files whose kept fractions to use")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bf16", "fp16"))
    args = parser.parse_args()
    for name, target in (("--params-target", args.params_target), ("--macs-target", args.macs_target)):
        if not 0 < target < 1:
            parser.error(f"{name} must be in (0, 1), got {target}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    full = base_config("hubert", encoder_layer_drop=0.0)
    profiles = [profile_from_summary(p) for p in args.summary] or [builtin_profile(full["encoder_num_layers"])]
    models = {"unpruned": full}
    for k, profile in enumerate(profiles):
        tag = f" [{k}]" if len(profiles) > 1 else ""
        models[f"params {args.params_target:g}{tag}"] = pruned_to(full, profile, "params", args.params_target,
                                                                  args.seconds)
        models[f"macs {args.macs_target:g}{tag}"] = pruned_to(full, profile, "macs", args.macs_target, args.seconds)
    print(f"input {args.batch} x {args.seconds:g} s on {device} ({args.dtype}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; profiles: {', '.join(p['name'] for p in profiles)}")
    x = torch.randn(args.batch, int(args.seconds * 16000), device=device, dtype=dtype)
    built = {name: Wav2Vec2Model(cfg).to(device=device, dtype=dtype).eval() for name, cfg in models.items()}

    def forward(model):
        def run():
            model.extract_features(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    start = time.perf_counter()
    with torch.inference_mode():
        times = dict(zip(built, interleaved([forward(m) for m in built.values()], args.repeats)))
    base_params, base_macs, base_time = built["unpruned"].num_params(), count_macs(full, args.seconds)["total"], \
        times["unpruned"]
    print(f"{'model':<16} {'params':>9} {'sparsity':>8} {'GMACs':>8} {'MACs sp.':>8} {'time s':>8} {'speed-up':>8} "
          f"{'MACs ratio':>10} {'realised':>8}")
    for name, model in built.items():
        params, macs = model.num_params(), count_macs(model, args.seconds)["total"]
        speedup, macs_ratio = base_time / times[name], base_macs / macs
        print(f"{name:<16} {params / 1e6:>8.2f}M {1 - params / base_params:>8.3f} {macs / 1e9:>8.2f} "
              f"{1 - macs / base_macs:>8.3f} {times[name]:>8.3f} {speedup:>7.2f}x {macs_ratio:>9.2f}x "
              f"{speedup / macs_ratio:>8.2f}")
    for name, cfg in models.items():
        if name != "unpruned":
            print(f"{name}: CNN channels {[c[0] for c in cfg['extractor_conv_layer_config']]}, heads "
                  f"{cfg['encoder_num_heads']}, FFN units {cfg['encoder_ff_interm_features']}")
    print(f"realised = speed-up / MACs ratio (1.0: time follows MACs); {args.repeats} interleaved repeats, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
