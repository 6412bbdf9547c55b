"""The product engines of convolution and deconvolution: im2col + one batched BLAS product (in
bands of output rows), and deconvolution's product to per-tap columns + scatter-add.

Shared by ``convolution`` and ``convolution3d`` (layers/conv.py), which pick between these, the
depthwise taps (_depthwise.py), Winograd (_winograd.py) and shifted products (_shifted.py).
"""
import itertools
import math

import numpy as np

from ._base import FRESH
from ._taps import pad_trailing, tap_slices

# im2col columns are built for this many bytes of output rows at a time (at least one row): a
# style-transfer net's 3 -> 64, 9x9 layer at 400x400 needs 155 MB of columns for all rows at once,
# and a 1024x1024 image 1 GB; bands keep them in a few cache-sized blocks, each product as large
COLUMN_BYTES = 32 << 20


def conv_forward(x, wmat, kernel_sizes, groups, strides, dilations, pads, out_sizes, workspace=FRESH):
    """x: [N, C, *spatial]; wmat: [groups, C_out/groups, C/groups * prod(kernel)] -> [N, C_out, *out].
    The padded input, the im2col columns and the output come from ``workspace``."""
    n, channels = x.shape[:2]
    rank = len(kernel_sizes)
    per_group = channels // groups
    c_out = wmat.shape[0] * wmat.shape[1]
    positions = math.prod(out_sizes)
    xp = pad_trailing(x, pads, workspace=workspace)
    if any(k != 1 for k in kernel_sizes):
        return _banded_im2col(xp, wmat, kernel_sizes, groups, strides, dilations, out_sizes, workspace)
    taps = xp[(Ellipsis,) + tap_slices((0,) * rank, dilations, strides, out_sizes)]   # 1x1: no columns
    if not taps.flags.c_contiguous:
        taps = _copy_into(workspace.scratch("cols", taps.shape), taps)
    cols = taps.reshape(n, groups, per_group, positions)
    out = workspace.output((n, groups, wmat.shape[1], positions))
    return np.matmul(wmat, cols, out=out).reshape((n, c_out) + tuple(out_sizes))


def band_rows(n, channels, kernel_sizes, out_sizes):
    """Output rows (along the first spatial axis) whose im2col columns are built at a time."""
    row_bytes = n * channels * math.prod(kernel_sizes) * math.prod(out_sizes[1:]) * 4
    return max(1, min(out_sizes[0], COLUMN_BYTES // max(row_bytes, 1)))


def _banded_im2col(xp, wmat, kernel_sizes, groups, strides, dilations, out_sizes, workspace):
    """im2col + product, a band of output rows at a time (``band_rows``): each band's columns
    [N, groups, C/groups * taps, rows * rest] and its product into the band's output positions."""
    n, channels = xp.shape[:2]
    per_group = channels // groups
    rest = math.prod(out_sizes[1:])
    rows = band_rows(n, channels, kernel_sizes, out_sizes)
    out = workspace.output((n, groups, wmat.shape[1], math.prod(out_sizes)))
    for first in range(0, out_sizes[0], rows):
        count = min(rows, out_sizes[0] - first)
        band = (count,) + tuple(out_sizes[1:])
        cols = workspace.scratch("cols", (n, channels) + tuple(kernel_sizes) + band)   # one pool, reused
        shift = first * strides[0]                       # the band's first row, in padded input rows
        for offsets in itertools.product(*(range(k) for k in kernel_sizes)):
            taps = tap_slices(offsets, dilations, strides, band)
            taps = (slice(taps[0].start + shift, taps[0].stop + shift, taps[0].step),) + taps[1:]
            cols[(slice(None), slice(None)) + offsets] = xp[(Ellipsis,) + taps]
        cols = cols.reshape(n, groups, per_group * math.prod(kernel_sizes), count * rest)
        np.matmul(wmat, cols, out=out[..., first * rest:(first + count) * rest])
    return out.reshape((n, groups * wmat.shape[1]) + tuple(out_sizes))


def _copy_into(destination, source):
    np.copyto(destination, source)
    return destination


def _scatter_range(offset, stride, n_in, before, n_out):
    """Input indices of one tap that land inside the output window, as (in_slice, out_slice)."""
    lo = max(0, -((offset - before) // stride))            # ceil((before - offset) / stride)
    hi = min(n_in - 1, (n_out - 1 + before - offset) // stride)
    if hi < lo:
        return None
    start = offset + lo * stride - before
    return slice(lo, hi + 1), slice(start, start + (hi - lo) * stride + 1, stride)


def conv_transpose(x, wmat_t, kernel_sizes, groups, strides, dilations, befores, out_sizes):
    """x: [N, C, *sp]; wmat_t: [groups, C_out/groups * prod(kernel), C/groups] -> [N, C_out, *out].

    Output position ``p`` of input ``i`` through tap ``o`` is ``i*stride + o*dilation - before``;
    taps falling outside ``[0, out)`` are dropped (cropping), positions no tap reaches stay zero.
    """
    n, channels = x.shape[:2]
    in_sizes = x.shape[2:]
    per_group = channels // groups
    c_out = wmat_t.shape[0] * wmat_t.shape[1] // math.prod(kernel_sizes)
    cols = np.matmul(wmat_t, x.reshape(n, groups, per_group, math.prod(in_sizes)))
    cols = cols.reshape((n, c_out) + tuple(kernel_sizes) + tuple(in_sizes))
    out = np.zeros((n, c_out) + tuple(out_sizes), np.float32)
    for offsets in itertools.product(*(range(k) for k in kernel_sizes)):
        ranges = [_scatter_range(o * d, s, ni, b, no) for o, d, s, ni, b, no
                  in zip(offsets, dilations, strides, in_sizes, befores, out_sizes)]
        if any(r is None for r in ranges):
            continue
        src = (slice(None), slice(None)) + offsets + tuple(r[0] for r in ranges)
        out[(slice(None), slice(None)) + tuple(r[1] for r in ranges)] += cols[src]
    return out
