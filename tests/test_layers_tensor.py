"""Shape kernels of workbench/runtime/layers/tensor.py: the classic rank-5 layers and the N-D reshapes.

Models are built with NeuralNetworkBuilder and run through wb.load(...).predict. Classic layers run
in both mappings: rank-5 (builder default; 5-D inputs [Seq, Batch, C, H, W] exercise Seq and
Batch) and exact rank (disable_rank5_shape_mapping=True). References are torch ops, or loops
written from NeuralNetwork.proto's comments (e.g. the CHANNEL_LAST reshape recipe).
"""
import itertools

import numpy as np
import pytest
import torch

import workbench as wb
import workbench.runtime.layers.layout  # noqa: F401  (registers the N-D kernels before the lead lists the module)
from support import exact_rank_builder as builder_for, predict_builder as predict, assert_close as close  # noqa: E402

RNG = np.random.default_rng(7)


def run_one(builder, inputs):
    return predict(builder, inputs)["output"]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def rank5_result(expected5):
    """What predict hands back for an undeclared rank-5 output: [C, H, W] when Seq = Batch = 1."""
    expected5 = np.asarray(expected5)
    return expected5.reshape(expected5.shape[2:]) if expected5.shape[:2] == (1, 1) else expected5


# ================================================================== classic reshape

def reshape_reference(x5, target, channel_last):
    """ReshapeLayerParams, literally: per batch element, flatten each sequence step (CHW or HWC
    order), reshape to the target, move C_out first if CHANNEL_LAST. x5 is [Seq, B, C, H, W]."""
    seq, batch = x5.shape[:2]
    outs = []
    for b in range(batch):
        steps = t(x5[:, b])                                           # [Seq, C, H, W]
        flat = steps.permute(0, 2, 3, 1) if channel_last else steps  # HWC order when channel last
        flat = flat.reshape(seq, -1)                                  # [Seq, C*H*W]
        if len(target) == 3:
            c, h, w = target
            out_seq = seq
        else:
            out_seq, c, h, w = target
            flat = flat.reshape(out_seq, -1)
        y = flat.reshape(out_seq, h, w, c).permute(0, 3, 1, 2) if channel_last else flat.reshape(out_seq, c, h, w)
        outs.append(y)
    return torch.stack(outs, dim=1).numpy()                          # [Seq_out, B, C, H, W]


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("seq,batch", [(1, 1), (3, 2)])
@pytest.mark.parametrize("target", [(4, 3, 2), (6, 2, 2), (24, 1, 1), (1, 4, 6)])
def test_reshape_rank5_target3_keeps_sequence(channel_last, seq, batch, target):
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    b.add_reshape("reshape", "x", "output", target_shape=target, mode=int(channel_last))
    x = rand(seq, batch, 2, 3, 4) if (seq, batch) != (1, 1) else rand(2, 3, 4)
    x5 = x.reshape((seq, batch, 2, 3, 4))
    close(run_one(b, {"x": x}), rank5_result(reshape_reference(x5, target, channel_last)))


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("seq,batch", [(1, 1), (2, 1), (4, 3)])
@pytest.mark.parametrize("target4", [(2, 12, 1, 1), (1, 4, 3, 2), (4, 3, 1, 2), (8, 1, 3, 1)])
def test_reshape_rank5_target4_sets_sequence(channel_last, seq, batch, target4):
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    x = rand(seq, batch, 2, 3, 4) if (seq, batch) != (1, 1) else rand(2, 3, 4)
    x5 = x.reshape((seq, batch, 2, 3, 4))
    target = (target4[0] * seq,) + target4[1:]                # keep the element count right
    b.add_reshape("reshape", "x", "output", target_shape=target, mode=int(channel_last))
    close(run_one(b, {"x": x}), rank5_result(reshape_reference(x5, target, channel_last)))


