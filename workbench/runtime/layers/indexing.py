"""Indexing kernels: gather/scatter families, index generation, masks, windows, embedding lookup, NMS.

Core ML carries indices as float32 blobs; they are truncated to integers (a C cast) and, where the
proto says negative indexing is supported, wrapped once by the axis length. An index still out of
range after that is an error naming the layer: Core ML's behaviour there is undefined, and a
debugging runtime should say so rather than read a neighbouring row.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, kernel

# ScatterMode (NeuralNetwork.proto): UPDATE (0) assigns; the others combine with these ufuncs.
_SCATTER_UFUNCS = {1: np.add, 2: np.subtract, 3: np.multiply, 4: np.divide, 5: np.maximum, 6: np.minimum}


class _IndexingKernel(Kernel):
    """Shared index and axis checks, raising errors that name the model and layer."""

    def fail(self, message):
        return LayerError(self.ctx.model_name, self.name, f"{self.kind}: {message}")

    def axis(self, axis, rank):
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for a rank-{rank} input")
        return axis % rank

    def indices(self, values, size, wrap=True):
        """Float index blob -> int64, negative ones wrapped when ``wrap``; ``size`` may broadcast."""
        idx = np.asarray(values).astype(np.int64)
        if wrap:
            idx = np.where(idx < 0, idx + size, idx)
        bad = (idx < 0) | (idx >= size)
        if np.any(bad):
            raise self.fail(f"index {int(np.asarray(values)[bad].flat[0])} is out of range for a "
                            f"dimension of size {int(np.broadcast_to(size, bad.shape)[bad].flat[0])}")
        return idx

    def scatter_into(self, out, coords, values):
        """out[coords] op= values, element by element, with the layer's ScatterMode.

        ``coords`` addresses every axis of ``out`` (broadcastable int arrays). Repeated indices
        accumulate in order, as the proto's loop does; UPDATE keeps the last write. Working on
        flat element indices puts ufunc.at on numpy's fast 1-D path.
        """
        mode = int(self.params.mode)
        if mode != 0 and mode not in _SCATTER_UFUNCS:
            raise ModelFormatError(f"{self.ctx.model_name}: layer '{self.name}': unknown ScatterMode {mode}")
        flat = np.ravel_multi_index(np.broadcast_arrays(*coords), out.shape).ravel()
        values = np.ravel(values)        # same C order as the broadcast coords
        if mode == 0:
            out.reshape(-1)[flat] = values
        else:
            _SCATTER_UFUNCS[mode].at(out.reshape(-1), flat, values)

    def check_updates(self, updates, shape):
        if updates.shape != tuple(shape):
            raise self.fail(f"updates have shape {updates.shape}, expected {tuple(shape)}")


@kernel("gather")
class Gather(_IndexingKernel):
    """numpy.take along ``axis``: output.rank = data.rank - 1 + indices.rank."""

    def compute(self, data, indices):
        axis = self.axis(int(self.params.axis), data.ndim)
        self.check_shape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])
        return np.take(data, self.indices(indices, data.shape[axis]), axis=axis)


@kernel("gatherND")
class GatherND(_IndexingKernel):
    """The last axis of ``indices`` is a multi-index into the leading dimensions of ``params``."""

    def compute(self, data, indices):
        depth = indices.shape[-1]
        if depth > data.ndim:
            raise self.fail(f"multi-indices of length {depth} for a rank-{data.ndim} input")
        self.check_shape(indices.shape[:-1] + data.shape[depth:])
        idx = self.indices(indices, np.array(data.shape[:depth]))
        return data[tuple(np.moveaxis(idx, -1, 0))]


@kernel("gatherAlongAxis")
class GatherAlongAxis(_IndexingKernel):
    """numpy.take_along_axis: output has the shape of ``indices``."""

    def compute(self, data, indices):
        axis = self.axis(int(self.params.axis), data.ndim)
        return np.take_along_axis(data, self.indices(indices, data.shape[axis]), axis=axis)


@kernel("scatter")
class Scatter(_IndexingKernel):
    """Inverse of gather: container slices at ``indices`` along ``axis`` combined with ``updates``."""

    def compute(self, container, indices, updates):
        out = np.array(container, dtype=np.float32)
        axis = self.axis(int(self.params.axis), out.ndim)
        size = out.shape[axis]
        idx = self.indices(indices, size).ravel()
        lead, trail = np.prod(out.shape[:axis], dtype=int), np.prod(out.shape[axis + 1:], dtype=int)
        self.check_updates(updates, out.shape[:axis] + indices.shape + out.shape[axis + 1:])
        # As (lead, axis, trail) blocks, updates (lead, n, trail) go to rows idx of the middle axis.
        coords = (np.arange(lead)[:, None, None], idx[None, :, None], np.arange(trail)[None, None, :])
        self.scatter_into(out.reshape(lead, size, trail), coords, updates)
        return out


@kernel("scatterND")
class ScatterND(_IndexingKernel):
    """Inverse of gatherND: updates has shape indices.shape[:-1] + container.shape[K:]."""

    def compute(self, container, indices, updates):
        out = np.array(container, dtype=np.float32)
        depth = indices.shape[-1]
        if depth > out.ndim:
            raise self.fail(f"multi-indices of length {depth} for a rank-{out.ndim} container")
        idx = self.indices(indices, np.array(out.shape[:depth]))
        self.check_updates(updates, indices.shape[:-1] + out.shape[depth:])
        rows = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), out.shape[:depth]).ravel()
        trail = np.prod(out.shape[depth:], dtype=int)
        self.scatter_into(out.reshape(-1, trail), (rows[:, None], np.arange(trail)[None, :]), updates)
        return out


@kernel("scatterAlongAxis")
class ScatterAlongAxis(_IndexingKernel):
    """numpy.put_along_axis with a ScatterMode: indices and updates share one shape."""

    def compute(self, container, indices, updates):
        out = np.array(container, dtype=np.float32)
        axis = self.axis(int(self.params.axis), out.ndim)
        self.check_updates(updates, indices.shape)
        where = list(np.indices(indices.shape, sparse=True))
        where[axis] = self.indices(indices, out.shape[axis])
        if any(i.shape[d] > n for d, (i, n) in enumerate(zip(where, out.shape)) if d != axis):
            raise self.fail(f"indices of shape {indices.shape} do not fit a container of shape {out.shape}")
        self.scatter_into(out, where, updates)
        return out


@kernel("whereNonZero")
class WhereNonZero(Kernel):
    """Multi-indices of the non-zero elements, shape (N, rank), in row-major order."""

    def compute(self, x):
        return np.argwhere(x).astype(np.float32).reshape(-1, x.ndim)


@kernel("oneHot")
class OneHot(_IndexingKernel):
    """One-hot vectors inserted at output ``axis``; indices outside [0, depth) give all offValue."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.size = int(self.params.oneHotVectorSize)
        if len(layer.input) < 2 and self.size <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (oneHot): oneHotVectorSize "
                                   f"must be positive when no second input gives it")
        self.on, self.off = np.float32(self.params.onValue), np.float32(self.params.offValue)

    def compute(self, indices, depth=None):
        size = self.size if depth is None else int(np.asarray(depth).ravel()[0])
        self.check_shape(indices.shape + (size,))
        hot = indices.astype(np.int64)[..., None] == np.arange(size)
        out = np.where(hot, self.on, self.off)
        return np.moveaxis(out, -1, self.axis(int(self.params.axis), out.ndim))


