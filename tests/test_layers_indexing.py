"""Indexing kernels (gather/scatter families, masks, windows, embeddingND, NMS) against torch or the proto.

Every model is built with NeuralNetworkBuilder (exact-rank mapping: these are spec-4+ layers) and run
through wb.load(...).predict, the real path. References are torch ops, or literal loops written from
NeuralNetwork.proto's comments where torch has no equivalent.
"""
import itertools

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.runtime.layers.indexing  # noqa: F401  (registers the kernels before the lead lists it)
from support import exact_rank_builder as builder_for, predict_builder as predict, assert_close as close  # noqa: E402

RNG = np.random.default_rng(1234)
MODES = ["UPDATE", "ADD", "SUB", "MUL", "DIV", "MAX", "MIN"]


def run_one(builder, inputs):
    return predict(builder, inputs)["output"]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ gather family

@pytest.mark.parametrize("data_shape,indices_shape", [((5,), (3,)), ((4, 3), (2, 3)), ((3, 4, 5), (6,)),
                                                      ((2, 3, 4, 5), (2, 2))])
def test_gather_every_axis_with_negative_indices(data_shape, indices_shape):
    rank = len(data_shape)
    for axis in range(-rank, rank):
        dim = data_shape[axis]
        data = rand(*data_shape)
        indices = RNG.integers(-dim, dim, size=indices_shape)
        b = builder_for({"data": data_shape, "indices": indices_shape})
        b.add_gather("gather", ["data", "indices"], "output", axis=axis)
        pos = axis % rank
        flat = torch.from_numpy(indices.ravel() % dim)
        expected = torch.from_numpy(data).index_select(pos, flat).reshape(
            data_shape[:pos] + indices_shape + data_shape[pos + 1:])
        close(run_one(b, {"data": data, "indices": indices}), expected.numpy())


@pytest.mark.parametrize("data_shape,indices_shape", [((4, 2, 3, 4), (6, 2)), ((3, 3, 3, 4, 2), (3, 5)),
                                                      ((5, 3, 2, 5), (2, 7, 3, 2)), ((6,), (4, 1))])
def test_gather_nd_matches_torch_advanced_indexing(data_shape, indices_shape):
    depth = indices_shape[-1]
    data = rand(*data_shape)
    indices = np.stack([RNG.integers(-n, n, size=indices_shape[:-1]) for n in data_shape[:depth]], axis=-1)
    b = builder_for({"data": data_shape, "indices": indices_shape})
    b.add_gather_nd("gather_nd", ["data", "indices"], "output")
    coords = torch.from_numpy(indices % np.array(data_shape[:depth])).unbind(-1)
    close(run_one(b, {"data": data, "indices": indices}), torch.from_numpy(data)[coords].numpy())


@pytest.mark.parametrize("shape", [(6,), (4, 5), (3, 4, 5), (2, 3, 4, 3)])
def test_gather_along_axis_matches_torch_gather(shape):
    rank = len(shape)
    for axis in range(-rank, rank):
        idx_shape = list(shape)
        idx_shape[axis] = 3
        data = rand(*shape)
        indices = RNG.integers(-shape[axis], shape[axis], size=idx_shape)
        b = builder_for({"data": shape, "indices": idx_shape})
        b.add_gather_along_axis("gather_along_axis", ["data", "indices"], "output", axis=axis)
        expected = torch.gather(torch.from_numpy(data), axis % rank, torch.from_numpy(indices % shape[axis]))
        close(run_one(b, {"data": data, "indices": indices}), expected.numpy())


def test_gather_index_out_of_range_names_the_layer():
    b = builder_for({"data": (4, 3), "indices": (2,)})
    b.add_gather("my_gather", ["data", "indices"], "output", axis=0)
    with pytest.raises(wb.WorkbenchError, match="my_gather"):
        run_one(b, {"data": rand(4, 3), "indices": np.array([1, 4])})


# ------------------------------------------------------------------ scatter family

