"""Depthwise convolution (one input channel per group): one multiply-add pass per kernel tap.

Why not im2col + GEMM: each channel has its own 9 weights, so the products are matrix-vector
at best. numpy's speed on these passes depends on the memory each one walks: long contiguous
runs are fast, short strided image rows are slow. So:

- 2-D, one output per channel: each (stride phase of the) padded image is flattened, and every
  tap becomes one contiguous slice of it; outputs are computed over the full padded row width
  and the extra columns dropped at the end (1.5-2x faster than strided taps);
- small maps with many channels run channels-last, where the inner loop walks C values;
- anything else (3-D, channel multipliers): strided taps.
"""
import itertools
import math

import numpy as np

from ._taps import pad_trailing, tap_slices


def depthwise_forward(x, wdw, strides, dilations, pads, out_sizes):
    """x [N, C, *sp], wdw [C, mult, *kernel] -> [N, C*mult, *out]."""
    channels, mult = x.shape[1], wdw.shape[1]
    if mult == 1 and len(out_sizes) == 2:
        if channels >= 64 and math.prod(out_sizes) <= 32 * 32:
            return _channels_last(pad_trailing(x, pads), wdw, strides, dilations, out_sizes)
        return _flat_2d(x, wdw[:, 0], strides, dilations, pads, out_sizes)
    return _strided_taps(pad_trailing(x, pads), wdw, strides, dilations, out_sizes)


def _flat_2d(x, w, strides, dilations, pads, out_sizes):
    """x [N, C, H, W], w [C, kh, kw]. Padded row q, column r of stride phase (py, px) holds the
    padded input at (q*sh + py, r*sw + px); tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw)
    from row (i*dh) // sh, column (j*dw) // sw on, i.e. one flat slice of ho * wq values."""
    n, c, h, wd = x.shape
    (top, _), (left, _) = pads
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_sizes
    kh, kw = w.shape[1:]
    hq = ho + ((kh - 1) * dh) // sh + 1          # one spare row: the last slices run past row ho
    wq = wo + ((kw - 1) * dw) // sw
    images = x.reshape(n * c, h, wd)
    weights = np.broadcast_to(w.reshape(1, c, kh * kw), (n, c, kh * kw)).reshape(n * c, kh * kw)
    taps = [((i * dh) % sh, (j * dw) % sw, ((i * dh) // sh) * wq + (j * dw) // sw)
            for i in range(kh) for j in range(kw)]
    phases = {}
    for py, px, _ in taps:
        if (py, px) not in phases:
            buf = np.zeros((n * c, hq, wq), np.float32)
            q0, q1, row = _phase_range(top, py, sh, h, hq)
            r0, r1, col = _phase_range(left, px, sw, wd, wq)
            if q1 > q0 and r1 > r0:
                rows = slice(row, row + (q1 - q0 - 1) * sh + 1, sh)
                cols = slice(col, col + (r1 - r0 - 1) * sw + 1, sw)
                buf[:, q0:q1, r0:r1] = images[:, rows, cols]
            phases[(py, px)] = buf.reshape(n * c, hq * wq)
    pairs = ((phases[(py, px)][:, offset:offset + ho * wq], weights[:, k:k + 1])
             for k, (py, px, offset) in enumerate(taps))
    out = _sum_of_products(pairs, (n * c, ho * wq))
    return np.ascontiguousarray(out.reshape(n, c, ho, wq)[..., :wo])


def _phase_range(pad, phase, step, size, count):
    """Phase indices [lo, hi) whose padded position lo*step + phase falls inside the unpadded
    input, and the input index of the first."""
    lo = max(0, -(-(pad - phase) // step))
    hi = min(count, -(-(size + pad - phase) // step))
    return lo, hi, lo * step + phase - pad


def _channels_last(xp, wdw, strides, dilations, out_sizes):
    """xp [N, C, *padded] -> [N, C, *out], computed as [N, *out, C]."""
    n, channels = xp.shape[:2]
    rank = len(out_sizes)
    xp = np.ascontiguousarray(np.moveaxis(xp, 1, -1))                   # [N, *padded, C]
    taps_w = np.moveaxis(wdw[:, 0], 0, -1)                               # [*kernel, C]
    pairs = ((xp[(slice(None),) + tap_slices(o, dilations, strides, out_sizes)], taps_w[o])
             for o in itertools.product(*(range(k) for k in taps_w.shape[:rank])))
    out = _sum_of_products(pairs, (n,) + tuple(out_sizes) + (channels,))
    return np.ascontiguousarray(np.moveaxis(out, -1, 1))


def _strided_taps(xp, wdw, strides, dilations, out_sizes):
    """xp [N, C, *padded], wdw [C, mult, *kernel] -> [N, C*mult, *out]."""
    n, channels = xp.shape[:2]
    mult = wdw.shape[1]
    every = (slice(None), slice(None))
    expand = every + (None,) * len(out_sizes)
    pairs = ((xp[every + tap_slices(o, dilations, strides, out_sizes)][:, :, None], wdw[every + o][expand])
             for o in itertools.product(*(range(k) for k in wdw.shape[2:])))
    out = _sum_of_products(pairs, (n, channels, mult) + tuple(out_sizes))
    return out.reshape((n, channels * mult) + tuple(out_sizes))


def _sum_of_products(pairs, shape):
    """sum(a * b for a, b in pairs) as float32 of ``shape``, in pair order (the same rounding as
    the plain sum), with one temporary: the first product initialises the result."""
    out = np.empty(shape, np.float32)
    term = None
    for index, (a, b) in enumerate(pairs):
        if index == 0:
            np.multiply(a, b, out=out)
            continue
        if term is None:
            term = np.empty_like(out)
        np.multiply(a, b, out=term)
        out += term
    return out
