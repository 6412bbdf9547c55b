"""Pooling: ``pooling`` (2-D, MAX / AVERAGE / L2, global), ``pooling3d`` and ``globalPooling3d``.

A pooling window is a box, and max / sum over a box is separable: the kernels reduce one spatial
axis at a time with ``kernel`` strided slices, so the cost is O(output * kernel) numpy work with
no Python loop over elements. Averages divide by a per-axis count product (a box's size is the
product of its extents), which also makes "exclude padding" exact at the borders.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import FRESH, Kernel, kernel
from ._taps import pad_trailing
from .conv import border_pairs, same_padding, valid_output

# Caffe (the origin of includeLastPixel) fills max-pool windows that hold no input with -FLT_MAX.
_MAX_FILL = np.finfo(np.float32).min


class AxisPlan:
    """How one spatial axis is pooled: window, stride, declared padding, output size."""

    def __init__(self, window, stride, before, after, out):
        self.window, self.stride, self.before, self.after, self.out = window, stride, before, after, out

    def counts(self, size, include_padding):
        """Elements each window covers: within the declared padding, or within the input only."""
        starts = np.arange(self.out) * self.stride - self.before
        lo, hi = (-self.before, size + self.after) if include_padding else (0, size)
        ends = np.minimum(starts + self.window, hi)
        return np.maximum(ends - np.maximum(starts, lo), 0).astype(np.float32)


def _window_reduce(x, axis, plan, combine, out):
    """Combine the ``plan.window`` strided slices of axis ``axis`` (already padded) into ``out``."""
    index = [slice(None)] * x.ndim

    def tap(offset):
        index[axis] = slice(offset, offset + (plan.out - 1) * plan.stride + 1, plan.stride)
        return x[tuple(index)]

    np.copyto(out, tap(0))
    for offset in range(1, plan.window):
        combine(out, tap(offset), out=out)
    return out


def pool(x, plans, kind, exclude_padding, workspace=FRESH):
    """Pool the trailing ``len(plans)`` axes of x. kind: "MAX", "AVERAGE" or "L2". The padded
    input and the pass over each axis but the last come from ``workspace``'s scratch, the result
    from its outputs (Kernel.workspace)."""
    rank = len(plans)
    sizes = x.shape[-rank:]
    # room for every window, including ceil-mode windows that overhang the declared padding
    pads = [(plan.before, max(0, (plan.out - 1) * plan.stride + plan.window - plan.before - size))
            for plan, size in zip(plans, sizes)]
    if kind == "MAX":
        y = pad_trailing(x, pads, _MAX_FILL, workspace)
        combine = np.maximum
    else:
        y = pad_trailing(x * x if kind == "L2" else x, pads, 0.0, workspace)
        combine = np.add
    for i, plan in enumerate(plans):
        axis = x.ndim - rank + i
        shape = y.shape[:axis] + (plan.out,) + y.shape[axis + 1:]
        out = workspace.output(shape) if i == rank - 1 else workspace.scratch(f"pool-axis{i}", shape)
        y = _window_reduce(y, axis, plan, combine, out)
    if kind == "L2":
        return np.sqrt(y, out=y)
    if kind == "AVERAGE":
        count = np.ones((), np.float32)
        for plan, size in zip(plans, sizes):
            count = np.multiply.outer(count, np.maximum(plan.counts(size, not exclude_padding), 1))
        y /= count
    return y


def global_pool(x, rank, kind):
    axes = tuple(range(-rank, 0))
    if kind == "MAX":
        return x.max(axis=axes, keepdims=True)
    if kind == "L2":
        return np.sqrt(np.square(x).sum(axis=axes, keepdims=True))
    return x.mean(axis=axes, keepdims=True, dtype=np.float32)


class _PoolingBase(Kernel):
    rank = 2

    def _error(self, message):
        return LayerError(self.ctx.model_name, self.name, message)

    def _input_sizes(self, x):
        if x.ndim < self.rank + 1:
            raise self._error(f"input of shape {x.shape} has rank {x.ndim}, pooling needs at least "
                              f"{self.rank + 1} ([..., C, spatial])")
        return x.shape[-self.rank:]

    def _checked(self, plans, shape):
        if any(p.out < 1 for p in plans):
            raise self._error(f"input of shape {shape} is smaller than the pooling window "
                              f"{tuple(p.window for p in plans)}")
        return plans


@kernel("pooling")
class Pooling(_PoolingBase):
    """PoolingLayerParams over axes (-2, -1)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.pool_type = p.PoolingType.Name(p.type)
        ks, st = [int(v) for v in p.kernelSize], [int(v) for v in p.stride]
        self.windows = tuple(ks) if len(ks) == 2 else (3, 3)
        self.strides = tuple(st) if len(st) == 2 else (1, 1)
        if not p.globalPooling and (min(self.windows) < 1 or min(self.strides) < 1):   # global: inferred
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}': kernelSize {self.windows} "
                                   f"and stride {self.strides} must be positive")
        self.exclude_padding = bool(p.avgPoolExcludePadding)
        self.is_global = bool(p.globalPooling)
        self.padding = p.WhichOneof("PoolingPaddingType") or "valid"
        if self.padding == "valid":
            self.pads = border_pairs(p.valid.paddingAmounts)
        elif self.padding == "same":
            self.top_left_heavy = p.same.asymmetryMode == p.same.TOP_LEFT_HEAVY
        else:
            amounts = [int(v) for v in p.includeLastPixel.paddingAmounts]
            self.pads = tuple(amounts) if len(amounts) == 2 else (0, 0)

    def _plans(self, sizes):
        plans = []
        for i, (n, k, s) in enumerate(zip(sizes, self.windows, self.strides)):
            if self.padding == "valid":
                b, a = self.pads[i]
                plans.append(AxisPlan(k, s, b, a, valid_output(n, k, s, b, a)))
            elif self.padding == "same":
                out, b, a = same_padding(n, k, s, self.top_left_heavy)
                plans.append(AxisPlan(k, s, b, a, out))
            else:
                pad = self.pads[i]
                plans.append(AxisPlan(k, s, pad, pad, self._last_pixel_output(n, k, s, pad)))
        return plans

    def _last_pixel_output(self, n, k, s, pad):
        """includeLastPixel (Caffe rounding): ceil instead of floor; with padding, drop a last
        window that would start inside the end padding."""
        out = -(-(n + 2 * pad - k) // s) + 1
        if any(self.pads) and (out - 1) * s >= n + pad:
            out -= 1
        return out

    def output_shapes(self, shapes):
        s = shapes[0]
        if s is None or len(s) < 3:
            return None
        outs = (1, 1) if self.is_global else tuple(p.out for p in self._checked(self._plans(s[-2:]), s))
        return [tuple(s[:-2]) + outs]

    def compute(self, x):
        sizes = self._input_sizes(x)
        if self.is_global:
            return global_pool(x, 2, self.pool_type)
        plans = self._plans(sizes)
        return pool(x, self._checked(plans, x.shape), self.pool_type, self.exclude_padding,
                    self.workspace())


@kernel("pooling3d")
class Pooling3D(_PoolingBase):
    """Pooling3DLayerParams over axes (-3, -2, -1); padded zeros count in averages unless
    countExcludePadding."""

    rank = 3

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.pool_type = p.PoolingType3D.Name(p.type)
        self.windows = (int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth))
        self.strides = tuple(max(1, int(v)) for v in (p.strideDepth, p.strideHeight, p.strideWidth))
        if min(self.windows) < 1:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}': kernel size {self.windows} "
                                   f"must be positive")
        self.exclude_padding = bool(p.countExcludePadding)
        self.same = p.paddingType == p.SAME
        if p.paddingType == p.CUSTOM:
            self.pads = [(int(p.customPaddingFront), int(p.customPaddingBack)),
                         (int(p.customPaddingTop), int(p.customPaddingBottom)),
                         (int(p.customPaddingLeft), int(p.customPaddingRight))]
        else:
            self.pads = [(0, 0)] * 3

    def compute(self, x):
        plans = []
        for (n, k, s, (b, a)) in zip(self._input_sizes(x), self.windows, self.strides, self.pads):
            if self.same:
                out, b, a = same_padding(n, k, s)
            else:
                out = valid_output(n, k, s, b, a)
            plans.append(AxisPlan(k, s, b, a, out))
        return pool(x, self._checked(plans, x.shape), self.pool_type, self.exclude_padding,
                    self.workspace())


@kernel("globalPooling3d")
class GlobalPooling3D(_PoolingBase):
    """GlobalPooling3DLayerParams: max or mean over axes (-3, -2, -1), kept as size-1 axes."""

    rank = 3

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.pool_type = self.params.GlobalPoolingType3D.Name(self.params.type)

    def compute(self, x):
        self._input_sizes(x)
        return global_pool(x, 3, self.pool_type)
