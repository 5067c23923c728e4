"""Timing helper shared by the benchmarks: run several functions interleaved so machine load hits them alike."""

import platform
import statistics
import time
from pathlib import Path
from typing import Callable, List, Sequence

# Instruction sets that change which engine wins (int8 dot products, AMX tiles): export_speed.py prints them.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``"<model name> (<features present>)"`` from Linux's cpuinfo, or the platform's processor string."""
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    fields = {}
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # (the first core's)
    flags = set(fields.get("flags", "").split())
    present = ", ".join(f for f in CPU_FEATURES if f in flags) or "none of " + "/".join(CPU_FEATURES)
    return f"{fields.get('model name', platform.machine())} ({present})"


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
