"""Convolution with few output channels as a sum of shifted products, one per kernel tap.

Why: im2col copies every input pixel once per tap, into columns [C_in * taps, positions], and
hands BLAS a product of C_out rows. With few output channels that product is mostly memory
traffic, and the columns can dwarf the image: a style-transfer net's last layer (64 -> 3
channels, 9x9, 320x320) built 2.1 GB of columns and ran at 6 GFLOP/s (545 ms).

Here each padded channel plane is flattened and outputs are computed
over the full padded row width (the extra columns are dropped at the end, as in _depthwise.py).
Tap (dy, dx) then reads one contiguous slice of every plane, starting dy * row + dx further on,
so out_wide [C_out, positions] += W_tap [C_out, C_in] @ planes[:, offset:] is a product of a few
rows over a strided operand: ``_gemm``'s product, which keeps a tile of the output in registers
while it walks the channels. Positions go a block at a time, so a block's slices of every plane
stay in cache across the taps. The same layer takes 54 ms in its model and no columns.

A strided convolution first splits each padded plane into its stride phases (rows and columns
of one remainder modulo the stride, as _depthwise.py does): tap (dy, dx) then reads, at stride 1,
the phase of (dy mod s, dx mod s) from (dy div s, dx div s) on, so every tap is again one
contiguous slice, of its phase's planes. A 9 -> 9 channel 3x3 layer at stride 2 on 640x480 ran
at 8 GFLOP/s through im2col.

Each plane gets a zero tail: the last taps of the last plane read past its end, into outputs that
are dropped. Sums run in float32, tap by tap, as im2col's product does over its columns.
"""
import functools
import math

import numpy as np

from ._base import FRESH, fused, gemm
from ._taps import phase_range

MAX_OUTPUTS = 16          # output channels: more, and im2col's BLAS product is as fast (64: a tie)
BLOCK = 2048              # positions a block: its slices of 64 planes and the 9x9 reach fit in L2
# strided: splitting the phases costs a pass over the image, which a short product (3 or 4 input
# channels into 16 outputs, 224x224: 0.91 vs 0.78 ms) does not win back; 8 -> 16: 1.56 vs 1.77 ms,
# 9 -> 9 at 320x320: 2.79 vs 3.94 ms, 32 -> 8: 4.19 vs 6.42 ms
STRIDED_MIN_INPUTS, STRIDED_FEW_OUTPUTS = 8, 8


def eligible(kernel_sizes, strides, dilations, groups, c_in, c_out):
    """Whether a convolution takes this path: one group, a kernel larger than 1x1 (1x1 needs no
    columns), few output channels; strided, also enough input channels or very few outputs, and
    strides within the kernel's reach (patches side by side, a stride past the kernel, leave
    each phase one tap: im2col's columns are then the image itself)."""
    if groups != 1 or math.prod(kernel_sizes) == 1 or c_out > MAX_OUTPUTS:
        return False
    if all(s == 1 for s in strides):
        return True
    within = all(s == 1 or s <= (k - 1) * d for s, k, d in zip(strides, kernel_sizes, dilations))
    return within and (c_in >= STRIDED_MIN_INPUTS or c_out <= STRIDED_FEW_OUTPUTS)


def tap_weights(wmat, channels, kernel_sizes):
    """wmat [1, C_out, C_in * taps] (im2col's layout) -> [taps, C_out, C_in], C-ordered: one
    row-major matrix per tap, as the product reads it."""
    c_out = wmat.shape[1]
    taps = math.prod(kernel_sizes)
    return np.ascontiguousarray(wmat.reshape(c_out, channels, taps).transpose(2, 0, 1))


def worthwhile(in_sizes, pads, strides, out_sizes):
    """Whether the outputs computed past each row's end and dropped stay fewer than the kept ones:
    on a small map with wide padding (a 9x9 kernel on 5x5) most of the work would be padding."""
    phase = _phase_sizes(in_sizes, pads, strides)
    return math.prod(phase[1:]) <= 2 * math.prod(out_sizes[1:])


