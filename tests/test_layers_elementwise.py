"""Element-wise multi-input kernels, run through wb.load(...).predict on NeuralNetworkBuilder models.

References are torch ops, or numpy formulas written from NeuralNetwork.proto's comments.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb
from support import assert_close as close  # noqa: E402

RNG = np.random.default_rng(11)
NAMES = "abc"


def run(add_layer, arrays, exact_rank=False, declared=None):
    """One-layer model with inputs 'a', 'b', 'c' (as many as arrays) -> 'out'; predict on arrays.

    ``declared`` gives the feature shapes when arrays are rank-5 blobs ([Seq, Batch, ...declared]).
    """
    declared = declared or [x.shape for x in arrays]
    features = [(n, datatypes.Array(*s)) for n, s in zip(NAMES, declared)]
    builder = NeuralNetworkBuilder(features, [("out", None)], disable_rank5_shape_mapping=exact_rank)
    add_layer(builder, list(NAMES[:len(arrays)]))
    return wb.load(builder.spec).predict(dict(zip(NAMES, arrays)))["out"]


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------- classic add, multiply, max, min, average

CLASSIC = {
    "ADD": lambda xs: sum(xs[1:], xs[0]),
    "MULTIPLY": lambda xs: np.prod(np.broadcast_arrays(*xs), axis=0),
    "MAX": lambda xs: np.maximum.reduce(np.broadcast_arrays(*xs)),
    "MIN": lambda xs: np.minimum.reduce(np.broadcast_arrays(*xs)),
    "AVE": lambda xs: sum(xs[1:], xs[0]) / len(xs),
}


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("mode", CLASSIC)
def test_classic_same_shapes_rank5(mode, count):
    xs = [randn(3, 4, 5) for _ in range(count)]
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", mode), xs)
    close(got, CLASSIC[mode]([x.astype(np.float64) for x in xs]))


@pytest.mark.parametrize("mode", CLASSIC)
def test_classic_torch_reference(mode):
    xs = [randn(2, 3, 4), randn(2, 3, 4)]
    a, b = (t(x) for x in xs)
    want = {"ADD": a + b, "MULTIPLY": a * b, "MAX": torch.maximum(a, b), "MIN": torch.minimum(a, b),
            "AVE": (a + b) / 2}[mode]
    close(run(lambda bl, ins: bl.add_elementwise("e", ins, "out", mode), xs), want)


# The broadcasting patterns the proto lists, in [C,H,W] (rank-5 model) terms, both orders
CLASSIC_PATTERNS = [((3, 4, 5), (1, 1, 1)), ((3, 4, 5), (3, 1, 1)), ((3, 4, 5), (1, 4, 5)),
                    ((1, 1, 1), (3, 4, 5)), ((3, 1, 1), (3, 4, 5)), ((1, 4, 5), (3, 4, 5))]


@pytest.mark.parametrize("shapes", CLASSIC_PATTERNS)
@pytest.mark.parametrize("mode", CLASSIC)
def test_classic_broadcast_patterns_rank5(mode, shapes):
    xs = [randn(*s) for s in shapes]
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", mode), xs)
    close(got, CLASSIC[mode]([x.astype(np.float64) for x in xs]))


@pytest.mark.parametrize("mode", CLASSIC)
def test_classic_batch_broadcast_on_rank5_blobs(mode):
    """[B,1,1,1] with [B,C,H,W]: 5-D blobs [Seq, Batch, C, H, W] with a per-batch scalar."""
    xs = [randn(2, 3, 3, 4, 5), randn(1, 3, 1, 1, 1), randn(2, 3, 3, 1, 1)]
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", mode), xs,
              declared=[(3, 4, 5), (1, 1, 1), (3, 1, 1)])
    close(got, CLASSIC[mode]([x.astype(np.float64) for x in xs]))


@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 1, 1, 1)), ((2, 3, 4, 5), (2, 3, 1, 1)),
                                    ((2, 3, 4, 5), (2, 1, 4, 5)), ((2, 1, 1, 1), (2, 3, 4, 5))])
@pytest.mark.parametrize("mode", CLASSIC)
def test_classic_broadcast_exact_rank(mode, shapes):
    xs = [randn(*s) for s in shapes]
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", mode), xs, exact_rank=True)
    close(got, CLASSIC[mode]([x.astype(np.float64) for x in xs]))


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("mode, alpha, reference", [("ADD", 2.5, lambda x: x + 2.5),
                                                    ("MULTIPLY", -1.5, lambda x: x * -1.5)])
def test_classic_single_input_uses_alpha(mode, alpha, reference, exact_rank):
    x = randn(3, 4, 5)
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", mode, alpha=alpha), [x], exact_rank=exact_rank)
    close(got, reference(x.astype(np.float64)))


def test_single_input_multiply_without_alpha_multiplies_by_zero():
    """alpha is a plain proto3 float: unset means 0.0, so y = 0 * x (the proto's formula)."""
    x = randn(3, 2, 2)
    got = run(lambda b, ins: b.add_elementwise("e", ins, "out", "MULTIPLY"), [x])
    np.testing.assert_array_equal(got, np.zeros_like(x))


# ---------------------------------------------------------------- dot

@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("arrays, declared", [
    (lambda: [randn(6, 1, 1), randn(6, 1, 1)], None),
    (lambda: [randn(2, 3, 6, 1, 1), randn(2, 3, 6, 1, 1)], [(6, 1, 1), (6, 1, 1)]),
])
def test_dot_rank5(cosine, arrays, declared):
    xs = arrays()
    got = run(lambda b, ins: b.add_elementwise("d", ins, "out", "COS" if cosine else "DOT"), xs, declared=declared)
    a, b = (t(x).double() for x in xs)
    want = F.cosine_similarity(a, b, dim=-3) if cosine else (a * b).sum(-3)
    close(got, want.unsqueeze(-3).float())


@pytest.mark.parametrize("cosine", [False, True])
def test_dot_exact_rank(cosine):
    xs = [randn(4, 7, 1, 1), randn(4, 7, 1, 1)]
    got = run(lambda b, ins: b.add_elementwise("d", ins, "out", "COS" if cosine else "DOT"), xs, exact_rank=True)
    a, b = (t(x).double() for x in xs)
    want = F.cosine_similarity(a, b, dim=1) if cosine else (a * b).sum(1)
    close(got, want.reshape(4, 1, 1, 1).float())


# ---------------------------------------------------------------- scale and bias

C, H, W = 3, 4, 5
PARAM_SHAPES = [[1], [C], [1, H, W], [C, H, W]]


def _param(shape):
    values = randn(*shape) + 0.5
    return values, values.reshape(shape if len(shape) == 3 else (shape[0], 1, 1))


@pytest.mark.parametrize("bias_shape", [None] + PARAM_SHAPES)
@pytest.mark.parametrize("scale_shape", PARAM_SHAPES)
def test_scale_rank5(scale_shape, bias_shape):
    x = randn(2, 3, C, H, W)
    w, w_ref = _param(scale_shape)
    bias, bias_ref = _param(bias_shape) if bias_shape else (None, 0)
    got = run(lambda b, ins: b.add_scale("s", w, bias, bias_shape is not None, ins[0], "out",
                                         shape_scale=scale_shape, shape_bias=bias_shape), [x],
              declared=[(C, H, W)])
    close(got, x.astype(np.float64) * w_ref + bias_ref)


@pytest.mark.parametrize("shape", [(2, C, H, W), (C, H, W), (2, 2, 2, C, H, W)])
def test_scale_exact_rank(shape):
    x = randn(*shape)
    w, w_ref = _param([C])
    bias, bias_ref = _param([1, H, W])
    got = run(lambda b, ins: b.add_scale("s", w, bias, True, ins[0], "out", shape_scale=[C],
                                         shape_bias=[1, H, W]), [x], exact_rank=True)
    close(got, x.astype(np.float64) * w_ref + bias_ref)


def test_scale_constant_int_form():
    x = randn(C, H, W)
    got = run(lambda b, ins: b.add_scale("s", 5, 45, True, ins[0], "out"), [x])
    close(got, 5 * x.astype(np.float64) + 45)


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("bias_shape", PARAM_SHAPES)
def test_bias(bias_shape, exact_rank):
    x = randn(2, C, H, W) if exact_rank else randn(C, H, W)
    bias, bias_ref = _param(bias_shape)
    got = run(lambda b, ins: b.add_bias("b", bias, ins[0], "out", shape_bias=bias_shape), [x],
              exact_rank=exact_rank)
    close(got, x.astype(np.float64) + bias_ref)


def test_scale_shape_not_matching_input_is_an_error():
    x = randn(4, H, W)                        # 4 channels, scale has 3
    with pytest.raises(wb.WorkbenchError, match="does not fit"):
        run(lambda b, ins: b.add_scale("s", randn(C), None, False, ins[0], "out", shape_scale=[C]), [x])


def test_bias_weight_count_mismatch_is_a_format_error():
    builder = NeuralNetworkBuilder([("a", datatypes.Array(C, H, W))], [("out", None)])
    builder.add_bias("b", randn(C), "a", "out", shape_bias=[C])
    builder.spec.neuralNetwork.layers[0].bias.shape[0] = 4
    with pytest.raises(wb.ModelFormatError, match="3 values"):
        wb.load(builder.spec)


def test_scale_shape_of_rank_two_is_a_format_error():
    builder = NeuralNetworkBuilder([("a", datatypes.Array(C, H, W))], [("out", None)])
    builder.add_scale("s", randn(H, W), None, False, "a", "out", shape_scale=[H, W])
    with pytest.raises(wb.ModelFormatError, match="1 or 3 dimensions"):
        wb.load(builder.spec)


# ---------------------------------------------------------------- *Broadcastable

def _floor_div(a, b):
    return torch.div(a, b, rounding_mode="floor")


BROADCASTABLE = [
    ("add_add_broadcastable", torch.add), ("add_subtract_broadcastable", torch.sub),
    ("add_multiply_broadcastable", torch.mul), ("add_divide_broadcastable", torch.div),
    ("add_floor_div_broadcastable", _floor_div), ("add_mod_broadcastable", torch.remainder),
    ("add_pow_broadcastable", torch.pow), ("add_min_broadcastable", torch.minimum),
    ("add_max_broadcastable", torch.maximum),
]
BROADCAST_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((1,), (2, 3, 4)), ((3, 1), (1, 5)),
                    ((2, 1, 3, 1, 4), (5, 1, 1, 1)), ((6,), (6,))]


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
@pytest.mark.parametrize("adder, reference", BROADCASTABLE)
def test_broadcastable(adder, reference, shapes):
    a, b = randn(*shapes[0], scale=3), randn(*shapes[1], scale=3)
    if adder == "add_pow_broadcastable":
        a = np.abs(a) + 0.1
    b[np.abs(b) < 0.1] = 0.5                   # keep divisors away from 0
    got = run(lambda bl, ins: getattr(bl, adder)("op", ins, "out"), [a, b], exact_rank=True)
    close(got, reference(t(a).double(), t(b).double()).float(), rtol=2e-5)


