"""Element-wise activations and unary math: ``activation`` (13 nonlinearities), ``unary``, ``clip``,
``clampedReLU``, ``gelu``, ``erf`` and the parameterless unary kinds (rounding, trigonometry, exp2).

Every kernel here maps one float32 array to one of the same shape. Per-channel parameters
(PReLU, parametric softplus) live on axis -3 (C), which is the channel axis both in rank-5
``[Seq, Batch, C, H, W]`` blobs and in exact-rank ``[..., C, H, W]`` blobs.
"""
import numpy as np

from ...errors import ModelFormatError
from ._base import Kernel, fused, kernel, same_shape


def _quiet():
    """Overflow to inf and invalid-to-NaN are Core ML's float semantics too: no warnings for them."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


# ---------------------------------------------------------------- activation

def _channel_vector(kernel_, values, what):
    """Shape a length-C (or length-1) parameter so it broadcasts over axis -3."""
    if values.size == 0:
        raise ModelFormatError(f"{kernel_.ctx.model_name}: layer '{kernel_.name}' (activation): "
                               f"{what} has no values")
    if values.size == 1:
        return np.float32(values[0])
    return values.reshape(-1, 1, 1)


def _check_channels(kernel_, x, *params):
    for p in params:
        if isinstance(p, np.ndarray) and (x.ndim < 3 or x.shape[-3] != p.shape[0]):
            got = f"{x.shape[-3]} channels (axis -3)" if x.ndim >= 3 else f"rank {x.ndim}"
            raise ModelFormatError(f"{kernel_.ctx.model_name}: layer '{kernel_.name}' (activation "
                                   f"{kernel_.nonlinearity}): has {p.shape[0]} per-channel parameters "
                                   f"but its input {tuple(x.shape)} has {got}")


@kernel("activation")
class Activation(Kernel):
    """The 13 ActivationParams nonlinearities, formulas as NeuralNetwork.proto states them."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.nonlinearity = self.params.WhichOneof("NonlinearityType")
        if self.nonlinearity is None:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (activation): "
                                   f"no nonlinearity type is set")
        p = getattr(self.params, self.nonlinearity)
        self.alpha = getattr(p, "alpha", None)
        self.beta = getattr(p, "beta", None)
        if self.nonlinearity == "PReLU":
            self.alpha = _channel_vector(self, self.weights(p.alpha, "alpha"), "alpha")
        elif self.nonlinearity == "parametricSoftplus":
            self.alpha = _channel_vector(self, self.weights(p.alpha, "alpha"), "alpha")
            self.beta = _channel_vector(self, self.weights(p.beta, "beta"), "beta")
        # the function, not a bound method: a bound method kept on the instance is a reference
        # cycle, and would hold the kernel (and the file buffer its weights view) until a gc pass
        self._nonlinearity = getattr(type(self), "_" + self.nonlinearity)
        if self.nonlinearity in ("tanh", "sigmoid", "leakyReLU", "PReLU"):
            fused()                         # numba's import at load, not at the first prediction
        if self.nonlinearity in ("PReLU", "parametricSoftplus"):    # per-channel: let compute check C
            self.output_shapes = None

    output_shapes = same_shape

    def compute(self, x):
        return self._nonlinearity(self, x)

    def _linear(self, x):
        y = np.multiply(x, np.float32(self.alpha), out=self.workspace().output(x.shape))
        y += np.float32(self.beta)
        return y

    def _ReLU(self, x):
        return np.maximum(x, np.float32(0), out=self.workspace().output(x.shape))

    def _leakyReLU(self, x):
        return self._slopes(x, np.full(1, self.alpha, np.float32))

    def _thresholdedReLU(self, x):
        return np.where(x >= np.float32(self.alpha), x, np.float32(0))

    def _PReLU(self, x):
        _check_channels(self, x, self.alpha)
        return self._slopes(x, np.asarray(self.alpha, np.float32).reshape(-1))

    def _slopes(self, x, alpha):
        """x where it is >= 0, x * alpha below, in one compiled pass (``_fused.leaky_rows``): one
        alpha, or one per channel (axis -3, checked), each row of [N * C, H * W] taking its own."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.workspace().output(x.shape)
        if x.size:
            rows = x.size // (x.shape[-2] * x.shape[-1]) if alpha.size > 1 else 1
            fused().leaky_rows(x.reshape(rows, -1), out.reshape(rows, -1), alpha)
        return out

    def _tanh(self, x):
        kernels = fused()
        return kernels.flat_map(kernels.map_tanh, x, out=self.workspace().output(x.shape))

    def _scaledTanh(self, x):
        return np.float32(self.alpha) * np.tanh(np.float32(self.beta) * x)

    def _sigmoid(self, x):
        kernels = fused()
        return kernels.flat_map(kernels.map_sigmoid, x, out=self.workspace().output(x.shape))

    def _sigmoidHard(self, x):
        return np.clip(np.float32(self.alpha) * x + np.float32(self.beta), np.float32(0), np.float32(1))

    def _ELU(self, x):
        with _quiet():
            return np.where(x >= 0, x, np.float32(self.alpha) * np.expm1(x))

    def _softsign(self, x):
        return x / (np.float32(1) + np.abs(x))

    def _softplus(self, x):
        return np.logaddexp(np.float32(0), x)

    def _parametricSoftplus(self, x):
        _check_channels(self, x, self.alpha, self.beta)
        return (self.alpha * np.logaddexp(np.float32(0), self.beta * x)).astype(np.float32, copy=False)


# ---------------------------------------------------------------- unary, clip, clampedReLU, gelu, erf

def _rsqrt(x, a, e, out):
    np.add(x, e, out=out)
    np.sqrt(out, out=out)
    return np.divide(np.float32(1), out, out=out)


def _inverse(x, a, e, out):
    np.add(x, e, out=out)
    return np.divide(np.float32(1), out, out=out)


def _log(x, a, e, out):
    np.add(x, e, out=out)
    return np.log(out, out=out)


# UnaryFunctionLayerParams.Operation name -> f(x, alpha, epsilon, out): into ``out``, x's shape
# (the kernel's array reused across predictions; x may be it, after the scale-and-shift pass)
_UNARY = {
    "SQRT": lambda x, a, e, out: np.sqrt(x, out=out),
    "RSQRT": _rsqrt,
    "INVERSE": _inverse,
    "POWER": lambda x, a, e, out: np.power(x, a, out=out),
    "EXP": lambda x, a, e, out: np.exp(x, out=out),
    # Core ML adds epsilon before LOG too, though the proto comment omits it: MIL's
    # log(x, epsilon) lowers to this field and coremltools' NN-backend tests expect log(x + eps).
    "LOG": _log,
    "ABS": lambda x, a, e, out: np.abs(x, out=out),
    "THRESHOLD": lambda x, a, e, out: np.maximum(x, a, out=out),
}


@kernel("unary")
class Unary(Kernel):
    """y = f(scale * x + shift); scale 0 means 1 and epsilon 0 means 1e-6, as the proto says."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.operation = type(p).Operation.Name(p.type) if p.type in type(p).Operation.values() else None
        if self.operation not in _UNARY:
            raise self.unsupported(f"unary operation number {p.type}")
        self.function = _UNARY[self.operation]
        self.alpha = np.float32(p.alpha)
        self.epsilon = np.float32(p.epsilon or 1e-6)
        self.scale = np.float32(p.scale or 1.0)
        self.shift = np.float32(p.shift)

    def compute(self, x):
        out = self.workspace().output(x.shape)
        with _quiet():
            if self.scale != 1 or self.shift != 0:
                x = np.multiply(x, self.scale, out=out)
                x += self.shift
            return self.function(x, self.alpha, self.epsilon, out)