def test_reshape_proto_example_channel_last_by_hand():
    """[C=2, H=1, W=2] -> [C=4, 1, 1] CHANNEL_LAST: the vector is read in H,W,C order."""
    b = builder_for({"x": (2, 1, 2)}, exact=False)
    b.add_reshape("reshape", "x", "output", target_shape=(4, 1, 1), mode=1)
    x = np.array([[[1, 2]], [[3, 4]]], np.float32)         # x[c, 0, w]
    close(run_one(b, {"x": x}), np.array([1, 3, 2, 4], np.float32).reshape(4, 1, 1))


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("in_shape,target", [((2, 3, 4), (4, 3, 2)), ((2, 3, 4), (2, 2, 3, 2)),
                                             ((2, 2, 3, 4), (4, 2, 1, 6)), ((2, 2, 3, 4), (48, 1, 1))])
def test_reshape_exact_rank_output_has_target_rank(channel_last, in_shape, target):
    """In exact-rank models the output rank is len(targetShape); axes before C act as Seq."""
    b = builder_for({"x": in_shape}, exact=True)
    b.add_reshape("reshape", "x", "output", target_shape=target, mode=int(channel_last))
    x = rand(*in_shape)
    x5 = x.reshape((-1, 1) + in_shape[-3:])                # every leading axis is sequence
    target4 = target if len(target) == 4 else (1,) + target
    expected = reshape_reference(x5, target4, channel_last)[:, 0].reshape(target)
    close(run_one(b, {"x": x}), expected)


def test_reshape_infers_minus_one():
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    b.add_reshape("reshape", "x", "output", target_shape=(6, -1, 2), mode=0)
    x = rand(2, 3, 4)
    close(run_one(b, {"x": x}), x.reshape(6, 2, 2))


def test_reshape_bad_target_length_is_a_format_error():
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    b.add_reshape("reshape", "x", "output", target_shape=(4, 3, 2), mode=0)
    b.spec.neuralNetwork.layers[0].reshape.targetShape.extend([1, 1])
    with pytest.raises(wb.ModelFormatError, match="reshape"):
        wb.load(b.spec)


def test_reshape_wrong_element_count_names_the_layer():
    b = builder_for({"x": (2, 3, 4)}, exact=True)
    b.add_reshape("my_reshape", "x", "output", target_shape=(5, 5, 1), mode=0)
    with pytest.raises(wb.WorkbenchError, match="my_reshape"):
        run_one(b, {"x": rand(2, 3, 4)})


# ================================================================== flatten

@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("exact,shape", [(False, (3, 2, 4)), (False, (2, 3, 3, 2, 4)), (True, (3, 2, 4)),
                                         (True, (5, 3, 2, 4)), (True, (2, 5, 3, 2, 4))])
def test_flatten(channel_last, exact, shape):
    declared = shape[-3:] if not exact else shape
    b = builder_for({"x": declared}, exact=exact)
    b.add_flatten("flatten", int(channel_last), "x", "output")
    x = rand(*shape)
    tx = t(x)
    if channel_last:
        tx = tx.movedim(-3, -1)
    expected = torch.flatten(tx, start_dim=-3).unsqueeze(-1).unsqueeze(-1).numpy()
    close(run_one(b, {"x": x}), expected)


# ================================================================== permute

PERMS = list(itertools.permutations(range(4)))


@pytest.mark.parametrize("axis", PERMS)
def test_permute_rank5_every_order_keeps_batch(axis):
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    b.add_permute("permute", axis, "x", "output")
    x = rand(5, 2, 2, 3, 4)                                  # [Seq, B, C, H, W]
    per_batch = [t(x[:, i]).permute(*axis) for i in range(2)]  # permute [Seq, C, H, W]
    expected = torch.stack(per_batch, dim=1).numpy()
    close(run_one(b, {"x": x}), rank5_result(expected))


def test_permute_proto_examples_shapes():
    x = rand(2, 1, 3, 4, 5)
    for axis, shape in [((0, 3, 1, 2), (2, 1, 5, 3, 4)), ((3, 1, 2, 0), (5, 1, 3, 4, 2)),
                        ((0, 3, 2, 1), (2, 1, 5, 4, 3)), ((0, 1, 2, 3), (2, 1, 3, 4, 5))]:
        b = builder_for({"x": (3, 4, 5)}, exact=False)
        b.add_permute("permute", axis, "x", "output")
        assert run_one(b, {"x": x}).shape == shape