def apply_mode(mode, current, update):
    """One step of the proto's 'output[...] op= updates[...]', per ScatterMode."""
    return {"UPDATE": lambda: update, "ADD": lambda: current + update, "SUB": lambda: current - update,
            "MUL": lambda: current * update, "DIV": lambda: current / update,
            "MAX": lambda: np.maximum(current, update), "MIN": lambda: np.minimum(current, update)}[mode]()


def scatter_updates(mode, shape):
    """Updates away from 0 (DIV) and from 1 (so MUL/DIV changes are visible)."""
    u = RNG.uniform(0.5, 2.0, size=shape) * RNG.choice([-1, 1], size=shape)
    return u.astype(np.float32)


def scatter_indices(mode, dim, shape):
    """UPDATE gets distinct indices (duplicate writes have no defined winner); others repeat on purpose."""
    count = int(np.prod(shape))
    if mode == "UPDATE":
        picks = RNG.permutation(dim)[:count]
        assert picks.size == count
    else:
        picks = RNG.integers(0, dim, size=count)
    picks = np.where(RNG.random(count) < 0.5, picks - dim, picks)    # negative indexing
    return picks.reshape(shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("container_shape,indices_shape,axis", [
    ((6, 3), (4,), 0), ((4, 7), (2, 2), 1), ((4, 6, 3), (5,), -2), ((9,), (2, 3), -1), ((2, 3, 8), (2, 3), 2)])
def test_scatter_every_mode_matches_the_proto_loop(mode, container_shape, indices_shape, axis):
    rank = len(container_shape)
    pos = axis % rank
    updates_shape = container_shape[:pos] + indices_shape + container_shape[pos + 1:]
    container = rand(*container_shape)
    indices = scatter_indices(mode, container_shape[pos], indices_shape)
    updates = scatter_updates(mode, updates_shape)
    b = builder_for({"container": container_shape, "indices": indices_shape, "updates": updates_shape})
    b.add_scatter("scatter", ["container", "indices", "updates"], "output", axis=axis, mode=mode)

    expected = container.copy()
    lead = (slice(None),) * pos
    for j in np.ndindex(*indices_shape):
        target = lead + (indices[j] % container_shape[pos],)
        expected[target] = apply_mode(mode, expected[target], updates[lead + j])
    close(run_one(b, {"container": container, "indices": indices, "updates": updates}), expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("container_shape,indices_shape", [
    ((3, 2), (4, 2)), ((7, 6), (2, 3, 1)), ((4, 5, 3), (6, 2)), ((3, 4, 2), (2, 3))])
def test_scatter_nd_every_mode_matches_the_proto_loop(mode, container_shape, indices_shape):
    depth = indices_shape[-1]
    updates_shape = indices_shape[:-1] + container_shape[depth:]
    container = rand(*container_shape)
    points = int(np.prod(indices_shape[:-1]))
    if mode == "UPDATE":        # distinct multi-indices: duplicate writes have no defined winner
        flat = RNG.permutation(int(np.prod(container_shape[:depth])))[:points]
        indices = np.stack(np.unravel_index(flat, container_shape[:depth]), axis=-1)
    else:
        indices = np.stack([RNG.integers(0, n, size=points) for n in container_shape[:depth]], axis=-1)
    indices = indices.reshape(indices_shape)
    updates = scatter_updates(mode, updates_shape)
    b = builder_for({"container": container_shape, "indices": indices_shape, "updates": updates_shape})
    b.add_scatter_nd("scatter_nd", ["container", "indices", "updates"], "output", mode=mode)

    expected = container.copy()
    for j in np.ndindex(*indices_shape[:-1]):
        target = tuple(indices[j])
        expected[target] = apply_mode(mode, expected[target], updates[j])
    close(run_one(b, {"container": container, "indices": indices, "updates": updates}), expected)


def torch_scatter_along_axis(mode, container, axis, indices, updates):
    """torch.scatter / scatter_reduce (include_self) for each ScatterMode; SUB/DIV through sum/prod."""
    c, i, u = (torch.from_numpy(a) for a in (container, indices, updates))
    if mode == "UPDATE":
        return torch.scatter(c, axis, i, u).numpy()
    reduce, source = {"ADD": ("sum", u), "SUB": ("sum", -u), "MUL": ("prod", u), "DIV": ("prod", 1 / u),
                      "MAX": ("amax", u), "MIN": ("amin", u)}[mode]
    return torch.scatter_reduce(c, axis, i, source, reduce=reduce, include_self=True).numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 5, 6)])
