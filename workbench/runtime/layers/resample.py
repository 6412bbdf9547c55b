"""Resampling and spatial reshuffling: ``upsample``, ``resizeBilinear``, ``cropResize``,
``padding``, ``constantPad``, ``crop``, ``reorganizeData``.

Classic layers here act on the trailing axes (H = -2, W = -1, C = -3), so they serve rank-5 and
exact-rank models alike. Bilinear resampling is separable: every kind computes one coordinate
vector per axis from the proto's grid formulas, then interpolates along H and then W with two
gathers, O(output) work.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, kernel
from .conv import border_pairs


# ---------------------------------------------------------------- interpolation helpers

def lerp_axis(x, axis, coords):
    """Linear interpolation of ``x`` along ``axis`` at float positions ``coords``.

    ``coords`` is 1-D (one grid for all) or broadcastable against the result with the axis
    replaced (one grid per box). Positions are clamped to ``[0, size - 1]``.
    """
    size = x.shape[axis]
    c = np.clip(np.asarray(coords, np.float64), 0, size - 1)
    lo = np.floor(c).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    frac = (c - lo).astype(np.float32)
    if c.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
        frac = frac.reshape(shape)
    else:
        a = np.take_along_axis(x, lo, axis=axis)
        b = np.take_along_axis(x, hi, axis=axis)
    b -= a                                     # both gathers are fresh arrays: work in place
    b *= frac
    b += a
    return b


def sampling_grid(start, end, n, method):
    """SamplingMode grid of ``n`` points on ``[start, end]`` (the proto's ``[0, X-1]`` shifted
    by ``start``); ``start``/``end`` are arrays (one per box), the result has a trailing axis n."""
    start = np.asarray(start, np.float64)[..., None]
    length = np.asarray(end, np.float64)[..., None] - start          # X - 1
    i = np.arange(n, dtype=np.float64)
    if method == "ALIGN_ENDPOINTS_MODE" and n == 1:
        return start + length / 2
    if method in ("STRICT_ALIGN_ENDPOINTS_MODE", "ALIGN_ENDPOINTS_MODE"):
        return start + length * (i / (n - 1) if n > 1 else i)
    if method == "UPSAMPLE_MODE":
        extent = length + 1                                           # X
        step = (extent - extent / n) / (n - 1) if n > 1 else 0 * extent
        return start + np.minimum(length, i * step)
    if method == "ROI_ALIGN_MODE":
        spacing = np.maximum(1, length) / n
        return start + np.minimum(length, (i + 0.5) * spacing)
    raise ValueError(f"unknown sampling mode {method}")


def upsample_grid(n_in, n_out, mode):
    """UpsampleLayerParams.LinearUpsampleMode grid (before clamping to [0, n_in - 1])."""
    i = np.arange(n_out, dtype=np.float64)
    if mode == "ALIGN_CORNERS_FALSE":
        spacing = n_in / n_out
        return i * spacing + 0.5 * spacing - 0.5
    if n_out == 1:
        return np.zeros(1)
    if mode == "ALIGN_CORNERS_TRUE":
        return i * (n_in - 1) / (n_out - 1)
    return i * (n_in - n_in / n_out) / (n_out - 1)                   # DEFAULT


class _SpatialKernel(Kernel):
    """Kernels that need at least ``min_rank`` axes ([..., C, H, W] or [..., H, W])."""

    min_rank = 3

    def _error(self, message):
        return LayerError(self.ctx.model_name, self.name, message)

    def _check_rank(self, x, what="input"):
        if x.ndim < self.min_rank:
            raise self._error(f"{what} of shape {x.shape} has rank {x.ndim}, this layer needs "
                              f"at least {self.min_rank}")


def _pair(values, default, cast=int):
    values = [cast(v) for v in values]
    return tuple(values) if len(values) == 2 else (default, default)


# ---------------------------------------------------------------- interpolating kernels

@kernel("upsample")
class Upsample(_SpatialKernel):
    """UpsampleLayerParams: nearest (pixel repeat) or bilinear, integer or fractional factors.

    Output size is ``floor(in * factor)``; nearest picks ``floor(i / factor)``.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        if len(p.fractionalScalingFactor):
            self.factors = _pair(p.fractionalScalingFactor, 1.0, float)
        else:
            self.factors = _pair(p.scalingFactor, 1)
        if min(self.factors) <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}': scaling factors "
                                   f"{self.factors} must be positive")
        self.bilinear = p.mode == p.BILINEAR
        self.linear_mode = p.LinearUpsampleMode.Name(p.linearUpsampleMode)

    def compute(self, x):
        self._check_rank(x)
        self.check_shape(x.shape[:-2] + tuple(int(np.floor(n * f + 1e-9))
                                              for n, f in zip(x.shape[-2:], self.factors)))
        y = x
        for axis, factor in zip((-2, -1), self.factors):
            n_in = x.shape[axis]
            n_out = int(np.floor(n_in * factor + 1e-9))
            if self.bilinear:
                y = lerp_axis(y, axis, upsample_grid(n_in, n_out, self.linear_mode))
            elif float(factor).is_integer():
                y = np.repeat(y, int(factor), axis=axis)
            else:
                index = np.minimum(np.floor(np.arange(n_out) / factor).astype(np.intp), n_in - 1)
                y = np.take(y, index, axis=axis)
        return np.asarray(y, np.float32)


