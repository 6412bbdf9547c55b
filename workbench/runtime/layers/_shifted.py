"""Convolution with few output channels as a sum of shifted products, one per kernel tap.

Why: im2col copies every input pixel once per tap, into columns [C_in * taps, positions], and
hands BLAS a product of C_out rows. With few output channels that product is mostly memory
traffic, and the columns can dwarf the image: a style-transfer net's last layer (64 -> 3
channels, 9x9, 320x320) built 2.1 GB of columns and ran at 6 GFLOP/s (545 ms).

Here, for a stride-1 convolution, each padded channel plane is flattened and outputs are computed
over the full padded row width (the extra columns are dropped at the end, as in _depthwise.py).
Tap (dy, dx) then reads one contiguous slice of every plane, starting dy * row + dx further on,
so out_wide [C_out, positions] += W_tap [C_out, C_in] @ planes[:, offset:] is a product of a few
rows over a strided operand: ``_gemm``'s product, which keeps a tile of the output in registers
while it walks the channels. Positions go a block at a time, so a block's slices of every plane
stay in cache across the taps. The same layer takes 54 ms in its model and no columns.

Each plane gets a zero tail: the last taps of the last plane read past its end, into outputs that
are dropped. Sums run in float32, tap by tap, as im2col's product does over its columns.
"""
import math

import numpy as np

from ._base import FRESH, fused, gemm

MAX_OUTPUTS = 16          # output channels: more, and im2col's BLAS product is as fast (64: a tie)
BLOCK = 2048              # positions a block: its slices of 64 planes and the 9x9 reach fit in L2


def eligible(kernel_sizes, strides, groups, c_out):
    """Whether a convolution takes this path: stride 1, one group, a kernel larger than 1x1 (1x1
    needs no columns), few output channels."""
    return (groups == 1 and all(s == 1 for s in strides) and math.prod(kernel_sizes) > 1
            and c_out <= MAX_OUTPUTS)


def tap_weights(wmat, channels, kernel_sizes):
    """wmat [1, C_out, C_in * taps] (im2col's layout) -> [taps, C_out, C_in], C-ordered: one
    row-major matrix per tap, as the product reads it."""
    c_out = wmat.shape[1]
    taps = math.prod(kernel_sizes)
    return np.ascontiguousarray(wmat.reshape(c_out, channels, taps).transpose(2, 0, 1))


def worthwhile(in_sizes, pads, out_sizes):
    """Whether the outputs computed past each row's end and dropped stay fewer than the kept ones:
    on a small map with wide padding (a 9x9 kernel on 5x5) most of the work would be padding."""
    padded = _padded(in_sizes, pads)
    return math.prod(padded[1:]) <= 2 * math.prod(out_sizes[1:])


def buffer_shapes(batch, channels, c_out, in_sizes, pads, kernel_sizes, dilations, out_sizes):
    """The two scratch arrays ``shifted_forward`` allocates (checked against the limits first):
    the padded planes with their tail, and the outputs over full padded rows."""
    padded = _padded(in_sizes, pads)
    tail = _tail(padded, kernel_sizes, dilations)
    return (batch, channels, math.prod(padded) + tail), (batch, c_out, out_sizes[0] * math.prod(padded[1:]))


def shifted_forward(x, w_taps, kernel_sizes, dilations, pads, out_sizes, workspace=FRESH):
    """x [N, C_in, *spatial] float32, C-contiguous -> [N, C_out, *out] (stride 1), without bias."""
    n, channels = x.shape[:2]
    c_out = w_taps.shape[1]
    padded = _padded(x.shape[2:], pads)
    steps = _row_major_steps(padded)                 # elements per step along each padded axis
    offsets = np.array([sum(o * d * s for o, d, s in zip(tap, dilations, steps))
                        for tap in np.ndindex(*kernel_sizes)], np.int64)
    planes_shape, wide_shape = buffer_shapes(n, channels, c_out, x.shape[2:], pads, kernel_sizes, dilations,
                                             out_sizes)
    plane = math.prod(padded)
    planes = workspace.scratch("shifted planes", planes_shape, fill=0.0)
    interior = tuple(slice(b, b + s) for s, (b, _) in zip(x.shape[2:], pads))
    planes[:, :, :plane].reshape((n, channels) + padded)[(Ellipsis,) + interior] = x
    wide = workspace.scratch("shifted outputs", wide_shape, fill=0.0)
    fused().shifted_taps(gemm().ADDRESS, planes, w_taps, offsets, wide, BLOCK)
    kept = (Ellipsis,) + tuple(slice(0, o) for o in out_sizes[1:])
    out = workspace.output((n, c_out) + tuple(out_sizes))
    np.copyto(out, wide.reshape((n, c_out, out_sizes[0]) + padded[1:])[kept])
    return out


def _padded(in_sizes, pads):
    return tuple(int(s + b + a) for s, (b, a) in zip(in_sizes, pads))


def _tail(padded, kernel_sizes, dilations):
    """How far past its plane the last tap reads, for the last outputs of the last row (dropped)."""
    steps = _row_major_steps(padded)
    return sum((k - 1) * d * s for k, d, s in zip(kernel_sizes[1:], dilations[1:], steps[1:]))


def _row_major_steps(shape):
    steps, step = [], 1
    for size in reversed(shape):
        steps.append(step)
        step *= size
    return steps[::-1]
