"""Normalization kernels: batchnorm, mvn, softmax, softmaxND, l2normalize, lrn, layerNormalization.

The classic layers (all but softmaxND and layerNormalization) put channels on axis -3 and
treat every axis before it as batch, so one kernel serves rank-5 blobs ``[Seq, Batch, C, H, W]``
and exact-rank blobs alike. Everything computes in float32, as Core ML does; statistics use
two passes (mean, then the mean of squared deviations) so the variance never cancels.
"""
import numpy as np

from ...errors import ModelFormatError
from ._base import FRESH, fused, kernel, Kernel, same_shape

CHANNEL_AXIS = -3
SPATIAL_AXES = (-2, -1)
CHW_AXES = (-3, -2, -1)


def _require_rank(layer, x, rank):
    if x.ndim < rank:
        raise ValueError(f"layer '{layer.name}' ({layer.kind}) needs an input of rank >= {rank}, "
                         f"got shape {x.shape}")


def _require_channels(layer, x, channels):
    if x.shape[CHANNEL_AXIS] != channels:
        raise ValueError(f"layer '{layer.name}' ({layer.kind}) has {channels} channels, the input "
                         f"has {x.shape[CHANNEL_AXIS]} on axis -3 (shape {x.shape})")


def _standardize(x, axes, eps, divide_by_std=True, workspace=FRESH):
    """(x - mean) / sqrt(var + eps) over ``axes``, population variance (two passes: no cancellation).
    Trailing axes (every case but batch-wide batchnorm statistics) take one compiled pass per row,
    into the calling kernel's ``workspace``."""
    if axes == tuple(range(-len(axes), 0)):
        kernels = fused()
        return kernels.over_trailing_axes(kernels.standardize_rows, x, len(axes), float(eps),
                                          bool(divide_by_std), out=workspace.output(x.shape))
    centered = x - x.mean(axis=axes, keepdims=True)
    if not divide_by_std:
        return centered
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    centered *= 1.0 / np.sqrt(var + np.float32(eps))
    return centered


def _positive_or(value, default):
    """The proto's 'defaults to X if not set or set to 0' rule."""
    return float(value) if value else default


@kernel("batchnorm")
class BatchNorm(Kernel):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta per channel (axis -3).

    With fixed statistics the affine map is folded once into a per-channel scale and shift.
    With computeMeanVar the statistics come from the input: per instance and channel over H, W
    (instanceNormalization), or per channel over every other axis (the whole batch).
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.channels = int(p.channels)
        if self.channels <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (batchnorm): channels must be > 0")
        self.eps = _positive_or(p.epsilon, 1e-5)
        self.compute_stats = bool(p.computeMeanVar)
        self.instance = bool(p.instanceNormalization)
        gamma = self.weights(p.gamma, "gamma", self.channels)
        beta = self.weights(p.beta, "beta", self.channels)
        per_channel = (self.channels, 1, 1)
        if self.compute_stats:
            self.gamma = gamma.reshape(per_channel)
            self.beta = beta.reshape(per_channel)
        else:
            # fold the fixed statistics into one scale and shift (in float64, then stored as float32)
            mean = self.weights(p.mean, "mean", self.channels).astype(np.float64)
            var = self.weights(p.variance, "variance", self.channels).astype(np.float64)
            scale = gamma / np.sqrt(var + self.eps)
            self.scale = scale.astype(np.float32).reshape(per_channel)
            self.shift = (beta - mean * scale).astype(np.float32).reshape(per_channel)

    def output_shapes(self, shapes):
        s = shapes[0]
        return [s] if s is not None and len(s) >= 3 and s[-3] == self.channels else None

    def compute(self, x):
        _require_rank(self, x, 3)
        _require_channels(self, x, self.channels)
        if not self.compute_stats:
            y = np.multiply(x, self.scale, out=self.workspace().output(x.shape))
            y += self.shift
            return y
        if self.instance:
            axes = SPATIAL_AXES
        else:
            axes = tuple(a for a in range(x.ndim) if a != x.ndim + CHANNEL_AXIS)
        y = _standardize(x, axes, self.eps, workspace=self.workspace())
        y *= self.gamma
        y += self.beta
        return y


@kernel("mvn")
class MeanVarianceNormalize(Kernel):
    """Subtract the mean (and divide by sqrt(var + eps)) per channel plane, or across C, H, W.

    The proto does not spell out where epsilon goes; Apple's own converters lower
    ``layer_norm`` (eps inside the square root) to this layer, so it goes inside here too.
    """

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.axes = CHW_AXES if p.acrossChannels else SPATIAL_AXES
        self.normalize_variance = bool(p.normalizeVariance)
        self.eps = _positive_or(p.epsilon, 1e-6)

    def compute(self, x):
        _require_rank(self, x, len(self.axes))
        return _standardize(x, self.axes, self.eps, self.normalize_variance, self.workspace())


