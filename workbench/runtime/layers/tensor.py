"""Shape layers, part 1: the classic (spec 1-3) ones and the N-D reshapes.

Classic: reshape, flatten, permute, concat, split, slice, sequenceRepeat, loadConstant. They
were written for Core ML's rank-5 blobs ``[Seq, Batch, C, H, W]`` and address their axes from
the end (C = -3, H = -2, W = -1, Seq = -5), so the same code serves rank-5 models and
exact-rank models, where the proto says the layer works on the trailing axes of an N-D tensor.

N-D (spec 4+): transpose, squeeze, expandDims, reshapeStatic/Like/Dynamic,
rankPreservingReshape, flattenTo2D, loadConstantND, getShape. The N-D layers that select, join
or replicate data live in ``layout.py``.
"""
import math

import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, kernel

CHANNEL_LAST = 1    # FlattenLayerParams.CHANNEL_LAST == ReshapeLayerParams.CHANNEL_LAST


class ShapeKernel(Kernel):
    """Shared helpers: errors that name the layer, for bad parameters and bad input shapes."""

    def bad_params(self, message):
        return ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}' ({self.kind}): {message}")

    def bad_input(self, message):
        return LayerError(self.ctx.model_name, self.name, f"{self.kind}: {message}")


def pad_rank(x, rank):
    """View ``x`` with leading unit axes so it has at least ``rank`` axes."""
    if x.ndim >= rank:
        return x
    return x.reshape((1,) * (rank - x.ndim) + x.shape)


def as_ints(blob):
    """A float blob carrying indices or a shape, as a tuple of Python ints."""
    return tuple(int(v) for v in np.rint(np.asarray(blob, dtype=np.float64).reshape(-1)))


def infer_minus_one(target, size, fail):
    """Resolve a single -1 in ``target`` so the product equals ``size``; ``fail(msg)`` raises."""
    target = list(target)
    known = math.prod(d for d in target if d != -1)          # Python ints: exact, and no numpy call
    if target.count(-1) > 1:
        raise fail(f"more than one -1 in target shape {tuple(target)}")
    if -1 in target:
        if known == 0 or size % known:
            raise fail(f"cannot infer the -1 in target shape {tuple(target)} for {size} elements")
        target[target.index(-1)] = size // known
    elif known != size:
        raise fail(f"target shape {tuple(target)} holds {known} elements, the input has {size}")
    return tuple(target)


# ---------------------------------------------------------------- reshape / flatten / permute

@kernel("reshape")
class ClassicReshape(ShapeKernel):
    """targetShape [C,H,W] (Seq kept) or [Seq,C,H,W]; CHANNEL_LAST reads and writes in H,W,C order.

    Rank-5 blobs keep their Batch axis apart: each batch element is reshaped on its own. In
    exact-rank models the output has the rank of targetShape (as coremltools' builder records
    it); every axis before C counts as sequence there.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.target = tuple(int(d) for d in self.params.targetShape)
        if len(self.target) not in (3, 4):
            raise self.bad_params(f"targetShape must have 3 or 4 entries, got {list(self.target)}")
        self.channel_last = self.params.mode == CHANNEL_LAST

    def compute(self, x):
        batched = self.ctx.rank5 and x.ndim == 5
        if batched:
            seq, batch = x.shape[0], x.shape[1]
            grouped = x.transpose(1, 0, 2, 3, 4)              # [B, Seq, C, H, W]
            keep_seq = len(self.target) == 3
        else:
            x = pad_rank(x, 3)
            seq, batch = int(np.prod(x.shape[:-3], dtype=np.int64)), 1
            grouped = x.reshape((1, seq) + x.shape[-3:])
            keep_seq = False
        chw = grouped.shape[2:]
        if keep_seq:
            out_seq, per_seq = seq, int(np.prod(chw))
            target = infer_minus_one(self.target, per_seq, self.bad_input)
        else:
            full = infer_minus_one(self.target, seq * int(np.prod(chw)), self.bad_input)
            out_seq, target = (full[0], full[1:]) if len(full) == 4 else (1, full)
        if self.channel_last:     # flatten in H,W,C order, fill H_out,W_out,C_out, move C_out first
            hwc = grouped.transpose(0, 1, 3, 4, 2).reshape(batch, out_seq, target[1], target[2], target[0])
            y = hwc.transpose(0, 1, 4, 2, 3)
        else:
            y = grouped.reshape((batch, out_seq) + target)
        if batched:
            return np.ascontiguousarray(y.transpose(1, 0, 2, 3, 4))
        y = np.ascontiguousarray(y)
        return y.reshape(((out_seq,) if len(self.target) == 4 else ()) + target)


@kernel("flatten")
class ClassicFlatten(ShapeKernel):
    """[..., C, H, W] -> [..., C*H*W, 1, 1]; CHANNEL_LAST orders the vector H,W,C."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.channel_last = self.params.mode == CHANNEL_LAST

    def compute(self, x):
        x = pad_rank(x, 3)
        lead = x.shape[:-3]
        if self.channel_last:
            x = np.moveaxis(x, -3, -1)
        return np.ascontiguousarray(x).reshape(lead + (-1, 1, 1))


