"""Architecture summary of a (pruned) model: numbers as a dict / JSON, and a bar plot.

Usage::

    from dphubert.report import model_summary, plot_architecture, write_summary, format_summary
    summary = model_summary(pruned, teacher_params=94_371_456, original=gated_model)
    write_summary(summary, "exp/x/summary.json")
    plot_architecture(summary, "exp/x/architecture.png")
    print(format_summary(summary))

``original`` (a model or config, usually the gated model before pruning) gives the full sizes drawn behind
the kept ones; without it only the kept sizes are drawn.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from dphubert.models.config import is_wavlm, normalize_config
from dphubert.models.macs import count_macs

MACS_SECONDS = 10.0


def _config_of(model_or_config) -> Dict[str, Any]:
    config = model_or_config if isinstance(model_or_config, dict) else model_or_config.config
    return normalize_config(config)


def _layer_sizes(cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Heads and FFN units per layer; an absent block counts 0."""
    layers = []
    for i in range(cfg["encoder_num_layers"]):
        attention, ffn = bool(cfg["encoder_use_attention"][i]), bool(cfg["encoder_use_feed_forward"][i])
        if is_wavlm(cfg):
            heads = len(cfg["encoder_remaining_heads"][i])
        else:
            heads = cfg["encoder_num_heads"][i]
        layers.append({
            "layer": i + 1,
            "attention": attention,
            "heads": int(heads) if attention else 0,
            "feed_forward": ffn,
            "ffn_units": int(cfg["encoder_ff_interm_features"][i]) if ffn else 0,
        })
    return layers


def model_summary(model, teacher_params: Optional[int] = None,
                  original: Union[Dict[str, Any], Any, None] = None,
                  teacher_macs: Optional[float] = None) -> Dict[str, Any]:
    """Parameters, sparsity vs the teacher, MACs for 10 s (and their sparsity vs ``teacher_macs``, the teacher's
    MACs for 10 s), kept heads / FFN units / CNN channels.

    ``model``: a ``Wav2Vec2Model``. A gated model is described at its current (full) size, with
    ``deterministic_params`` telling what pruning would leave.
    """
    cfg = _config_of(model)
    params = model.num_params()
    gates = model.gates()
    summary: Dict[str, Any] = {
        "model_type": cfg["model_type"],
        "params": params,
        "gated": bool(gates),
        "deterministic_params": model.deterministic_num_params() if gates else params,
        "teacher_params": teacher_params,
        "sparsity": None if not teacher_params else 1.0 - params / teacher_params,
        "embed_dim": cfg["encoder_embed_dim"],
        "num_layers": cfg["encoder_num_layers"],
        "macs_seconds": MACS_SECONDS,
        "macs": count_macs(cfg, MACS_SECONDS),
        "layers": _layer_sizes(cfg),
        "cnn_channels": [c[0] for c in cfg["extractor_conv_layer_config"]],
    }
    summary["teacher_macs"] = teacher_macs
    summary["macs_sparsity"] = None if not teacher_macs else 1.0 - summary["macs"]["total"] / teacher_macs
    summary["total_heads"] = sum(layer["heads"] for layer in summary["layers"])
    summary["total_ffn_units"] = sum(layer["ffn_units"] for layer in summary["layers"])
    if original is not None:
        full = _config_of(original)
        summary["original"] = {
            "layers": _layer_sizes(full),
            "cnn_channels": [c[0] for c in full["extractor_conv_layer_config"]],
            "macs": count_macs(full, MACS_SECONDS),
        }
    return summary


