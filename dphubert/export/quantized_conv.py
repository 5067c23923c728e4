"""The CNN's strided convs as int8 matrix products in the exported graph (the int8 file only).

onnxruntime's dynamic quantisation leaves a ``Conv`` in fp32 (its ``ConvInteger`` ran 7x slower than the fp32
conv on a 2-core Intel Xeon), and the CNN is most of a compressed model's time. Here each conv after the first
runs frames-major as

    per-chunk scales  ->  QuantizeLinear (per chunk)  ->  im2col on the uint8 tensor  ->  MatMulIntegerToFloat
    (columns, W_int8)  ->  * chunk scale + chunk shift

The activations get one scale per chunk of ``INT8_ROWS_PER_SCALE`` output frames (its input frames and the
``kernel - stride`` frames after them, asymmetric uint8 over [GELU_MIN, the chunk's max]). One scale per tensor
(ONNX's ``DynamicQuantizeLinear``) would be set by speech's peaks: the conv inputs' range is 25-44x their RMS, and
with it each int8 conv added 1-2% error on the demo's test speech, 6 of them 34% on the last state; per chunk of 4
frames each is 0.5-0.8% off, about what its 7-bit weights cost alone (0.4-0.6%). Chunks start at each item's first
frame and padding frames never set a scale, so an item of a padded batch is quantised as it is alone; the caller
pads the frames to whole chunks (``TraceableEncoder._pad_for_chunks``). Weights are int8, symmetric, one scale per
output channel, 7-bit range (as ``quantize_int8``'s ``reduce_range``: no u8 x s8 saturation on CPUs without VNNI).
The first conv stays fp32: it reads one channel, so int8 buys nothing, and the group norm after it would amplify
its rounding in channels of small variance.

The ops are written with ``torch.autograd.Function.symbolic`` (the TorchScript exporter emits them as they are);
their ``forward`` computes the same arithmetic in PyTorch, which the trace needs for shapes.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .onnx_shapes import reshape, reshape_leading

WEIGHT_QMAX = 63  # 7-bit signed weights: [-64, 63]


def quantize_weight(conv_weight: Tensor) -> Tuple[Tensor, Tensor]:
    """``(out, in, kernel)`` float -> int8 ``(kernel * in, out)`` im2col matrix (row = offset * in + channel) and
    its per-output-channel scale ``(out,)``."""
    matrix = conv_weight.detach().permute(2, 1, 0).reshape(-1, conv_weight.shape[0]).float()
    scale = matrix.abs().amax(dim=0).clamp(min=1e-12) / WEIGHT_QMAX
    q = torch.round(matrix / scale).clamp(-WEIGHT_QMAX - 1, WEIGHT_QMAX).to(torch.int8)
    return q, scale


class MatMulIntegerToFloat(torch.autograd.Function):
    """onnxruntime's com.microsoft MatMulIntegerToFloat (no bias): ``(a_q - a_zp) a_scale @ (b_q - b_zp) b_scale``."""

    @staticmethod
    def forward(ctx, a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point):
        a = (a_q.float() - a_zero_point.float()) * a_scale
        b = (b_q.float() - b_zero_point.float()) * b_scale
        return torch.matmul(a, b)

    @staticmethod
    def symbolic(g, a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point):
        out = g.op("com.microsoft::MatMulIntegerToFloat", a_q, b_q, a_scale, b_scale, a_zero_point, b_zero_point)
        # The exporter knows no shape rule for a contrib op: state it (A's leading dims, B's columns, float).
        a_type = a_q.type()
        if a_type.dim() is not None:
            leading = [None] * (a_type.dim() - 1)
            out.setType(a_type.with_dtype(torch.float32).with_sizes(leading + [b_q.type().sizes()[-1]]))
        return out


INT8_ROWS_PER_SCALE = 4  # output frames per activation scale (bench/README.md: accuracy and speed)
GELU_MIN = -0.17  # GELU(x) >= -0.16997: every conv after the first reads a GELU's output


