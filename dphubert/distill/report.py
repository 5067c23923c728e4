"""Training reports: ``train.log``, TensorBoard scalars and a PNG of the curves (all written by rank 0 only).

``exp/<tag>/train.log``      log lines (appended across resumes)
``exp/<tag>/tensorboard/``   scalars ``train/<term>``, ``valid/<term>`` (loss terms, expected vs target sparsity,
                             lambdas, lr, expected params and GMACs); view with ``tensorboard --logdir exp``
``exp/<tag>/training.png``   loss, expected vs target sparsity (of parameters and MACs) and expected parameters
                             and MACs over steps
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

LOGGER_NAME = "dphubert"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.Handler):
    """Console output that does not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(exp_dir: Optional[Path], is_main: bool, rank: int = 0) -> logging.Logger:
    """Log INFO of the ``dphubert`` loggers to the console and ``exp_dir/train.log`` (rank 0; others: warnings)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter(_FORMAT if is_main else f"[rank {rank}] {_FORMAT}"))
    logger.addHandler(console)
    if exp_dir is not None and is_main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(exp_dir / "train.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    return logger


class TensorBoard:
    """A SummaryWriter that is a no-op on ranks other than 0; ``purge_step`` drops events logged after a resume
    point."""

    def __init__(self, log_dir: Path, enabled: bool, purge_step: Optional[int] = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, prefix: str, values: Dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Step 1's sparsity curves: parameters in blue, MACs in orange, targets dashed.
_CURVES = {"expected_sparsity": ("#4c72b0", "-", "params sparsity (expected)"),
           "target_sparsity": ("#4c72b0", "--", "params target"),
           "expected_macs_sparsity": ("#dd8452", "-", "MACs sparsity (expected)"),
           "target_macs_sparsity": ("#dd8452", "--", "MACs target")}


def plot_history(history: List[Dict[str, float]], path: Path) -> Optional[Path]:
    """Loss, sparsity (expected vs target, params and MACs) and expected parameters / MACs over steps."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    panels = [("loss", ["loss", "distill"])]
    if "expected_sparsity" in history[0]:  # Step 1: params sparsity, and MACs sparsity where it was logged
        panels.append(("sparsity", ["expected_sparsity", "target_sparsity", "expected_macs_sparsity",
                                    "target_macs_sparsity"]))
        panels.append(("parameters", ["expected_params"]))
        if "expected_gmacs" in history[0]:
            panels.append(("GMACs per 10 s", ["expected_gmacs"]))
    if "masked_accuracy" in history[0]:  # HuBERT pretraining
        panels = [("loss", ["loss", "masked_loss", "unmasked_loss"]),
                  ("accuracy", ["masked_accuracy", "unmasked_accuracy"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        for key in keys:
            if key in history[0]:
                color, style, label = _CURVES.get(key, (None, "-", key))
                ax.plot(steps, [h.get(key, float("nan")) for h in history], label=label, color=color,
                        linestyle=style)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
