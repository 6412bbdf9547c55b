"""Element-wise arithmetic over several blobs: the classic layers (``add``, ``multiply``, ``max``,
``min``, ``average``, ``dot``, ``scale``, ``bias``), the N-D ``*Broadcastable`` layers, comparisons,
logical layers and ``whereBroadcastable``.

Classic layers broadcast only in the few patterns the proto lists ([B,1,1,1] with [B,C,H,W] and
the like); every one of those is a case of numpy broadcasting over blobs aligned from the end,
which is how both rank-5 and exact-rank blobs line up (C = -3, H = -2, W = -1), so numpy
broadcasting serves all of them. Comparison and logical results are 1.0 / 0.0 in float32.
"""
import numpy as np

from ...errors import ModelFormatError
from ._base import broadcast_shape, kernel, Kernel, same_shape


def _quiet():
    """Division by zero and invalid operations give inf/NaN as in Core ML's float math, silently."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


class _Elementwise(Kernel):
    def format_error(self, message):
        return ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}' ({self.kind}): {message}")

    def require_inputs(self, low, high=None):
        """Check the input count at load, so a malformed layer fails before any prediction."""
        n = len(self.layer.input)
        if n < low or (high is not None and n > high):
            wanted = f"{low}" if high == low else f"{low} or more" if high is None else f"{low} to {high}"
            raise self.format_error(f"has {n} input(s), needs {wanted}")
        return n

    def check_broadcast(self, *arrays):
        """Broadcasting [N, 1] with [1, N] makes N^2 values: check the result before computing it."""
        try:
            shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        except ValueError:
            return                                   # the ufunc itself names the mismatch
        self.check_shape(shape)


def _fold(ufunc, arrays, workspace):
    """ufunc applied left to right over broadcastable arrays, reusing the accumulator when it can."""
    shape = np.broadcast_shapes(arrays[0].shape, arrays[1].shape)
    acc = ufunc(arrays[0], arrays[1], out=workspace.output(shape))
    for x in arrays[2:]:
        if np.broadcast_shapes(acc.shape, x.shape) == acc.shape:
            ufunc(acc, x, out=acc)
        else:
            acc = ufunc(acc, x)
    return acc


# ---------------------------------------------------------------- classic layers

@kernel("add", "multiply", "max", "min", "average")
class ClassicElementwise(_Elementwise):
    """Sum, product, max, min or mean of the inputs; ``add`` and ``multiply`` with a single input
    add or multiply the ``alpha`` constant instead."""

    output_shapes = broadcast_shape

    _UFUNC = {"add": np.add, "multiply": np.multiply, "max": np.maximum, "min": np.minimum,
              "average": np.add}

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(1)
        self.ufunc = self._UFUNC[self.kind]
        self.alpha = np.float32(getattr(self.params, "alpha", 0.0))

    def compute(self, *inputs):
        if len(inputs) == 1:
            x = inputs[0]
            if self.kind in ("add", "multiply"):
                return self.ufunc(x, self.alpha, out=self.workspace().output(x.shape))
            return x.copy()
        self.check_broadcast(*inputs)
        out = _fold(self.ufunc, inputs, self.workspace())
        if self.kind == "average":
            out /= np.float32(len(inputs))
        return out


@kernel("dot")
class DotProduct(_Elementwise):
    """Dot product (or cosine similarity) of two [..., C, 1, 1] blobs over their last three axes,
    keeping them as size 1: [..., 1, 1, 1]."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(2, 2)
        self.cosine = self.params.cosineSimilarity

    def compute(self, a, b):
        self.check_broadcast(a, b)
        axes = tuple(range(-min(3, a.ndim, b.ndim), 0))
        dot = np.sum(a * b, axis=axes, keepdims=True, dtype=np.float32)
        if self.cosine:
            norms = np.sqrt(np.sum(a * a, axis=axes, keepdims=True, dtype=np.float32) *
                            np.sum(b * b, axis=axes, keepdims=True, dtype=np.float32))
            with _quiet():
                dot /= norms
        return dot


def _chw_param(k, values, shape, what):
    """A scale/bias parameter laid out to broadcast over the last three axes ([C, H, W]).

    The proto allows shapes [1], [C], [1, H, W] and [C, H, W]; [1] becomes a scalar.
    """
    shape = tuple(int(s) for s in shape) or (values.size,)
    if len(shape) not in (1, 3):
        raise k.format_error(f"{what} shape {list(shape)} must have 1 or 3 dimensions "
                             f"([1], [C], [1,H,W] or [C,H,W])")
    if int(np.prod(shape)) != values.size:
        raise k.format_error(f"{what} has {values.size} values but its shape {list(shape)} "
                             f"needs {int(np.prod(shape))}")
    if values.size == 1:
        return np.float32(values[0])
    return values.reshape(shape if len(shape) == 3 else (shape[0], 1, 1))