@pytest.mark.parametrize("axis", PERMS)
def test_permute_exact_rank5_input(axis):
    b = builder_for({"x": (3, 2, 2, 3, 4)}, exact=True)
    b.add_permute("permute", axis, "x", "output")
    x = rand(3, 2, 2, 3, 4)
    expected = torch.stack([t(x[:, i]).permute(*axis) for i in range(2)], dim=1).numpy()
    close(run_one(b, {"x": x}), expected)


@pytest.mark.parametrize("axis", PERMS)
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 5)])
def test_permute_exact_low_rank_has_implicit_unit_sequence(axis, shape):
    """[C, H, W] and [B, C, H, W] tensors are seen as rank 5 with unit Seq (and Batch), as the
    rank-5 mapping sees [C, H, W]; the unit axes are dropped from wherever the order puts them."""
    b = builder_for({"x": shape}, exact=True)
    b.add_permute("permute", axis, "x", "output")
    x = rand(*shape)
    x5 = t(x.reshape((1, -1) + shape[-3:]))                   # [1, B, C, H, W]
    y5 = torch.stack([x5[:, i].permute(*axis) for i in range(x5.shape[1])], dim=1)
    seq_at = 0 if axis[0] == 0 else axis.index(0) + 1           # where the unit Seq went
    keep = [d for i, d in enumerate(y5.shape) if i != seq_at and not (len(shape) == 3 and i == 1)]
    close(run_one(b, {"x": x}), y5.reshape(keep).numpy())


def test_permute_rejects_non_permutation():
    b = builder_for({"x": (2, 3, 4)}, exact=False)
    b.add_permute("bad_permute", (0, 1, 2, 3), "x", "output")
    b.spec.neuralNetwork.layers[0].permute.axis[:] = [0, 1, 1, 3]
    with pytest.raises(wb.ModelFormatError, match="bad_permute"):
        wb.load(b.spec)


# ================================================================== concat / split

@pytest.mark.parametrize("exact,shapes", [(False, [(2, 3, 4), (1, 3, 4), (3, 3, 4)]),
                                          (True, [(2, 3, 4), (5, 3, 4)]),
                                          (True, [(2, 1, 3, 4), (2, 4, 3, 4)])])
def test_concat_channels(exact, shapes):
    names = {f"x{i}": s for i, s in enumerate(shapes)}
    b = builder_for(names, exact=exact)
    b.add_elementwise("concat", list(names), "output", mode="CONCAT")
    xs = {n: rand(*s) for n, s in names.items()}
    expected = torch.cat([t(v) for v in xs.values()], dim=-3).numpy()
    close(run_one(b, xs), expected)


def test_concat_channels_rank5_with_sequence_and_batch():
    b = builder_for({"a": (2, 3, 4), "b": (1, 3, 4)}, exact=False)
    b.add_elementwise("concat", ["a", "b"], "output", mode="CONCAT")
    a, c = rand(3, 2, 2, 3, 4), rand(3, 2, 1, 3, 4)
    close(run_one(b, {"a": a, "b": c}), torch.cat([t(a), t(c)], dim=2).numpy())


@pytest.mark.parametrize("exact", [False, True])
def test_sequence_concat(exact):
    b = builder_for({"a": (1, 2, 3, 4, 5) if exact else (3, 4, 5), "b": (2, 2, 3, 4, 5) if exact else (3, 4, 5)},
                    exact=exact)
    b.add_elementwise("concat", ["a", "b"], "output", mode="SEQUENCE_CONCAT")
    a, c = rand(1, 2, 3, 4, 5), rand(2, 2, 3, 4, 5)
    close(run_one(b, {"a": a, "b": c}), torch.cat([t(a), t(c)], dim=0).numpy())


