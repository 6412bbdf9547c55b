"""Reduction and ordering kernels.

The classic ``reduce`` layer names its axes C, H, W (= -3, -2, -1) and always keeps the
reduced axes as size 1. The N-D reductions (``reduceSum`` ...) take any axes, ``keepDims``
and ``reduceAll``. ``argMax``/``argMin``/``cumSum``/``topK``/``argSort`` order along one
axis. Indices are returned as float32, as every Core ML blob is.
"""
import numpy as np

from ...errors import ModelFormatError
from ._base import Kernel, kernel


# ---------------------------------------------------------------- reduction functions

def _sum(x, axes):
    return np.sum(x, axis=axes, keepdims=True)


def _mean(x, axes):
    return np.mean(x, axis=axes, keepdims=True)


def _prod(x, axes):
    return np.prod(x, axis=axes, keepdims=True)


def _sum_square(x, axes):
    return np.sum(np.square(x), axis=axes, keepdims=True)


def _l1(x, axes):
    return np.sum(np.abs(x), axis=axes, keepdims=True)


def _l2(x, axes):
    return np.sqrt(_sum_square(x, axes))


def _max(x, axes):
    return np.max(x, axis=axes, keepdims=True)


def _min(x, axes):
    return np.min(x, axis=axes, keepdims=True)


def _log_sum(x, axes):
    return np.log(_sum(x, axes))


def _log_sum_exp(x, axes):
    """log(sum(exp(x))), shifted by the max so large inputs do not overflow."""
    peak = np.max(x, axis=axes, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0).astype(x.dtype)
    return np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak


def _argmax_keep(x, axis):
    return np.expand_dims(np.argmax(x, axis=axis), axis)


# ---------------------------------------------------------------- classic reduce

# ReduceLayerParams.ReduceAxis: CHW, HW, C, H, W
_CLASSIC_AXES = {0: (-3, -2, -1), 1: (-2, -1), 2: (-3,), 3: (-2,), 4: (-1,)}
_CLASSIC_AXIS_NAMES = {0: "CHW", 1: "HW", 2: "C", 3: "H", 4: "W"}


@kernel("reduce")
class Reduce(Kernel):
    """Classic reduce over C, H, W, HW or CHW, keeping the reduced axes as size 1.

    LOGSUM is sum(log(x + epsilon)) as the proto writes it (a sum of logs, not the log of a
    sum); ARGMAX takes a single axis and gives the index of the first maximum.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        Op = type(p).ReduceOperation
        axis = int(p.axis)
        if axis not in _CLASSIC_AXES:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (reduce): unknown axis {axis}")
        self.axes = _CLASSIC_AXES[axis]
        self.mode = Op.Name(p.mode) if p.mode in Op.values() else None
        if self.mode is None:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (reduce): unknown mode {p.mode}")
        if self.mode == "ARGMAX" and len(self.axes) != 1:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (reduce): ARGMAX needs axis "
                                   f"C, H or W, not {_CLASSIC_AXIS_NAMES[axis]}")
        eps = float(p.epsilon) if p.epsilon else 1e-6
        reducers = {
            "SUM": _sum, "AVG": _mean, "PROD": _prod, "SUMSQUARE": _sum_square,
            "L1": _l1, "L2": _l2, "MAX": _max, "MIN": _min,
            "LOGSUM": lambda x, axes: np.sum(np.log(x + np.float32(eps)), axis=axes, keepdims=True),
            "ARGMAX": lambda x, axes: _argmax_keep(x, axes[0]),
        }
        self.reducer = reducers[self.mode]

    def compute(self, x):
        if x.ndim < -min(self.axes):
            raise ValueError(f"layer '{self.name}' (reduce): axes {self.axes} need an input of rank "
                             f">= {-min(self.axes)}, got shape {x.shape}")
        return np.asarray(self.reducer(x, self.axes), dtype=np.float32)


# ---------------------------------------------------------------- N-D reductions

_ND_REDUCERS = {
    "reduceL1": _l1, "reduceL2": _l2, "reduceMax": _max, "reduceMin": _min,
    "reduceSum": _sum, "reduceProd": _prod, "reduceMean": _mean, "reduceLogSum": _log_sum,
    "reduceSumSquare": _sum_square, "reduceLogSumExp": _log_sum_exp,
}


def _normalize_axes(layer, axes, rank):
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"layer '{layer.name}' ({layer.kind}): axis {a} is out of range for an "
                             f"input of rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"layer '{layer.name}' ({layer.kind}): axes {list(axes)} repeat an axis")
    return tuple(sorted(out))


def _drop_axes(y, axes):
    """Squeeze the reduced axes; Core ML has no rank 0, so a full reduction stays shape (1,)."""
    y = np.squeeze(y, axis=axes)
    return y.reshape(1) if y.ndim == 0 else y


@kernel(*_ND_REDUCERS)
class ReduceND(Kernel):
    """reduceSum, reduceMean, ... over ``axes`` (or all axes), squeezing them unless keepDims.

    An empty ``axes`` list reduces every axis, as ``reduceAll`` does.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.reducer = _ND_REDUCERS[self.kind]
        self.all_axes = bool(p.reduceAll) or len(p.axes) == 0
        self.axes = tuple(int(a) for a in p.axes)
        self.keep_dims = bool(p.keepDims)

    def compute(self, x):
        axes = tuple(range(x.ndim)) if self.all_axes else _normalize_axes(self, self.axes, x.ndim)
        y = np.asarray(self.reducer(x, axes), dtype=np.float32)
        return y if self.keep_dims else _drop_axes(y, axes)


