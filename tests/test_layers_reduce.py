"""Reduction and ordering kernels (reduce, reduceSum ..., argMax, argMin, cumSum, topK, argSort)
run through wb.load(...).predict(...) and checked against torch or the proto's formulas."""
import itertools

import numpy as np
import pytest
import torch
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb

RTOL, ATOL = 1e-5, 1e-6


def rand(*shape, low=None, high=None, seed=0):
    g = np.random.default_rng(seed)
    if low is not None:
        return g.uniform(low, high, shape).astype(np.float32)
    return g.standard_normal(shape).astype(np.float32)


def builder(inputs, outputs, exact=True):
    """inputs/outputs: lists of (name, shape); output shape None lets the builder leave it open."""
    return NeuralNetworkBuilder(
        [(n, datatypes.Array(*s)) for n, s in inputs],
        [(n, datatypes.Array(*s) if s else None) for n, s in outputs],
        disable_rank5_shape_mapping=exact)


def predict(b, **inputs):
    return {k: np.asarray(v) for k, v in wb.load(b.spec).predict(inputs).items()}


def check(got, want, rtol=RTOL, atol=ATOL):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


T = torch.from_numpy

# ---------------------------------------------------------------- classic reduce

CLASSIC_AXES = {"CHW": (-3, -2, -1), "HW": (-2, -1), "C": (-3,), "H": (-2,), "W": (-1,)}


def classic_reference(mode, x, dims, eps):
    t = T(x)
    if mode == "sum":
        return torch.sum(t, dim=dims, keepdim=True).numpy()
    if mode == "avg":
        return torch.mean(t, dim=dims, keepdim=True).numpy()
    if mode == "prod":      # torch.prod takes one dim: the proto's formula in numpy instead
        return np.prod(x.astype(np.float64), axis=dims, keepdims=True)
    if mode == "logsum":    # the proto: sum(ln(x + epsilon)), a sum of logs
        return np.sum(np.log(x.astype(np.float64) + eps), axis=dims, keepdims=True)
    if mode == "sumsquare":
        return torch.sum(t * t, dim=dims, keepdim=True).numpy()
    if mode == "L1":
        return torch.linalg.vector_norm(t, ord=1, dim=dims, keepdim=True).numpy()
    if mode == "L2":
        return torch.linalg.vector_norm(t, ord=2, dim=dims, keepdim=True).numpy()
    if mode == "max":
        return torch.amax(t, dim=dims, keepdim=True).numpy()
    if mode == "min":
        return torch.amin(t, dim=dims, keepdim=True).numpy()
    if mode == "argmax":
        return torch.argmax(t, dim=dims[0], keepdim=True).numpy().astype(np.float32)
    raise AssertionError(mode)


MODES = ["sum", "avg", "prod", "logsum", "sumsquare", "L1", "L2", "max", "min", "argmax"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exact, shape", [(False, (3, 4, 5)), (True, (3, 4, 5)), (True, (2, 3, 4, 5)),
                                          (True, (2, 2, 3, 2, 3))])
def test_classic_reduce(mode, exact, shape):
    positive = mode in ("prod", "logsum")
    x = rand(*shape, low=0.6, high=1.6) if positive else rand(*shape)
    for axis, dims in CLASSIC_AXES.items():
        if mode == "argmax" and len(dims) > 1:
            continue        # ARGMAX takes one axis (an error otherwise, tested below)
        want = classic_reference(mode, x, dims, 1e-6)
        b = builder([("data", shape)], [("out", want.shape[-3:] if not exact else want.shape)], exact=exact)
        b.add_reduce("r", "data", "out", axis=axis, mode=mode, epsilon=1e-6)
        got = predict(b, data=x)["out"]
        if not exact:       # rank-5 blobs come back as the (C, H, W) declared for the output
            got = got.reshape(want.shape)
        check(got, want, rtol=2e-5)


