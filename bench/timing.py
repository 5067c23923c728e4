"""Timing helper shared by the benchmarks: run several functions interleaved so machine load hits them alike."""

import statistics
import time
from typing import Callable, List, Sequence


def interleaved(fns: Sequence[Callable[[], object]], repeats: int, pause: float = 0.0) -> List[float]:
    """Median seconds per call of each function, timed A, B, C, A, B, C, ... after one warm-up call each.

    ``pause`` seconds (untimed) after every call: thread pools that spin-wait after their work (OpenMP's in
    PyTorch, onnxruntime's) would otherwise hold the cores while the next function runs.
    """
    times: List[List[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
            if pause:
                time.sleep(pause)
    return [statistics.median(t) for t in times]