# ---------------------------------------------------------------- ordering along one axis

def _axis(layer, axis, rank):
    if not -rank <= axis < rank:
        raise ValueError(f"layer '{layer.name}' ({layer.kind}): axis {axis} is out of range for an "
                         f"input of rank {rank}")
    return axis % rank


def _scalar_input(layer, value, what):
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise ValueError(f"layer '{layer.name}' ({layer.kind}): the second input ({what}) must hold "
                         f"one value, got shape {np.shape(value)}")
    return int(flat[0])


@kernel("argMax", "argMin")
class ArgExtreme(Kernel):
    """Index of the first maximum (minimum) along ``axis``; removeDim drops that axis."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.find = np.argmax if self.kind == "argMax" else np.argmin
        self.axis = int(self.params.axis)
        self.remove_dim = bool(self.params.removeDim)

    def compute(self, x):
        axis = _axis(self, self.axis, x.ndim)
        idx = self.find(x, axis=axis).astype(np.float32)
        if not self.remove_dim or idx.ndim == 0:
            idx = np.expand_dims(idx, axis)
        return idx


@kernel("cumSum")
class CumSum(Kernel):
    """Running sum along an axis (a second input, when present, gives the axis).

    excludeFinalSum shifts the sums by one (the first output is 0); reverse runs from the end.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.axis = int(p.axis)
        self.exclusive = bool(p.excludeFinalSum)
        self.reverse = bool(p.reverse)

    def compute(self, x, axis_input=None):
        axis = self.axis if axis_input is None else _scalar_input(self, axis_input, "axis")
        axis = _axis(self, axis, x.ndim)
        data = np.flip(x, axis) if self.reverse else x
        out = np.cumsum(data, axis=axis, dtype=np.float32)
        if self.exclusive:
            # shift by one along the axis (0 first) rather than subtract, which would lose precision
            first = np.zeros_like(np.take(out, [0], axis=axis))
            out = np.concatenate([first, np.delete(out, -1, axis=axis)], axis=axis)
        if self.reverse:
            out = np.flip(out, axis)
        return np.ascontiguousarray(out)


def _stable_order(x, axis, descending):
    """Indices sorting ``x`` along ``axis``; equal values keep index order in both directions."""
    return np.argsort(-x if descending else x, axis=axis, kind="stable")


@kernel("topK")
class TopK(Kernel):
    """The K largest (useBottomK: smallest) values along ``axis`` and their indices.

    Values come sorted (largest first, or smallest first for bottom K); equal values keep
    index order. K comes from the second input when there is one.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.axis = int(p.axis)
        self.k = int(p.K)
        self.bottom = bool(p.useBottomK)

    def compute(self, x, k_input=None):
        axis = _axis(self, self.axis, x.ndim)
        k = self.k if k_input is None else _scalar_input(self, k_input, "K")
        n = x.shape[axis]
        if not 0 < k <= n:
            raise ValueError(f"layer '{self.name}' (topK): K={k} must be in 1..{n} (the size of "
                             f"axis {self.axis} of the input shape {x.shape})")
        order = _stable_order(x, axis, descending=not self.bottom)
        indices = np.take(order, np.arange(k), axis=axis)
        values = np.take_along_axis(x, indices, axis=axis)
        return [np.ascontiguousarray(values), indices.astype(np.float32)]


@kernel("argSort")
class ArgSort(Kernel):
    """Indices that sort the input along ``axis`` (ties keep index order)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)
        self.descending = bool(self.params.descending)

    def compute(self, x):
        axis = _axis(self, self.axis, x.ndim)
        return _stable_order(x, axis, self.descending).astype(np.float32)