@pytest.mark.parametrize("eps, used", [(0.5, 0.5), (0.0, 1e-6)])
def test_classic_reduce_logsum_epsilon(eps, used):
    x = rand(2, 3, 4, low=0.0, high=1e-5)       # epsilon dominates near zero
    b = builder([("data", x.shape)], [("out", (2, 1, 1))])
    b.add_reduce("r", "data", "out", axis="HW", mode="logsum", epsilon=eps)
    check(predict(b, data=x)["out"], np.sum(np.log(x.astype(np.float64) + used), axis=(1, 2), keepdims=True),
          rtol=1e-5)


def test_classic_reduce_argmax_first_of_ties():
    x = np.array([[[1, 3, 3, 0], [2, 2, 1, 2]]], np.float32)     # shape (1, 2, 4)
    b = builder([("data", x.shape)], [("out", (1, 2, 1))])
    b.add_reduce("r", "data", "out", axis="W", mode="argmax")
    check(predict(b, data=x)["out"], [[[1], [0]]])


@pytest.mark.parametrize("axis", ["CHW", "HW"])
def test_classic_reduce_argmax_over_several_axes_is_a_format_error(axis):
    b = builder([("data", (3, 4, 5))], [("out", (3, 1, 1))])
    b.add_reduce("r_bad", "data", "out", axis=axis, mode="argmax")
    with pytest.raises(wb.WorkbenchError, match="r_bad"):
        wb.load(b.spec).predict({"data": rand(3, 4, 5)})


def test_classic_reduce_rank5_seq_batch_kept():
    x = rand(2, 3, 3, 4, 5)
    b = builder([("data", (3, 4, 5))], [("out", (1, 4, 5))], exact=False)
    b.add_reduce("r", "data", "out", axis="C", mode="sum")
    got = predict(b, data=x)["out"]
    check(got.reshape(2, 3, 1, 4, 5), x.sum(axis=2, keepdims=True), rtol=1e-5)


# ---------------------------------------------------------------- N-D reductions

def nd_reference(kind, x, axes):
    t, dims = T(x), tuple(axes)
    if kind == "sum":
        return torch.sum(t, dim=dims, keepdim=True).numpy()
    if kind == "mean":
        return torch.mean(t, dim=dims, keepdim=True).numpy()
    if kind == "prod":
        return np.prod(x.astype(np.float64), axis=dims, keepdims=True)
    if kind == "max":
        return torch.amax(t, dim=dims, keepdim=True).numpy()
    if kind == "min":
        return torch.amin(t, dim=dims, keepdim=True).numpy()
    if kind == "l1":
        return torch.linalg.vector_norm(t, ord=1, dim=dims, keepdim=True).numpy()
    if kind == "l2":
        return torch.linalg.vector_norm(t, ord=2, dim=dims, keepdim=True).numpy()
    if kind == "sumsquare":
        return torch.sum(t * t, dim=dims, keepdim=True).numpy()
    if kind == "logsum":
        return torch.log(torch.sum(t, dim=dims, keepdim=True)).numpy()
    if kind == "logsumexp":
        return torch.logsumexp(t, dim=dims, keepdim=True).numpy()
    raise AssertionError(kind)


ND_KINDS = ["sum", "mean", "prod", "max", "min", "l1", "l2", "sumsquare", "logsum", "logsumexp"]


def add_nd_reduce(b, kind, axes, keepdims, reduce_all):
    getattr(b, f"add_reduce_{kind}")("r", "data", "out", axes=axes, keepdims=keepdims, reduce_all=reduce_all)


def nd_input(kind, shape):
    if kind in ("prod", "logsum"):
        return rand(*shape, low=0.6, high=1.6)
    if kind == "logsumexp":
        return rand(*shape) * 40         # exp would overflow float32 without the max shift
    return rand(*shape)


def axis_choices(rank):
    """Every single axis (positive and negative), some pairs, and all axes."""
    out = [[a] for a in range(rank)] + [[-1], [-rank]]
    out += [list(p) for p in itertools.combinations(range(rank), 2)][:3]
    if rank >= 3:
        out.append([0, -1, -2])
    return out


