"""Random sampling kernels: normal, uniform and Bernoulli fills (Like/Static/Dynamic) and categorical draws.

Seeds: a layer's ``seed`` >= 0 seeds a fresh numpy Generator on every prediction, so a seeded
model gives the same draws on every call (MIL documents the seed as giving "a reproducible
sequence of values across multiple invokes"); a negative seed (coremltools writes -1 for "no
seed") draws from fresh OS entropy on each call. proto3 cannot tell an unset seed from 0, so a
seed of 0 is taken as a real seed.

The draws are numpy's, not Core ML's: the same seed gives different numbers than on a device.
Only the distributions match.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, kernel


class _RandomFill(Kernel):
    """A tensor filled with draws; the variant (Like/Static/Dynamic) decides where the shape comes from.

    Like: the shape of the single input (its values are ignored). Static: ``outputShape``.
    Dynamic: the values of the rank-1 input.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.seed = int(self.params.seed)
        self.variant = next(v for v in ("Like", "Static", "Dynamic") if self.kind.endswith(v))
        if self.variant == "Static":
            self.static_shape = tuple(int(n) for n in self.params.outputShape)

    def generator(self):
        return np.random.default_rng(self.seed if self.seed >= 0 else None)

    def output_shape(self, inputs):
        if self.variant == "Static":
            return self.static_shape
        if self.variant == "Like":
            return inputs[0].shape
        dims = np.asarray(inputs[0]).ravel()
        if np.any(dims < 0) or np.any(dims != np.floor(dims)):
            raise LayerError(self.ctx.model_name, self.name,
                             f"{self.kind}: the shape input must hold non-negative integers, got {dims}")
        return tuple(int(n) for n in dims)

    def compute(self, *inputs):
        return self.draw(self.generator(), self.check_shape(self.output_shape(inputs)))

    def draw(self, rng, shape):
        raise NotImplementedError


@kernel("randomNormalLike", "randomNormalStatic", "randomNormalDynamic")
class RandomNormal(_RandomFill):
    """mean + stdDev * N(0, 1)."""

    def draw(self, rng, shape):
        values = rng.standard_normal(shape, dtype=np.float32)
        return values * np.float32(self.params.stdDev) + np.float32(self.params.mean)


@kernel("randomUniformLike", "randomUniformStatic", "randomUniformDynamic")
class RandomUniform(_RandomFill):
    """Uniform on [minVal, maxVal)."""

    def draw(self, rng, shape):
        low, high = np.float32(self.params.minVal), np.float32(self.params.maxVal)
        return rng.random(shape, dtype=np.float32) * (high - low) + low


@kernel("randomBernoulliLike", "randomBernoulliStatic", "randomBernoulliDynamic")
class RandomBernoulli(_RandomFill):
    """1 with probability ``prob``, else 0."""

    def draw(self, rng, shape):
        return (rng.random(shape) < self.params.prob).astype(np.float32)


@kernel("categoricalDistribution")
class CategoricalDistribution(Kernel):
    """numSamples class indices per distribution over the last axis, drawn with replacement.

    Logits are softened by ``temperature`` (softmax(x / T)); probabilities become logits as
    log(p + eps), as MIL's random_categorical adds a log layer in "probs" mode, so
    temperature applies to them too. proto3 reads an unset eps or temperature as 0: those take
    the documented defaults, 1e-10 and 1.0.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.seed = int(p.seed)
        self.samples = int(p.numSamples)
        if self.samples <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (categoricalDistribution): "
                                   f"numSamples must be positive, got {self.samples}")
        self.eps = p.eps or 1e-10
        self.temperature = p.temperature or 1.0

    def compute(self, x):
        classes = x.shape[-1]
        logits = x.reshape(-1, classes).astype(np.float64)
        if not self.params.isLogits:
            logits = np.log(np.maximum(logits, 0) + self.eps)
        logits = logits / self.temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(weights, axis=1)
        cdf /= cdf[:, -1:]
        rng = np.random.default_rng(self.seed if self.seed >= 0 else None)
        uniform = rng.random((cdf.shape[0], self.samples))
        # One searchsorted over all rows: row r's CDF lives in [r, r + 1], so rows never mix.
        offsets = np.arange(cdf.shape[0])[:, None]
        flat = np.searchsorted((cdf + offsets).ravel(), (uniform + offsets).ravel(), side="right")
        picks = np.minimum(flat.reshape(uniform.shape) - offsets * classes, classes - 1)
        return picks.astype(np.float32).reshape(x.shape[:-1] + (self.samples,))
