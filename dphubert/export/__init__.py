"""Shipping a compressed model: ONNX export (fp32 / int8) and Kaldi-format features for other toolkits."""

from .graph import ExportError, TraceableEncoder, check_layers, check_ungated
from .onnx_export import (INPUT_NAMES, OUTPUT_NAMES, OnnxEncoder, check_waveforms, check_writable, export_onnx,
                          format_drift, layer_drift, quantize_int8)

__all__ = [
    "ExportError", "INPUT_NAMES", "OUTPUT_NAMES", "OnnxEncoder", "TraceableEncoder", "check_layers",
    "check_ungated", "check_waveforms", "check_writable", "export_onnx", "format_drift", "layer_drift", "quantize_int8",
]