@pytest.mark.parametrize("kind", ND_KINDS)
@pytest.mark.parametrize("keepdims", [True, False])
def test_nd_reduce(kind, keepdims):
    for shape in [(6,), (3, 4), (2, 3, 4), (2, 3, 2, 3), (2, 1, 3, 2, 3)]:
        x = nd_input(kind, shape)
        for axes in axis_choices(len(shape)):
            want = nd_reference(kind, x, [a % len(shape) for a in axes])
            if not keepdims:
                want = np.squeeze(want, axis=tuple(a % len(shape) for a in axes))
                want = want.reshape(1) if want.ndim == 0 else want
            b = builder([("data", shape)], [("out", None)])
            add_nd_reduce(b, kind, axes, keepdims, False)
            check(predict(b, data=x)["out"], want, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ND_KINDS)
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("axes", [None, [0]])     # reduceAll ignores axes; no axes means all
def test_nd_reduce_all(kind, keepdims, axes):
    shape = (2, 3, 4)
    x = nd_input(kind, shape)
    want = nd_reference(kind, x, [0, 1, 2])
    want = want if keepdims else want.reshape(1)       # Core ML has no rank 0: a full reduction is (1,)
    b = builder([("data", shape)], [("out", None)])
    add_nd_reduce(b, kind, axes, keepdims, True)
    check(predict(b, data=x)["out"], want, rtol=2e-5, atol=1e-5)


def test_nd_reduce_axis_out_of_range_names_the_layer():
    b = builder([("data", (2, 3))], [("out", None)])
    b.add_reduce_sum("r_oob", "data", "out", axes=[2])
    with pytest.raises(wb.WorkbenchError, match="r_oob"):
        wb.load(b.spec).predict({"data": rand(2, 3)})


# ---------------------------------------------------------------- argMax / argMin

