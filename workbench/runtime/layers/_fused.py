"""Compiled float32 kernels for the element-wise work numpy would spread over many passes.

GELU, softmax, mean-variance statistics, recurrent layers' steps, a depthwise convolution's taps and
Winograd's input and output transforms are each 5-30 numpy passes over memory, with a temporary
array per pass; here each is one loop that numba compiles to vector code. (``shifted_taps``, the
loop of a convolution with few output channels, is here for the same reason as the recurrent
steps: it calls ``_gemm``'s product from compiled code.) The scalar functions are written out
(rather than calling libm) because only straight-line arithmetic vectorizes:

- ``exp``: Cody-Waite reduction by ln 2 in two parts and the degree-5 minimax polynomial of
  Cephes' ``expf`` (S. Moshier), then scaling by 2^n through the exponent bits (two factors, so
  results down to the subnormals are right); 0.7 ulp measured over the normal range (numpy's own
  float32 exp: 1.6 ulp).
- ``tanh``: Cephes' ``tanhf`` odd polynomial below |x| = 0.625, ``1 - 2 / (exp(2|x|) + 1)`` above;
  1.3 ulp.
- ``erf``: a rational fit, in float32.

Loops index arrays only with the loop counter of a ``range`` (slicing views first): an index
like ``a[k + offset]`` makes numba check for negative indices, which stops vectorization (the
one exception, ``_row_max``, is not a vectorized loop).

Infinities and NaN keep their IEEE meaning (no ``nnan``/``ninf`` fast-math flags): exp(inf) = inf,
exp(-inf) = 0, NaN in gives NaN out. Statistics and softmax sums accumulate in float64.

numba is imported by this module, so kernels import it only when they first need it (through
``_base.fused``: only models with these layers pay numba's import); each function compiles once
per machine (``cache=True``).
"""
import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# contraction to FMA, reciprocal-multiply and signless zeros; no reassociation (it would undo the
# two-part range reduction), no NaN/inf assumptions
_FLAGS = {"contract", "arcp", "nsz"}
# reductions may reassociate (that is what lets them vectorize); their operands are float64
_SUM_FLAGS = _FLAGS | {"reassoc"}
_jit = njit(fastmath=_FLAGS, error_model="numpy", cache=True)
# a whole recurrent sequence runs for milliseconds: other Python threads run meanwhile
_jit_nogil = njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
_inline = njit(fastmath=_FLAGS, error_model="numpy", inline="always")

_f32 = np.float32
_ZERO, _HALF, _ONE, _TWO = _f32(0), _f32(0.5), _f32(1), _f32(2)
_INF = _f32(np.inf)


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (2^n built in the exponent field)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


@intrinsic
def call_product(typingctx, address, a, a_row, a_col, b, ldb, c, ldc, m, n, k):
    """c += a @ b through ``_gemm.product``, called at ``address`` (``_gemm.ADDRESS``, passed in at
    run time so that the calling code can be cached): a, b and c are float32 arrays, the strides
    and sizes in elements from their first elements, as ``_gemm.product`` reads them. Unchecked:
    the caller keeps every offset inside its array."""
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (a, b, c)):
        return None                     # the product reads float32: numba names the types it got

    def codegen(context, builder, signature, args):
        from . import _gemm                 # when this compiles; its product's own signature
        target = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in _gemm.SIGNATURE.args])
        arrays = {i: context.make_array(signature.args[i])(context, builder, args[i]).data for i in (1, 4, 6)}
        values = [arrays.get(i, args[i]) for i in range(1, len(args))]
        builder.call(builder.inttoptr(args[0], target.as_pointer()), values)
        return context.get_dummy_value()

    ints = types.int64
    return types.void(ints, a, ints, ints, b, ints, c, ints, ints, ints, ints), codegen


# ---------------------------------------------------------------- calling the kernels from numpy

