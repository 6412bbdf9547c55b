"""N-D (spec 4+) layers that select, join or replicate data: concatND, splitND, stack,
sliceStatic, sliceDynamic, sliceBySize, tile, reverse, fills and broadcasts.

These work on exact-rank tensors with numpy-style axes (negative axes count from the end).
Shapes, indices and masks that arrive as inputs are float32 blobs like every other blob; they
are rounded to integers here. Classic rank-5 layers and N-D reshapes live in ``tensor.py``.
"""
import numpy as np

from ._base import kernel
from .tensor import ShapeKernel, as_ints


class AxisKernel(ShapeKernel):
    """Helper for layers with one ``axis`` that may be negative."""

    def axis_for(self, axis, rank):
        if not -rank <= axis < rank:
            raise self.bad_input(f"axis {axis} is out of range for rank {rank}")
        return axis % rank


# ---------------------------------------------------------------- concat / split / stack

@kernel("concatND")
class ConcatND(AxisKernel):
    """Join along any axis; interleave takes one slice from each input in turn."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)
        self.interleave = bool(self.params.interleave)

    def output_shapes(self, shapes):
        """Interleaved or not, the inputs' lengths along the axis add up; the other axes must agree."""
        if not shapes or any(s is None or len(s) != len(shapes[0]) for s in shapes):
            return None
        rank = len(shapes[0])
        if not -rank <= self.axis < rank:
            return None
        axis = self.axis % rank
        rest = {tuple(d for i, d in enumerate(s) if i != axis) for s in shapes}
        if len(rest) != 1 or (self.interleave and len({s[axis] for s in shapes}) != 1):
            return None
        first = tuple(shapes[0])
        return [first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]]

    def compute(self, *inputs):
        axis = self.axis_for(self.axis, inputs[0].ndim)
        try:
            if not self.interleave:
                return np.concatenate(inputs, axis=axis)
            # stacking just after `axis` puts input k's slice i at position i*n + k once merged
            stacked = np.stack(inputs, axis=axis + 1)
        except ValueError:
            shapes = ", ".join(str(x.shape) for x in inputs)
            raise self.bad_input(f"cannot concatenate shapes {shapes} along axis {self.axis}"
                                 + (" with interleave (needs equal shapes)" if self.interleave else "")) from None
        shape = inputs[0].shape
        return stacked.reshape(shape[:axis] + (shape[axis] * len(inputs),) + shape[axis + 1:])


@kernel("splitND")
class SplitND(AxisKernel):
    """Cut along an axis by splitSizes, or into numSplits parts as equal as they can be."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)
        self.sizes = tuple(int(s) for s in self.params.splitSizes)
        self.parts = len(self.sizes) or int(self.params.numSplits) or len(layer.output)
        if self.parts != len(layer.output):
            raise self.bad_params(f"{self.parts} splits but the layer has {len(layer.output)} outputs")

    def compute(self, x):
        axis = self.axis_for(self.axis, x.ndim)
        length = x.shape[axis]
        if self.sizes:
            if sum(self.sizes) != length:
                raise self.bad_input(f"splitSizes {list(self.sizes)} do not add up to {length}")
            return np.split(x, np.cumsum(self.sizes)[:-1], axis=axis)
        if length < self.parts:
            raise self.bad_input(f"axis of length {length} cannot be split into {self.parts} parts")
        # The proto "supports unequal splits": the first length % parts parts get one extra element
        # (coremltools' test_split_nd compares with np.array_split).
        return np.array_split(x, self.parts, axis=axis)


@kernel("stack")
class Stack(ShapeKernel):
    """Join equal-shaped inputs along a new axis (negative axes index the output)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)

    def compute(self, *inputs):
        try:
            return np.stack(inputs, axis=self.axis)
        except (ValueError, np.exceptions.AxisError):
            shapes = ", ".join(str(x.shape) for x in inputs)
            raise self.bad_input(f"cannot stack shapes {shapes} on axis {self.axis}") from None


# ---------------------------------------------------------------- slices

def _nth(values, i, default):
    return values[i] if i < len(values) else default


def strided_index(rank, begin, end, strides, begin_masks, end_masks, squeeze_masks):
    """The numpy index of a strided slice. A mask means "from/to the edge" in the stride's
    direction (as Python's None does: the proto's "0" and "-1" only fit positive strides);
    a squeeze mask takes the single element at begin, ignoring the other entries."""
    index = []
    for i in range(rank):
        if _nth(squeeze_masks, i, False):
            index.append(_nth(begin, i, 0))
            continue
        start = None if _nth(begin_masks, i, False) else _nth(begin, i, None)
        stop = None if _nth(end_masks, i, False) else _nth(end, i, None)
        index.append(slice(start, stop, _nth(strides, i, 1) or 1))
    return tuple(index)


def take_slice(kernel_, x, begin, end, strides, begin_masks, end_masks, squeeze_masks):
    index = strided_index(x.ndim, begin, end, strides, begin_masks, end_masks, squeeze_masks)
    try:
        y = x[index]
    except IndexError as e:
        raise kernel_.bad_input(f"{e} (input shape {x.shape})") from None
    return y.reshape(1) if y.ndim == 0 else y