@pytest.mark.parametrize("which", ["argmax", "argmin"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_arg_extreme(which, shape, keepdims):
    x = rand(*shape)
    for axis in range(-len(shape), len(shape)):
        b = builder([("data", shape)], [("out", None)])
        getattr(b, f"add_{which}")("a", "data", "out", axis=axis, keepdims=keepdims)
        want = getattr(torch, which)(T(x), dim=axis, keepdim=keepdims).numpy().astype(np.float32)
        want = want.reshape(1) if want.ndim == 0 else want     # rank 1 with removeDim stays (1,)
        check(predict(b, data=x)["out"], want)


# ---------------------------------------------------------------- cumSum

def torch_cumsum(x, axis, exclusive, reverse):
    t = T(x)
    if reverse:
        t = torch.flip(t, [axis])
    if exclusive:       # shift right by one along the axis, zero first
        t = torch.narrow(t, axis, 0, t.shape[axis] - 1)
        zero = torch.zeros_like(torch.narrow(T(x), axis, 0, 1))
        t = torch.cat([zero, t], dim=axis)
    out = torch.cumsum(t, dim=axis)
    return torch.flip(out, [axis]).numpy() if reverse else out.numpy()


def test_cumsum_proto_examples():
    x = np.array([4, 6, 7], np.float32)
    for exclusive, reverse, want in [(False, False, [4, 10, 17]), (True, False, [0, 4, 10]),
                                     (False, True, [17, 13, 7]), (True, True, [13, 7, 0])]:
        b = builder([("data", (3,))], [("out", None)])
        b.add_cumsum("c", ["data"], "out", axis=0, reverse=reverse, exclusive=exclusive)
        check(predict(b, data=x)["out"], np.array(want, np.float32))


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("exclusive, reverse", list(itertools.product([False, True], repeat=2)))
def test_cumsum_every_axis(shape, exclusive, reverse):
    x = rand(*shape)
    for axis in range(-len(shape), len(shape)):
        b = builder([("data", shape)], [("out", None)])
        b.add_cumsum("c", ["data"], "out", axis=axis, reverse=reverse, exclusive=exclusive)
        check(predict(b, data=x)["out"], torch_cumsum(x, axis, exclusive, reverse), atol=1e-5)


@pytest.mark.parametrize("axis_value", [0, 1, -1])
def test_cumsum_axis_from_second_input(axis_value):
    x = rand(3, 4)
    b = builder([("data", (3, 4)), ("axis", (1,))], [("out", None)])
    b.add_cumsum("c", ["data", "axis"], "out", axis=0, reverse=False, exclusive=True)   # param ignored
    got = predict(b, data=x, axis=np.array([axis_value], np.float32))["out"]
    check(got, torch_cumsum(x, axis_value, True, False), atol=1e-5)


# ---------------------------------------------------------------- topK

@pytest.mark.parametrize("shape", [(9,), (4, 6), (2, 5, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("bottom", [False, True])
def test_topk_every_axis(shape, bottom):
    x = rand(*shape)
    for axis in range(-len(shape), len(shape)):
        for k in sorted({1, shape[axis] // 2 or 1, shape[axis]}):
            b = builder([("data", shape)], [("values", None), ("indices", None)])
            b.add_topk("t", ["data"], ["values", "indices"], k=k, axis=axis, use_bottom_k=bottom)
            out = predict(b, data=x)
            want_v, want_i = torch.topk(T(x), k, dim=axis, largest=not bottom, sorted=True)
            check(out["values"], want_v.numpy())
            check(out["indices"], want_i.numpy().astype(np.float32))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_topk_k_from_second_input(k):
    x = rand(3, 6)
    b = builder([("data", (3, 6)), ("k", (1,))], [("values", None), ("indices", None)])
    b.add_topk("t", ["data", "k"], ["values", "indices"], k=2, axis=-1)      # the param K is ignored
    out = predict(b, data=x, k=np.array([k], np.float32))
    want_v, want_i = torch.topk(T(x), k, dim=-1)
    check(out["values"], want_v.numpy())
    check(out["indices"], want_i.numpy().astype(np.float32))


def test_topk_ties_keep_index_order():
    x = np.array([1, 5, 3, 5, 1, 3], np.float32)
    b = builder([("data", (6,))], [("values", None), ("indices", None)])
    b.add_topk("t", ["data"], ["values", "indices"], k=4, axis=0)
    out = predict(b, data=x)
    check(out["values"], [5, 5, 3, 3])
    check(out["indices"], [1, 3, 2, 5])


def test_topk_k_larger_than_axis_names_the_layer():
    b = builder([("data", (3, 4))], [("values", None), ("indices", None)])
    b.add_topk("t_big", ["data"], ["values", "indices"], k=5, axis=1)
    with pytest.raises(wb.WorkbenchError, match="t_big"):
        wb.load(b.spec).predict({"data": rand(3, 4)})


# ---------------------------------------------------------------- argSort

def test_argsort_proto_examples():
    for x, axis, asc, desc in [
            ([3.1, 5.4, 32.9, 3.2, 77.0], 0, [0, 3, 1, 2, 4], [4, 2, 1, 3, 0]),
            ([[3, 5, 32], [3, 77, 6]], 1, [[0, 1, 2], [0, 2, 1]], [[2, 1, 0], [1, 2, 0]])]:
        x = np.array(x, np.float32)
        for descending, want in [(False, asc), (True, desc)]:
            b = builder([("data", x.shape)], [("out", None)])
            b.add_argsort("s", "data", "out", axis=axis, descending=descending)
            check(predict(b, data=x)["out"], np.array(want, np.float32))


@pytest.mark.parametrize("shape", [(8,), (3, 5), (2, 3, 4), (2, 3, 2, 4)])
@pytest.mark.parametrize("descending", [False, True])
def test_argsort_every_axis(shape, descending):
    x = np.round(rand(*shape) * 2)       # plenty of ties: both directions keep index order
    for axis in range(-len(shape), len(shape)):
        b = builder([("data", shape)], [("out", None)])
        b.add_argsort("s", "data", "out", axis=axis, descending=descending)
        want = torch.argsort(T(x), dim=axis, descending=descending, stable=True)
        check(predict(b, data=x)["out"], want.numpy().astype(np.float32))
