"""N-D kernels of workbench/runtime/layers/layout.py: concat/split/stack, slices, tile, reverse,
fills and broadcasts.

Models are built with NeuralNetworkBuilder (exact rank: these are spec-4+ layers) and run through
wb.load(...).predict. References are torch ops, or index arithmetic written from the proto's
comments (strided slices with masks: torch has no negative steps, and numpy slicing is what the
kernel uses, so the reference computes each axis's index list by hand).
"""
import itertools

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.runtime.layers.layout  # noqa: F401  (registers the kernels before the lead lists the module)
from support import exact_rank_builder as builder_for, predict_builder as predict, assert_close as close  # noqa: E402

RNG = np.random.default_rng(11)


def run_one(builder, inputs):
    return predict(builder, inputs)["output"]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ================================================================== concatND / splitND / stack

@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_concat_nd_every_axis(rank):
    base = [2, 3, 4, 5][:rank]
    for axis in range(-rank, rank):
        shapes = [list(base), list(base), list(base)]
        for i, s in enumerate(shapes):
            s[axis] += i                                    # inputs differ along the axis only
        names = {f"x{i}": tuple(s) for i, s in enumerate(shapes)}
        b = builder_for(names)
        b.add_concat_nd("concat", list(names), "output", axis=axis)
        xs = {n: rand(*s) for n, s in names.items()}
        close(run_one(b, xs), torch.cat([t(v) for v in xs.values()], dim=axis).numpy())


def test_concat_nd_interleave_proto_example():
    b = builder_for({"a": (3, 2), "b": (3, 2)})
    b.add_concat_nd("concat", ["a", "b"], "output", axis=0, interleave=True)
    a = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    c = np.array([[7, 8], [9, 10], [11, 12]], np.float32)
    close(run_one(b, {"a": a, "b": c}), [[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]])


@pytest.mark.parametrize("axis", [-3, -2, -1, 0, 1, 2])
@pytest.mark.parametrize("count", [2, 3])
def test_concat_nd_interleave(axis, count):
    """output[k::n] along the axis is input k (the proto's definition)."""
    names = {f"x{i}": (2, 3, 4) for i in range(count)}
    b = builder_for(names)
    b.add_concat_nd("concat", list(names), "output", axis=axis, interleave=True)
    xs = [rand(2, 3, 4) for _ in range(count)]
    out_shape = list(xs[0].shape)
    out_shape[axis] *= count
    expected = torch.zeros(out_shape)
    for k, x in enumerate(xs):
        index = [slice(None)] * 3
        index[axis] = slice(k, None, count)
        expected[tuple(index)] = t(x)
    close(run_one(b, dict(zip(names, xs))), expected.numpy())


def test_concat_nd_mismatched_shapes_name_the_layer():
    b = builder_for({"a": (2, 3), "b": (3, 4)})
    b.add_concat_nd("bad_concat", ["a", "b"], "output", axis=0)
    with pytest.raises(wb.WorkbenchError, match="bad_concat"):
        run_one(b, {"a": rand(2, 3), "b": rand(3, 4)})


@pytest.mark.parametrize("axis", [-3, -2, -1, 0, 1, 2])
@pytest.mark.parametrize("parts", [2, 3])
def test_split_nd_equal_parts(axis, parts):
    shape = [6, 6, 6]
    outs = [f"y{i}" for i in range(parts)]
    b = builder_for({"x": tuple(shape)}, outputs=outs)
    b.add_split_nd("split", "x", outs, axis=axis, num_splits=parts)
    x = rand(*shape)
    got = predict(b, {"x": x})
    for name, ref in zip(outs, torch.chunk(t(x), parts, dim=axis)):
        close(got[name], ref.numpy())


@pytest.mark.parametrize("axis,sizes", [(-3, [3, 2]), (0, [1, 4]), (1, [1, 1, 1]), (-1, [2, 1, 1]), (2, [4])])
def test_split_nd_sizes(axis, sizes):
    shape = (5, 3, 4)
    outs = [f"y{i}" for i in range(len(sizes))]
    b = builder_for({"x": shape}, outputs=outs)
    b.add_split_nd("split", "x", outs, axis=axis, split_sizes=sizes)
    x = rand(*shape)
    got = predict(b, {"x": x})
    for name, ref in zip(outs, torch.split(t(x), sizes, dim=axis)):
        close(got[name], ref.numpy())