def write_summary(summary: Dict[str, Any], json_path: Union[str, Path]) -> None:
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _millions(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def format_summary(summary: Dict[str, Any]) -> str:
    """A few human-readable lines."""
    lines = [f"{summary['model_type']}: {_millions(summary['params'])} params ({summary['params']:,}), "
             f"{summary['num_layers']} layers x {summary['embed_dim']} dims"]
    if summary["sparsity"] is not None:
        lines.append(f"sparsity vs teacher ({_millions(summary['teacher_params'])}): {summary['sparsity']:.4f}")
    macs = summary["macs"]
    line = f"MACs for {summary['macs_seconds']:g} s of audio: {macs['total'] / 1e9:.2f} G"
    if "original" in summary:
        line += f" (before pruning {summary['original']['macs']['total'] / 1e9:.2f} G)"
    if summary.get("macs_sparsity") is not None:
        line += f"; MACs sparsity vs teacher ({summary['teacher_macs'] / 1e9:.2f} G): {summary['macs_sparsity']:.4f}"
    lines.append(line)
    heads = " ".join(str(layer["heads"]) if layer["attention"] else "-" for layer in summary["layers"])
    units = " ".join(str(layer["ffn_units"]) if layer["feed_forward"] else "-" for layer in summary["layers"])
    lines.append(f"heads per layer: {heads}")
    lines.append(f"FFN units per layer: {units}")
    lines.append(f"CNN channels: {' '.join(map(str, summary['cnn_channels']))}")
    return "\n".join(lines)


def _title(summary: Dict[str, Any]) -> str:
    title = f"{summary['model_type']}: {_millions(summary['params'])} params"
    if summary["sparsity"] is not None:
        title += f", sparsity {summary['sparsity']:.3f} vs teacher {_millions(summary['teacher_params'])}"
    title += f", {summary['macs']['total'] / 1e9:.2f} GMACs per {summary['macs_seconds']:g} s"
    if summary.get("macs_sparsity") is not None:
        title += f" (MACs sparsity {summary['macs_sparsity']:.3f})"
    return title


def _bars(ax, labels, kept, full, color, ylabel, absent=None):
    """Kept sizes in colour over full sizes in grey; absent blocks marked with 'off'."""
    positions = list(range(len(labels)))
    if full is not None:
        ax.bar(positions, full, color="#dddddd", edgecolor="#999999", label="before pruning")
    ax.bar(positions, kept, color=color, label="kept")
    top = max(max(full or [0]), max(kept or [0]), 1)
    absent = absent or [False] * len(kept)
    for x, value, is_absent in zip(positions, kept, absent):
        text, color = ("off", "#cc0000") if is_absent else (str(value), "black")
        ax.text(x, value + top * 0.01, text, ha="center", va="bottom", fontsize=7, color=color)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.35)  # room for the value labels and the legend
    if full is not None:
        ax.legend(fontsize=7, loc="upper right", ncol=2)


def plot_architecture(summary: Dict[str, Any], png_path: Union[str, Path]) -> None:
    """Bars of kept heads and FFN units per layer and CNN channels per conv layer, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = summary["layers"]
    original = summary.get("original")
    layer_labels = [str(layer["layer"]) for layer in layers]
    fig, axes = plt.subplots(3, 1, figsize=(max(7.0, 0.45 * len(layers) + 3), 9), constrained_layout=True)
    _bars(axes[0], layer_labels, [layer["heads"] for layer in layers],
          [layer["heads"] for layer in original["layers"]] if original else None, "#4c72b0", "attention heads",
          absent=[not layer["attention"] for layer in layers])
    axes[0].set_xlabel("transformer layer")
    _bars(axes[1], layer_labels, [layer["ffn_units"] for layer in layers],
          [layer["ffn_units"] for layer in original["layers"]] if original else None, "#dd8452", "FFN units",
          absent=[not layer["feed_forward"] for layer in layers])
    axes[1].set_xlabel("transformer layer")
    cnn_labels = [str(i) for i in range(len(summary["cnn_channels"]))]
    _bars(axes[2], cnn_labels, summary["cnn_channels"], original["cnn_channels"] if original else None,
          "#55a868", "output channels")
    axes[2].set_xlabel("CNN layer")
    fig.suptitle(_title(summary), fontsize=10)
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