def test_scatter_along_axis_every_mode_matches_torch(mode, shape):
    rank = len(shape)
    for axis in range(-rank, rank):
        idx_shape = list(shape)
        idx_shape[axis] = 2 if mode != "UPDATE" else min(3, shape[axis])
        container = rand(*shape)
        if mode == "UPDATE":    # distinct along the axis: duplicate writes have no defined winner
            keys = RNG.random(shape).argsort(axis=axis)
            indices = np.take(keys, np.arange(idx_shape[axis]), axis=axis)
        else:
            indices = RNG.integers(0, shape[axis], size=idx_shape)
        updates = scatter_updates(mode, idx_shape)
        b = builder_for({"container": shape, "indices": idx_shape, "updates": idx_shape})
        b.add_scatter_along_axis("sa", ["container", "indices", "updates"], "output", axis=axis, mode=mode)
        expected = torch_scatter_along_axis(mode, container, axis % rank, indices, updates)
        negative = indices - shape[axis]            # the same positions, negatively indexed
        close(run_one(b, {"container": container, "indices": negative, "updates": updates}), expected)


def test_gather_then_scatter_update_round_trips():
    """coremltools' own check: scatter(params, idx, gather(params, idx)) == params, on every axis."""
    shape = (3, 4, 5)
    for axis in range(-3, 3):
        b = builder_for({"params": shape, "indices": (2, 3)})
        b.add_gather("gather", ["params", "indices"], "updates", axis=axis)
        b.add_scatter("scatter", ["params", "indices", "updates"], "output", axis=axis, mode="UPDATE")
        params = rand(*shape)
        indices = RNG.integers(-shape[axis], shape[axis], size=(2, 3))
        close(run_one(b, {"params": params, "indices": indices}), params)


# ------------------------------------------------------------------ index generation and masks

@pytest.mark.parametrize("shape", [(7,), (4, 5), (3, 4, 2), (2, 3, 2, 3)])
def test_where_nonzero_matches_torch_nonzero(shape):
    x = rand(*shape) * (RNG.random(shape) < 0.4)
    b = builder_for({"data": shape})
    b.add_where_nonzero("nz", "data", "output")
    close(run_one(b, {"data": x}), torch.nonzero(torch.from_numpy(x)).numpy())


def test_where_nonzero_proto_example():
    x = np.array([[1, 2, 1], [0, 2, 2], [2, 1, 0]])
    b = builder_for({"data": (3, 3)})
    b.add_where_nonzero("nz", "data", "output")
    close(run_one(b, {"data": x}), [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 0], [2, 1]])


def one_hot_reference(indices, depth, axis, on, off):
    valid = (indices >= 0) & (indices < depth)
    hot = torch.nn.functional.one_hot(torch.from_numpy(np.where(valid, indices, 0)), depth).numpy()
    hot = hot * valid[..., None]
    out = np.where(hot == 1, on, off)
    return np.moveaxis(out, -1, axis % out.ndim)


@pytest.mark.parametrize("shape,axis", [((10,), -1), ((10,), 0), ((4, 6), 1), ((4, 6), -3), ((2, 3, 4), 2)])
@pytest.mark.parametrize("on,off", [(1.0, 0.0), (5.0, -1.0)])
def test_one_hot_axis_and_values(shape, axis, on, off):
    depth = 6
    indices = RNG.integers(-2, depth + 2, size=shape)        # out of range -> all offValue
    b = builder_for({"indices": shape})
    b.add_one_hot("oh", ["indices"], "output", one_hot_vector_size=depth, axis=axis, on_value=on, off_value=off)
    close(run_one(b, {"indices": indices}), one_hot_reference(indices, depth, axis, on, off))


