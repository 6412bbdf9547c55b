"""Kernel taps over padded inputs, shared by convolution, depthwise convolution and pooling."""
import numpy as np

from ._base import FRESH


def pad_trailing(x, pads, value=0.0, workspace=FRESH):
    """Pad the trailing ``len(pads)`` axes by ``(before, after)`` pairs; no copy when all are zero.
    The padded array comes from ``workspace``'s scratch (see Kernel.workspace); filling it and
    writing the interior is several times faster than np.pad."""
    if not any(b or a for b, a in pads):
        return x
    lead = x.ndim - len(pads)
    shape = x.shape[:lead] + tuple(int(n + b + a) for n, (b, a) in zip(x.shape[lead:], pads))
    padded = workspace.scratch("padded", shape, fill=value)
    padded[(Ellipsis,) + tuple(slice(int(b), int(b) + n) for n, (b, _) in zip(x.shape[lead:], pads))] = x
    return padded


def tap_slices(offsets, dilations, strides, out_sizes):
    """The input slices one kernel tap reads for every output position."""
    return tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                 for o, d, s, n in zip(offsets, dilations, strides, out_sizes))


def phase_range(pad, phase, step, size, count):
    """Indices [lo, hi) of stride phase ``phase`` (every ``step``-th padded position from
    ``phase`` on, ``count`` of them) whose padded position lo*step + phase falls inside the
    unpadded input of ``size``, and the input index of the first."""
    lo = max(0, -(-(pad - phase) // step))
    hi = min(count, -(-(size + pad - phase) // step))
    return lo, hi, lo * step + phase - pad
