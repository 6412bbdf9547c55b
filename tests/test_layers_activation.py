"""Activation and unary-math kernels, run through wb.load(...).predict on NeuralNetworkBuilder models.

References are torch ops, or numpy formulas written from NeuralNetwork.proto's comments.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb
from support import assert_close as close  # noqa: E402

RNG = np.random.default_rng(7)
RANK5_SHAPES = [(3, 4, 5), (2, 3, 3, 4, 5)]   # [C,H,W] and [Seq,Batch,C,H,W] fed to a rank-5 model


def run(add_layer, x, exact_rank=False, declared=None):
    """Build a one-layer model 'data' -> 'out' with ``add_layer(builder)`` and predict on x."""
    builder = NeuralNetworkBuilder([("data", datatypes.Array(*(declared or x.shape)))], [("out", None)],
                                   disable_rank5_shape_mapping=exact_rank)
    add_layer(builder)
    return wb.load(builder.spec).predict({"data": x})["out"]


def rank5_case(shape):
    """Input for a rank-5 model declared [C,H,W]: either that, or a full 5-D blob."""
    x = RNG.standard_normal(shape).astype(np.float32) * 3
    return x, shape[-3:]


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------- activation: the 13 nonlinearities

def _per_channel_ref(x, alpha, f):
    """Apply f(x, alpha_c) with alpha along axis -3, via torch on a [N, C, H, W] view."""
    shape = x.shape
    xt = t(x).reshape(-1, *shape[-3:])
    return f(xt, alpha).reshape(shape)


SCALAR_CASES = [
    ("LINEAR", [1.7, -0.4], lambda x: 1.7 * x - 0.4),
    ("RELU", None, F.relu),
    ("LEAKYRELU", [0.15], lambda x: F.leaky_relu(x, 0.15)),
    ("TANH", None, torch.tanh),
    ("SCALED_TANH", [1.5, 0.7], lambda x: 1.5 * torch.tanh(0.7 * x)),
    ("SIGMOID", None, torch.sigmoid),
    ("SIGMOID_HARD", [1 / 6, 0.5], F.hardsigmoid),            # torch's is alpha=1/6, beta=0.5
    ("SIGMOID_HARD", [0.2, 0.3], lambda x: torch.clamp(0.2 * x + 0.3, 0, 1)),
    ("ELU", 0.8, lambda x: F.elu(x, 0.8)),
    ("SOFTSIGN", None, F.softsign),
    ("SOFTPLUS", None, F.softplus),
]


@pytest.mark.parametrize("shape", RANK5_SHAPES)
@pytest.mark.parametrize("name, params, reference", SCALAR_CASES)
def test_activation_scalar_params_rank5(name, params, reference, shape):
    x, declared = rank5_case(shape)
    got = run(lambda b: b.add_activation("a", name, "data", "out", params=params), x, declared=declared)
    close(got, reference(t(x).double()).float())


@pytest.mark.parametrize("name, params, reference", SCALAR_CASES)
def test_activation_scalar_params_exact_rank(name, params, reference):
    x = RNG.standard_normal((2, 7)).astype(np.float32) * 3     # rank 2: no channel axis needed
    got = run(lambda b: b.add_activation("a", name, "data", "out", params=params), x, exact_rank=True)
    close(got, reference(t(x).double()).float())


def test_sigmoid_and_softplus_extremes():
    x = np.array([[-200, -90, -20, 0, 20, 90, 200]], np.float32)
    close(run(lambda b: b.add_activation("a", "SIGMOID", "data", "out"), x, exact_rank=True),
          torch.sigmoid(t(x)))
    close(run(lambda b: b.add_activation("a", "SOFTPLUS", "data", "out"), x, exact_rank=True),
          np.logaddexp(0, x.astype(np.float64)).astype(np.float32))


def test_thresholded_relu_keeps_values_at_the_threshold():
    """The proto says x >= alpha passes (torch's Threshold uses >); check the boundary explicitly."""
    x = np.array([[-1, 0.5, 0.99, 1.0, 1.01, 3]], np.float32)
    got = run(lambda b: b.add_activation("a", "THRESHOLDEDRELU", "data", "out", params=1.0), x, exact_rank=True)
    close(got, np.where(x >= 1.0, x, 0).astype(np.float32))
    x, declared = rank5_case((3, 4, 5))
    got = run(lambda b: b.add_activation("a", "THRESHOLDEDRELU", "data", "out", params=0.4), x, declared=declared)
    close(got, F.threshold(t(x), 0.4, 0.0))


def test_leaky_relu_and_elu_at_zero_use_the_positive_branch():
    x = np.array([[-0.0, 0.0, -1e-30, 1e-30]], np.float32)
    got = run(lambda b: b.add_activation("a", "ELU", "data", "out", params=2.0), x, exact_rank=True)
    close(got, F.elu(t(x), 2.0), atol=0)


@pytest.mark.parametrize("nonlinearity, alpha", [("LEAKYRELU", [0.15]), ("PRELU", np.array([0.15]))])
def test_leaky_relu_special_values_follow_the_proto_formula(nonlinearity, alpha):
    """f(x) = x for x >= 0, alpha * x below (NeuralNetwork.proto): -0 stays -0, NaN stays NaN,
    infinities scale; 45 elements, so the compiled loop's vector body and its tail both run."""
    x = np.array([[-0.0, 0.0, -1e-30, 1e-30, np.nan, np.inf, -np.inf, -2.5, 3.0] * 5], np.float32)
    got = run(lambda b: b.add_activation("a", nonlinearity, "data", "out", params=alpha), x, exact_rank=True)
    expected = np.where(x >= 0, x, x * np.float32(0.15))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


@pytest.mark.parametrize("shape", RANK5_SHAPES)
def test_prelu_per_channel_rank5(shape):
    x, declared = rank5_case(shape)
    alpha = np.array([0.1, -0.5, 2.0], np.float32)
    got = run(lambda b: b.add_activation("a", "PRELU", "data", "out", params=alpha), x, declared=declared)
    close(got, _per_channel_ref(x, t(alpha), F.prelu))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 5), (2, 2, 3, 1, 6)])
