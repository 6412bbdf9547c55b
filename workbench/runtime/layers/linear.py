"""Linear layers: innerProduct, batchedMatmul, embedding.

Weights are decoded and laid out once at load as ``[in, out]`` matrices so that predict is a
single ``x @ W`` (BLAS) per layer.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, kernel


def _quantize_input_int8(x):
    """Emulate the runtime int8 quantization of ``int8DynamicQuantize`` layers.

    Core ML quantizes the float input blob to int8 before the integer product and dequantizes
    the result. We model that as symmetric per-blob quantization (scale = max|x| / 127), so the
    rounding the device applies to the input shows up here too.
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0 or not np.isfinite(peak):
        return x
    scale = np.float32(peak / 127.0)
    return (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)


@kernel("innerProduct")
class InnerProduct(Kernel):
    """y = x W^T + b over the flattened trailing axes the proto names for each input rank."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.cin, self.cout = int(p.inputChannels), int(p.outputChannels)
        w = self.weights(p.weights, "weights", self.cin * self.cout)
        self.w = w.reshape(self.cout, self.cin).T        # [Cin, Cout], a view: BLAS reads it transposed
        self.b = self.weights(p.bias, "bias", self.cout) if p.hasBias else None
        self.quantize_input = bool(p.int8DynamicQuantize)

    def output_shapes(self, shapes):
        s = shapes[0]
        if s is None or not s:
            return None
        if len(s) <= 3:
            lead, fan_in, tail = s[:-1], s[-1], ()
        elif len(s) == 4:
            lead, fan_in, tail = s[:1], int(np.prod(s[1:])), (1, 1)
        else:
            lead, fan_in, tail = s[:-3], int(np.prod(s[-3:])), (1, 1)
        return [tuple(lead) + (self.cout,) + tail] if fan_in == self.cin else None

    def compute(self, x):
        rank = x.ndim
        if rank <= 3:                       # (Cin) / (x1, Cin) / (x1, x2, Cin): last axis only
            lead, fan_in = x.shape[:-1], x.shape[-1] if rank else 1
            tail = ()
        elif rank == 4:                     # (x1, C, H, W) -> (x1, Cout, 1, 1)
            lead, fan_in, tail = x.shape[:1], int(np.prod(x.shape[1:])), (1, 1)
        else:                               # (x1, x2, C, H, W) -> (x1, x2, Cout, 1, 1)
            lead, fan_in, tail = x.shape[:-3], int(np.prod(x.shape[-3:])), (1, 1)
        if fan_in != self.cin:
            raise LayerError(self.ctx.model_name, self.name,
                             f"innerProduct expects {self.cin} input channels, the input of shape "
                             f"{tuple(x.shape)} gives {fan_in}")
        flat = x.reshape(-1, self.cin)
        if self.quantize_input:
            flat = _quantize_input_int8(flat)
        y = np.matmul(flat, self.w, out=self.workspace().output((flat.shape[0], self.cout)))
        if self.b is not None:
            y += self.b
        return y.reshape(tuple(lead) + (self.cout,) + tail)


_ROW_MAJOR_COPY_BYTES = 8 << 20


def _row_major(m):
    """A transposed operand, copied row-major when it is small: OpenBLAS multiplies small
    row-major operands faster by more than the copy costs (attention's Q K^T, 8 x 128x32x128:
    200 -> 110 us). A large one is left as it is (BLAS reads it transposed, 3-12% slower), so a
    big product does not hold a second copy of it."""
    return np.ascontiguousarray(m) if m.nbytes <= _ROW_MAJOR_COPY_BYTES else m


@kernel("batchedMatmul")
class BatchedMatMul(Kernel):
    """numpy-style batched matmul of two inputs, or of one input with a constant [X1, X2] matrix."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.two_inputs = len(layer.input) >= 2
        self.transpose_a, self.transpose_b = bool(p.transposeA), bool(p.transposeB)
        self.w = self.b = None
        if not self.two_inputs:
            rows, cols = int(p.weightMatrixFirstDimension), int(p.weightMatrixSecondDimension)
            if rows == 0 or cols == 0:
                raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (batchedMatmul) has one input "
                                       f"but no weight matrix dimensions ({rows} x {cols})")
            w = self.weights(p.weights, "weights", rows * cols)
            # stored column-major, i.e. row-major [X2, X1]
            self.w = w.reshape(cols, rows).T                # [X1, X2], a view: BLAS reads it transposed
            self.rows, self.cols = rows, cols
            self.b = self.weights(p.bias, "bias", cols) if p.hasBias else None
            self.quantize_input = bool(p.int8DynamicQuantize)

    def output_shapes(self, shapes):
        if self.two_inputs:
            return self._product_shape(*shapes)
        s = shapes[0]
        if s is None or not s or s[-1] != self.rows:
            return None
        return [tuple(s[:-1]) + (self.cols,)]

    def _product_shape(self, a, b):
        """np.matmul's shape rule on _matmul's operands (1-D operands become matrices)."""
        if a is None or b is None or not a or not b:
            return None
        a = (1,) + tuple(a) if len(a) == 1 else tuple(a)
        b = tuple(b) + (1,) if len(b) == 1 else tuple(b)
        if self.transpose_a:
            a = a[:-2] + (a[-1], a[-2])
        if self.transpose_b:
            b = b[:-2] + (b[-1], b[-2])
        if a[-1] != b[-2]:
            return None
        return [tuple(np.broadcast_shapes(a[:-2], b[:-2])) + (a[-2], b[-1])]

    def compute(self, a, b=None):
        if self.two_inputs:
            return self._matmul(a, b)
        if a.shape[-1] != self.rows:
            raise LayerError(self.ctx.model_name, self.name,
                             f"batchedMatmul weight matrix is {self.rows} x {self.cols}, the input's last "
                             f"axis is {a.shape[-1]}")
        flat = a.reshape(-1, self.rows)
        if self.quantize_input:
            flat = _quantize_input_int8(flat)
        y = flat @ self.w
        if self.b is not None:
            y += self.b
        return y.reshape(a.shape[:-1] + (self.cols,))

    def _matmul(self, a, b):
        # 1-D operands become matrices and stay so: the output rank is max(2, rank a, rank b)
        if a.ndim == 1:
            a = a[None, :]
        if b.ndim == 1:
            b = b[:, None]
        if self.transpose_a:
            a = _row_major(np.swapaxes(a, -1, -2))
        if self.transpose_b:
            b = _row_major(np.swapaxes(b, -1, -2))
        if a.shape[-1] != b.shape[-2]:
            raise LayerError(self.ctx.model_name, self.name,
                             f"batchedMatmul cannot multiply matrices of shapes {a.shape[-2:]} and "
                             f"{b.shape[-2:]} (after transposeA={self.transpose_a}, "
                             f"transposeB={self.transpose_b})")
        return np.matmul(a, b)


@kernel("embedding")
class Embedding(Kernel):
    """Classic embedding: an index on the C axis selects a column of W [Cout, inputDim]."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.vocab, self.cout = int(p.inputDim), int(p.outputChannels)
        w = self.weights(p.weights, "weights", self.vocab * self.cout)
        table = w.reshape(self.cout, self.vocab).T.copy()                       # [inputDim, Cout]
        if p.hasBias:
            table += self.weights(p.bias, "bias", self.cout)
        table.flags.writeable = False
        self.table = table

    def compute(self, x):
        if x.ndim < 3 or x.shape[-3:] != (1, 1, 1):
            raise LayerError(self.ctx.model_name, self.name,
                             f"embedding expects indices of shape (..., 1, 1, 1), got {tuple(x.shape)}")
        index = x.reshape(-1).astype(np.int64)       # a C cast: indices are whole numbers in floats
        bad = (index < 0) | (index >= self.vocab)
        if bad.any():
            raise LayerError(self.ctx.model_name, self.name,
                             f"embedding index {x.reshape(-1)[bad][0]:g} is outside [0, {self.vocab - 1}]")
        return self.table[index].reshape(x.shape[:-3] + (self.cout, 1, 1))