def test_mod_and_floor_div_follow_the_divisor_sign():
    a = np.array([7, -7, 7, -7, 5.5, -5.5], np.float32)
    b = np.array([3, 3, -3, -3, 2, 2], np.float32)
    got = run(lambda bl, ins: bl.add_mod_broadcastable("m", ins, "out"), [a, b], exact_rank=True)
    np.testing.assert_array_equal(got, [1, 2, -2, -1, 1.5, 0.5])
    got = run(lambda bl, ins: bl.add_floor_div_broadcastable("f", ins, "out"), [a, b], exact_rank=True)
    np.testing.assert_array_equal(got, [2, -3, -3, 2, 2, -3])


def test_divide_by_zero_gives_inf_and_nan():
    a = np.array([1, -1, 0], np.float32)
    got = run(lambda bl, ins: bl.add_divide_broadcastable("d", ins, "out"), [a, np.zeros(3, np.float32)],
              exact_rank=True)
    np.testing.assert_array_equal(got, torch.div(t(a), torch.zeros(3)).numpy())


@pytest.mark.parametrize("adder, fold", [("add_add_broadcastable", torch.add),
                                         ("add_multiply_broadcastable", torch.mul),
                                         ("add_max_broadcastable", torch.maximum),
                                         ("add_min_broadcastable", torch.minimum)])