@kernel("clip")
class Clip(Kernel):
    """min(max(x, minVal), maxVal), in that order: when minVal > maxVal every output is maxVal."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.low = np.float32(self.params.minVal)
        self.high = np.float32(self.params.maxVal)

    def compute(self, x):
        # np.clip is minimum(maximum(x, low), high) (NaN stays NaN), in one SIMD pass
        return np.clip(x, self.low, self.high, out=self.workspace().output(x.shape))


@kernel("clampedReLU")
class ClampedReLU(Kernel):
    """min(beta, x) for x >= 0, min(beta, alpha * x) below: a leaky ReLU capped at beta."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.alpha = np.float32(self.params.alpha)
        self.beta = np.float32(self.params.beta)

    def compute(self, x):
        return np.minimum(np.where(x >= 0, x, x * self.alpha), self.beta)


@kernel("gelu")
class Gelu(Kernel):
    """GELU in the three forms the proto names: exact (erf), tanh and sigmoid approximations
    (formulas and float32 erf in ``_fused.py``)."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        modes = type(self.params).GeluMode
        mode = self.params.mode
        if mode not in modes.values():
            raise self.unsupported(f"gelu mode number {mode}")
        self.mode = modes.Name(mode)
        self.mode_code = fused().GELU_MODES[self.mode]

    def compute(self, x):
        kernels = fused()
        return kernels.flat_map(kernels.gelu, x, self.mode_code, out=self.workspace().output(x.shape))


@kernel("erf")
class Erf(Kernel):
    """The Gauss error function in float32 (``_fused.erf``: a rational fit, within 8 ulps)."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        fused()                             # numba's import at load, not at the first prediction

    def compute(self, x):
        kernels = fused()
        return kernels.flat_map(kernels.map_erf, x, out=self.workspace().output(x.shape))


# ---------------------------------------------------------------- parameterless unary kinds

def _round_half_even(x):
    """Ties go to the even integer (np.round): coremltools documents "0.5 is rounded to 0", its MIL
    value inference and its NN-layer test reference both use np.round, and so does torch.round."""
    return np.round(x)


_SIMPLE = {
    "ceil": np.ceil, "floor": np.floor, "sign": np.sign, "round": _round_half_even,
    "exp2": np.exp2,
    "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
}


@kernel(*_SIMPLE)
class SimpleUnary(Kernel):
    """A parameterless element-wise function; out-of-domain inputs give NaN/inf, without warnings."""

    output_shapes = same_shape

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.function = _SIMPLE[self.kind]

    def compute(self, x):
        with _quiet():
            return self.function(x)