def test_split_nd_sizes_not_adding_up_name_the_layer():
    b = builder_for({"x": (5, 3)}, outputs=["y0", "y1"])
    b.add_split_nd("bad_split", "x", ["y0", "y1"], axis=0, split_sizes=[2, 2])
    with pytest.raises(wb.WorkbenchError, match="bad_split"):
        predict(b, {"x": rand(5, 3)})


@pytest.mark.parametrize("shape", [(3,), (2, 4), (2, 4, 2)])
@pytest.mark.parametrize("count", [2, 5])
def test_stack_every_axis(shape, count):
    rank = len(shape)
    for axis in range(-rank - 1, rank + 1):
        names = {f"x{i}": shape for i in range(count)}
        b = builder_for(names)
        b.add_stack("stack", list(names), "output", axis=axis)
        xs = [rand(*shape) for _ in range(count)]
        close(run_one(b, dict(zip(names, xs))), torch.stack([t(x) for x in xs], dim=axis).numpy())


# ================================================================== strided slices

def axis_indices(n, begin, end, stride, begin_mask, end_mask):
    """Indices a strided slice takes from an axis of length n, written out from the rules:
    negative ids count from the end, ids clamp to the axis, a mask means "from/to the edge"
    in the stride's direction, end is exclusive."""
    if stride > 0:
        lo, hi = 0, n
        start = lo if begin_mask else min(max(begin + n if begin < 0 else begin, lo), hi)
        stop = hi if end_mask else min(max(end + n if end < 0 else end, lo), hi)
        out, i = [], start
        while i < stop:
            out.append(i)
            i += stride
    else:
        lo, hi = -1, n - 1
        start = hi if begin_mask else min(max(begin + n if begin < 0 else begin, lo), hi)
        stop = lo if end_mask else min(max(end + n if end < 0 else end, lo), hi)
        out, i = [], start
        while i > stop:
            out.append(i)
            i += stride
    return out


def slice_reference(x, begin, end, strides, begin_masks, end_masks, squeeze_masks):
    lists = []
    for i, n in enumerate(x.shape):
        if squeeze_masks[i]:
            lists.append([begin[i] % n])                   # pure index at begin
        else:
            lists.append(axis_indices(n, begin[i], end[i], strides[i], begin_masks[i], end_masks[i]))
    y = x[np.ix_(*lists)] if all(lists) else np.zeros([len(v) for v in lists], x.dtype)
    kept = [n for n, sq in zip(y.shape, squeeze_masks) if not sq]
    return y.reshape(kept or [1])


def random_slice_case(rank, rng, allow_squeeze):
    shape = tuple(int(v) for v in rng.integers(3, 7, size=rank))
    while True:
        begin = [int(rng.integers(-n, n)) for n in shape]
        end = [int(rng.integers(-n - 2, n + 2)) for n in shape]
        strides = [int(rng.choice([-3, -2, -1, 1, 2])) for _ in shape]
        bmask = [bool(rng.random() < 0.3) for _ in shape]
        emask = [bool(rng.random() < 0.3) for _ in shape]
        squeeze = [bool(allow_squeeze and rng.random() < 0.3) for _ in shape]
        case = (begin, end, strides, bmask, emask, squeeze)
        sizes = [1 if squeeze[i] else len(axis_indices(n, begin[i], end[i], strides[i], bmask[i], emask[i]))
                 for i, n in enumerate(shape)]
        if min(sizes) > 0:
            return shape, case


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("squeeze", [False, True])
def test_slice_static_random(rank, squeeze):
    rng = np.random.default_rng(100 * rank + squeeze)
    for _ in range(12):
        shape, (begin, end, strides, bmask, emask, sq) = random_slice_case(rank, rng, squeeze)
        b = builder_for({"x": shape})
        b.add_slice_static("slice", "x", "output", begin_ids=begin, end_ids=end, strides=strides,
                           begin_masks=bmask, end_masks=emask, squeeze_masks=sq)
        x = rand(*shape)
        close(run_one(b, {"x": x}), slice_reference(x, begin, end, strides, bmask, emask, sq))