@pytest.mark.parametrize("exact,shape", [(False, (6, 2, 3)), (False, (2, 1, 6, 2, 3)), (True, (6, 2, 3)),
                                         (True, (4, 6, 2, 3))])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_split_channels(exact, shape, parts):
    declared = shape if exact else shape[-3:]
    outs = [f"y{i}" for i in range(parts)]
    b = builder_for({"x": declared}, exact=exact, outputs=outs)
    b.add_split("split", "x", outs)
    x = rand(*shape)
    got = predict(b, {"x": x})
    for name, ref in zip(outs, torch.chunk(t(x), parts, dim=-3)):
        close(got[name], ref.numpy())


def test_split_uneven_channels_fails_with_layer_name():
    b = builder_for({"x": (5, 2, 2)}, exact=True, outputs=["y0", "y1"])
    b.add_split("uneven_split", "x", ["y0", "y1"])
    with pytest.raises(wb.WorkbenchError, match="uneven_split"):
        predict(b, {"x": rand(5, 2, 2)})


# ================================================================== slice

SLICES = [(0, -1, 1), (1, 100, 1), (0, 5, 2), (2, -2, 3), (1, 4, 1), (0, 1, 1), (-3, -1, 1), (-4, 100, 2)]


@pytest.mark.parametrize("axis,dim", [("channel", -3), ("height", -2), ("width", -1)])
@pytest.mark.parametrize("start,end,stride", SLICES)
@pytest.mark.parametrize("exact,shape", [(False, (5, 6, 7)), (False, (2, 3, 5, 6, 7)), (True, (5, 6, 7)),
                                         (True, (2, 5, 6, 7))])
def test_slice(axis, dim, start, end, stride, exact, shape):
    declared = shape if exact else shape[-3:]
    b = builder_for({"x": declared}, exact=exact)
    b.add_slice("slice", "x", "output", axis=axis, start_index=max(start, 0), end_index=end, stride=stride)
    b.spec.neuralNetwork.layers[0].slice.startIndex = start    # the builder refuses negative starts
    x = rand(*shape)
    index = [slice(None)] * len(shape)
    index[dim] = slice(start, end, stride)
    expected = t(x)[tuple(index)].numpy()
    close(run_one(b, {"x": x}), expected)


@pytest.mark.parametrize("axis,dim", [("height", -2), ("width", -1)])
def test_slice_exact_rank2_on_height_and_width(axis, dim):
    b = builder_for({"x": (6, 7)}, exact=True)
    b.add_slice("slice", "x", "output", axis=axis, start_index=1, end_index=-1, stride=2)
    x = rand(6, 7)
    expected = t(x)[1:-1:2] if dim == -2 else t(x)[:, 1:-1:2]
    close(run_one(b, {"x": x}), expected.numpy())


# ================================================================== sequenceRepeat / loadConstant

@pytest.mark.parametrize("reps", [0, 1, 3])
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3, 4)])
def test_sequence_repeat(reps, shape):
    b = builder_for({"x": shape[-3:]}, exact=False)
    b.add_sequence_repeat("repeat", reps, "x", "output")
    x = rand(*shape)
    x5 = t(x.reshape((-1, shape[-4] if len(shape) == 5 else 1) + shape[-3:]))
    expected = x5.repeat(max(reps, 1), 1, 1, 1, 1).numpy()
    close(run_one(b, {"x": x}), rank5_result(expected))


@pytest.mark.parametrize("exact", [False, True])
def test_load_constant_is_rank5(exact):
    b = builder_for({"x": (2, 3, 4)}, exact=exact, outputs=("output", "passthrough"))
    value = rand(2, 3, 4)
    b.add_load_constant("const", "output", value, shape=[2, 3, 4])
    b.add_split("copy", "x", ["passthrough"])
    got = run_one(b, {"x": rand(2, 3, 4)})
    close(got, value if not exact else value.reshape(1, 1, 2, 3, 4))


def test_load_constant_float16_weights():
    b = builder_for({"x": (1, 2, 2)}, exact=False, outputs=("output", "passthrough"))
    value = np.array([0.5, -1.25, 3.0, 1024.0], np.float32)
    b.add_load_constant("const", "output", value, shape=[1, 2, 2])
    b.add_split("copy", "x", ["passthrough"])
    data = b.spec.neuralNetwork.layers[0].loadConstant.data
    del data.floatValue[:]
    data.float16Value = value.astype("<f2").tobytes()
    close(run_one(b, {"x": rand(1, 2, 2)}), value.reshape(1, 2, 2))


