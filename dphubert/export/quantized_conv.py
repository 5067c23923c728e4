"""The CNN's strided convs as int8 matrix products in the exported graph (the int8 file only).

onnxruntime's dynamic quantisation leaves a ``Conv`` in fp32 (its ``ConvInteger`` ran 7x slower than the fp32
conv on this project's Xeon), and the CNN is over half of a HuBERT-Base-shaped int8 model's time. Here each
conv after the first runs frames-major as

    DynamicQuantizeLinear(x)  ->  im2col on the uint8 tensor  ->  MatMulIntegerToFloat(columns, W_int8) + bias

i.e. the activations are quantised once per conv (per tensor, asymmetric uint8: ONNX's DynamicQuantizeLinear),
the im2col copies move bytes, not floats, and the product runs in onnxruntime's int8 GEMM. Weights are int8,
symmetric, one scale per output channel, 7-bit range (as ``quantize_int8``'s ``reduce_range``: no u8 x s8
saturation on CPUs without VNNI). The first conv stays fp32: it reads one channel, so int8 buys nothing, and the
group norm after it would amplify its rounding in channels of small variance. Only the first few convs after it
are worth it (``export_onnx``'s ``int8_cnn_convs``): with one activation scale per tensor, set by speech's peaks,
each int8 conv adds 1-2% error on speech.

The two ops are written with ``torch.autograd.Function.symbolic`` (the TorchScript exporter emits them as they
are); their ``forward`` computes the same arithmetic in PyTorch, which the trace needs for shapes.
"""

from typing import List, Tuple

import torch
from torch import Tensor

WEIGHT_QMAX = 63  # 7-bit signed weights: [-64, 63]


def quantize_weight(conv_weight: Tensor) -> Tuple[Tensor, Tensor]:
    """``(out, in, kernel)`` float -> int8 ``(kernel * in, out)`` im2col matrix (row = offset * in + channel) and
    its per-output-channel scale ``(out,)``."""
    matrix = conv_weight.detach().permute(2, 1, 0).reshape(-1, conv_weight.shape[0]).float()
    scale = matrix.abs().amax(dim=0).clamp(min=1e-12) / WEIGHT_QMAX
    q = torch.round(matrix / scale).clamp(-WEIGHT_QMAX - 1, WEIGHT_QMAX).to(torch.int8)
    return q, scale


class DynamicQuantizeLinear(torch.autograd.Function):
    """ONNX DynamicQuantizeLinear: ``x -> (uint8 q, scale, zero_point)`` over the whole tensor, range incl. 0."""

    @staticmethod
    def forward(ctx, x: Tensor):
        low = x.min().clamp(max=0.0)
        high = x.max().clamp(min=0.0)
        scale = ((high - low) / 255.0).clamp(min=1e-12)
        zero_point = torch.round(-low / scale).clamp(0, 255)
        q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
        return q, scale, zero_point.to(torch.uint8)

    @staticmethod
    def symbolic(g, x):
        return g.op("DynamicQuantizeLinear", x, outputs=3)


class MatMulIntegerToFloat(torch.autograd.Function):
    """onnxruntime's com.microsoft MatMulIntegerToFloat: ``(a_q - a_zp) a_scale @ (b_q - b_zp) b_scale + bias``."""

    @staticmethod
    def forward(ctx, a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point, bias):
        a = (a_q.float() - a_zero_point.float()) * a_scale
        b = (b_q.float() - b_zero_point.float()) * b_scale
        return torch.matmul(a, b) + bias

    @staticmethod
    def symbolic(g, a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point, bias):
        out = g.op("com.microsoft::MatMulIntegerToFloat", a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point,
                   bias)
        # The exporter knows no shape rule for a contrib op: state it (A's leading dims, B's columns, float).
        a_type = a_q.type()
        if a_type.dim() is not None:
            leading = [None] * (a_type.dim() - 1)
            out.setType(a_type.with_dtype(torch.float32).with_sizes(leading + [b_q.type().sizes()[-1]]))
        return out


def im2col_columns(x: Tensor, kernel: int, stride: int) -> List[Tensor]:
    """``(B, T, C)`` -> the pieces of ``im2col`` (``(B, T', n * C)`` each), to concatenate with more columns.

    With ``kernel = q * stride + r``, output frame t reads stride-long chunks t .. t + q - 1 (one reshape of the
    input gives every chunk) and, for r > 0, r more frames (strided slices).
    """
    batch, channels = x.shape[0], x.shape[2]
    q, r = divmod(kernel, stride)
    count = x[:, kernel - 1:: stride].shape[1]  # the last tap's strided slice has exactly the output frames
    chunks = x[:, : (count + q - 1) * stride].reshape(batch, -1, stride * channels)
    columns = [chunks] if q == 1 else [chunks[:, i: i + count] for i in range(q)]  # (each slice is a copy in ONNX)
    return columns + [x[:, q * stride + j: q * stride + j + (count - 1) * stride + 1: stride] for j in range(r)]


def im2col(x: Tensor, kernel: int, stride: int) -> Tensor:
    """``(B, T, C) -> (B, (T - kernel) // stride + 1, kernel * C)``: each output frame's input frames side by side."""
    columns = im2col_columns(x, kernel, stride)
    return columns[0] if len(columns) == 1 else torch.cat(columns, dim=2)


class QuantizedConv(torch.nn.Module):
    """A strided conv ``(B, T, C_in) -> (B, T', C_out)`` float frames-major, as int8 im2col @ int8 weight."""

    def __init__(self, conv: torch.nn.Conv1d):
        super().__init__()
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        weight, scale = quantize_weight(conv.weight)
        # Persistent buffers: the exporter writes them as initializers (non-persistent ones become Constant nodes).
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(weight[0]))
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        q, scale, zero_point = DynamicQuantizeLinear.apply(x)
        columns = im2col(q, self.kernel, self.stride)
        return MatMulIntegerToFloat.apply(columns, self.weight, scale, self.weight_scale, zero_point,
                                          self.weight_zero_point, self.bias)