@kernel("resizeBilinear")
class ResizeBilinear(_SpatialKernel):
    """ResizeBilinearLayerParams: bilinear resize of (-2, -1) to targetSize on a SamplingMode grid."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.target = _pair(p.targetSize, 1)
        self.method = p.mode.Method.Name(p.mode.samplingMethod)

    def compute(self, x):
        self._check_rank(x)
        self.check_shape(x.shape[:-2] + tuple(self.target))
        y = x
        for axis, n_out in zip((-2, -1), self.target):
            y = lerp_axis(y, axis, sampling_grid(0.0, x.shape[axis] - 1, n_out, self.method))
        return y


@kernel("cropResize")
class CropResize(_SpatialKernel):
    """CropResizeLayerParams: bilinear crops of boxes from [1, B, C, H, W] (RoI Align without the
    pooling). Boxes [N, 1, 4, 1, 1] are cut from every batch item -> [N, B, C, h, w]; boxes
    [N, 1, 5, 1, 1] carry a batch index first -> [N, 1, C, h, w]. A box whose end precedes its
    start yields a flipped crop.
    """

    min_rank = 4

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.target = _pair(p.targetSize, 1)
        self.normalized = bool(p.normalizedCoordinates)
        self.method = p.mode.Method.Name(p.mode.samplingMethod)
        self.box_mode = p.boxIndicesMode.Coordinates.Name(p.boxIndicesMode.boxMode)
        # 0 is the protobuf default of an unset field; a zero scale would collapse every box
        self.spatial_scale = float(p.spatialScale) or 1.0

    def _corners(self, boxes):
        """(h_start, w_start, h_end, w_end) columns from any BoxCoordinatesMode."""
        a, b, c, d = boxes.T
        if self.box_mode == "CORNERS_HEIGHT_FIRST":
            return a, b, c, d
        if self.box_mode == "CORNERS_WIDTH_FIRST":
            return b, a, d, c
        if self.box_mode == "CENTER_SIZE_HEIGHT_FIRST":
            return a - c / 2, b - d / 2, a + c / 2, b + d / 2
        return b - d / 2, a - c / 2, b + d / 2, a + c / 2            # CENTER_SIZE_WIDTH_FIRST

    def compute(self, x, roi):
        self._check_rank(x)
        per_box = roi.shape[-3] if roi.ndim >= 3 else roi.shape[-1]
        if per_box not in (4, 5) or roi.size % per_box:
            raise self._error(f"box input of shape {roi.shape} must be [N, 1, 4, 1, 1] or [N, 1, 5, 1, 1]")
        boxes = np.asarray(roi, np.float64).reshape(-1, per_box)
        channels, height, width = x.shape[-3:]
        images = x.reshape((-1, channels, height, width))
        if per_box == 5:
            index = boxes[:, 0].astype(np.intp)
            if index.size and (index.min() < 0 or index.max() >= images.shape[0]):
                raise self._error(f"box batch indices {index.tolist()} outside [0, {images.shape[0] - 1}]")
            source = images[index][:, None]                            # [N, 1, C, H, W]
            boxes = boxes[:, 1:]
        else:
            source = images[None]                                      # [1, B, C, H, W]
        self.check_shape((len(boxes),) + source.shape[1:-2] + tuple(self.target))
        h0, w0, h1, w1 = self._corners(boxes)
        h_scale = (height - 1 if self.normalized else 1) * self.spatial_scale
        w_scale = (width - 1 if self.normalized else 1) * self.spatial_scale
        ys = sampling_grid(h0 * h_scale, h1 * h_scale, self.target[0], self.method)   # [N, h]
        xs = sampling_grid(w0 * w_scale, w1 * w_scale, self.target[1], self.method)   # [N, w]
        y = lerp_axis(source, 3, ys[:, None, None, :, None])
        return lerp_axis(y, 4, xs[:, None, None, None, :])


# ---------------------------------------------------------------- padding and cropping

@kernel("padding")
class Padding(_SpatialKernel):
    """PaddingLayerParams: constant / reflection / replication padding of axes (-2, -1)."""

    min_rank = 2
    _NUMPY_MODES = {"constant": "constant", "reflection": "reflect", "replication": "edge"}

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.mode = p.WhichOneof("PaddingType") or "constant"
        self.value = float(p.constant.value)
        self.pads = border_pairs(p.paddingAmounts)

    def compute(self, x):
        self._check_rank(x)
        if self.mode == "reflection":
            for (b, a), n in zip(self.pads, x.shape[-2:]):
                if max(b, a) >= n:
                    raise self._error(f"reflection padding {b, a} needs an axis longer than the "
                                      f"padding, the input has {n}")
        width = [(0, 0)] * (x.ndim - 2) + list(self.pads)
        self.check_shape(tuple(n + b + a for n, (b, a) in zip(x.shape, width)))
        if self.mode == "constant":
            return np.pad(x, width, mode="constant", constant_values=self.value)
        return np.pad(x, width, mode=self._NUMPY_MODES[self.mode])


@kernel("constantPad")
class ConstantPad(Kernel):
    """ConstantPaddingLayerParams: N-D constant padding; amounts from the parameters or a second
    input ([before_0, after_0, before_1, ...]). Fewer amounts than 2*rank pad the trailing axes.
    With padToGivenOutputSizeMode the non-zero amount of each axis is its output size."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.value = float(p.value)
        self.amounts = [int(v) for v in p.padAmounts]
        self.to_size = bool(p.padToGivenOutputSizeMode)

    def compute(self, x, *pads):
        amounts = [int(round(float(v))) for v in np.ravel(pads[0])] if pads else self.amounts
        if len(amounts) % 2 or len(amounts) > 2 * x.ndim or min(amounts, default=0) < 0:
            raise LayerError(self.ctx.model_name, self.name,
                             f"pad amounts {amounts} must be non-negative (before, after) pairs, "
                             f"at most two per axis of the rank-{x.ndim} input")
        pairs = [(0, 0)] * (x.ndim - len(amounts) // 2) + list(zip(amounts[::2], amounts[1::2]))
        if self.to_size:
            pairs = [self._to_size(n, b, a) for n, (b, a) in zip(x.shape, pairs)]
        self.check_shape(tuple(n + b + a for n, (b, a) in zip(x.shape, pairs)))
        return np.pad(x, pairs, mode="constant", constant_values=self.value)

    @staticmethod
    def _to_size(n, before, after):
        target = max(n, before + after)
        return (target - n, 0) if before else (0, target - n)


@kernel("crop")
class Crop(_SpatialKernel):
    """CropLayerParams: crop axes (-2, -1) by cropAmounts, or, with a reference second input, to
    its (H, W) starting at ``offset``."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.amounts = border_pairs(p.cropAmounts)
        self.offset = _pair(p.offset, 0)

    def compute(self, x, *reference):
        self._check_rank(x)
        height, width = x.shape[-2:]
        if reference:
            (top, left), (h, w) = self.offset, reference[0].shape[-2:]
        else:
            (top, bottom), (left, right) = self.amounts
            h, w = height - top - bottom, width - left - right
        if h < 1 or w < 1 or top + h > height or left + w > width:
            raise self._error(f"cannot crop a {h}x{w} window at ({top}, {left}) from an input of "
                              f"shape {x.shape}")
        return x[..., top:top + h, left:left + w]


# ---------------------------------------------------------------- space <-> depth

@kernel("reorganizeData")
class ReorganizeData(_SpatialKernel):
    """ReorganizeDataLayerParams on [..., C, H, W] with block b.

    DEPTH_TO_SPACE reads input channel ``(bh * b + bw) * C_out + c`` (TensorFlow order),
    PIXEL_SHUFFLE reads ``c * b * b + bh * b + bw`` (PyTorch order); SPACE_TO_DEPTH inverts
    DEPTH_TO_SPACE.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.mode = p.ReorganizationType.Name(p.mode)
        self.block = int(p.blockSize)
        if self.block < 2:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}': blockSize must be greater "
                                   f"than 1, not {self.block}")

    def compute(self, x):
        self._check_rank(x)
        b, lead = self.block, x.shape[:-3]
        c, h, w = x.shape[-3:]
        k = len(lead)
        keep = tuple(range(k))
        if self.mode == "SPACE_TO_DEPTH":
            if h % b or w % b:
                raise self._error(f"blockSize {b} must divide H={h} and W={w}")
            y = x.reshape(lead + (c, h // b, b, w // b, b))
            y = y.transpose(keep + tuple(k + i for i in (2, 4, 0, 1, 3)))  # bh, bw, C, H', W'
            return y.reshape(lead + (c * b * b, h // b, w // b))
        if c % (b * b):
            raise self._error(f"blockSize {b} squared must divide C={c}")
        c_out = c // (b * b)
        if self.mode == "DEPTH_TO_SPACE":
            y = x.reshape(lead + (b, b, c_out, h, w))
            order = (2, 3, 0, 4, 1)                                    # C', H, bh, W, bw
        else:
            y = x.reshape(lead + (c_out, b, b, h, w))
            order = (0, 3, 1, 4, 2)
        y = y.transpose(keep + tuple(k + i for i in order))
        return y.reshape(lead + (c_out, h * b, w * b))