@kernel("sliceStatic")
class SliceStatic(ShapeKernel):
    """Strided slice with begin/end masks and squeeze masks, all given as parameters."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.args = (tuple(int(v) for v in p.beginIds), tuple(int(v) for v in p.endIds),
                     tuple(int(v) for v in p.strides), tuple(bool(v) for v in p.beginMasks),
                     tuple(bool(v) for v in p.endMasks), tuple(bool(v) for v in p.squeezeMasks))

    def compute(self, x):
        return take_slice(self, x, *self.args)


@kernel("sliceDynamic")
class SliceDynamic(ShapeKernel):
    """Strided slice whose begin (and optionally end, strides, masks) come from inputs 2..7;
    an input given overrides the parameter of the same name."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.defaults = ((), tuple(int(v) for v in p.endIds), tuple(int(v) for v in p.strides),
                         tuple(bool(v) for v in p.beginMasks), tuple(bool(v) for v in p.endMasks),
                         tuple(bool(v) for v in p.squeezeMasks))

    def compute(self, x, *given):
        args = list(self.defaults)
        for i, blob in enumerate(given[:6]):
            values = as_ints(blob)
            args[i] = values if i < 3 else tuple(bool(v) for v in values)
        return take_slice(self, x, *args)


@kernel("sliceBySize")
class SliceBySize(AxisKernel):
    """x[begin:begin+size] along axis, begin read from the second input."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)
        self.size = int(self.params.size)

    def compute(self, x, begin):
        axis = self.axis_for(self.axis, x.ndim)
        start = as_ints(begin)[0]
        length = x.shape[axis]
        start = start + length if start < 0 else start
        stop = length if self.size < 0 else start + self.size
        if not 0 <= start <= stop <= length:
            raise self.bad_input(f"slice [{start}:{stop}] does not fit axis {self.axis} of length {length}")
        index = (slice(None),) * axis + (slice(start, stop),)
        return x[index]


# ---------------------------------------------------------------- repetition, reversal

@kernel("tile")
class Tile(ShapeKernel):
    """Repeat along each axis; reps (parameter or second input) is left-padded with 1s."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.reps = tuple(int(r) for r in self.params.reps)

    def compute(self, x, reps=None):
        reps = as_ints(reps) if reps is not None else self.reps
        if not reps or len(reps) > x.ndim:
            raise self.bad_input(f"reps {list(reps)} must have 1 to {x.ndim} entries (the input rank)")
        lead = x.ndim - len(reps)
        self.check_shape(x.shape[:lead] + tuple(d * r for d, r in zip(x.shape[lead:], reps)))
        return np.tile(x, reps)


@kernel("reverse")
class Reverse(ShapeKernel):
    """Flip every axis i whose reverseDim[i] is set."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axes = tuple(i for i, flip in enumerate(self.params.reverseDim) if flip)
        self.length = len(self.params.reverseDim)

    def compute(self, x):
        if self.length > x.ndim:
            raise self.bad_input(f"reverseDim has {self.length} entries for an input of rank {x.ndim}")
        return np.flip(x, self.axes) if self.axes else x


# ---------------------------------------------------------------- fills and broadcasts

@kernel("fillLike")
class FillLike(ShapeKernel):
    """A tensor of the input's shape holding one value."""

    def compute(self, like):
        return np.full(like.shape, self.params.value, dtype=np.float32)


@kernel("fillStatic")
class FillStatic(ShapeKernel):
    """A tensor of targetShape holding one value (built once)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        shape = self.check_shape(tuple(int(d) for d in self.params.targetShape) or (1,))
        self.value = np.full(shape, self.params.value, dtype=np.float32)
        self.value.flags.writeable = False

    def compute(self):
        return self.value


@kernel("fillDynamic")
class FillDynamic(ShapeKernel):
    """A tensor of the shape held in the input, holding one value."""

    def compute(self, shape):
        return np.full(self.check_shape(as_ints(shape)), self.params.value, dtype=np.float32)


class BroadcastKernel(ShapeKernel):
    def broadcast(self, x, target):
        try:
            shape = np.broadcast_shapes(x.shape, tuple(target))
        except ValueError:
            raise self.bad_input(f"cannot broadcast shape {x.shape} to {tuple(target)}") from None
        return np.ascontiguousarray(np.broadcast_to(x, self.check_shape(shape)))


@kernel("broadcastToLike")
class BroadcastToLike(BroadcastKernel):
    """Broadcast the first input to the shape of the second (numpy rules)."""

    def compute(self, x, like):
        return self.broadcast(x, like.shape)


@kernel("broadcastToStatic")
class BroadcastToStatic(BroadcastKernel):
    """Broadcast to targetShape (numpy rules)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.target = tuple(int(d) for d in self.params.targetShape)

    def compute(self, x):
        return self.broadcast(x, self.target)


@kernel("broadcastToDynamic")
class BroadcastToDynamic(BroadcastKernel):
    """Broadcast to the shape held in the second input (numpy rules)."""

    def compute(self, x, shape):
        return self.broadcast(x, as_ints(shape))