def _check_fits(k, x, *params):
    """A [C,H,W] parameter must match the input's trailing axes (numpy would also stretch size-1
    input axes, which Core ML does not: the output keeps the input's shape)."""
    for p in params:
        if isinstance(p, np.ndarray):
            if x.ndim < 3 or any(ps != 1 and ps != xs for ps, xs in zip(p.shape, x.shape[-3:])):
                raise k.format_error(f"parameter of shape {list(p.shape)} does not fit the input of "
                                     f"shape {tuple(x.shape)} (matched against its last three axes)")


@kernel("scale")
class Scale(_Elementwise):
    """x * scale (+ bias), each broadcast from [1], [C], [1,H,W] or [C,H,W]."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.scale = _chw_param(self, self.weights(p.scale, "scale"), p.shapeScale, "scale")
        self.bias = None
        if p.hasBias:
            self.bias = _chw_param(self, self.weights(p.bias, "bias"), p.shapeBias, "bias")

    def compute(self, x):
        _check_fits(self, x, self.scale, self.bias)       # so the product has x's shape
        out = np.multiply(x, self.scale, out=self.workspace().output(x.shape))
        if self.bias is not None:
            out += self.bias
        return out


@kernel("bias")
class Bias(_Elementwise):
    """x + bias, the bias broadcast from [1], [C], [1,H,W] or [C,H,W]."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.bias = _chw_param(self, self.weights(self.params.bias, "bias"), self.params.shape, "bias")

    def compute(self, x):
        _check_fits(self, x, self.bias)
        return np.add(x, self.bias, out=self.workspace().output(x.shape))


# ---------------------------------------------------------------- N-D broadcastable arithmetic

_ARITHMETIC = {
    "addBroadcastable": np.add,
    "subtractBroadcastable": np.subtract,
    "multiplyBroadcastable": np.multiply,
    "divideBroadcastable": np.divide,
    # floor(a / b) and a - b * floor(a / b) with the divisor's sign: numpy's (= Python's and
    # torch's) definitions, which coremltools' own layer tests use as reference.
    "floorDivBroadcastable": np.floor_divide,
    "modBroadcastable": np.mod,
    "powBroadcastable": np.power,
    "minBroadcastable": np.minimum,
    "maxBroadcastable": np.maximum,
}
# Associative ones also accept more than two inputs, folded left to right, as a convenience.
_VARIADIC = {"addBroadcastable", "multiplyBroadcastable", "minBroadcastable", "maxBroadcastable"}


@kernel(*_ARITHMETIC)
class BroadcastableArithmetic(_Elementwise):
    """Two inputs, numpy broadcasting: output rank is the larger input rank."""

    output_shapes = broadcast_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(2, None if self.kind in _VARIADIC else 2)
        self.ufunc = _ARITHMETIC[self.kind]

    def compute(self, *inputs):
        self.check_broadcast(*inputs)
        with _quiet():
            return _fold(self.ufunc, inputs, self.workspace())


# ---------------------------------------------------------------- comparisons and logic

_COMPARISONS = {
    "equal": np.equal, "notEqual": np.not_equal,
    "lessThan": np.less, "lessEqual": np.less_equal,
    "greaterThan": np.greater, "greaterEqual": np.greater_equal,
}


@kernel(*_COMPARISONS)
class Comparison(_Elementwise):
    """x1 <op> x2 with broadcasting, or x1 <op> alpha with one input; 1.0 where true."""

    output_shapes = broadcast_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(1, 2)
        self.ufunc = _COMPARISONS[self.kind]
        self.alpha = np.float32(self.params.alpha)

    def compute(self, a, b=None):
        if b is not None:
            self.check_broadcast(a, b)
        return self.ufunc(a, self.alpha if b is None else b).astype(np.float32)


_LOGICAL = {"logicalAnd": np.logical_and, "logicalOr": np.logical_or, "logicalXor": np.logical_xor}


@kernel(*_LOGICAL)
class Logical(_Elementwise):
    """Inputs are true where non-zero; broadcasting; 1.0 where the result is true."""

    output_shapes = broadcast_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(2, 2)
        self.ufunc = _LOGICAL[self.kind]

    def compute(self, a, b):
        self.check_broadcast(a, b)
        return self.ufunc(a != 0, b != 0).astype(np.float32)


@kernel("logicalNot")
class LogicalNot(_Elementwise):
    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(1, 1)

    def compute(self, x):
        return (x == 0).astype(np.float32)


@kernel("whereBroadcastable")
class WhereBroadcastable(_Elementwise):
    """np.where(condition != 0, x, y) with all three broadcast to a common shape."""

    output_shapes = broadcast_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.require_inputs(3, 3)

    def compute(self, condition, x, y):
        self.check_broadcast(condition, x, y)
        return np.where(condition != 0, x, y)
