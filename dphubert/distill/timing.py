"""Where a training step's time goes: data, teacher forward, student forward + backward, optimizer, logging.

``Trainer(timer=PhaseTimer(device))`` wraps each phase in ``with timer("teacher"): ...`` and calls
``timer.end_step()`` after every optimizer step. On CUDA the phases are timed with CUDA events on the current
stream, resolved only when ``summary()`` is asked for (no host sync during training): a phase's time is then the
GPU-stream time between its start and end, so the ``data`` phase measures how long the GPU waited for a batch.
On CPU it is ``time.perf_counter``. The default ``NullTimer`` costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

PHASES = ("data", "teacher", "student", "optimizer", "logging")


class NullTimer:
    def __call__(self, phase: str):
        return contextlib.nullcontext()

    def end_step(self) -> None:
        pass


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.steps: List[List[Tuple[str, object, object]]] = [[]]  # per step: (phase, start, end) marks
        self.step_ends: List[object] = [self._mark()]  # the start of step 1, then the end of every step

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = self._mark()
        try:
            yield
        finally:
            self.steps[-1].append((phase, start, self._mark()))

    def end_step(self) -> None:
        self.step_ends.append(self._mark())
        self.steps.append([])

    def summary(self, skip: int = 0) -> Dict[str, float]:
        """Seconds per phase and ``total`` (wall time of the steps) over the steps after the first ``skip``."""
        if self.cuda:
            torch.cuda.synchronize()
        done = len(self.step_ends) - 1
        if done <= skip:
            raise ValueError(f"{done} timed steps, cannot skip {skip}")
        out: Dict[str, float] = defaultdict(float)
        for marks in self.steps[skip:done]:
            for phase, start, end in marks:
                out[phase] += self._seconds(start, end)
        out["total"] = self._seconds(self.step_ends[skip], self.step_ends[done])
        out["steps"] = done - skip
        return dict(out)