def test_associative_broadcastable_with_three_inputs(adder, fold):
    xs = [randn(2, 1, 4), randn(3, 1), randn(2, 3, 4)]
    got = run(lambda bl, ins: getattr(bl, adder)("op", ins, "out"), xs, exact_rank=True)
    a, b, c = (t(x).double() for x in xs)
    close(got, fold(fold(a, b), c).float())


def test_subtract_with_three_inputs_is_a_format_error():
    builder = NeuralNetworkBuilder([(n, datatypes.Array(2)) for n in "abc"], [("out", None)],
                                   disable_rank5_shape_mapping=True)
    builder.add_subtract_broadcastable("s", ["a", "b", "c"], "out")
    with pytest.raises(wb.ModelFormatError, match="3 input"):
        wb.load(builder.spec)


# ---------------------------------------------------------------- comparisons and logic

COMPARISONS = [
    ("equal", lambda b, ins, **k: b.add_equal("c", ins, "out", **k), torch.eq),
    ("notEqual", lambda b, ins, **k: b.add_not_equal("c", ins, "out", **k), torch.ne),
    ("lessThan", lambda b, ins, **k: b.add_less_than("c", ins, "out", **k), torch.lt),
    ("lessEqual", lambda b, ins, **k: b.add_less_than("c", ins, "out", use_less_than_equal=True, **k), torch.le),
    ("greaterThan", lambda b, ins, **k: b.add_greater_than("c", ins, "out", **k), torch.gt),
    ("greaterEqual", lambda b, ins, **k: b.add_greater_than("c", ins, "out", use_greater_than_equal=True, **k),
     torch.ge),
]


