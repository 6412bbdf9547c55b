"""Kernel taps over padded inputs, shared by convolution, depthwise convolution and pooling."""
import numpy as np


def pad_trailing(x, pads, value=0.0):
    """Pad the trailing ``len(pads)`` axes by ``(before, after)`` pairs; no copy when all are zero."""
    if not any(b or a for b, a in pads):
        return x
    width = [(0, 0)] * (x.ndim - len(pads)) + [(int(b), int(a)) for b, a in pads]
    return np.pad(x, width, mode="constant", constant_values=value)


def tap_slices(offsets, dilations, strides, out_sizes):
    """The input slices one kernel tap reads for every output position."""
    return tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                 for o, d, s, n in zip(offsets, dilations, strides, out_sizes))