@pytest.mark.parametrize("squeeze,expected_index", [([False, False, False], (slice(None, 3, 2), slice(2, None, 2),
                                                                             slice(None, None, 2))),
                                                    ([False, True, False], (slice(None, 3, 2), 2, slice(None, None, 2)))])
def test_slice_static_proto_examples(squeeze, expected_index):
    b = builder_for({"x": (5, 5, 5)})
    b.add_slice_static("slice", "x", "output", begin_ids=[1, 2, 3], end_ids=[3, -3, 2], strides=[2, 2, 2],
                       begin_masks=[True, False, True], end_masks=[False, True, True], squeeze_masks=squeeze)
    x = t(rand(5, 5, 5))
    close(run_one(b, {"x": x.numpy()}), x[expected_index].numpy())      # the proto's own equivalents


def test_slice_static_masks_with_negative_stride_cover_the_whole_axis():
    """A begin mask with stride -1 starts at the last element (not at 0, as the proto's wording
    suggests); coremltools' own tests expect Python's None semantics."""
    b = builder_for({"x": (6,)})
    b.add_slice_static("slice", "x", "output", begin_ids=[0], end_ids=[0], strides=[-1],
                       begin_masks=[True], end_masks=[True])
    x = np.arange(6, dtype=np.float32)
    close(run_one(b, {"x": x}), x[::-1].copy())


def test_slice_static_squeezing_every_axis_leaves_rank_1():
    b = builder_for({"x": (3, 4)})
    b.add_slice_static("slice", "x", "output", begin_ids=[1, -1], end_ids=[0, 0], strides=[1, 1],
                       begin_masks=[False, False], end_masks=[False, False], squeeze_masks=[True, True])
    x = rand(3, 4)
    close(run_one(b, {"x": x}), x[1, 3].reshape(1))


