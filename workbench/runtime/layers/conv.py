"""Convolution and deconvolution, 2-D (``convolution``) and 3-D (``convolution3d``).

One engine serves both: the spatial rank is the number of trailing axes the kernel slides over
(2 or 3), everything before ``C`` is flattened into a batch axis. Convolution is im2col + one
batched BLAS matmul (all groups in one call, a band of output rows at a time: _im2col.py);
1x1 kernels skip im2col, depthwise kernels (one input channel per group) accumulate shifted
products instead (_depthwise.py), and so do stride-1 kernels with few output channels, through a
compiled product (_shifted.py).
Deconvolution is the transpose: one matmul to per-tap columns, then a strided scatter-add of
each kernel tap straight into the cropped output window.

The padding and output-size helpers here are shared with ``pooling``.
"""
import math

import numpy as np

from ...errors import LayerError, ModelFormatError
from . import _shifted
from ._base import NO_CLAMP, Kernel, add_bias, fused, gemm, kernel
from ._depthwise import depthwise_forward
from ._im2col import band_rows, conv_forward, conv_transpose
from ._winograd import winograd_forward, winograd_weights

# Winograd F(2x2, 3x3) beats im2col + GEMM on this many channels and output pixels (measured on
# ResNet-18 layers: faster from 64 channels at 14x14 and up; slower at 512 channels, 7x7)
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_PIXELS = 14 * 14


# ---------------------------------------------------------------- spatial helpers (shared)

def same_padding(size, window, stride, top_left_heavy=False):
    """Core ML's SAME rule: ``out = ceil(size / stride)``; return ``(out, before, after)``.

    BOTTOM_RIGHT_HEAVY puts the odd padding unit after, TOP_LEFT_HEAVY before.
    """
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + window - size)
    return (out,) + split_padding(total, top_left_heavy)


def split_padding(total, top_left_heavy=False):
    small = total // 2
    return (total - small, small) if top_left_heavy else (small, total - small)


def valid_output(size, window, stride, before, after):
    """Core ML's VALID rule (padding amounts already added): ``floor((in + pads - k) / s) + 1``."""
    return (size + before + after - window) // stride + 1


def border_pairs(border_amounts, count=2):
    """A BorderAmounts message as ``[(start, end), ...]``; missing entries are zero."""
    pairs = [(int(e.startEdgeSize), int(e.endEdgeSize)) for e in border_amounts.borderAmounts]
    return (pairs + [(0, 0)] * count)[:count]


def _repeated(values, count, default):
    values = [int(v) for v in values]
    return tuple(values) if len(values) == count else (default,) * count


# ---------------------------------------------------------------- the engine's choice

def _all_finite(x):
    """Whether ``x`` holds no inf or NaN. Winograd's transforms add and subtract a tile's pixels,
    so one inf becomes inf - inf = NaN across its 4x4 tile, beside outputs that never read it;
    the convolution's formula gives inf only where it is read. Such an input takes im2col. One
    float32 sum, no temporary; a sum that overflows only sends a finite input the slower way."""
    return bool(np.isfinite(np.add.reduce(x, axis=None)))


# ---------------------------------------------------------------- kernels