def flat_map(kernel, x, *args, out=None):
    """``kernel`` applied to every element of ``x`` (any shape), into ``out`` (a C-ordered float32
    array of x's shape: a kernel's reused output) or a new array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x) if out is None else out
    kernel(x.reshape(-1), out.reshape(-1), *args)
    return out


def over_trailing_axes(kernel, x, axes, *args, out=None):
    """The row ``kernel`` applied to each block of the ``axes`` trailing axes of ``x`` (softmax
    or statistics over those axes), into ``out`` (x's shape, C-contiguous) or a new array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    n = int(np.prod(x.shape[x.ndim - axes:]))
    if x.size and n:
        kernel(x.reshape(-1, n), out.reshape(-1, n), *args)
    return out


# ---------------------------------------------------------------- scalar float32 functions

_LOG2E = _f32(1.4426950408889634)
_LN2_HI, _LN2_LO = _f32(0.693359375), _f32(-2.12194440e-4)
_EXP_P = tuple(_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXP_MAX = _f32(88.72283)       # ln(largest float32): beyond it exp is inf
_EXP_MIN = _f32(-103.97208)     # ln(smallest subnormal / 2): below it exp rounds to 0


@_inline
def _pow2(n):
    """2^n for an integer-valued float32 n in [-126, 127]."""
    return _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@_inline
def exp(x):
    c = _EXP_MAX if x > _EXP_MAX else x                   # NaN passes through both clamps
    c = _EXP_MIN if c < _EXP_MIN else c
    n = np.floor(c * _LOG2E + _HALF)
    r = c - n * _LN2_HI
    r = r - n * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    y = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    y = y * r * r + r + _ONE
    half = np.floor(n * _HALF)                            # 2^n in two factors: n spans [-150, 128],
    y = y * _pow2(half) * _pow2(n - half)                 # each half is a normal float's exponent
    y = _INF if x > _EXP_MAX else y
    return _ZERO if x < _EXP_MIN else y


_TANH_Q = tuple(_f32(c) for c in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                  1.33314422036e-1, -3.33332819422e-1))
_TANH_SMALL = _f32(0.625)


@_inline
def tanh(x):
    a = abs(x)
    z = x * x
    q0, q1, q2, q3, q4 = _TANH_Q
    small = ((((q0 * z + q1) * z + q2) * z + q3) * z + q4) * z * x + x
    large = _ONE - _TWO / (exp(a + a) + _ONE)
    large = -large if x < _ZERO else large
    return small if a < _TANH_SMALL else large


@_inline
def sigmoid(x):
    return _ONE / (_ONE + exp(-x))


# erf(x) = x P(x^2) / Q(x^2) on |x| <= 4, +-1 beyond (erfc(4) = 1.5e-8 is below half a float32 ulp
# of 1). P (degree 6) and Q (degree 5, Q(0) = 1) are a weighted least-squares rational fit of
# erf(x)/x made for this module: relative error 2.5e-9 in float64, within 8 float32 ulps in float32.
_ERF_P = tuple(_f32(c) for c in (1.1283791670955126, 0.18527999760113016, 0.05435400339089227,
                                 0.0038564779935419044, 0.00038085896100584604,
                                 4.715109380806457e-06, -1.3360234317604935e-08))
_ERF_Q = tuple(_f32(c) for c in (1.0, 0.4975335208155648, 0.11401401330707838,
                                 0.015479842993669066, 0.0013106910349218788, 6.340348257154524e-05))
_ERF_LIMIT = _f32(4)


@_inline
def erf(x):
    c = _ERF_LIMIT if x > _ERF_LIMIT else x               # NaN passes through both clamps
    c = -_ERF_LIMIT if c < -_ERF_LIMIT else c
    t = c * c
    p0, p1, p2, p3, p4, p5, p6 = _ERF_P
    q0, q1, q2, q3, q4, q5 = _ERF_Q
    p = (((((p6 * t + p5) * t + p4) * t + p3) * t + p2) * t + p1) * t + p0
    q = ((((q5 * t + q4) * t + q3) * t + q2) * t + q1) * t + q0
    y = c * p / q
    y = _ONE if x >= _ERF_LIMIT else y                    # erfc(4) is below half an ulp of 1
    return -_ONE if x <= -_ERF_LIMIT else y


# ---------------------------------------------------------------- element-wise kernels (flat arrays)

GELU_EXACT, GELU_TANH, GELU_SIGMOID = 0, 1, 2
GELU_MODES = {"EXACT": GELU_EXACT, "TANH_APPROXIMATION": GELU_TANH, "SIGMOID_APPROXIMATION": GELU_SIGMOID}
_SQRT_HALF = _f32(np.sqrt(0.5))
_SQRT_2_OVER_PI = _f32(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = _f32(0.044715)
_GELU_SIGMOID_SCALE = _f32(1.702)


@_jit
def gelu(x, out, mode):
    """out = GELU(x) for flat float32 arrays, in one of the proto's three GeluModes."""
    if mode == GELU_EXACT:                     # three loops: the mode is not tested per element
        for k in range(x.size):
            v = x[k]
            out[k] = _HALF * v * (_ONE + erf(v * _SQRT_HALF))
    elif mode == GELU_TANH:
        for k in range(x.size):
            v = x[k]
            out[k] = _HALF * v * (_ONE + tanh(_SQRT_2_OVER_PI * (v + _GELU_CUBIC * v * v * v)))
    else:
        for k in range(x.size):
            v = x[k]
            out[k] = v * sigmoid(_GELU_SIGMOID_SCALE * v)


@_jit
def map_erf(x, out):
    for k in range(x.size):
        out[k] = erf(x[k])


@_jit
def map_tanh(x, out):
    for k in range(x.size):
        out[k] = tanh(x[k])


@_jit
def map_sigmoid(x, out):
    for k in range(x.size):
        out[k] = sigmoid(x[k])


# ---------------------------------------------------------------- row kernels ([rows, n] C-contiguous)

@njit(error_model="numpy", cache=True)
def leaky_rows(x, out, alpha):
    """out[r] = x[r] where it is >= 0, else x[r] * alpha[r % len(alpha)]: a leaky ReLU (one alpha,
    one row) or a PReLU (an alpha per channel, rows [N * C, positions]), in one pass where numpy's
    ``where`` made three and two temporaries. As ``where``: NaN stays NaN, -0 stays -0 (so no
    fast-math flags here)."""
    channels = alpha.size
    for r in range(x.shape[0]):
        row, dst, slope = x[r], out[r], alpha[r % channels]
        for k in range(row.size):
            v = row[k]
            dst[k] = v if v >= _ZERO else v * slope


@njit(fastmath=_SUM_FLAGS, error_model="numpy", cache=True)
def _sum64(row):
    s = 0.0
    for k in range(row.size):
        s += np.float64(row[k])
    return s


@njit(fastmath=_SUM_FLAGS, error_model="numpy", cache=True)
def _squared_deviation64(row, mean):
    s = 0.0
    for k in range(row.size):
        d = np.float64(row[k]) - mean
        s += d * d
    return s


@_inline
def _larger(v, m):
    """v if it is larger than m, else m (a NaN v leaves m)."""
    return v if v > m else m


@_inline
def _row_max(row):
    """The largest element of ``row``, as eight independent running maxima the CPU advances in
    parallel: a single running maximum is one chain of dependent compares (measured 2x slower
    on 1024 x 128 rows). A NaN is skipped unless it is the first element; the softmax's sum is
    NaN either way. ``row[b + 1]`` and the like index past the loop counter, which costs no
    negative-index check here: b is a non-negative ``range`` value and b + 7 < n."""
    n = row.size
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    full = n - n % 8
    for b in range(0, full, 8):
        m0, m1, m2, m3 = (_larger(row[b], m0), _larger(row[b + 1], m1),
                          _larger(row[b + 2], m2), _larger(row[b + 3], m3))
        m4, m5, m6, m7 = (_larger(row[b + 4], m4), _larger(row[b + 5], m5),
                          _larger(row[b + 6], m6), _larger(row[b + 7], m7))
    for k in range(full, n):
        m0 = _larger(row[k], m0)
    return _larger(_larger(_larger(m1, m0), _larger(m3, m2)),
                   _larger(_larger(m5, m4), _larger(m7, m6)))


@_jit
def softmax_rows(x, out):
    """out[r] = softmax(x[r]) for each row: max subtracted, exp, times the reciprocal of the
    float64 sum rounded to float32. A NaN anywhere in a row makes the sum, so the whole row,
    NaN (as torch.softmax does)."""
    for r in range(x.shape[0]):
        row, dst = x[r], out[r]
        m = _row_max(row)                        # NaN (first element NaN): every exp is NaN
        for k in range(row.size):
            dst[k] = exp(row[k] - m)
        inv = _ONE / _f32(_sum64(dst))          # one division per row, as torch's kernel does
        for k in range(row.size):
            dst[k] = dst[k] * inv


@_jit
def standardize_rows(x, out, eps, divide_by_std):
    """out[r] = (x[r] - mean) [/ sqrt(var + eps)] per row, population variance in two passes."""
    for r in range(x.shape[0]):
        row, dst = x[r], out[r]
        n = row.size
        mean = _sum64(row) / n
        if divide_by_std:
            inv = _f32(1.0 / np.sqrt(_squared_deviation64(row, mean) / n + eps))
        else:
            inv = _ONE
        m32 = _f32(mean)
        for k in range(n):
            dst[k] = (row[k] - m32) * inv


# ---------------------------------------------------------------- recurrent layers
# Every array is C-ordered: the product reads states [Batch, H] and weights by rows.

@_inline
def _clipped(x, bound):
    """x clipped to +-bound (NaN stays NaN): gate pre-activations and the LSTM's cell."""
    return min(max(x, -bound), bound)


@_jit_nogil
def lstm_sequence(product, pre, rt, h0, c, out, gate_clip, cell_clip, coupled):
    """An LSTM over a whole sequence, gates in the order i, f, o, z. ``pre`` [Seq, Batch, 4H]
    holds each step's input projection and bias; step t adds h_(t-1) R^T to its slice in place
    (``rt`` [H, 4H], row-major, by ``_gemm``'s product at the address ``product``), then
    updates the cell ``c`` [Batch, H] in place and writes h_t to ``out[t]`` [Batch, H]; ``h0`` is
    the state before the first step. Pre-activations are clipped to +-gate_clip and the cell to
    +-cell_clip, as the proto says."""
    steps, batch, hidden = out.shape
    width = 4 * hidden
    h = h0
    for t in range(steps):
        step, h_out = pre[t], out[t]
        call_product(product, h, hidden, 1, rt, width, step, width, batch, width, hidden)
        for b in range(batch):
            row, cb, hb = step[b], c[b], h_out[b]
            pi, pf = row[:hidden], row[hidden:2 * hidden]
            po, pz = row[2 * hidden:3 * hidden], row[3 * hidden:]
            for k in range(hidden):
                i = sigmoid(_clipped(pi[k], gate_clip))
                o = sigmoid(_clipped(po[k], gate_clip))
                z = tanh(_clipped(pz[k], gate_clip))
                if coupled:
                    cell = cb[k] * (_ONE - i) + i * z
                else:
                    cell = cb[k] * sigmoid(_clipped(pf[k], gate_clip)) + i * z
                cell = _clipped(cell, cell_clip)
                cb[k] = cell
                hb[k] = o * tanh(cell)
        h = h_out


@_jit_nogil
def gru_sequence(product, pre, r_zr, r_o, h0, reset_h, out, gate_clip):
    """Core ML's GRU over a whole sequence, with sigmoid and tanh. ``pre`` [Seq, Batch, 3H]
    holds each step's input projection and bias, columns z, r, o; step t adds h R_zr^T
    (``r_zr`` [H, 2H]) to its z and r columns, then (r * h) R_o^T (``r_o`` [H, H]; the reset
    gate scales the state before R_o) to its o columns, and writes
    h_t = (1 - z) * o + z * h_(t-1) to ``out[t]``; ``reset_h`` [Batch, H] is scratch.
    Products by ``_gemm``'s product at the address ``product``; pre-activations clipped to
    +-gate_clip, as the proto says."""
    steps, batch, hidden = out.shape
    width = 3 * hidden
    h = h0
    for t in range(steps):
        step, h_out = pre[t], out[t]
        call_product(product, h, hidden, 1, r_zr, 2 * hidden, step, width, batch, 2 * hidden, hidden)
        for b in range(batch):
            pr, hb, rb = step[b, hidden:2 * hidden], h[b], reset_h[b]
            for k in range(hidden):
                rb[k] = sigmoid(_clipped(pr[k], gate_clip)) * hb[k]
        call_product(product, reset_h, hidden, 1, r_o, hidden, step[:, 2 * hidden:], width, batch, hidden,
                     hidden)
        for b in range(batch):
            pz, po, hb, ob = step[b, :hidden], step[b, 2 * hidden:], h[b], h_out[b]
            for k in range(hidden):
                z = sigmoid(_clipped(pz[k], gate_clip))
                ob[k] = (_ONE - z) * tanh(_clipped(po[k], gate_clip)) + z * hb[k]
        h = h_out


@_jit_nogil
def rnn_sequence(product, pre, rt, h0, out, gate_clip, use_tanh):
    """A simple recurrent layer over a whole sequence: h_t = f(clip(pre[t] + h_(t-1) R^T)) with
    f tanh (``use_tanh``) or sigmoid, written to ``out[t]``; ``pre`` [Seq, Batch, H] holds each
    step's input projection and bias, ``rt`` is R^T [H, H] row-major."""
    steps, batch, hidden = out.shape
    h = h0
    for t in range(steps):
        step, h_out = pre[t], out[t]
        call_product(product, h, hidden, 1, rt, hidden, step, hidden, batch, hidden, hidden)
        for b in range(batch):
            row, ob = step[b], h_out[b]
            for k in range(hidden):
                v = _clipped(row[k], gate_clip)
                ob[k] = tanh(v) if use_tanh else sigmoid(v)
        h = h_out


# ---------------------------------------------------------------- depthwise convolution

_BLOCK = 512      # output elements accumulated at a time: the block stays in L1 across the taps


@_inline
def clamp(v, low, high, relu):
    """A fused activation, as its own layer computes it: ``relu``, np.maximum(v, 0) (+0 for -0);
    otherwise np.clip(v, low, high) (-0 stays -0, and high wins when low > high). NaN stays NaN
    in both; low = -inf and high = inf change nothing."""
    if relu:
        return v if v > _ZERO or v != v else _ZERO
    v = low if v < low else v
    return high if v > high else v


@_jit
def bias_clamp(rows, bias, low, high, relu):
    """rows[r] = clamp(rows[r] + bias[r % len(bias)]) in place, rows [N * C, positions]: a
    convolution's bias and its fused activation in one pass (``bias`` may be empty)."""
    channels = bias.size
    for r in range(rows.shape[0]):
        row = rows[r]
        if channels:
            add = bias[r % channels]
            for k in range(row.size):
                row[k] = clamp(row[k] + add, low, high, relu)
        else:                                   # no bias: no + 0, which would turn a -0 into +0
            for k in range(row.size):
                row[k] = clamp(row[k], low, high, relu)


@_jit
def depthwise_taps(phases, tap_phase, tap_offset, w, bias, out, low, high, relu):
    """out[p, k] = bias[c] + sum over taps t of w[c, t] * phases[tap_phase[t], p, k + tap_offset[t]]
    for each image plane p = n * C + c: a depthwise convolution over flattened (stride phases
    of) padded images, taps added in order into one block of outputs at a time, then ``clamp``ed
    (a fused ReLU or clip; -inf, inf and False change nothing)."""
    planes, count = out.shape
    channels, taps = w.shape
    for p in range(planes):
        c = p % channels
        start = bias[c]
        for first in range(0, count, _BLOCK):
            size = min(_BLOCK, count - first)
            dst = out[p, first:first + size]
            for k in range(size):
                dst[k] = start
            for t in range(taps):
                offset = first + tap_offset[t]
                src, weight = phases[tap_phase[t], p, offset:offset + size], w[c, t]
                for k in range(size):
                    dst[k] += weight * src[k]
            for k in range(size):
                dst[k] = clamp(dst[k], low, high, relu)


@_jit
def shifted_taps(product, planes, w_taps, tap_rows, offsets, wide, block):
    """wide[i, :, p] += sum over taps t of w_taps[t] @ planes[i, rows of t, offsets[t] + p], a
    block of positions p at a time (every tap over one block, then the next): a convolution with
    few output channels (_shifted.py), each tap's product by ``_gemm``'s at the address
    ``product``. Tap t reads the C_in planes from row tap_rows[t] on (its stride phase's)."""
    images, c_out, positions = wide.shape
    channels, stride = w_taps.shape[2], planes.shape[2]
    for i in range(images):
        src, dst = planes[i], wide[i]
        for start in range(0, positions, block):
            count = min(block, positions - start)
            for t in range(offsets.size):
                call_product(product, w_taps[t], channels, 1, src[tap_rows[t]:, offsets[t] + start:], stride,
                             dst[:, start:], positions, c_out, count, channels)


# ---------------------------------------------------------------- Winograd F(2x2, 3x3) transforms

@_jit
def winograd_input(xp, v):
    """v[4a + b, c, n, ty, tx] = (B^T d B)[a, b] for the 4x4 tile d of the padded image xp[n, c]
    at rows 2ty.., columns 2tx..; B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    One pass over the image: numpy needed eight, each writing a temporary as large as ``v``."""
    images, channels = xp.shape[0], xp.shape[1]
    tiles_y, tiles_x = v.shape[3], v.shape[4]
    for n in range(images):
        for c in range(channels):
            img = xp[n, c]
            for ty in range(tiles_y):
                r0, r1, r2, r3 = img[2 * ty], img[2 * ty + 1], img[2 * ty + 2], img[2 * ty + 3]
                out = v[:, c, n, ty]
                for tx in range(tiles_x):
                    j = 2 * tx
                    # B^T d: rows combined, for each of the tile's four columns
                    a0, a1, a2, a3 = r0[j] - r2[j], r0[j + 1] - r2[j + 1], r0[j + 2] - r2[j + 2], r0[j + 3] - r2[j + 3]
                    b0, b1, b2, b3 = r1[j] + r2[j], r1[j + 1] + r2[j + 1], r1[j + 2] + r2[j + 2], r1[j + 3] + r2[j + 3]
                    c0, c1, c2, c3 = r2[j] - r1[j], r2[j + 1] - r1[j + 1], r2[j + 2] - r1[j + 2], r2[j + 3] - r1[j + 3]
                    d0, d1, d2, d3 = r1[j] - r3[j], r1[j + 1] - r3[j + 1], r1[j + 2] - r3[j + 2], r1[j + 3] - r3[j + 3]
                    # ... then B on the right: columns combined
                    out[0, tx], out[1, tx], out[2, tx], out[3, tx] = a0 - a2, a1 + a2, a2 - a1, a1 - a3
                    out[4, tx], out[5, tx], out[6, tx], out[7, tx] = b0 - b2, b1 + b2, b2 - b1, b1 - b3
                    out[8, tx], out[9, tx], out[10, tx], out[11, tx] = c0 - c2, c1 + c2, c2 - c1, c1 - c3
                    out[12, tx], out[13, tx], out[14, tx], out[15, tx] = d0 - d2, d1 + d2, d2 - d1, d1 - d3


@_jit
def winograd_output(m, bias, y, low, high, relu):
    """y[n, o, 2ty + i, 2tx + j] = bias[o] + (A^T M A)[i, j] for M[a, b] = m[4a + b, o, n, ty, tx],
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], ``clamp``ed (a fused activation); tiles past
    ``y``'s height or width are cropped. ``bias`` holds one value per output channel, or none."""
    images, outputs, height, width = y.shape
    tiles_y, tiles_x = m.shape[3], m.shape[4]
    for n in range(images):
        for o in range(outputs):
            start = bias[o] if bias.size else _ZERO
            plane = y[n, o]
            for ty in range(tiles_y):
                t = m[:, o, n, ty]
                top, bottom = plane[2 * ty], plane[min(2 * ty + 1, height - 1)]
                for tx in range(tiles_x):
                    # A^T M: the tile's rows combined, for each of its four columns
                    s0 = t[0, tx] + t[4, tx] + t[8, tx]
                    s1 = t[1, tx] + t[5, tx] + t[9, tx]
                    s2 = t[2, tx] + t[6, tx] + t[10, tx]
                    s3 = t[3, tx] + t[7, tx] + t[11, tx]
                    q0 = t[4, tx] - t[8, tx] - t[12, tx]
                    q1 = t[5, tx] - t[9, tx] - t[13, tx]
                    q2 = t[6, tx] - t[10, tx] - t[14, tx]
                    q3 = t[7, tx] - t[11, tx] - t[15, tx]
                    j = 2 * tx
                    if j + 1 < width:
                        bottom[j + 1] = clamp(start + q1 - q2 - q3, low, high, relu)   # row 1 first: it may be
                        top[j + 1] = clamp(start + s1 - s2 - s3, low, high, relu)  # row 0's alias (cropped)
                    bottom[j] = clamp(start + q0 + q1 + q2, low, high, relu)
                    top[j] = clamp(start + s0 + s1 + s2, low, high, relu)