@pytest.mark.parametrize("given", [2, 3, 4, 5, 6, 7])
def test_slice_dynamic_inputs_override_parameters(given):
    rng = np.random.default_rng(given)
    names = ["begin_ids", "end_ids", "strides", "begin_masks", "end_masks", "squeeze_masks"]
    for rank in (1, 3, 4):
        shape, case = random_slice_case(rank, rng, allow_squeeze=True)
        # parameters carry a wrong value for every field that an input overrides
        decoys = ([0] * rank, [1] * rank, [1] * rank, [False] * rank, [False] * rank, [False] * rank)
        params = {names[i]: (decoys[i] if i < given - 1 else case[i]) for i in range(1, 6)}
        inputs = {"x": shape, **{names[i]: (rank,) for i in range(given - 1)}}
        b = builder_for(inputs)
        b.add_slice_dynamic("slice", list(inputs), "output", **params)
        x = rand(*shape)
        feeds = {"x": x, **{names[i]: np.array(case[i], np.float32) for i in range(given - 1)}}
        close(run_one(b, feeds), slice_reference(x, *case))


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 5, 6), (3, 5, 2, 4)])
def test_slice_by_size_every_axis(shape):
    for axis in range(-len(shape), len(shape)):
        n = shape[axis]
        for begin in (0, n // 2, -1):
            size = n - (begin % n)
            b = builder_for({"x": shape, "begin": (1,)})
            b.add_slice_by_size("slice", ["x", "begin"], "output", axis=axis, size=size)
            x = rand(*shape)
            expected = torch.narrow(t(x), axis % len(shape), begin % n, size).numpy()
            close(run_one(b, {"x": x, "begin": np.array([begin], np.float32)}), expected)


def test_slice_by_size_past_the_end_names_the_layer():
    b = builder_for({"x": (4, 3), "begin": (1,)})
    b.add_slice_by_size("bad_slice", ["x", "begin"], "output", axis=0, size=3)
    with pytest.raises(wb.WorkbenchError, match="bad_slice"):
        run_one(b, {"x": rand(4, 3), "begin": np.array([2], np.float32)})


# ================================================================== tile / reverse

@pytest.mark.parametrize("shape,reps", [((2, 4, 2), (1, 2, 6)), ((2, 4, 2), (6,)), ((3,), (4,)),
                                        ((2, 3), (3, 1)), ((1, 2, 1, 2), (2, 2))])
def test_tile_parameter(shape, reps):
    b = builder_for({"x": shape})
    b.add_tile("tile", "x", "output", reps=list(reps))
    x = rand(*shape)
    close(run_one(b, {"x": x}), torch.tile(t(x), reps).numpy())


@pytest.mark.parametrize("reps", [(1, 2, 6), (3, 1, 1)])
def test_tile_second_input_overrides_reps(reps):
    b = builder_for({"x": (2, 4, 2), "reps": (3,)})
    b.add_tile("tile", ["x", "reps"], "output", reps=[])
    x = rand(2, 4, 2)
    close(run_one(b, {"x": x, "reps": np.array(reps, np.float32)}), torch.tile(t(x), reps).numpy())


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_reverse_every_mask(rank):
    shape = (2, 3, 4, 5)[:rank]
    x = rand(*shape)
    for mask in itertools.product([False, True], repeat=rank):
        b = builder_for({"x": shape})
        b.add_reverse("reverse", "x", "output", reverse_dim=list(mask))
        dims = [i for i, flip in enumerate(mask) if flip]
        close(run_one(b, {"x": x}), torch.flip(t(x), dims).numpy() if dims else x)


# ================================================================== fills / broadcasts

@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 1, 4, 3)])
def test_fill_like(shape):
    b = builder_for({"x": shape})
    b.add_fill_like("fill", "x", "output", value=2.5)
    close(run_one(b, {"x": rand(*shape)}), torch.full(shape, 2.5).numpy())


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 1, 4, 3)])
def test_fill_static(shape):
    b = builder_for({"x": (2,)}, outputs=("output", "passthrough"))
    b.add_fill_static("fill", "output", output_shape=list(shape), value=-1.5)
    b.add_fill_like("other", "x", "passthrough", value=0.0)
    close(run_one(b, {"x": rand(2)}), torch.full(shape, -1.5).numpy())


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 1, 4, 3)])
def test_fill_dynamic(shape):
    b = builder_for({"shape": (len(shape),)})
    b.add_fill_dynamic("fill", "shape", "output", value=0.25)
    close(run_one(b, {"shape": np.array(shape, np.float32)}), torch.full(shape, 0.25).numpy())


BROADCASTS = [((3,), (2, 3)), ((1,), (4,)), ((2, 1), (2, 5)), ((1, 3, 1), (2, 4, 3, 6)), ((4, 1, 2), (4, 3, 2)),
              ((2, 3), (2, 3))]


@pytest.mark.parametrize("shape,target", BROADCASTS)
def test_broadcast_to_like(shape, target):
    b = builder_for({"x": shape, "like": target})
    b.add_broadcast_to_like("broadcast", ["x", "like"], "output")
    x = rand(*shape)
    close(run_one(b, {"x": x, "like": rand(*target)}), torch.broadcast_to(t(x), target).numpy())


@pytest.mark.parametrize("shape,target", BROADCASTS)
def test_broadcast_to_static(shape, target):
    b = builder_for({"x": shape})
    b.add_broadcast_to_static("broadcast", "x", "output", output_shape=list(target))
    x = rand(*shape)
    close(run_one(b, {"x": x}), torch.broadcast_to(t(x), target).numpy())


@pytest.mark.parametrize("shape,target", BROADCASTS)
def test_broadcast_to_dynamic(shape, target):
    b = builder_for({"x": shape, "shape": (len(target),)})
    b.add_broadcast_to_dynamic("broadcast", ["x", "shape"], "output")
    x = rand(*shape)
    close(run_one(b, {"x": x, "shape": np.array(target, np.float32)}), torch.broadcast_to(t(x), target).numpy())


def test_broadcast_incompatible_names_the_layer():
    b = builder_for({"x": (3,)})
    b.add_broadcast_to_static("bad_broadcast", "x", "output", output_shape=[2, 4])
    with pytest.raises(wb.WorkbenchError, match="bad_broadcast"):
        run_one(b, {"x": rand(3)})