_SEQ_CHW_TO_RANK5 = (0, 2, 3, 4)    # permute's axis indexes [Seq, C, H, W]; Batch (1) stays put


@kernel("permute")
class ClassicPermute(ShapeKernel):
    """Permute [Seq, C, H, W] of a [Seq, Batch, C, H, W] blob, Batch untouched.

    Blobs of lower rank are seen with unit leading axes (the proto addresses Batch as axis -4);
    those unit axes are dropped again from wherever the permutation puts them.
    """

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        axis = [int(a) for a in self.params.axis] or [0, 1, 2, 3]
        if sorted(axis) != [0, 1, 2, 3]:
            raise self.bad_params(f"axis must be a permutation of [0, 1, 2, 3], got {axis}")
        m = _SEQ_CHW_TO_RANK5
        self.order5 = (m[axis[0]], 1, m[axis[1]], m[axis[2]], m[axis[3]])
        self.identity = axis == [0, 1, 2, 3]

    def compute(self, x):
        if self.identity:
            return x
        padded = 5 - x.ndim if x.ndim < 5 else 0
        x5 = pad_rank(x, 5)
        lead = x5.ndim - 5
        order = tuple(range(lead)) + tuple(lead + a for a in self.order5)
        y = np.ascontiguousarray(x5.transpose(order))
        if padded:
            y = y.reshape(tuple(d for d, src in zip(y.shape, order) if src >= padded))
        return y


# ---------------------------------------------------------------- concat / split / slice

@kernel("concat")
class ClassicConcat(ShapeKernel):
    """Join along C (axis -3), or along Seq (axis -5) when sequenceConcat."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = -5 if self.params.sequenceConcat else -3

    def compute(self, *inputs):
        rank = max(-self.axis, max(x.ndim for x in inputs))
        try:
            return np.concatenate([pad_rank(x, rank) for x in inputs], axis=self.axis)
        except ValueError:
            shapes = ", ".join(str(x.shape) for x in inputs)
            raise self.bad_input(f"inputs {shapes} differ outside the concatenation axis "
                                 f"{self.axis}") from None


@kernel("split")
class ClassicSplit(ShapeKernel):
    """Cut C (axis -3) into as many equal parts as the layer has outputs."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.parts = len(layer.output)
        declared = int(self.params.nOutputs)
        if declared and declared != self.parts:
            raise self.bad_params(f"nOutputs is {declared} but the layer has {self.parts} outputs")

    def compute(self, x):
        x = pad_rank(x, 3)
        channels = x.shape[-3]
        if channels % self.parts:
            raise self.bad_input(f"{channels} channels cannot be split into {self.parts} equal parts")
        return np.split(x, self.parts, axis=-3)


_SLICE_AXIS = {0: -3, 1: -2, 2: -1}     # CHANNEL_AXIS, HEIGHT_AXIS, WIDTH_AXIS


@kernel("slice")
class ClassicSlice(ShapeKernel):
    """x[start:end:stride] on C, H or W; Python index rules (negative indices, clamping)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        axis = int(self.params.axis)
        if axis not in _SLICE_AXIS:
            raise self.bad_params(f"unknown slice axis {axis}")
        self.axis = _SLICE_AXIS[axis]
        stride = int(self.params.stride) or 1        # unset stride means 1
        self.index = (Ellipsis, slice(int(self.params.startIndex), int(self.params.endIndex), stride)) \
            + (slice(None),) * (-self.axis - 1)

    def compute(self, x):
        return pad_rank(x, -self.axis)[self.index]


# ---------------------------------------------------------------- sequences and constants

@kernel("sequenceRepeat")
class SequenceRepeat(ShapeKernel):
    """Repeat the whole blob nRepetitions times along Seq (axis -5); a blob of rank < 5 is first
    seen with unit leading axes, so its output is rank 5."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.times = int(self.params.nRepetitions) or 1

    def compute(self, x):
        x = pad_rank(x, 5)
        reps = (1,) * (x.ndim - 5) + (self.times, 1, 1, 1, 1)
        self.check_shape(tuple(d * r for d, r in zip(x.shape, reps)))
        return np.tile(x, reps)


