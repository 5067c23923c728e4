"""One training step of an s3prl utterance-level head (KS, IC, SID), s3prl's helpers vs dphubert.superb.linear_backward.

    python bench/superb_head_speed.py [--batch 8 32 64] [--repeats 20] [--frames 101] [--dim 256] [--layers 5]

The step is the one s3prl's runner and the KS expert take: the Featurizer's learned weighted sum of ``--layers``
hidden states, ``Featurizer.tolist``, the expert's ``pad_sequence``, the 256-dim projector, ``MeanPooling`` and the
class layer, forward and backward, one thread. s3prl's own functions and ours are timed interleaved (medians);
the ratio is the result. Losses and gradients are compared for equality on every batch size.
"""

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dphubert.superb import linear_backward  # noqa: E402
from timing import interleaved  # bench/timing.py (this directory is on sys.path)


def head_step(helpers, states, wavs, lengths, weights, projector, classifier):
    tolist, pad_sequence, mean_pooling = helpers
    weights.grad = None
    projector.zero_grad()
    norm = torch.softmax(weights, dim=0)
    summed = (norm[:, None, None, None] * states).sum(0)
    items = tolist(SimpleNamespace(downsample_rate=320), wavs, summed)
    padded = pad_sequence(items, batch_first=True)
    pooled, _ = mean_pooling(None, projector(padded), lengths)
    loss = classifier(pooled).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), weights.grad.clone(), projector.weight.grad.clone()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--frames", type=int, default=101, help="frames of the longest item (101: 1 s of FBANK at 10 ms)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from dphubert.superb import running

    running.setup()
    names = ("featurizer_tolist", "pad_sequence", "mean_pooling_forward")
    s3prl_own = linear_backward.s3prl_originals()
    s3prl_helpers = tuple(s3prl_own[name] for name in names)
    ours = tuple(getattr(linear_backward, name) for name in names)
    projector, classifier = torch.nn.Linear(args.dim, 256), torch.nn.Linear(256, 12)
    print(f"utterance-level head step, {args.layers} x {args.dim}-dim states, up to {args.frames} frames, 1 thread, "
          f"{args.repeats} interleaved repeats")
    print("| batch | s3prl's helpers | linear_backward | speed-up | same loss and gradients |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        lengths = torch.tensor([args.frames - (i * 7) % (args.frames // 2) for i in range(batch)])
        wavs = [torch.zeros(int(n) * 320) for n in lengths]
        states = torch.randn(args.layers, batch, args.frames, args.dim)
        weights = torch.zeros(args.layers, requires_grad=True)
        run = [lambda h=h: head_step(h, states, wavs, lengths, weights, projector, classifier)
               for h in (s3prl_helpers, ours)]
        same = all(torch.equal(a, b) for a, b in zip(run[0](), run[1]()))
        slow, fast = interleaved(run, args.repeats)
        print(f"| {batch} | {slow * 1e3:.1f} ms | {fast * 1e3:.1f} ms | {slow / fast:.2f}x | {same} |")


if __name__ == "__main__":
    main()