def test_prelu_per_channel_exact_rank(shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    alpha = np.array([0.25, 0.0, -1.0], np.float32)
    got = run(lambda b: b.add_activation("a", "PRELU", "data", "out", params=alpha), x, exact_rank=True)
    close(got, _per_channel_ref(x, t(alpha), F.prelu))


def test_prelu_shared_alpha():
    x = RNG.standard_normal((4, 2, 3)).astype(np.float32)
    got = run(lambda b: b.add_activation("a", "PRELU", "data", "out", params=np.array([0.3])), x)
    close(got, F.prelu(t(x), torch.tensor([0.3])))


def test_prelu_channel_mismatch_is_an_error():
    x = RNG.standard_normal((4, 2, 3)).astype(np.float32)
    with pytest.raises(wb.WorkbenchError, match="per-channel"):
        run(lambda b: b.add_activation("a", "PRELU", "data", "out", params=np.array([0.1, 0.2])), x)


def test_prelu_without_alpha_is_a_format_error():
    builder = NeuralNetworkBuilder([("data", datatypes.Array(3, 2, 2))], [("out", None)])
    builder.add_activation("a", "RELU", "data", "out")
    builder.spec.neuralNetwork.layers[0].activation.PReLU.SetInParent()
    with pytest.raises(wb.ModelFormatError, match="alpha"):
        wb.load(builder.spec)


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_parametric_softplus(shared, exact_rank):
    x = RNG.standard_normal((2, 3, 4, 5) if exact_rank else (3, 4, 5)).astype(np.float32) * 3
    alpha = np.array([0.5] if shared else [0.5, 1.0, 2.0], np.float32)
    beta = np.array([1.5] if shared else [1.5, -1.0, 0.25], np.float32)
    got = run(lambda b: b.add_activation("a", "PARAMETRICSOFTPLUS", "data", "out", params=[alpha, beta]),
              x, exact_rank=exact_rank)
    a, bt = (t(v).double().reshape(-1, 1, 1) for v in (alpha, beta))
    close(got, (a * F.softplus(bt * t(x).double())).float())


# ---------------------------------------------------------------- unary

def _unary_case(op, x, alpha, eps):
    x = x.astype(np.float64)
    return {
        "sqrt": lambda: np.sqrt(x), "rsqrt": lambda: 1 / np.sqrt(x + eps),
        "inverse": lambda: 1 / (x + eps), "power": lambda: x ** alpha, "exp": lambda: np.exp(x),
        "log": lambda: np.log(x + eps), "abs": lambda: np.abs(x), "threshold": lambda: np.maximum(x, alpha),
    }[op]()


UNARY_OPS = ["sqrt", "rsqrt", "inverse", "power", "exp", "log", "abs", "threshold"]


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.5, 2.0), (3.0, -0.5)])
@pytest.mark.parametrize("op", UNARY_OPS)
def test_unary(op, shift, scale, exact_rank):
    x = RNG.uniform(0.5, 3, (3, 4, 5)).astype(np.float32)
    if op in ("abs", "threshold", "power"):
        x -= 1.5
    alpha, eps = (3.0 if op == "power" else 0.7), 0.01
    got = run(lambda b: b.add_unary("u", "data", "out", op, alpha=alpha, shift=shift, scale=scale, epsilon=eps),
              x, exact_rank=exact_rank)
    z = scale * x.astype(np.float64) + shift
    with np.errstate(all="ignore"):
        want = _unary_case(op, z, alpha, eps).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_unary_zero_scale_and_epsilon_mean_the_proto_defaults():
    x = RNG.uniform(0.5, 3, (3, 2, 2)).astype(np.float32)
    for op, ref in [("rsqrt", lambda v: 1 / np.sqrt(v + 1e-6)), ("inverse", lambda v: 1 / (v + 1e-6)),
                    ("log", lambda v: np.log(v + 1e-6))]:
        builder = NeuralNetworkBuilder([("data", datatypes.Array(3, 2, 2))], [("out", None)])
        builder.add_unary("u", "data", "out", op)
        params = builder.spec.neuralNetwork.layers[0].unary
        params.scale, params.epsilon, params.shift = 0.0, 0.0, 0.25
        got = wb.load(builder.spec).predict({"data": x})["out"]
        np.testing.assert_allclose(got, ref(x.astype(np.float64) + 0.25), rtol=1e-6)


