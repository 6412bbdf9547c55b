"""One compiled pass for a chain of element-wise layers the planner fused (``runtime/fusion.py``).

A TensorFlow-converted ReLU6 is four layers (ReLU, linear x(-1), unary THRESHOLD at -6, linear
x(-1)) and usually follows a batchnorm: five passes over memory, each writing a new array. Here
the chain's operations run one after the other on a block of a row at a time, while the block
is in L1, so memory is read once and written once.

Each operation computes exactly what its own layer's numpy pass computes, so a fused chain's
output is bit for bit the unfused one, zeros' signs included, and NaN where it is NaN (when two
NaN meet, which one numpy returns depends on the loop it takes, so a NaN's sign may differ):

- ``AFFINE``: ``v * a + b`` rounded twice, as ``np.multiply`` then ``+=`` (no fast-math flags
  here at all: contraction to one FMA would round once);
- ``MAXIMUM``: ``np.maximum(v, a)``, which answers ``a`` when the two are equal (so +0 for
  ``max(-0, +0)``) and NaN when either is NaN;
- ``CLIP``: ``np.clip(v, a, b)``: ``a`` if ``v < a``, then ``b`` if larger than ``b``; ``v`` itself
  when it equals a bound (a -0 stays -0) or is NaN.
"""
import numpy as np
from numba import njit

from ._fused import _squared_deviation64, _sum64

AFFINE, MAXIMUM, CLIP = 0, 1, 2
BLOCK = 2048            # elements of a row per block: 8 KB, in L1 while every operation runs

_exact = njit(error_model="numpy", cache=True)
_inline = njit(error_model="numpy", inline="always")


@_exact
def chain_rows(x, out, codes, a, b):
    """out[r] = the chain ``codes`` applied to x[r] for each row of [rows, positions]; operation
    ``i`` takes its parameters from a[i, r % channels] and b[i, r % channels] (``channels`` =
    a.shape[1]: a batchnorm's channels on axis -3, or 1). ``out`` must not overlap ``x``."""
    rows, n = x.shape
    channels = a.shape[1]
    for r in range(rows):
        c = r % channels
        source, target = x[r], out[r]
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            dst = target[start:stop]
            _apply(codes[0], a[0, c], b[0, c], source[start:stop], dst)
            for i in range(1, codes.size):
                _apply(codes[i], a[i, c], b[i, c], dst, dst)


@_exact
def chain_rows_in_place(y, codes, a, b):
    """``chain_rows(y, y, ...)`` for a convolution's output: every operation reads and writes
    the same block (one array for both, so the loops vectorize without an overlap check)."""
    rows, n = y.shape
    channels = a.shape[1]
    for r in range(rows):
        c = r % channels
        row = y[r]
        for start in range(0, n, BLOCK):
            dst = row[start:min(start + BLOCK, n)]
            for i in range(codes.size):
                _apply(codes[i], a[i, c], b[i, c], dst, dst)


@_inline
def _apply(code, p, q, src, dst):
    """dst = one operation of src (dst may be src: each element is read before it is written)."""
    if code == AFFINE:
        for k in range(dst.size):
            dst[k] = src[k] * p + q
    elif code == MAXIMUM:
        for k in range(dst.size):
            v = src[k]
            dst[k] = v if v > p or v != v else p
    else:
        for k in range(dst.size):
            v = src[k]
            v = p if v < p else v
            dst[k] = q if v > q else v


@_exact
def standardize_scale_rows(x, out, eps, divide_by_std, scale, bias):
    """A mean-variance normalization and the scale layer after it (a LayerNorm, as converters
    write it), one row at a time: out[r] = ((x[r] - mean) * inv) * scale[r % S] + bias[r % B],
    where mean and inv are ``_fused.standardize_rows``' own, from the same compiled functions,
    and each product and sum rounds as the two layers' numpy passes do (``bias`` has no rows
    when the scale layer has none)."""
    for r in range(x.shape[0]):
        row, dst = x[r], out[r]
        n = row.size
        mean = _sum64(row) / n
        if divide_by_std:
            inv = np.float32(1.0 / np.sqrt(_squared_deviation64(row, mean) / n + eps))
        else:
            inv = np.float32(1)
        m32 = np.float32(mean)
        s = scale[r % scale.shape[0]]
        if bias.shape[0]:
            b = bias[r % bias.shape[0]]
            for k in range(n):
                dst[k] = ((row[k] - m32) * inv) * s[k] + b[k]
        else:
            for k in range(n):
                dst[k] = ((row[k] - m32) * inv) * s[k]