@kernel("loadConstant")
class LoadConstant(ShapeKernel):
    """A constant [C, H, W] handed out as the rank-5 blob [1, 1, C, H, W] (the proto's output rank)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        shape = tuple(int(d) for d in self.params.shape)
        if not 1 <= len(shape) <= 5:
            raise self.bad_params(f"shape must have 3 entries [C, H, W], got {list(shape)}")
        self.check_shape(shape, "constant")
        count = int(np.prod(shape, dtype=np.int64))
        data = self.weights(self.params.data, "data", count)
        self.value = data.reshape((1,) * (5 - len(shape)) + shape)
        self.value.flags.writeable = False

    def compute(self):
        return self.value


# ---------------------------------------------------------------- N-D: permutations and unit axes

@kernel("transpose")
class Transpose(ShapeKernel):
    """Output axis i is input axis axes[i]."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axes = tuple(int(a) for a in self.params.axes)
        if sorted(self.axes) != list(range(len(self.axes))):
            raise self.bad_params(f"axes {list(self.axes)} is not a permutation of 0..{len(self.axes) - 1}")

    def output_shapes(self, shapes):
        s = shapes[0]
        return None if s is None or len(s) != len(self.axes) else [tuple(s[a] for a in self.axes)]

    def compute(self, x):
        if len(self.axes) != x.ndim:
            raise self.bad_input(f"axes {list(self.axes)} does not match input rank {x.ndim}")
        return np.ascontiguousarray(x.transpose(self.axes))


@kernel("squeeze")
class Squeeze(ShapeKernel):
    """Drop the listed unit axes (or all of them); a tensor never drops below rank 1."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.all = bool(self.params.squeezeAll) or not len(self.params.axes)
        self.axes = tuple(int(a) for a in self.params.axes)

    def compute(self, x):
        if self.all:
            shape = tuple(d for d in x.shape if d != 1)
        else:
            drop = {a % x.ndim for a in self.axes if -x.ndim <= a < x.ndim}
            if len(drop) != len(self.axes) or any(x.shape[a] != 1 for a in drop):
                raise self.bad_input(f"cannot squeeze axes {list(self.axes)} of shape {x.shape}")
            shape = tuple(d for i, d in enumerate(x.shape) if i not in drop)
        return x.reshape(shape or (1,))


@kernel("expandDims")
class ExpandDims(ShapeKernel):
    """Insert unit axes; the axes index the output (negative ones from its end)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axes = tuple(int(a) for a in self.params.axes)

    def compute(self, x):
        rank = x.ndim + len(self.axes)
        new = {a % rank for a in self.axes if -rank <= a < rank}
        if len(new) != len(self.axes):
            raise self.bad_input(f"axes {list(self.axes)} are out of range or repeated for output rank {rank}")
        dims = iter(x.shape)
        return x.reshape(tuple(1 if i in new else next(dims) for i in range(rank)))


# ---------------------------------------------------------------- N-D: reshapes

@kernel("reshapeStatic")
class ReshapeStatic(ShapeKernel):
    """Row-major reshape to targetShape (one -1 may be inferred)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.target = tuple(int(d) for d in self.params.targetShape) or (1,)

    def compute(self, x):
        return x.reshape(infer_minus_one(self.target, x.size, self.bad_input))


@kernel("reshapeLike")
class ReshapeLike(ShapeKernel):
    """Row-major reshape to the shape of the second input (its values are ignored)."""

    def compute(self, x, like):
        return x.reshape(infer_minus_one(like.shape, x.size, self.bad_input))


@kernel("reshapeDynamic")
class ReshapeDynamic(ShapeKernel):
    """Row-major reshape to the shape held in the second input (one -1 may be inferred)."""

    def compute(self, x, shape):
        return x.reshape(infer_minus_one(as_ints(shape), x.size, self.bad_input))


@kernel("rankPreservingReshape")
class RankPreservingReshape(ShapeKernel):
    """Reshape to the same rank: 0 copies the input's dimension, one -1 is inferred."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.target = tuple(int(d) for d in self.params.targetShape)

    def compute(self, x):
        if len(self.target) != x.ndim:
            raise self.bad_input(f"targetShape {list(self.target)} does not have the input rank {x.ndim}")
        target = tuple(x.shape[i] if d == 0 else d for i, d in enumerate(self.target))
        return x.reshape(infer_minus_one(target, x.size, self.bad_input))


@kernel("flattenTo2D")
class FlattenTo2D(ShapeKernel):
    """[prod(shape[:axis]), prod(shape[axis:])]; axis may equal the rank, or be negative."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.axis = int(self.params.axis)

    def compute(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        if not 0 <= axis <= x.ndim:
            raise self.bad_input(f"axis {self.axis} is out of range for rank {x.ndim}")
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        return x.reshape(rows, x.size // rows if rows else 0)


# ---------------------------------------------------------------- N-D: constants and shapes

@kernel("loadConstantND")
class LoadConstantND(ShapeKernel):
    """A constant of any rank, decoded and shaped once at load."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        shape = self.check_shape(tuple(int(d) for d in self.params.shape) or (1,), "constant")
        count = int(np.prod(shape, dtype=np.int64))
        self.value = self.weights(self.params.data, "data", count).reshape(shape)
        self.value.flags.writeable = False

    def compute(self):
        return self.value


@kernel("getShape")
class GetShape(ShapeKernel):
    """The input's shape as a rank-1 float tensor."""

    def compute(self, x):
        return np.asarray(x.shape, dtype=np.float32)
