"""CPU speed of the deployed encoder: PyTorch fp32 vs onnxruntime fp32 vs onnxruntime int8, ratios in one run.

    python bench/export_speed.py [--threads 1 2] [--repeats 5] [--batch 4] [--demo-model exp/<tag>/final/model.pt] \
        [--int8-cnn-convs 0 3 6] [--workers 2] [--profile]

For two models, (a) the demo's final model (``--demo-model``; without one, the demo teacher's shape from
egs/demo/conf/pretrain_hubert.yaml, 4 x 256 with a 128-channel CNN, pruned at random to ~0.75 sparsity) and
(b) a HuBERT-Base-shaped model pruned at random to ~0.75 sparsity (CNN channels, heads, FFN units; random
weights, which time like trained ones): latency of one 10 s utterance, and throughput (seconds of audio per
second) for a padded batch of ``--batch`` utterances of 6-10 s, and for the same utterances one call each (no
padding; smaller tensors). ``--workers N``: the same utterances also shared round-robin by N workers (threads,
one engine each, 1 intra-op thread), the way a server runs one request per core; printed beside how much N
workers of a compute-bound product (a 512 x 512 fp32 matmul) gain over one, which tells the cores' shared caches
and memory bandwidth apart from the engines' own scaling. All hidden states are computed and returned in every
case. The three engines are timed interleaved (A, B, C, A, B, C, ...; medians), so machine load hits them alike;
the ratios against PyTorch fp32 are the result, the absolute times depend on the load (printed).
The int8 model's drift (relative L2 error of the last hidden state vs PyTorch, on the export's synthetic check
input with speech's level changes, ``check_waveforms``) is printed beside its speed; one int8 engine per
``--int8-cnn-convs`` value (CNN convs after the first run in int8; default the export's).
``--profile``: where onnxruntime's time goes for the 10 s utterance, per op type (its own profiler, 1 thread).

PyTorch is timed with glibc's malloc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``; the script re-executes itself with them unless ``--default-malloc``): by default glibc
hands the CNN's large buffers back to the OS after every call and the next call page-faults them in again, which
cost PyTorch a third of its time on the demo model (93 ms instead of 64 ms per 10 s, 1 thread, 3.6x the page
faults). onnxruntime keeps its own arena either way. Ratios against an allocator-bound PyTorch would flatter ONNX.
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dphubert.export import OnnxEncoder, check_waveforms, export_onnx, layer_drift  # noqa: E402
from dphubert.export.onnx_export import DEFAULT_INT8_CNN_CONVS  # noqa: E402
from dphubert.models import Wav2Vec2Model, base_config, load_model  # noqa: E402
from timing import cpu_description, interleaved  # bench/timing.py (this directory is on sys.path)

ALL_GATES = dict(extractor_prune_conv_channels=True, encoder_prune_attention_heads=True,
                 encoder_prune_attention_layer=True, encoder_prune_feed_forward_intermediate=True,
                 encoder_prune_feed_forward_layer=True)


def demo_teacher_config(**extra):
    import yaml

    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "egs/demo/conf/pretrain_hubert.yaml").read_text())
    c = conf["cnn_channels"]
    return base_config("hubert", extractor_conv_layer_config=[[c, 10, 5]] + [[c, 3, 2]] * 4 + [[c, 2, 2]] * 2,
                       encoder_embed_dim=conf["embed_dim"], encoder_num_layers=conf["num_layers"],
                       encoder_num_heads=conf["num_heads"], encoder_ff_interm_features=conf["ffn_dim"],
                       encoder_pos_conv_kernel=conf["pos_conv_kernel"], encoder_pos_conv_groups=conf["pos_conv_groups"],
                       encoder_layer_drop=0.0, **extra)


def randomly_pruned(config, sparsity: float = 0.75, seed: int = 0) -> Wav2Vec2Model:
    """Gates with random log_alpha, shifted (bisection) until the deterministic size is (1 - sparsity) x full."""
    torch.manual_seed(seed)
    full = Wav2Vec2Model(config).num_params()
    gated = Wav2Vec2Model({**config, **ALL_GATES}).eval()
    noise = {name: torch.randn_like(g.log_alpha) * 2.0 for name, g in gated.gates().items()}
    low, high = -10.0, 10.0
    for _ in range(30):
        mid = (low + high) / 2
        for name, gate in gated.gates().items():
            gate.log_alpha.data = noise[name] + mid
        if gated.deterministic_num_params() > (1 - sparsity) * full:
            high = mid
        else:
            low = mid
    pruned = gated.prune()
    print(f"  random pruning: {pruned.num_params() / 1e6:.2f}M of {full / 1e6:.2f}M parameters "
          f"(sparsity {1 - pruned.num_params() / full:.3f})")
    return pruned


def profile_ops(path, x, n, runs: int = 4, top: int = 12):
    """onnxruntime's profiler on one thread: milliseconds per run by op type, largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(path).with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, {"waveforms": x, "lengths": n})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
    warm_up_end = runs_seen[0][0] + runs_seen[0][1]  # the first run is the warm-up: its kernels are left out
    per_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warm_up_end:
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    total = sum(per_op.values())
    print(f"  {Path(path).name}: {total:.1f} ms per run in kernels; " + ", ".join(
        f"{op} {ms:.1f} ({100 * ms / total:.0f}%)" for op, ms in per_op.most_common(top)))