def test_load_constant_wrong_count_is_a_format_error():
    b = builder_for({"x": (1, 2, 2)}, exact=False, outputs=("output", "passthrough"))
    b.add_load_constant("short_const", "output", np.ones(4, np.float32), shape=[1, 2, 2])
    b.add_split("copy", "x", ["passthrough"])
    b.spec.neuralNetwork.layers[0].loadConstant.data.floatValue.pop()
    with pytest.raises(wb.ModelFormatError, match="short_const"):
        wb.load(b.spec)


# ================================================================== N-D: transpose / squeeze / expandDims

@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4), (2, 3, 4, 5)])
def test_transpose_every_permutation(shape):
    x = rand(*shape)
    for axes in itertools.permutations(range(len(shape))):
        b = builder_for({"x": shape}, exact=True)
        b.add_transpose("transpose", axes, "x", "output")
        close(run_one(b, {"x": x}), t(x).permute(*axes).numpy())


@pytest.mark.parametrize("shape,axes,out", [((1, 1, 10, 5), (0, 1), (10, 5)), ((1, 10, 5, 1), (0, 3), (10, 5)),
                                            ((10, 5, 1, 1), (-2, -1), (10, 5)), ((1,), (0,), (1,)),
                                            ((3, 1, 7), (1,), (3, 7)), ((10, 5, 1, 1), (3, -2), (10, 5)),
                                            ((1, 4, 1), (-1,), (1, 4))])
def test_squeeze_axes(shape, axes, out):
    b = builder_for({"x": shape}, exact=True)
    b.add_squeeze("squeeze", "x", "output", axes=list(axes))
    x = rand(*shape)
    expected = t(x)
    for a in sorted((a % len(shape) for a in axes), reverse=True):
        expected = expected.squeeze(a) if expected.ndim > 1 else expected
    assert tuple(expected.shape) == out
    close(run_one(b, {"x": x}), expected.numpy())


@pytest.mark.parametrize("shape", [(1, 1, 10, 5), (10, 1, 5, 1), (1,), (3,), (5, 6), (1, 1, 1)])
def test_squeeze_all(shape):
    b = builder_for({"x": shape}, exact=True)
    b.add_squeeze("squeeze", "x", "output", squeeze_all=True)
    x = rand(*shape)
    expected = t(x).squeeze()
    expected = expected.reshape(1) if expected.ndim == 0 else expected    # a tensor keeps rank >= 1
    close(run_one(b, {"x": x}), expected.numpy())


def test_squeeze_non_unit_axis_fails_with_layer_name():
    b = builder_for({"x": (2, 3)}, exact=True)
    b.add_squeeze("bad_squeeze", "x", "output", axes=[0])
    with pytest.raises(wb.WorkbenchError, match="bad_squeeze"):
        run_one(b, {"x": rand(2, 3)})


@pytest.mark.parametrize("shape,axes,out", [((10, 5), (0, 1), (1, 1, 10, 5)), ((10, 5), (0, 2), (1, 10, 1, 5)),
                                            ((10, 5), (2, 0), (1, 10, 1, 5)), ((10, 5), (-2, -1), (10, 5, 1, 1)),
                                            ((10,), (1, 0, -2), (1, 1, 1, 10)), ((3, 4), (-1,), (3, 4, 1))])
def test_expand_dims(shape, axes, out):
    b = builder_for({"x": shape}, exact=True)
    b.add_expand_dims("expand", "x", "output", axes=list(axes))
    x = rand(*shape)
    expected = t(x)
    for a in sorted(a % len(out) for a in axes):              # unsqueeze at output positions, low to high
        expected = expected.unsqueeze(a)
    assert tuple(expected.shape) == out
    close(run_one(b, {"x": x}), expected.numpy())


# ================================================================== N-D: reshapes