def _softmax(x, axis, workspace):
    """exp(x - max) / sum over ``axis``, one compiled pass per row of that axis moved last, into
    the calling kernel's ``workspace``."""
    kernels = fused()
    axis %= x.ndim
    if all(d == 1 for d in x.shape[axis + 1:]):          # already rows: no transpose
        return kernels.over_trailing_axes(kernels.softmax_rows, x, x.ndim - axis, out=workspace.output(x.shape))
    moved = np.moveaxis(x, axis, -1)
    out = workspace.output(moved.shape)
    return np.moveaxis(kernels.over_trailing_axes(kernels.softmax_rows, moved, 1, out=out), -1, axis)


@kernel("softmax")
class Softmax(Kernel):
    """Softmax over the channel axis (-3)."""

    output_shapes = same_shape

    def compute(self, x):
        _require_rank(self, x, 3)
        return _softmax(x, CHANNEL_AXIS, self.workspace())


@kernel("softmaxND")
class SoftmaxND(Kernel):
    """Softmax over any axis (negative axes count from the end)."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)

    def compute(self, x):
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"layer '{self.name}' (softmaxND): axis {self.axis} is out of range "
                             f"for an input of rank {x.ndim}")
        return _softmax(x, self.axis, self.workspace())


@kernel("l2normalize")
class L2Normalize(Kernel):
    """x / sqrt(sum(x^2) + eps), the sum over C, H, W of each batch item."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.eps = _positive_or(self.params.epsilon, 1e-6)

    def compute(self, x):
        _require_rank(self, x, 3)
        sum_squares = np.sum(np.square(x), axis=CHW_AXES, keepdims=True)
        return x * (1.0 / np.sqrt(sum_squares + np.float32(self.eps)))


@kernel("lrn")
class LocalResponseNorm(Kernel):
    """x / (k + alpha / localSize * sum of x^2 over a window of channels)^beta.

    The window around channel c is [c - localSize // 2, c + (localSize - 1) // 2], clipped at
    the edges: the window of Metal's MPSCNNCrossChannelNormalization (and of PyTorch), which
    only matters for an even localSize.
    """

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.size = int(p.localSize)
        if self.size <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (lrn): localSize must be > 0")
        self.alpha = float(p.alpha)
        self.beta = float(p.beta)
        self.k = _positive_or(p.k, 1.0)
        self.pad = (self.size // 2, (self.size - 1) // 2)

    def compute(self, x):
        _require_rank(self, x, 3)
        # float64 running sums: a window sum is a difference of two of them, which would cancel
        squares = np.square(x, dtype=np.float64)
        pad_width = [(0, 0)] * x.ndim
        pad_width[x.ndim + CHANNEL_AXIS] = self.pad
        padded = np.pad(squares, pad_width)
        # window sums from a running sum along channels: cum[c + size] - cum[c]
        cum = np.cumsum(padded, axis=CHANNEL_AXIS)
        cum = np.concatenate([np.zeros_like(cum[..., :1, :, :]), cum], axis=CHANNEL_AXIS)
        window = cum[..., self.size:, :, :] - cum[..., :-self.size, :, :]
        factor = np.power(self.k + (self.alpha / self.size) * window, -self.beta).astype(np.float32)
        factor *= x
        return factor


@kernel("layerNormalization")
class LayerNormalization(Kernel):
    """gamma * (x - mean) / sqrt(var + eps) + beta over the trailing ``normalizedShape`` axes."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.normalized_shape = tuple(int(d) for d in p.normalizedShape)
        if not self.normalized_shape or any(d <= 0 for d in self.normalized_shape):
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (layerNormalization): "
                                   f"normalizedShape {list(self.normalized_shape)} must be non-empty "
                                   f"and positive")
        count = int(np.prod(self.normalized_shape))
        self.eps = float(p.eps)
        self.gamma = self._affine(p, "gamma", count, 1.0)
        self.beta = self._affine(p, "beta", count, 0.0)
        self.axes = tuple(range(-len(self.normalized_shape), 0))

    def _affine(self, p, what, count, default):
        """gamma/beta shaped like normalizedShape; an absent one is the identity."""
        if not p.HasField(what) or not self.has_weights(getattr(p, what)):
            return np.full(self.normalized_shape, default, dtype=np.float32)
        return self.weights(getattr(p, what), what, count).reshape(self.normalized_shape)

    def compute(self, x):
        if x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape:
            raise ValueError(f"layer '{self.name}' (layerNormalization): normalizedShape "
                             f"{list(self.normalized_shape)} does not match the trailing axes of "
                             f"the input shape {x.shape}")
        y = _standardize(x, self.axes, self.eps, workspace=self.workspace())
        y *= self.gamma
        y += self.beta
        return y
