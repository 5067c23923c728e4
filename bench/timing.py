"""Timing helper shared by the benchmarks: run several functions interleaved so machine load hits them alike."""

import statistics
import time
from typing import Callable, List, Sequence


def interleaved(fns: Sequence[Callable[[], object]], repeats: int) -> List[float]:
    """Median seconds per call of each function, timed A, B, C, A, B, C, ... after one warm-up call each."""
    times: List[List[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