def test_unary_out_of_domain_gives_nan_and_inf():
    x = np.array([[-1.0, 0.0, 4.0]], np.float32)
    got = run(lambda b: b.add_unary("u", "data", "out", "sqrt"), x, exact_rank=True)
    np.testing.assert_array_equal(got, torch.sqrt(t(x)).numpy())
    got = run(lambda b: b.add_unary("u", "data", "out", "log", epsilon=1e-45), x, exact_rank=True)
    # epsilon is a float32 denormal (1.4e-45), not flushed to zero: log(0 + eps) = -103.28
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got, np.log(x + np.float32(1e-45)), rtol=1e-6)
    assert np.isnan(got[0, 0]) and got[0, 1] == pytest.approx(math.log(1.401298464e-45), rel=1e-6)


def test_unary_unknown_operation_is_unsupported():
    builder = NeuralNetworkBuilder([("data", datatypes.Array(3, 2, 2))], [("out", None)])
    builder.add_unary("u", "data", "out", "abs")
    builder.spec.neuralNetwork.layers[0].unary.type = 42
    with pytest.raises(wb.UnsupportedLayerError, match="42"):
        wb.load(builder.spec)


# ---------------------------------------------------------------- clip, clampedReLU, gelu, erf

@pytest.mark.parametrize("low, high", [(-1.0, 2.0), (0.0, 0.0), (1.0, -1.0)])
def test_clip(low, high):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 3
    got = run(lambda b: b.add_clip("c", "data", "out", min_value=low, max_value=high), x, exact_rank=True)
    close(got, torch.clamp(t(x), low, high))      # torch also gives max when min > max


@pytest.mark.parametrize("alpha, beta", [(0.0, 6.0), (0.1, 2.0), (-0.5, 1.0), (2.0, -1.0)])
def test_clamped_relu(alpha, beta):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 4
    got = run(lambda b: b.add_clamped_relu("c", "data", "out", alpha=alpha, beta=beta), x, exact_rank=True)
    close(got, torch.clamp(F.leaky_relu(t(x), alpha), max=beta))


@pytest.mark.parametrize("shape, exact_rank", [((3, 4, 5), False), ((2, 3, 4, 5, 6), False),
                                               ((7,), True), ((2, 3, 4, 5, 6), True)])
@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
def test_gelu(mode, shape, exact_rank):
    x = RNG.standard_normal(shape).astype(np.float32) * 3
    got = run(lambda b: b.add_gelu("g", "data", "out", mode=mode), x, exact_rank=exact_rank,
              declared=None if exact_rank else shape[-3:] if len(shape) == 5 else None)
    xd = t(x).double()
    want = {"EXACT": lambda: F.gelu(xd), "TANH_APPROXIMATION": lambda: F.gelu(xd, approximate="tanh"),
            "SIGMOID_APPROXIMATION": lambda: xd * torch.sigmoid(1.702 * xd)}[mode]()
    close(got, want.float(), atol=2e-6)