def test_one_hot_depth_from_second_input_overrides_parameter():
    indices = np.array([2, 0, 4, -1])
    b = builder_for({"indices": (4,), "depth": (1,)})
    b.add_one_hot("oh", ["indices", "depth"], "output", one_hot_vector_size=3, axis=-1, on_value=5, off_value=-1)
    close(run_one(b, {"indices": indices, "depth": [5]}), one_hot_reference(indices, 5, -1, 5.0, -1.0))


@pytest.mark.parametrize("shape", [(5, 7), (2, 6, 4), (2, 2, 4, 4)])
@pytest.mark.parametrize("lower,upper", [(0, 0), (1, 2), (-1, 0), (0, -1), (2, -1), (-1, -1), (3, 1)])
def test_matrix_band_part_matches_tril_triu(shape, lower, upper):
    x = rand(*shape)
    b = builder_for({"data": shape})
    b.add_matrix_band_part("band", "data", "output", num_lower=lower, num_upper=upper)
    big = max(shape)
    expected = torch.triu(torch.tril(torch.from_numpy(x), upper if upper >= 0 else big),
                          -lower if lower >= 0 else -big)
    close(run_one(b, {"data": x}), expected.numpy())


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 4, 3), (2, 3, 3, 4)])
@pytest.mark.parametrize("k", [-2, -1, 0, 1, 3])
def test_lower_and_upper_triangular_match_torch(shape, k):
    x = rand(*shape)
    b = builder_for({"data": shape}, outputs=("lower", "upper"))
    b.add_lower_triangular("tril", "data", "lower", k=k)
    b.add_upper_triangular("triu", "data", "upper", k=k)
    out = predict(b, {"data": x})
    close(out["lower"], torch.tril(torch.from_numpy(x), k).numpy())
    close(out["upper"], torch.triu(torch.from_numpy(x), k).numpy())


# ------------------------------------------------------------------ sequences and windows

def reverse_seq_reference(data, lengths, batch_axis, seq_axis):
    """Proto: slice along batchAxis, flip the first lengths[b] entries along sequenceAxis."""
    out = torch.from_numpy(data.copy())
    for b, n in enumerate(lengths.astype(int)):
        index = [slice(None)] * data.ndim
        index[batch_axis], index[seq_axis] = b, slice(0, n)
        inner_seq = seq_axis - (seq_axis > batch_axis)
        out[tuple(index)] = torch.flip(out[tuple(index)], [inner_seq])
    return out.numpy()


def test_reverse_seq_proto_examples():
    b = builder_for({"data": (2, 4), "lengths": (2,)})
    b.add_reverse_sequence("rs", ["data", "lengths"], "output", batch_axis=0, seq_axis=1)
    close(run_one(b, {"data": np.arange(8).reshape(2, 4), "lengths": [3, 0]}), [[2, 1, 0, 3], [4, 5, 6, 7]])
    b = builder_for({"data": (2, 3, 2), "lengths": (2,)})
    b.add_reverse_sequence("rs", ["data", "lengths"], "output", batch_axis=0, seq_axis=1)
    close(run_one(b, {"data": np.arange(12).reshape(2, 3, 2), "lengths": [2, 3]}),
          [[[2, 3], [0, 1], [4, 5]], [[10, 11], [8, 9], [6, 7]]])


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3), (3, 2, 5, 2)])
def test_reverse_seq_every_axis_pair(shape):
    rank = len(shape)
    for batch_axis, seq_axis in itertools.permutations(range(rank), 2):
        pos_b, pos_s = batch_axis, seq_axis
        batch_axis -= rank * (batch_axis % 2)           # mix negative and positive axes
        data = rand(*shape)
        lengths = RNG.integers(0, shape[pos_s] + 1, size=shape[pos_b])
        b = builder_for({"data": shape, "lengths": (shape[pos_b],)})
        b.add_reverse_sequence("rs", ["data", "lengths"], "output", batch_axis=batch_axis, seq_axis=seq_axis)
        close(run_one(b, {"data": data, "lengths": lengths}), reverse_seq_reference(data, lengths, pos_b, pos_s))