def bench_model(name, model, args, workdir):
    fp32 = export_onnx(model, Path(workdir) / f"{name}.onnx")
    int8 = {convs: export_onnx(model, Path(workdir) / f"{name}.int8.cnn{convs}.onnx", precision="int8",
                               int8_cnn_convs=convs) for convs in args.int8_cnn_convs}
    print(f"  ONNX files: fp32 {fp32.stat().st_size / 2 ** 20:.1f} MiB, int8 "
          f"{next(iter(int8.values())).stat().st_size / 2 ** 20:.1f} MiB")
    rng = np.random.default_rng(0)
    one = torch.from_numpy(rng.uniform(-0.3, 0.3, (1, 160000)).astype(np.float32))
    seconds = rng.uniform(6, 10, args.batch)
    seconds[0] = 10.0
    lengths = torch.tensor([int(s * 16000) for s in seconds])
    batch = torch.from_numpy(rng.uniform(-0.3, 0.3, (args.batch, int(lengths.max()))).astype(np.float32))
    check = check_waveforms(48000)
    for convs, path in int8.items():
        drift = layer_drift(model, OnnxEncoder(path), *check)[-1]
        print(f"  int8 ({convs} int8 CNN convs) drift on the last hidden state (speech-like check input): "
              f"relative L2 {drift['relative_l2']:.2e}, max |diff| {drift['max_abs_diff']:.2e}")
    if args.profile:
        for path in (fp32, *int8.values()):
            profile_ops(path, one.numpy(), np.array([160000]))
    print(f"  {'threads':>7} {'case':<24} {'engine':<20} {'median s':>9} {'audio s/s':>10} {'vs PyTorch':>11}")
    rows = []
    items = [(batch[i:i + 1, : int(n)], lengths[i:i + 1]) for i, n in enumerate(lengths)]
    for threads in args.threads:
        torch.set_num_threads(threads)
        engines = {"PyTorch fp32": None, "onnxruntime fp32": OnnxEncoder(fp32, threads=threads)}
        engines.update({f"ort int8, {convs} CNN": OnnxEncoder(path, threads=threads) for convs, path in int8.items()})
        cases = {"latency, 1 x 10 s": [(one, torch.tensor([160000]))],
                 f"throughput, {args.batch} x 6-10 s": [(batch, lengths)],
                 "  same, item by item": items}
        for label, calls in cases.items():
            fns = [lambda: run_torch(model, calls)] + [lambda e=e: run_onnx(e, calls)
                                                       for e in list(engines.values())[1:]]
            times = interleaved(fns, args.repeats, pause=0.2)  # engines each alone on the cores
            rows += report(threads, label, engines, times, calls)
    if args.workers:
        rows += bench_workers(model, fp32, int8, items, args)
    return rows


def run_torch(model, calls):
    with torch.inference_mode():
        for x, n in calls:
            model.extract_features(x, n)


def run_onnx(engine, calls):
    for x, n in calls:
        engine(x.numpy(), n.numpy())


def report(threads, label, engines, times, calls):
    """Print and return one row per engine: median seconds, audio seconds per second, ratio to the first."""
    audio = sum(float(n.sum()) for _, n in calls) / 16000
    rows = []
    for engine, t in zip(engines, times):
        rows.append((threads, label, engine, t, audio / t, times[0] / t))
        print(f"  {threads:>7} {label:<24} {engine:<20} {t:9.3f} {audio / t:10.1f} {times[0] / t:10.2f}x", flush=True)
    return rows