class QuantizeLinear(torch.autograd.Function):
    """ONNX QuantizeLinear per axis 0: ``(M, K)`` float, ``(M,)`` scale and uint8 zero point -> uint8."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor):
        q = torch.round(x / scale[:, None]) + zero_point[:, None].float()
        return q.clamp(0, 255).to(torch.uint8)

    @staticmethod
    def symbolic(g, x, scale, zero_point):
        return g.op("QuantizeLinear", x, scale, zero_point, axis_i=0)


class QuantizedConv(torch.nn.Module):
    """A strided conv as an int8 product with one activation scale per chunk of ``rows`` output frames.

    ``forward(x (B, T, C_in) float frames-major, valid (B, T): 1.0, 0.0 on padding) -> (B, T / stride, C_out)``
    for T a multiple of ``span`` (``rows * stride``): chunk j's output rows read its ``span`` input frames and
    the first ``kernel - stride`` of the next chunk (its halo), which are quantised once more with chunk j's
    scale. Output rows past ``(T - kernel) // stride + 1`` read zeros past the end: the caller drops them.
    """

    def __init__(self, conv: torch.nn.Conv1d, rows: int):
        super().__init__()
        self.kernel, self.stride, self.rows = conv.kernel_size[0], conv.stride[0], rows
        self.halo = self.kernel - self.stride
        if not self.supports(self.kernel, self.stride):
            raise ValueError(f"kernel {self.kernel}, stride {self.stride}: needs stride <= kernel <= 2 * stride")
        self.span = rows * self.stride
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # Rows 1 .. rows - 1 read the first kernel - stride frames of the next row, within the chunk.
        inside = (torch.arange(1, rows)[:, None] * self.stride + torch.arange(self.halo)).reshape(-1)
        self.register_buffer("inside_frames", inside, persistent=False)
        weight, scale = quantize_weight(conv.weight)
        # Persistent buffers: the exporter writes them as initializers (non-persistent ones become Constant nodes).
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(weight[0]))
        self.register_buffer("column_sums", weight.float().sum(0) * scale)  # what the zero points add per channel
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias)
        self.register_buffer("unit_scale", torch.ones(()))
        self.register_buffer("zero", torch.zeros((), dtype=torch.uint8))

    @staticmethod
    def supports(kernel: int, stride: int) -> bool:
        return stride <= kernel <= 2 * stride

    def _chunk_scales(self, x: Tensor, valid: Tensor):
        """Per chunk (B, chunks): the scale and zero point of the range [GELU_MIN, max over its frames and halo];
        padding frames are left out, so an item's scales do not depend on the batch it is in."""
        high = reshape(x.amax(dim=2) * valid, 0, -1, self.span)  # (B, chunks, span): each frame's max
        chunk_high = high.amax(dim=2)
        if self.halo:  # the next chunk's first frames (none after the last chunk)
            chunk_high = torch.maximum(chunk_high, F.pad(high[:, :, : self.halo][:, 1:].amax(dim=2), (0, 1)))
        scale = (chunk_high.clamp(min=0.0) - GELU_MIN) / 255.0
        zero_point = torch.round(-GELU_MIN / scale)  # within [0, 255], as scale >= -GELU_MIN / 255
        return scale, zero_point

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        span, rows, stride, halo, channels = self.span, self.rows, self.stride, self.halo, self.in_channels
        scale, zero_point = self._chunk_scales(x, valid)
        flat_scale, flat_zero = reshape(scale, -1), reshape(zero_point, -1).to(torch.uint8)
        q = QuantizeLinear.apply(reshape(x, -1, span * channels), flat_scale, flat_zero)
        q = reshape_leading(q, scale, 2, rows, stride * channels)  # (B, chunks, rows, stride * C): row r reads
        columns = q  # frames r * stride .. r * stride + stride - 1 of its chunk
        if halo:  # each row's last kernel - stride frames: the next row's first ones; the last row's: the halo
            # The next chunk's first frames, quantised once more with this chunk's scale; zeros after the last
            # chunk (the rows reading them are past the conv's output, and the caller drops them). Sliced to the
            # halo first: the exporter writes a copying Slice per dim.
            following = F.pad(reshape(x, 0, -1, span, channels)[:, :, :halo][:, 1:], (0, 0, 0, 0, 0, 1))
            following = QuantizeLinear.apply(reshape(following, -1, halo * channels), flat_scale, flat_zero)
            tail = reshape_leading(following, scale, 2, 1, halo * channels)
            if rows > 1:
                inside = reshape(q, 0, -1, span, channels).index_select(2, self.inside_frames)
                tail = torch.cat([reshape(inside, 0, -1, rows - 1, halo * channels), tail], dim=2)
            columns = torch.cat([q, tail], dim=3)  # (B, chunks, rows, kernel * C): im2col, offset-major
        y = MatMulIntegerToFloat.apply(columns, self.weight, self.unit_scale, self.weight_scale, self.zero,
                                       self.weight_zero_point)
        # x = scale * (q - zero_point): the product is scale * (q W) - scale * zero_point * sum(W) per chunk.
        shift = self.bias - reshape(scale * zero_point, 0, -1, 1, 1) * self.column_sums
        return reshape(y * reshape(scale, 0, -1, 1, 1) + shift, 0, -1, self.out_channels)