@pytest.mark.parametrize("shape,target", [((2, 3, 4), (4, 6)), ((2, 3, 4), (24,)), ((6,), (1, 2, 1, 3)),
                                          ((2, 3, 4), (-1, 2)), ((2, 3, 4, 5), (5, -1, 4))])
def test_reshape_static(shape, target):
    b = builder_for({"x": shape}, exact=True)
    b.add_reshape_static("reshape", "x", "output", target)
    x = rand(*shape)
    close(run_one(b, {"x": x}), t(x).reshape(*target).numpy())


def test_reshape_like_ignores_values():
    b = builder_for({"x": (2, 3, 4), "like": (4, 1, 6)}, exact=True)
    b.add_reshape_like("reshape", ["x", "like"], "output")
    x = rand(2, 3, 4)
    close(run_one(b, {"x": x, "like": rand(4, 1, 6)}), t(x).reshape(4, 1, 6).numpy())


@pytest.mark.parametrize("target", [(3, 8), (2, 2, 6), (-1, 4), (24,)])
def test_reshape_dynamic(target):
    b = builder_for({"x": (2, 3, 4), "shape": (len(target),)}, exact=True)
    b.add_reshape_dynamic("reshape", ["x", "shape"], "output")
    x = rand(2, 3, 4)
    close(run_one(b, {"x": x, "shape": np.array(target, np.float32)}), t(x).reshape(*target).numpy())


@pytest.mark.parametrize("shape,target,out", [((20, 10), (5, -1), (5, 40)), ((20, 10, 5), (0, 2, 25), (20, 2, 25)),
                                              ((10, 3, 5), (25, 0, -1), (25, 3, 2))])
def test_rank_preserving_reshape_proto_examples(shape, target, out):
    b = builder_for({"x": shape}, exact=True)
    b.add_rank_preserving_reshape("reshape", "x", "output", target)
    x = rand(*shape)
    close(run_one(b, {"x": x}), t(x).reshape(*out).numpy())


@pytest.mark.parametrize("shape,axis,out", [((3,), -1, (1, 3)), ((3,), 1, (3, 1)), ((4, 3), -1, (4, 3)),
                                            ((5, 2), 0, (1, 10)), ((5, 5, 3), -2, (5, 15)), ((2, 3, 2), -1, (6, 2)),
                                            ((2, 3, 4, 5), 2, (6, 20))])
def test_flatten_to_2d_proto_examples(shape, axis, out):
    b = builder_for({"x": shape}, exact=True)
    b.add_flatten_to_2d("flatten", "x", "output", axis=axis)
    x = rand(*shape)
    pos = axis + len(shape) if axis < 0 else axis
    expected = t(x).reshape(int(np.prod(shape[:pos])), -1)
    assert tuple(expected.shape) == out
    close(run_one(b, {"x": x}), expected.numpy())


# ================================================================== N-D: constants and shapes

@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 1, 3, 2), (1, 2, 1, 2, 3)])
def test_load_constant_nd(shape):
    b = builder_for({"x": (2,)}, exact=True, outputs=("output", "passthrough"))
    value = rand(*shape)
    b.add_load_constant_nd("const", "output", value, shape=list(shape))
    b.add_squeeze("copy", "x", "passthrough", squeeze_all=True)
    close(run_one(b, {"x": rand(2)}), value)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (1, 4, 1, 5), (2, 1, 3, 1, 2)])
def test_get_shape(shape):
    b = builder_for({"x": shape}, exact=True)
    b.add_get_shape("shape", "x", "output")
    close(run_one(b, {"x": rand(*shape)}), np.array(torch.empty(shape).shape, np.float32))


def test_get_shape_feeds_reshape_dynamic():
    b = builder_for({"x": (2, 3, 4), "like": (6, 4)}, exact=True)
    b.add_get_shape("shape", "like", "s")
    b.add_reshape_dynamic("reshape", ["x", "s"], "output")
    x = rand(2, 3, 4)
    close(run_one(b, {"x": x, "like": rand(6, 4)}), t(x).reshape(6, 4).numpy())