def test_erf_layer_matches_torch():
    x = np.concatenate([np.linspace(-5, 5, 2001), [0.0, -0.0, 1e-30, -1e-20, 3.99, 4.0, 4.01, 1e4, -np.inf,
                                                 np.inf]]).astype(np.float32).reshape(1, -1)
    got = run(lambda b: b.add_erf("e", "data", "out"), x, exact_rank=True)
    close(got, torch.erf(t(x).double()).float(), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- parameterless unary kinds

SIMPLE = [
    ("ceil", torch.ceil, (-5, 5)), ("floor", torch.floor, (-5, 5)), ("sign", torch.sign, (-5, 5)),
    ("round", torch.round, (-5, 5)), ("exp2", torch.exp2, (-10, 10)),
    ("sin", torch.sin, (-7, 7)), ("cos", torch.cos, (-7, 7)), ("tan", torch.tan, (-1.5, 1.5)),
    ("asin", torch.asin, (-1, 1)), ("acos", torch.acos, (-1, 1)), ("atan", torch.atan, (-20, 20)),
    ("sinh", torch.sinh, (-5, 5)), ("cosh", torch.cosh, (-5, 5)), ("tanh", torch.tanh, (-5, 5)),
    ("asinh", torch.asinh, (-20, 20)), ("acosh", torch.acosh, (1, 20)), ("atanh", torch.atanh, (-0.99, 0.99)),
]


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("kind, reference, domain", SIMPLE)
def test_simple_unary(kind, reference, domain, exact_rank):
    x = RNG.uniform(*domain, (3, 4, 5)).astype(np.float32)
    x[0, 0, :3] = [0.0, domain[0], domain[1]]
    got = run(lambda b: getattr(b, f"add_{kind}")(kind, "data", "out"), x, exact_rank=exact_rank)
    close(got, reference(t(x).double()).float(), atol=2e-6)


def test_round_ties_go_to_even():
    """The rule chosen: half to even, as coremltools documents ("0.5 is rounded to 0") and as
    np.round / torch.round do; Apple devices may differ per compute unit on exact ties."""
    x = np.array([[-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, 2.5000002]], np.float32)
    got = run(lambda b: b.add_round("r", "data", "out"), x, exact_rank=True)
    np.testing.assert_array_equal(got, [[-4, -2, -2, -0, 0, 2, 2, 4, 0, 3]])
    np.testing.assert_array_equal(got, torch.round(t(x)).numpy())


def test_out_of_domain_trig_gives_nan():
    x = np.array([[-2.0, 2.0]], np.float32)
    for kind in ("asin", "acos", "acosh"):
        got = run(lambda b: getattr(b, f"add_{kind}")(kind, "data", "out"), x, exact_rank=True)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(getattr(torch, kind)(t(x)).numpy()))
    got = run(lambda b: b.add_atanh("a", "data", "out"), np.array([[-1.0, 1.0]], np.float32), exact_rank=True)
    np.testing.assert_array_equal(got, [[-np.inf, np.inf]])


def test_every_kernel_returns_float32_itself():
    """Kernels compute in float32 (the executor's cast must not be what makes them float32)."""
    from workbench.runtime.layers import KERNELS, Context
    builder = NeuralNetworkBuilder([("data", datatypes.Array(3, 2, 2))], [("out", None)])
    for nonlinearity, params in [(n, p) for n, p, _ in SCALAR_CASES] + [
            ("THRESHOLDEDRELU", 0.5), ("PRELU", np.array([0.1, 0.2, 0.3])),
            ("PARAMETRICSOFTPLUS", [np.ones(3), np.ones(3)])]:
        builder.add_activation(f"{nonlinearity}{params}", nonlinearity, "data", "out", params=params)
    for op in UNARY_OPS:
        builder.add_unary(op, "data", "out", op, alpha=2.5)
    for mode in ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"]:
        builder.add_gelu(mode, "data", "out", mode=mode)
    builder.add_erf("erf", "data", "out")
    builder.add_clip("clip", "data", "out")
    builder.add_clamped_relu("clamped", "data", "out")
    for kind, _, _ in SIMPLE:
        getattr(builder, f"add_{kind}")(kind, "data", "out")
    x = RNG.standard_normal((1, 1, 3, 2, 2)).astype(np.float32)
    x.flags.writeable = False
    ctx = Context(rank5=True)
    for layer in builder.spec.neuralNetwork.layers:
        with np.errstate(all="ignore"):
            out = KERNELS[layer.WhichOneof("layer")](layer, ctx).compute(x)
        assert out.dtype == np.float32 and out.shape == x.shape, layer.name