def buffer_shapes(batch, channels, c_out, in_sizes, pads, strides, kernel_sizes, dilations, out_sizes):
    """The two scratch arrays ``shifted_forward`` allocates (checked against the limits first):
    the padded planes of every stride phase a tap reads, with their tail, and the outputs over
    full rows."""
    phase, used, _, _, plane_length, wide = _geometry(tuple(in_sizes), tuple(map(tuple, pads)), tuple(strides),
                                                      tuple(kernel_sizes), tuple(dilations), tuple(out_sizes))
    return (batch, len(used) * channels, plane_length), (batch, c_out, wide)


def shifted_forward(x, w_taps, kernel_sizes, strides, dilations, pads, out_sizes, workspace=FRESH):
    """x [N, C_in, *spatial] float32, C-contiguous -> [N, C_out, *out], without bias."""
    n, channels = x.shape[:2]
    c_out = w_taps.shape[1]
    in_sizes = x.shape[2:]
    phase, used, slots, offsets, plane_length, wide_length = _geometry(
        tuple(in_sizes), tuple(map(tuple, pads)), tuple(strides), tuple(kernel_sizes), tuple(dilations),
        tuple(out_sizes))
    plane = math.prod(phase)
    planes = workspace.scratch("shifted planes", (n, len(used) * channels, plane_length), fill=0.0)
    for index, remainders in enumerate(used):
        # phase r of an axis holds the padded positions r, r + s, ...: the input's from phase_range
        ranges = [phase_range(b, r, s, size, count)
                  for (b, _), r, s, size, count in zip(pads, remainders, strides, in_sizes, phase)]
        if any(hi <= lo for lo, hi, _ in ranges):
            continue                               # no input in this phase: padding only (zeros)
        source = x[(Ellipsis,) + tuple(slice(first, first + (hi - lo - 1) * s + 1, s)
                                       for (lo, hi, first), s in zip(ranges, strides))]
        target = planes[:, index * channels:(index + 1) * channels, :plane].reshape((n, channels) + phase)
        target[(Ellipsis,) + tuple(slice(lo, hi) for lo, hi, _ in ranges)] = source
    tap_rows = np.array([slot * channels for slot in slots], np.int64)
    wide = workspace.scratch("shifted outputs", (n, c_out, wide_length), fill=0.0)
    fused().shifted_taps(gemm().ADDRESS, planes, w_taps, tap_rows, np.array(offsets, np.int64), wide, BLOCK)
    kept = (Ellipsis,) + tuple(slice(0, o) for o in out_sizes[1:])
    out = workspace.output((n, c_out) + tuple(out_sizes))
    np.copyto(out, wide.reshape((n, c_out, out_sizes[0]) + phase[1:])[kept])
    return out


def _phase_sizes(in_sizes, pads, strides):
    """Each stride phase's extent per axis: the padded size divided by the stride, rounded up
    (the padded plane itself at stride 1)."""
    return tuple(-(-(s + b + a) // st) for s, (b, a), st in zip(in_sizes, pads, strides))


@functools.lru_cache(maxsize=256)
def _geometry(in_sizes, pads, strides, kernel_sizes, dilations, out_sizes):
    """Everything the path's layout needs for one input shape, worked out once (the limits check
    and each prediction ask again): (phase sizes; the phases some tap reads, as remainders; each
    tap's slot among them; each tap's offset into its phase's flattened plane; a plane's length
    with its tail; the outputs over full rows). Taps in the weights' order: tap t along an axis
    reaches t * dilation = stride * q + r, phase r, q rows on."""
    phase = _phase_sizes(in_sizes, pads, strides)
    steps = _row_major_steps(phase)
    remainders, offsets = [], []
    for tap in np.ndindex(*kernel_sizes):
        reach = [t * d for t, d in zip(tap, dilations)]
        remainders.append(tuple(r % s for r, s in zip(reach, strides)))
        offsets.append(sum((r // s) * step for r, s, step in zip(reach, strides, steps)))
    used = tuple(sorted(set(remainders)))
    slots = tuple(used.index(r) for r in remainders)
    wide = out_sizes[0] * math.prod(phase[1:])
    plane_length = math.prod(phase) + max(0, wide + max(offsets) - math.prod(phase))
    return phase, used, slots, tuple(offsets), plane_length, wide


def _row_major_steps(shape):
    steps, step = [], 1
    for size in reversed(shape):
        steps.append(step)
        step *= size
    return steps[::-1]