@kernel("matrixBandPart")
class MatrixBandPart(Kernel):
    """Keep a band of the inner-most matrices; a negative numLower/numUpper keeps that whole side."""

    def compute(self, x):
        lower, upper = int(self.params.numLower), int(self.params.numUpper)
        rows = np.arange(x.shape[-2])[:, None]
        cols = np.arange(x.shape[-1])[None, :]
        band = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
        return np.where(band, x, np.float32(0))


@kernel("lowerTriangular")
class LowerTriangular(Kernel):
    """Zero the elements above diagonal ``k`` of each inner-most matrix."""

    def compute(self, x):
        return np.tril(x, int(self.params.k))


@kernel("upperTriangular")
class UpperTriangular(Kernel):
    """Zero the elements below diagonal ``k`` of each inner-most matrix."""

    def compute(self, x):
        return np.triu(x, int(self.params.k))


@kernel("reverseSeq")
class ReverseSeq(_IndexingKernel):
    """Reverse the first lengths[b] elements along sequenceAxis, for each b along batchAxis."""

    def compute(self, data, lengths):
        batch_axis = self.axis(int(self.params.batchAxis), data.ndim)
        seq_axis = self.axis(int(self.params.sequenceAxis), data.ndim)
        if batch_axis == seq_axis:
            raise self.fail("batchAxis and sequenceAxis must differ")
        batch, length = data.shape[batch_axis], data.shape[seq_axis]
        lengths = np.clip(lengths.astype(np.int64).ravel(), 0, length)
        if lengths.size != batch:
            raise self.fail(f"{lengths.size} sequence lengths for a batch of {batch}")
        pos = np.arange(length)[None, :]
        source = np.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)   # (batch, length)
        if batch_axis > seq_axis:
            source = source.T
        shape = [1] * data.ndim
        shape[batch_axis], shape[seq_axis] = batch, length
        source = np.broadcast_to(source.reshape(shape), data.shape)
        return np.take_along_axis(data, source, axis=seq_axis)