def bench_workers(model, fp32, int8, items, args):
    """The utterances shared round-robin by ``args.workers`` threads, one engine with 1 thread each."""
    workers = args.workers
    torch.set_num_threads(1)  # PyTorch's intra-op pool; each worker thread runs its own ops
    shares = [items[w::workers] for w in range(workers)]
    pool = ThreadPoolExecutor(workers)

    def in_parallel(jobs):
        for future in [pool.submit(job) for job in jobs]:
            future.result()

    engines = {"PyTorch fp32": [lambda s=s: run_torch(model, s) for s in shares]}
    for name, path in {"onnxruntime fp32": fp32, **{f"ort int8, {c} CNN": p for c, p in int8.items()}}.items():
        engines[name] = [lambda s=s, e=OnnxEncoder(path, threads=1): run_onnx(e, s) for s in shares]
    times = interleaved([lambda jobs=jobs: in_parallel(jobs) for jobs in engines.values()], args.repeats, pause=0.2)
    rows = report(1, f"  same, {workers} workers x 1", engines, times, items)
    print(f"  {workers} workers of a compute-bound product (512 x 512 fp32 matmul, 1 thread each) run "
          f"x{compute_bound_scaling(workers, pool):.2f} the throughput of one; compare each engine's {workers}-worker "
          "row with its 1-thread item-by-item row")
    pool.shutdown()
    return rows


def compute_bound_scaling(workers: int, pool, calls: int = 100) -> float:
    """Throughput of ``workers`` threads running a compute-bound product (512 x 512 matmuls, 3 MB) over one thread's."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)

    def job():
        for _ in range(calls):
            torch.mm(a, b)

    job()
    start = time.perf_counter()
    job()
    alone = time.perf_counter() - start
    start = time.perf_counter()
    for future in [pool.submit(job) for _ in range(workers)]:
        future.result()
    return workers * alone / (time.perf_counter() - start)


KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 30), "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)}


def reexec_with_malloc_settings():
    """Restart this script with glibc's malloc keeping freed memory (see the module docstring), once."""
    if all(os.environ.get(key) == value for key, value in KEEP_FREED_MEMORY.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="thread counts to measure (each for torch and onnxruntime alike), e.g. 1 2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--demo-model", default=None, help="a trained demo final model (default: random pruning)")
    parser.add_argument("--skip-base", action="store_true", help="only the demo-shaped model")
    parser.add_argument("--profile", action="store_true", help="print onnxruntime's time per op type (1 thread)")
    parser.add_argument("--workers", type=int, default=0,
                        help="also share the batch's utterances among N workers with 1 thread each (e.g. 2)")
    parser.add_argument("--int8-cnn-convs", type=int, nargs="+", default=[DEFAULT_INT8_CNN_CONVS],
                        help="int8 files to time: CNN convs after the first in int8 (the export's option)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="time PyTorch with glibc's default malloc (it re-faults its large buffers every call)")
    args = parser.parse_args()
    if args.workers == 1 or args.workers < 0:
        parser.error("--workers: give 2 or more (one worker is the 1-thread 'item by item' row)")
    if not args.default_malloc:
        reexec_with_malloc_settings()
    import onnxruntime

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads {args.threads} (torch and onnxruntime alike), {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.repeats} repeats, glibc malloc "
          f"{'default' if args.default_malloc else 'keeping freed memory (MALLOC_MMAP/TRIM_THRESHOLD_ 1 GiB)'}")
    # The ratios depend on the CPU (bench/README.md: an AMX Xeon gives lower ones than an AMD EPYC)
    print(f"CPU: {cpu_description()}")
    models = {}
    if args.demo_model:
        models["demo final"] = lambda: load_model(args.demo_model)
    else:
        models["demo-shaped (4 x 256), random 0.75"] = lambda: randomly_pruned(demo_teacher_config())
    if not args.skip_base:
        models["HuBERT-Base-shaped, random 0.75"] = lambda: randomly_pruned(base_config("hubert",
                                                                                         encoder_layer_drop=0.0))
    with tempfile.TemporaryDirectory() as workdir:
        for i, (name, build) in enumerate(models.items()):
            print(f"\n{name}")
            bench_model(f"m{i}", build(), args, workdir)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.1f} at the end")


if __name__ == "__main__":
    main()