@pytest.mark.parametrize("shape", [(9,), (4, 7), (3, 6, 2), (2, 3, 5, 4)])
def test_sliding_windows_match_torch_unfold(shape):
    rank = len(shape)
    for axis in range(-rank, rank):
        length = shape[axis]
        for size, step in {(1, 1), (2, 1), (length, 1), (2, 2), (max(1, length - 1), 3)}:
            x = rand(*shape)
            b = builder_for({"data": shape})
            b.add_sliding_windows("sw", "data", "output", axis=axis, window_size=size, step=step)
            pos = axis % rank
            expected = torch.from_numpy(x).unfold(pos, size, step).movedim(-1, pos + 1)
            close(run_one(b, {"data": x}), expected.numpy())


# ------------------------------------------------------------------ embeddingND

@pytest.mark.parametrize("input_shape", [(6, 1), (2, 3, 1), (2, 2, 3, 1), (1, 2, 2, 3, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_embedding_nd_matches_torch_embedding(input_shape, with_bias):
    vocab, size = 11, 5
    weights = rand(size, vocab)                 # stored [embeddingSize, vocabSize]
    bias = rand(size) if with_bias else None
    indices = RNG.integers(0, vocab, size=input_shape)
    b = builder_for({"indices": input_shape})
    b.add_embedding_nd("emb", "indices", "output", vocab_size=vocab, embedding_size=size, W=weights, b=bias)
    expected = torch.nn.functional.embedding(torch.from_numpy(indices[..., 0]), torch.from_numpy(weights.T))
    if with_bias:
        expected = expected + torch.from_numpy(bias)
    close(run_one(b, {"indices": indices}), expected.numpy())


def test_embedding_nd_linear_quantized_weights():
    vocab, size = 6, 4
    quantized = RNG.integers(0, 256, size=(size, vocab)).astype(np.uint8)
    scale, shift = np.float32(0.03), np.float32(-1.5)
    indices = RNG.integers(0, vocab, size=(5, 1))
    b = builder_for({"indices": (5, 1)})
    b.add_embedding_nd("emb", "indices", "output", vocab_size=vocab, embedding_size=size,
                       W=quantized.tobytes(), is_quantized_weight=True, quantization_type="linear", nbits=8,
                       quant_scale=np.array([scale]), quant_bias=np.array([shift]))
    table = (quantized.astype(np.float32) * scale + shift).T       # proto: w = scale * q + bias
    close(run_one(b, {"indices": indices}), table[indices[:, 0]])


def test_embedding_nd_index_outside_vocabulary_is_an_error():
    b = builder_for({"indices": (2, 1)})
    b.add_embedding_nd("emb", "indices", "output", vocab_size=3, embedding_size=2, W=rand(2, 3))
    with pytest.raises(wb.WorkbenchError, match="emb"):
        run_one(b, {"indices": [[1], [3]]})


# ------------------------------------------------------------------ NonMaximumSuppression

def greedy_nms(boxes, scores, iou_threshold, score_threshold, max_boxes, per_class):
    """Independent reference from the proto: one batch, boxes (N, 4) as (cx, cy, w, h)."""
    best, label = scores.max(axis=1), scores.argmax(axis=1)

    def iou(a, b):
        ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
        bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
        inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
        union = a[2] * a[3] + b[2] * b[3] - inter
        return inter / union if union > 0 else 0.0

    kept = []
    for n in sorted(range(len(best)), key=lambda n: (-best[n], n)):
        if best[n] < score_threshold or len(kept) == max_boxes:
            continue
        if all(iou(boxes[n], boxes[k]) <= iou_threshold for k in kept if not per_class or label[k] == label[n]):
            kept.append(n)
    if not kept:
        kept = [int(np.argmax(best))]
    return kept


def nms_reference(boxes, scores, iou_threshold, score_threshold, max_boxes, per_class):
    batch, _, classes = scores.shape
    out = [np.zeros((batch, max_boxes, 4)), np.zeros((batch, max_boxes, classes)),
           -np.ones((batch, max_boxes)), np.zeros(batch)]
    for b in range(batch):
        kept = greedy_nms(boxes[b], scores[b], iou_threshold, score_threshold, max_boxes, per_class)
        out[0][b, :len(kept)], out[1][b, :len(kept)] = boxes[b, kept], scores[b, kept]
        out[2][b, :len(kept)], out[3][b] = kept, len(kept)
    return out


NMS_OUTPUTS = ("boxes_out", "scores_out", "ids_out", "count_out")


def nms_data(batch, count, classes):
    centers = RNG.uniform(0, 1, size=(batch, count, 2))
    sizes = RNG.uniform(0.1, 0.5, size=(batch, count, 2))
    return (np.concatenate([centers, sizes], -1).astype(np.float32),
            RNG.uniform(0, 1, size=(batch, count, classes)).astype(np.float32))


@pytest.mark.parametrize("classes", [1, 4])
@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("iou_threshold,score_threshold,max_boxes", [
    (0.3, 0.0, 40), (0.5, 0.5, 6), (0.05, 0.2, 60), (1.0, 0.0, 25), (0.4, 2.0, 5)])
def test_nms_matches_greedy_reference(classes, per_class, iou_threshold, score_threshold, max_boxes):
    boxes, scores = nms_data(2, 30, classes)
    b = builder_for({"boxes": boxes.shape, "scores": scores.shape}, outputs=NMS_OUTPUTS)
    b.add_nms("nms", ["boxes", "scores"], list(NMS_OUTPUTS), iou_threshold=iou_threshold,
              score_threshold=score_threshold, max_boxes=max_boxes, per_class_suppression=per_class)
    out = predict(b, {"boxes": boxes, "scores": scores})
    for name, expected in zip(NMS_OUTPUTS, nms_reference(boxes, scores, iou_threshold, score_threshold,
                                                         max_boxes, per_class)):
        close(out[name], expected)


@pytest.mark.parametrize("per_class", [False, True])
def test_nms_thresholds_and_max_boxes_from_inputs_override_parameters(per_class):
    boxes, scores = nms_data(1, 25, 3)
    names = ["boxes", "scores", "iou", "score", "max_boxes"]
    b = builder_for({"boxes": boxes.shape, "scores": scores.shape, "iou": (1,), "score": (1,), "max_boxes": (1,)},
                    outputs=NMS_OUTPUTS)
    b.add_nms("nms", names, list(NMS_OUTPUTS), iou_threshold=0.9, score_threshold=0.9, max_boxes=2,
              per_class_suppression=per_class)
    out = predict(b, {"boxes": boxes, "scores": scores, "iou": [0.2], "score": [0.3], "max_boxes": [7]})
    for name, expected in zip(NMS_OUTPUTS, nms_reference(boxes, scores, 0.2, 0.3, 7, per_class)):
        close(out[name], expected)


def test_nms_hand_made_overlaps():
    """Box 1 overlaps box 0 (IoU 0.6) and is suppressed; box 2 is apart; box 3 scores below the threshold."""
    boxes = np.array([[[0, 0, 2, 2], [0.5, 0, 2, 2], [5, 5, 1, 1], [9, 9, 1, 1]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.1]]], np.float32)
    b = builder_for({"boxes": boxes.shape, "scores": scores.shape}, outputs=NMS_OUTPUTS)
    b.add_nms("nms", ["boxes", "scores"], list(NMS_OUTPUTS), iou_threshold=0.5, score_threshold=0.2, max_boxes=4)
    out = predict(b, {"boxes": boxes, "scores": scores})
    close(out["ids_out"], [[0, 2, -1, -1]])
    close(out["count_out"], [2])
    close(out["boxes_out"], [[boxes[0, 0], boxes[0, 2], [0, 0, 0, 0], [0, 0, 0, 0]]])
    close(out["scores_out"], [[[0.9], [0.7], [0], [0]]])
