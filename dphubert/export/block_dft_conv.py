"""The positional conv of the exported graph as block DFTs written as matrix products (3x faster than ``Conv``).

The positional conv is grouped, stride 1, with a long kernel (HuBERT Base: 768 channels in 16 groups, kernel 128):
2.4 GMACs per 10 s, 45 ms in onnxruntime on one core, about a quarter of the int8 Base file's time. Its im2col
would be 128x its input, and neither onnxruntime's ``ConvInteger`` nor the exporter's FFT ops help. Here it is
computed as an overlap-add of block convolutions in the frequency domain, with every transform a ``MatMul``:

- the input, frames-major ``(B, T, D)``, is cut into blocks of ``L = kernel`` frames (zero-padded at the end);
- a real DFT of size ``N = 2L`` of each block (only its ``L`` non-zero samples): one product with a constant
  ``(2 (N/2 + 1), L)`` cos/-sin matrix, real and imaginary parts stacked;
- per bin and group, the channel mixing with the kernel's spectrum (complex ``Cg x Cg`` per bin): two products,
  the real and imaginary rows stacked so that each spectrum matrix is read once;
- the inverse real DFT (a constant ``(N, 2 (N/2 + 1))`` matrix), then overlap-add of the ``2L``-long block outputs
  and the frames the conv's padding selects (``padding = kernel // 2``; an even kernel's extra frame dropped).

Exact up to float rounding (relative 1e-6 here): a linear convolution of a block of ``L`` frames with a kernel of
``K <= L + 1`` taps fits in ``N = 2L`` samples, so the DFT's circular convolution is the linear one. MACs for 10 s
of HuBERT Base: about 0.4 G instead of 2.4 G. The kernel's spectrum ``(2 (N/2 + 1), G, Cg, Cg)`` (twice the kernel's
size) is an ``Einsum`` of the weight and a DFT matrix, which onnxruntime folds into a constant when the session is
created (the file keeps the weight's size; an ``Einsum``, not a ``MatMul``, so the int8 pass leaves it alone).
"""

import math

import torch
from torch import Tensor, nn

from .onnx_shapes import reshape, reshape_leading


def _dft_angles(rows: int, cols: int, size: int) -> Tensor:
    """``2 pi r c / size`` for r < rows, c < cols (float64)."""
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    c = torch.arange(cols, dtype=torch.float64)[None, :]
    return 2 * math.pi * r * c / size


class BlockDFTConv(nn.Module):
    """``(B, T, D) -> (B, T, D)``: ``conv1d(x, weight, bias, padding=K // 2, groups)`` (the last frame dropped for
    an even K, as the positional conv does), frames-major."""

    def __init__(self, weight: Tensor, bias: Tensor, groups: int):
        super().__init__()
        _, per_group, kernel = weight.shape  # (channels, channels per group, taps)
        self.groups, self.per_group, self.block = groups, per_group, kernel
        size = 2 * kernel  # DFT size N; block length L = kernel
        self.bins = size // 2 + 1
        self.shift = kernel - 1 - kernel // 2  # output frame t is frame t + shift of the full convolution
        forward_angles = _dft_angles(self.bins, kernel, size)  # (bins, L)
        self.register_buffer("forward_dft", torch.cat([forward_angles.cos(), -forward_angles.sin()]).float())
        inverse_angles = _dft_angles(size, self.bins, size)  # (N, bins)
        weights = torch.full((1, self.bins), 2.0 / size, dtype=torch.float64)
        weights[0, 0] = weights[0, -1] = 1.0 / size  # DC and Nyquist appear once in a real signal's spectrum
        inverse = torch.cat([weights * inverse_angles.cos(), -weights * inverse_angles.sin()], dim=1)
        self.register_buffer("inverse_dft", inverse.float())  # (N, 2 bins)
        # Correlation (conv1d) = convolution with the flipped kernel; (group, in, out, tap) for the spectrum.
        flipped = weight.detach().double().flip(-1).reshape(groups, per_group, per_group, kernel)
        self.register_buffer("kernel", flipped.transpose(1, 2).float().contiguous())
        kernel_angles = _dft_angles(kernel, self.bins, size)  # (K, bins)
        self.register_buffer("kernel_dft", torch.cat([kernel_angles.cos(), -kernel_angles.sin()], dim=1).float())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        frames, channels = x.shape[1], self.groups * self.per_group
        block, bins, groups, per_group = self.block, self.bins, self.groups, self.per_group
        count = (frames + block - 1) // block
        # (zeros and cat rather than F.pad: a pad of traced size exports with a reversed, step -1 Slice, which the
        # exporter's constant folding warns about)
        tail = torch.zeros_like(x[:, :1]).expand(-1, count * block - frames, -1)
        blocks = reshape(torch.cat([x, tail], dim=1), 0, -1, block, channels)
        spectrum = torch.matmul(self.forward_dft, blocks)  # (B, blocks, 2 bins, D): real rows, then imaginary
        rows = reshape(spectrum, 0, -1, 2, bins, groups, per_group).permute(3, 4, 2, 0, 1, 5)
        rows = rows.reshape(bins, groups, -1, per_group)  # (bins, G, [real; imaginary] x B x blocks, Cg)
        kernel_spectrum = torch.einsum("giok,kf->fgio", self.kernel, self.kernel_dft)  # folded at load
        by_real = torch.matmul(rows, kernel_spectrum[:bins])  # [Xr Hr; Xi Hr]
        by_imaginary = torch.matmul(rows, kernel_spectrum[bins:])  # [Xr Hi; Xi Hi]
        half = by_real.shape[2] // 2
        real = by_real[:, :, :half] - by_imaginary[:, :, half:]
        imaginary = by_imaginary[:, :, :half] + by_real[:, :, half:]
        out_spectrum = torch.stack([real, imaginary]).permute(3, 0, 1, 2, 4)  # (B x blocks, 2, bins, G, Cg)
        out_spectrum = reshape_leading(out_spectrum, blocks, 2, 2 * bins, channels)  # (B, blocks, 2 bins, D)
        out = torch.matmul(self.inverse_dft, out_spectrum)  # (B, blocks, 2L, D)
        # Overlap-add: block b's output covers frames bL .. bL + 2L - 1.
        none = torch.zeros_like(out[:, :1, :block])
        full = torch.cat([out[:, :, :block], none], dim=1) + torch.cat([none, out[:, :, block:]], dim=1)
        return reshape(full, 0, -1, channels)[:, self.shift: self.shift + frames] + self.bias