@kernel("slidingWindows")
class SlidingWindows(_IndexingKernel):
    """Windows of windowSize every step along axis: that axis becomes (M, windowSize)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.size, self.step = int(self.params.windowSize), int(self.params.step)
        if self.size <= 0 or self.step <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (slidingWindows): windowSize "
                                   f"and step must be positive (got {self.size}, {self.step})")

    def compute(self, x):
        axis = self.axis(int(self.params.axis), x.ndim)
        if x.shape[axis] < self.size:
            raise self.fail(f"window of {self.size} is longer than the axis ({x.shape[axis]})")
        windows = np.lib.stride_tricks.sliding_window_view(x, self.size, axis=axis)
        windows = windows[(slice(None),) * axis + (slice(None, None, self.step),)]
        return np.ascontiguousarray(np.moveaxis(windows, -1, axis + 1))


@kernel("embeddingND")
class EmbeddingND(_IndexingKernel):
    """Row lookup: input (..., 1) of indices in [0, vocabSize) -> (..., embeddingSize)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        vocab, size = int(self.params.vocabSize), int(self.params.embeddingSize)
        # Stored [embeddingSize, vocabSize]; transposed once so a lookup is a contiguous row.
        weights = self.weights(self.params.weights, "weights", vocab * size).reshape(size, vocab)
        self.table = np.ascontiguousarray(weights.T)
        if self.params.hasBias:
            self.table = self.table + self.weights(self.params.bias, "bias", size)
        self.table.setflags(write=False)

    def compute(self, x):
        if x.ndim < 1 or x.shape[-1] != 1:
            raise self.fail(f"the input's last dimension must be 1, got shape {x.shape}")
        return self.table[self.indices(x[..., 0], self.table.shape[0], wrap=False)]


@kernel("NonMaximumSuppression")
class NonMaximumSuppression(Kernel):
    """Greedy NMS per batch on center-size boxes (x, y, width, height).

    A box is a candidate when its best class score is >= scoreThreshold; a candidate is suppressed
    when its IoU with an already selected box is > iouThreshold (same class only, with
    perClassSuppression). Selection stops at maxBoxes. Outputs are padded with 0 (boxes, scores)
    and -1 (indices); when nothing survives, the single best-scoring box is returned.
    Optional inputs 3-5 override iouThreshold, scoreThreshold and maxBoxes.
    """

    def compute(self, boxes, scores, iou_threshold=None, score_threshold=None, max_boxes=None):
        p = self.params
        iou_threshold = p.iouThreshold if iou_threshold is None else float(iou_threshold.ravel()[0])
        score_threshold = p.scoreThreshold if score_threshold is None else float(score_threshold.ravel()[0])
        limit = int(p.maxBoxes if max_boxes is None else max_boxes.ravel()[0])
        batch, classes = scores.shape[0], scores.shape[-1]
        out_boxes = np.zeros((batch, limit, 4), np.float32)
        out_scores = np.zeros((batch, limit, classes), np.float32)
        out_ids = np.full((batch, limit), -1, np.float32)
        counts = np.zeros(batch, np.float32)
        for b in range(batch):
            ids = self._select(boxes[b], scores[b], iou_threshold, score_threshold, limit)
            out_boxes[b, :len(ids)] = boxes[b, ids]
            out_scores[b, :len(ids)] = scores[b, ids]
            out_ids[b, :len(ids)] = ids
            counts[b] = len(ids)
        return [out_boxes, out_scores, out_ids, counts]

    def _select(self, boxes, scores, iou_threshold, score_threshold, limit):
        best = scores.max(axis=-1)
        label = scores.argmax(axis=-1)
        order = np.argsort(-best, kind="stable")
        candidates = order[best[order] >= score_threshold]
        if candidates.size == 0:
            return order[:min(1, limit)]
        corners = _corners(boxes[candidates])
        area = np.maximum(corners[:, 2] - corners[:, 0], 0) * np.maximum(corners[:, 3] - corners[:, 1], 0)
        alive = np.ones(candidates.size, bool)
        selected = []
        i = 0
        while len(selected) < limit:
            selected.append(i)
            rest = slice(i + 1, None)
            overlap = _iou(corners[i], area[i], corners[rest], area[rest]) > iou_threshold
            if self.params.perClassSuppression:
                overlap &= label[candidates[rest]] == label[candidates[i]]
            alive[rest] &= ~overlap
            following = np.flatnonzero(alive[rest])
            if following.size == 0:
                break
            i = i + 1 + following[0]
        return candidates[selected]


def _corners(boxes):
    """(x_center, y_center, width, height) -> (x_min, y_min, x_max, y_max), in float64."""
    center, half = boxes[:, :2].astype(np.float64), boxes[:, 2:].astype(np.float64) / 2
    return np.concatenate([center - half, center + half], axis=1)


def _iou(box, area, others, other_areas):
    width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    union = area + other_areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