def _small_ints(*shape):
    """Values with many exact ties, so equality matters."""
    return RNG.integers(-2, 3, shape).astype(np.float32)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 1, 5))])
@pytest.mark.parametrize("kind, add, reference", COMPARISONS)
def test_comparison_two_inputs(kind, add, reference, shapes):
    a, b = _small_ints(*shapes[0]), _small_ints(*shapes[1])
    got = run(add, [a, b], exact_rank=True)
    close(got, reference(t(a), t(b)).float())


@pytest.mark.parametrize("alpha", [0.0, 1.0, -1.5])
@pytest.mark.parametrize("kind, add, reference", COMPARISONS)
def test_comparison_against_alpha(kind, add, reference, alpha):
    a = _small_ints(2, 3, 4)
    a[0, 0, :2] = [-1.5, 0.5]
    got = run(lambda b, ins: add(b, ins, alpha=alpha), [a], exact_rank=True)
    close(got, reference(t(a), alpha).float())


LOGICAL = [("AND", torch.logical_and), ("OR", torch.logical_or), ("XOR", torch.logical_xor)]


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (1, 4)), ((5,), (2, 1))])
@pytest.mark.parametrize("mode, reference", LOGICAL)
def test_logical_binary(mode, reference, shapes):
    a, b = _small_ints(*shapes[0]) * 0.5, _small_ints(*shapes[1]) * 0.5   # 0, +-0.5, +-1: only 0 is false
    got = run(lambda bl, ins: bl.add_logical("l", ins, "out", mode), [a, b], exact_rank=True)
    close(got, reference(t(a), t(b)).float())


def test_logical_not():
    a = np.array([[0.0, -0.0, 0.5, -2.0, np.nan]], np.float32)
    got = run(lambda bl, ins: bl.add_logical("l", ins, "out", "NOT"), [a], exact_rank=True)
    close(got, torch.logical_not(t(a)).float())


def test_logical_and_with_one_input_is_a_format_error():
    builder = NeuralNetworkBuilder([("a", datatypes.Array(2))], [("out", None)], disable_rank5_shape_mapping=True)
    builder.add_logical("l", ["a", "a"], "out", "AND")
    del builder.spec.neuralNetwork.layers[0].input[1]
    with pytest.raises(wb.ModelFormatError, match="needs 2"):
        wb.load(builder.spec)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3), (2, 3)), ((3, 1), (1, 4), (2, 1, 1)),
                                    ((4,), (2, 3, 4), (1,))])
def test_where_broadcastable(shapes):
    cond = _small_ints(*shapes[0])
    x, y = randn(*shapes[1]), randn(*shapes[2])
    got = run(lambda bl, ins: bl.add_where_broadcastable("w", ins, "out"), [cond, x, y], exact_rank=True)
    close(got, torch.where(t(cond) != 0, t(x), t(y)))


def test_every_kernel_returns_float32_itself():
    """Kernels compute in float32 (the executor's cast must not be what makes them float32)."""
    from workbench.runtime.layers import KERNELS, Context
    builder = NeuralNetworkBuilder([(n, datatypes.Array(2, 3)) for n in "abc"], [("out", None)],
                                   disable_rank5_shape_mapping=True)
    for mode in CLASSIC:
        builder.add_elementwise(mode, ["a", "b"], "out", mode)
    for adder, _ in BROADCASTABLE:
        getattr(builder, adder)(adder, ["a", "b"], "out")
    for kind, add, _ in COMPARISONS:
        builder.spec.neuralNetwork.layers.extend([add(NeuralNetworkBuilder(
            [("a", datatypes.Array(1))], [("out", None)], disable_rank5_shape_mapping=True), ["a", "b"])])
        builder.spec.neuralNetwork.layers[-1].name = kind
    for mode, _ in LOGICAL:
        builder.add_logical(mode, ["a", "b"], "out", mode)
    builder.add_where_broadcastable("where", ["a", "b", "c"], "out")
    x = [randn(4, 2, 3) for _ in range(3)]
    ctx = Context(rank5=False)
    for layer in builder.spec.neuralNetwork.layers:
        with np.errstate(all="ignore"):
            out = KERNELS[layer.WhichOneof("layer")](layer, ctx).compute(*x[:len(layer.input)])
        assert out.dtype == np.float32 and out.shape == (4, 2, 3), layer.name
