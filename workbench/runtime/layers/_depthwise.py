"""Depthwise convolution (one input channel per group): a sum of shifted products, one per tap.

Why not im2col + GEMM: each channel has its own 9 weights, so the products are matrix-vector
at best. So:

- 2-D, one output per channel (MobileNet's case): each (stride phase of the) padded image is
  flattened, and every tap becomes one contiguous slice of it; outputs are computed over the
  full padded row width and the extra columns dropped at the end. The compiled
  ``_fused.depthwise_taps`` sums the slices, a block of outputs at a time in L1, with the bias
  and a fused activation's clamp (3-7x faster than numpy passes over the same slices);
- anything else (3-D, channel multipliers): one numpy multiply-add pass per tap, strided.
"""
import itertools

import numpy as np

from ._base import FRESH, NO_CLAMP, add_bias, fused
from ._taps import pad_trailing, phase_range, tap_slices


def depthwise_forward(x, wdw, strides, dilations, pads, out_sizes, bias=None, workspace=FRESH,
                      clamp=NO_CLAMP):
    """x [N, C, *sp], wdw [C, mult, *kernel], bias [C*mult] or None -> [N, C*mult, *out],
    with ``clamp`` = (low, high, relu), a fused activation (_base.NO_CLAMP: none)."""
    channels, mult = x.shape[1], wdw.shape[1]
    if mult == 1 and len(out_sizes) == 2:
        return _flat_2d(x, wdw[:, 0], strides, dilations, pads, out_sizes, bias, workspace, clamp)
    return add_bias(_strided_taps(pad_trailing(x, pads), wdw, strides, dilations, out_sizes), bias, clamp)


def _flat_2d(x, w, strides, dilations, pads, out_sizes, bias, workspace, clamp):
    """x [N, C, H, W], w [C, kh, kw]. Padded row q, column r of stride phase (py, px) holds the
    padded input at (q*sh + py, r*sw + px); tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw)
    from row (i*dh) // sh, column (j*dw) // sw on, i.e. one flat slice of ho * wq values, and
    the compiled ``_fused.depthwise_taps`` sums those slices."""
    n, c, h, wd = x.shape
    (top, _), (left, _) = pads
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_sizes
    kh, kw = w.shape[1:]
    hq = ho + ((kh - 1) * dh) // sh + 1          # one spare row: the last slices run past row ho
    wq = wo + ((kw - 1) * dw) // sw
    images = x.reshape(n * c, h, wd)
    taps = [((i * dh) % sh, (j * dw) % sw, ((i * dh) // sh) * wq + (j * dw) // sw)
            for i in range(kh) for j in range(kw)]
    phase_index = {}
    for py, px, _ in taps:
        phase_index.setdefault((py, px), len(phase_index))
    phases = workspace.scratch("phases", (len(phase_index), n * c, hq, wq), fill=0.0)
    for (py, px), index in phase_index.items():
        q0, q1, row = phase_range(top, py, sh, h, hq)
        r0, r1, col = phase_range(left, px, sw, wd, wq)
        if q1 > q0 and r1 > r0:
            rows = slice(row, row + (q1 - q0 - 1) * sh + 1, sh)
            cols = slice(col, col + (r1 - r0 - 1) * sw + 1, sw)
            phases[index, :, q0:q1, r0:r1] = images[:, rows, cols]
    out = workspace.scratch("rows", (n * c, ho * wq))
    kernels = fused()
    kernels.depthwise_taps(phases.reshape(len(phase_index), n * c, hq * wq),
                           np.array([phase_index[(py, px)] for py, px, _ in taps], np.int64),
                           np.array([offset for _, _, offset in taps], np.int64),
                           np.ascontiguousarray(w.reshape(c, kh * kw), dtype=np.float32),
                           np.zeros(c, np.float32) if bias is None else bias.reshape(c), out, *clamp)
    y = workspace.output((n, c, ho, wo))
    np.copyto(y, out.reshape(n, c, ho, wq)[..., :wo])
    return y


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
