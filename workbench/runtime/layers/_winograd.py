"""Winograd F(2x2, 3x3): 3x3 stride-1 convolution with 16 multiplies per 2x2 output tile instead of 36.

Why: in a ResNet most of the time is 3x3 stride-1 convolutions, and with im2col they are one BLAS
GEMM each, already near the CPU's peak. Winograd's transform trades 2.25x fewer GEMM flops for
two passes of additions (the input and output transforms of F(2, 3) have coefficients 0 and
+-1), compiled, which pays off on layers with many channels. The weight transform
``G g G^T`` is done once, at load. Errors stay at float32 rounding level (coefficients are exact).
"""
import numpy as np

from ._base import FRESH, NO_BIAS, NO_CLAMP, fused

_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


# U[4a + b] = sum_jk G[a, j] G[b, k] g[j, k]: the Kronecker product of G with itself, [16, 9]
_GG = np.kron(_G, _G)


def winograd_weights(w):
    """[C_out, C_in, 3, 3] -> U [16, C_out, C_in], U[4a + b] = (G g G^T)[a, b] for every (out, in).
    One [16, 9] x [9, C_out * C_in] product (BLAS reads the weights transposed, no copy)."""
    c_out, c_in = w.shape[:2]
    u = _GG @ np.asarray(w, np.float32).reshape(-1, 9).T
    return u.reshape(16, c_out, c_in)


def winograd_forward(x, u, pads, out_sizes, bias=None, workspace=FRESH, clamp=NO_CLAMP):
    """x [N, C, H, W] (float32, contiguous), u from winograd_weights, bias [C_out] or None ->
    [N, C_out, *out_sizes], with ``clamp`` = (low, high, relu), a fused activation. The
    transforms are compiled loops (``_fused.winograd_input`` and ``winograd_output``, which adds
    the bias and clamps); the padded image, the transformed tiles and the products come from
    ``workspace``."""
    n, c = x.shape[:2]
    (top, _), (left, _) = pads
    ho, wo = out_sizes
    th, tw = -(-ho // 2), -(-wo // 2)                            # tiles per axis
    xp = workspace.scratch("pad", (n, c, 2 * th + 2, 2 * tw + 2), fill=0)   # rounded up to whole tiles
    rows, cols = min(x.shape[2], xp.shape[2] - top), min(x.shape[3], xp.shape[3] - left)
    xp[:, :, top:top + rows, left:left + cols] = x[:, :, :rows, :cols]
    kernels, c_out, tiles = fused(), u.shape[1], n * th * tw
    v = _planes(workspace, "cols", c * tiles)
    kernels.winograd_input(xp, v.reshape(16, c, n, th, tw))
    m = _planes(workspace, "winograd", c_out * tiles)
    np.matmul(u, v.reshape(16, c, tiles), out=m.reshape(16, c_out, tiles))
    y = workspace.output((n, c_out, ho, wo))
    kernels.winograd_output(m.reshape(16, c_out, n, th, tw), NO_BIAS if bias is None else bias, y, *clamp)
    return y


def _planes(workspace, key, size):
    """16 planes of ``size`` floats, [16, size], a cache line apart beyond their size. The
    transforms touch all 16 at once; planes a multiple of 4 KiB apart (64 channels of 28x28
    tiles) would share L1 sets and evict each other: the input transform ran 10x slower."""
    return workspace.scratch(key, (16, size + 16))[:, :size]