class _ConvolutionBase(Kernel):
    """Shared planning and compute; subclasses read their parameter message into
    ``rank, kernel_sizes, strides, dilations, groups, c_out, kernel_channels, deconv,
    output_shape, padding`` where padding is ("fixed", [(b, a), ...]) or ("same", top_left_heavy)."""

    # (low, high, relu) of a ReLU or clip fused into this layer by the planner (fusion.fuse_activations),
    # or a chain of element-wise layers it runs on its output (fusion.fold_chains_into_convolutions)
    fused_clamp = None
    fused_chain = None

    def _clamp(self):
        """The fused activation's bounds when it applies: in predict, where the activation layer
        passes this layer's output on untouched (trace computes both layers as written)."""
        if self.fused_clamp is not None and self.top_level and self.ctx.reuse_buffers:
            return self.fused_clamp
        return NO_CLAMP

    def _chain(self):
        """The fused chain (fusion.ConvolutionEpilogue) when it applies, as for ``_clamp``."""
        if self.fused_chain is not None and self.top_level and self.ctx.reuse_buffers:
            return self.fused_chain
        return None

    def _plan_weights(self, weights, bias):
        count = self._weight_count()
        self.bias = None
        if self.has_bias:
            b = self.weights(bias, "bias", self.c_out)
            self.bias = b.reshape((self.c_out,) + (1,) * self.rank)
        self.dynamic_weights = len(self.layer.input) == 2
        self.shifted = None                  # [taps, C_out, C_in] when _shifted.py runs this layer
        if not self.dynamic_weights:
            flat = self._deconv_weights(weights, count) if self.deconv else \
                self.weights(weights, "weights", count)
            self.wmat, self.depthwise = self._layout(flat)
            if not self.deconv and not self.depthwise and _shifted.eligible(
                    self.kernel_sizes, self.strides, self.dilations, self.groups, self.kernel_channels, self.c_out):
                self.shifted = _shifted.tap_weights(self.wmat, self.kernel_channels, self.kernel_sizes)
                fused(), gemm()             # numba's import at load, not at the first prediction
        self.winograd = None
        self.winograd_eligible = (
            not self.dynamic_weights and not self.deconv and self.rank == 2 and self.groups == 1
            and self.kernel_sizes == (3, 3) and self.strides == (1, 1) and self.dilations == (1, 1)
            and min(self.c_out, self.kernel_channels) >= WINOGRAD_MIN_CHANNELS)

    def _winograd_for(self, outs):
        """The Winograd weights when this layer uses them at output size ``outs``, transformed on
        first need: at load, from the shape pass (output_shapes), for the input shapes the model
        declares; at the first prediction only for shapes unknown at load. Layers whose maps are
        too small for Winograd never transform (in a ResNet-18 those 7x7 layers hold 80% of the
        3x3 weights: transforming them would cost 50 MB and most of the load time)."""
        if not self.winograd_eligible or math.prod(outs) < WINOGRAD_MIN_PIXELS:
            return None
        if self.winograd is None:
            self.winograd = winograd_weights(self.wmat.reshape(self.c_out, self.kernel_channels, 3, 3))
        return self.winograd

    def _deconv_weights(self, wp, count):
        """Deconvolution weights [C_in, C_out/groups, *kernel] are quantized per channel along
        axis 1 (coremltools' quantize_weights), not along the leading axis: decode the codes with
        unit scale, then apply the per-channel scale and bias on axis 1."""
        linear = wp.quantization.linearQuantization
        if not (wp.HasField("quantization") and wp.quantization.HasField("linearQuantization")
                and max(len(linear.scale), len(linear.bias)) > 1):
            return self.weights(wp, "weights", count)
        channels = self.c_out // self.groups
        scale = np.asarray(linear.scale, np.float32)
        bias = np.asarray(linear.bias, np.float32) if len(linear.bias) else np.zeros(1, np.float32)
        if {scale.size, bias.size} - {1, channels}:
            raise ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}': {scale.size} scales and "
                                   f"{bias.size} biases for {channels} deconvolution output channels")
        plain = type(wp)()
        plain.CopyFrom(wp)
        del plain.quantization.linearQuantization.scale[:]
        del plain.quantization.linearQuantization.bias[:]
        plain.quantization.linearQuantization.scale.append(1.0)
        codes = self.weights(plain, "weights", count).reshape(self.kernel_channels, channels, -1)
        return (codes * scale[:, None] + bias[:, None]).reshape(-1)

    def _weight_count(self):
        k = math.prod(self.kernel_sizes)
        if self.deconv:
            return self.kernel_channels * (self.c_out // self.groups) * k
        return self.c_out * self.kernel_channels * k

    def _check(self):
        if min(self.kernel_sizes + self.strides + self.dilations) < 1:
            raise ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}': kernel size "
                                   f"{self.kernel_sizes}, stride {self.strides} and dilation "
                                   f"{self.dilations} must be positive")
        if self.groups < 1 or self.c_out % self.groups:
            raise ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}': nGroups={self.groups} "
                                   f"does not divide outputChannels={self.c_out}")
        if self.deconv and self.kernel_channels % self.groups:
            raise ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}': nGroups={self.groups} "
                                   f"does not divide kernelChannels={self.kernel_channels}")

    def _layout(self, flat):
        """Weights laid out for the engine: ``(matrix, is_depthwise)``; grouped matmul matrices,
        or per-channel taps when every group has one input channel."""
        g, ks = self.groups, tuple(self.kernel_sizes)
        if self.deconv:
            w = flat.reshape((g, self.kernel_channels // g, -1))     # [g, C_in/g, C_out/g * K]
            return np.ascontiguousarray(w.transpose(0, 2, 1)), False
        w = flat.reshape((self.c_out, self.kernel_channels) + ks)
        if self.kernel_channels == 1 and g > 1:
            return np.ascontiguousarray(w.reshape((g, self.c_out // g) + ks)), True
        return np.ascontiguousarray(w.reshape(g, self.c_out // g, -1)), False

    def _error(self, message):
        return LayerError(self.ctx.model_name, self.name, message)

    def _forward_pads(self, in_sizes):
        eff = [(k - 1) * d + 1 for k, d in zip(self.kernel_sizes, self.dilations)]
        kind, how = self.padding
        if kind == "same":
            plans = [same_padding(n, e, s, how) for n, e, s in zip(in_sizes, eff, self.strides)]
            return [(b, a) for _, b, a in plans], tuple(o for o, _, _ in plans)
        outs = tuple(valid_output(n, e, s, b, a)
                     for n, e, s, (b, a) in zip(in_sizes, eff, self.strides, how))
        return how, outs

    def _transpose_window(self, in_sizes):
        """(before, out) per axis: where the deconvolution output window starts in the full result."""
        befores, outs = [], []
        for i, (n, k, s, d) in enumerate(zip(in_sizes, self.kernel_sizes, self.strides, self.dilations)):
            full = (n - 1) * s + (k - 1) * d + 1
            kind, how = self.padding
            if self.output_shape:
                out = self.output_shape[i]
                before = how[i][0] if kind == "fixed" else split_padding(max(0, full - out), how)[0]
            elif kind == "fixed":
                before, out = how[i][0], full - how[i][0] - how[i][1]
            else:
                out = n * s
                before = split_padding(max(0, full - out), how)[0]
            befores.append(before)
            outs.append(out)
        return befores, tuple(outs)

    def compute(self, *inputs):
        x = inputs[0]
        rank = self.rank
        if x.ndim < rank + 1:
            raise self._error(f"input of shape {x.shape} has rank {x.ndim}; "
                              f"this layer needs [..., C, {', '.join('DHW'[3 - rank:])}]")
        wmat, depthwise = (self.wmat, self.depthwise) if not self.dynamic_weights else \
            self._layout(self._weight_input(inputs[1]))
        lead, channels, in_sizes = x.shape[:-rank - 1], x.shape[-rank - 1], x.shape[-rank:]
        expected = self.kernel_channels if self.deconv else self.kernel_channels * self.groups
        if channels != expected:
            raise self._error(f"input has {channels} channels (axis {-rank - 1}), the weights expect "
                              f"{expected} (kernelChannels={self.kernel_channels}, nGroups={self.groups})")
        xb = np.ascontiguousarray(x.reshape((-1, channels) + tuple(in_sizes)), dtype=np.float32)
        if self.deconv:
            befores, outs = self._transpose_window(in_sizes)
            self._check_sizes(outs, x.shape)
            y = conv_transpose(xb, wmat, self.kernel_sizes, self.groups, self.strides,
                               self.dilations, befores, outs)
        else:
            pads, outs = self._forward_pads(in_sizes)
            self._check_sizes(outs, x.shape, pads)
            clamp, chain, biased = self._clamp(), self._chain(), True
            if depthwise:                                    # adds the bias and clamps itself
                y = depthwise_forward(xb, wmat, self.strides, self.dilations, pads, outs, self.bias,
                                      self.workspace(), clamp)
            elif self._winograd_for(outs) is not None and _all_finite(xb):  # adds the bias, clamps
                bias = None if self.bias is None else self.bias.reshape(-1)
                y = winograd_forward(xb, self.winograd, pads, outs, bias, self.workspace(), clamp)
            elif self._shifted_for(in_sizes, pads, outs):
                y, biased = _shifted.shifted_forward(xb, self.shifted, self.kernel_sizes, self.strides,
                                                     self.dilations, pads, outs, self.workspace()), False
            else:
                y, biased = conv_forward(xb, wmat, self.kernel_sizes, self.groups, self.strides, self.dilations,
                                         pads, outs, self.workspace()), False
            if chain is not None:                            # the bias as its first operation
                y = chain.apply(y, add_bias=not biased)
            elif not biased:
                y = add_bias(y, self.bias, clamp)
            return y.reshape(tuple(lead) + (self.c_out,) + tuple(outs))
        return add_bias(y, self.bias).reshape(tuple(lead) + (self.c_out,) + tuple(outs))

    def output_shapes(self, shapes):
        """[..., C_out, *out] from the input shape alone (weights from the file); None: run compute."""
        s, rank = shapes[0], self.rank
        expected = self.kernel_channels if self.deconv else self.kernel_channels * self.groups
        if self.dynamic_weights or s is None or len(s) < rank + 1 or s[-rank - 1] != expected:
            return None
        in_sizes = s[-rank:]
        pads, outs = (None, self._transpose_window(in_sizes)[1]) if self.deconv else \
            self._forward_pads(in_sizes)
        self._check_sizes(outs, s, pads)
        self._winograd_for(outs)                 # the load-time shape pass prepares the weights
        return [tuple(s[:-rank - 1]) + (self.c_out,) + tuple(outs)]

    def _weight_input(self, w):
        """Spec 4+: weights as the second input, [C_out, kernelChannels, *kernel]."""
        if w.size != self._weight_count():
            raise self._error(f"weight input of shape {w.shape} does not hold the "
                              f"{self._weight_count()} weights of outputChannels={self.c_out}, "
                              f"kernelChannels={self.kernel_channels}, kernel {self.kernel_sizes}")
        return np.asarray(w, np.float32).reshape(-1)

    def _shifted_for(self, in_sizes, pads, outs):
        """Whether this call sums shifted products (_shifted.py): planned for it, and not on a map
        so small that padding would be most of the work."""
        return self.shifted is not None and _shifted.worthwhile(in_sizes, pads, self.strides, outs)

    def _check_sizes(self, outs, shape, pads=None):
        if any(o < 1 for o in outs):
            raise self._error(f"input of shape {shape} gives an empty output {outs}: "
                              f"the kernel is larger than the (padded) input")
        # strides, paddings or an outputShape from the file decide these sizes: check before allocating
        lead = math.prod(shape[:-self.rank - 1])
        self.check_shape((lead, self.c_out) + tuple(outs))
        in_sizes = tuple(shape[-self.rank:])
        if not self.deconv and pads is not None and self._shifted_for(in_sizes, pads, outs):
            for buffer in _shifted.buffer_shapes(lead, shape[-self.rank - 1], self.c_out, in_sizes, pads,
                                                 self.strides, self.kernel_sizes, self.dilations, outs):
                self.check_shape(buffer, "shifted-products buffer")
            return
        if self.deconv:          # conv_transpose's columns: [N, C_out * kernel, *input sizes]
            cols = (lead, self.c_out * math.prod(self.kernel_sizes)) + tuple(shape[-self.rank:])
        else:                    # conv_forward's columns, a band of output rows: [N, C_in * kernel, rows, *rest]
            channels, taps = shape[-self.rank - 1], math.prod(self.kernel_sizes)
            rows = band_rows(lead, channels, self.kernel_sizes, outs) if taps > 1 else outs[0]
            cols = (lead, channels * taps, rows) + tuple(outs[1:])
        self.check_shape(cols, "im2col buffer")


@kernel("convolution")
class Convolution(_ConvolutionBase):
    """ConvolutionLayerParams: 2-D convolution / deconvolution over axes (-2, -1), channels -3."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.rank = 2
        self.kernel_sizes = _repeated(p.kernelSize, 2, 3)
        self.strides = _repeated(p.stride, 2, 1)
        self.dilations = _repeated(p.dilationFactor, 2, 1)
        self.groups = int(p.nGroups) or 1
        self.c_out, self.kernel_channels = int(p.outputChannels), int(p.kernelChannels)
        self.deconv = bool(p.isDeconvolution)
        self.has_bias = bool(p.hasBias)
        self.output_shape = tuple(int(v) for v in p.outputShape) if self.deconv and len(p.outputShape) else None
        if p.WhichOneof("ConvolutionPaddingType") == "same":
            top_left = p.same.asymmetryMode == p.same.TOP_LEFT_HEAVY
            self.padding = ("same", top_left)
        else:
            self.padding = ("fixed", border_pairs(p.valid.paddingAmounts))
        self._check()
        self._plan_weights(p.weights, p.bias)


@kernel("convolution3d")
class Convolution3D(_ConvolutionBase):
    """Convolution3DLayerParams: 3-D convolution / deconvolution over axes (-3, -2, -1), channels -4.

    Deconvolution weights are stored ``[C_in, C_out / nGroups, kD, kH, kW]`` (the layout
    coremltools' builder writes, the same as 2-D deconvolution).
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.rank = 3
        self.kernel_sizes = (int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth))
        self.strides = tuple(max(1, int(v)) for v in (p.strideDepth, p.strideHeight, p.strideWidth))
        self.dilations = tuple(max(1, int(v)) for v in (p.dilationDepth, p.dilationHeight, p.dilationWidth))
        self.groups = int(p.nGroups) or 1
        self.c_out = int(p.outputChannels)
        self.deconv = bool(p.isDeconvolution)
        c_in = int(p.inputChannels)
        self.kernel_channels = c_in if self.deconv else c_in // self.groups
        if not self.deconv and c_in % self.groups:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}': nGroups={self.groups} "
                                   f"does not divide inputChannels={c_in}")
        self.has_bias = bool(p.hasBias)
        self.output_shape = tuple(int(v) for v in p.outputShape) if self.deconv and len(p.outputShape) else None
        if p.paddingType == p.SAME:
            self.padding = ("same", False)
        elif p.paddingType == p.VALID:
            self.padding = ("fixed", [(0, 0)] * 3)
        else:
            self.padding = ("fixed", [(int(p.customPaddingFront), int(p.customPaddingBack)),
                                      (int(p.customPaddingTop), int(p.customPaddingBottom)),
                                      (int(p.customPaddingLeft), int(p.customPaddingRight))])
        self._check()
        self._plan_weights(p.weights, p.bias)
